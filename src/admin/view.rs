//! What every rendering of the stats reads ([`View`]), and the pieces they share.
//!
//! The page, the CSV, the JSON and Prometheus all read one `View`, so they always agree.

use crate::generation::Generation;
use crate::reload::ReloadStatus;
use crate::rules::Balance;
use crate::stats::{Counters, Stats};

/// What a rendering reads: one generation, the counters, the last reload.
pub struct View<'a> {
    /// The generation serving now.
    pub generation: &'a Generation,
    /// Process counters.
    pub stats: &'a Stats,
    /// Last reload outcome.
    pub reload: &'a ReloadStatus,
    /// Reloads applied and refused.
    pub reloads: (u64, u64),
    /// Seconds between page refreshes, when asked for.
    pub refresh: Option<u32>,
    /// CSRF token for admin forms, when admin actions are enabled.
    pub admin_token: Option<&'a str>,
    /// Servers' DNS names: addresses, last success, last error.
    pub dns: Vec<(String, crate::resolve::NameState)>,
    /// The certificates served, with their expiry.
    pub certs: Vec<crate::tls::CertInfo>,
    /// The shared rate-limit store, when configured.
    pub limits_store: Option<&'a crate::limit_store::Store>,
}

/// A DNS name's addresses for a page: `1=10.0.0.1 2=10.0.0.2` (slot numbers as in `name#N`).
pub(super) fn dns_slots(st: &crate::resolve::NameState) -> String {
    st.slots
        .iter()
        .enumerate()
        .filter_map(|(i, ip)| ip.map(|ip| format!("#{}={ip}", i + 1)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Seconds since `t`, if it happened.
pub(super) fn secs_since(t: Option<std::time::SystemTime>) -> Option<u64> {
    t.and_then(|t| t.elapsed().ok()).map(|d| d.as_secs())
}

pub(super) struct TcpRow {
    pub(super) name: std::sync::Arc<str>,
    /// What it listens on and where it relays to.
    pub(super) listens: String,
    pub(super) counters: std::sync::Arc<Counters>,
    /// Connections allowed at once (passthrough shares the HTTPS listener's limit).
    pub(super) limit: Option<u64>,
}

/// Every TCP frontend: the process's TCP listeners, then the rules' passthrough names.
pub(super) fn tcp_fronts(v: &View<'_>) -> Vec<TcpRow> {
    let g = v.generation;
    let mut out: Vec<TcpRow> = v
        .stats
        .fronts()
        .into_iter()
        .map(|f| {
            let bind: Vec<String> = f.bind.iter().map(|a| a.to_string()).collect();
            TcpRow {
                counters: f.counters,
                listens: format!("{} → {}", bind.join(" "), f.service),
                name: f.name,
                limit: Some(f.limit),
            }
        })
        .collect();
    for (i, p) in g.rules.passthrough.iter().enumerate() {
        let hosts: Vec<String> = p.hosts.iter().map(|h| h.to_string()).collect();
        out.push(TcpRow {
            name: p.name.clone(),
            listens: format!(
                "TLS SNI {} → {}",
                hosts.join(" "),
                g.rules.services[p.service].name
            ),
            counters: g.passthrough[i].clone(),
            limit: None,
        });
    }
    out
}

/// HAProxy's name for a balancing algorithm.
pub(super) fn algo(b: Balance) -> &'static str {
    match b {
        Balance::Roundrobin => "roundrobin",
        Balance::Leastconn => "leastconn",
        Balance::HashSource => "source",
        Balance::HashUri => "uri",
    }
}

pub(super) struct Process {
    pub(super) rss: u64,
    pub(super) cpu: f64,
    pub(super) fds: usize,
}

/// Process figures from /proc/self (0 where unavailable).
pub(super) fn process() -> Process {
    let rss = crate::memory::resident().unwrap_or(0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    Process { rss, cpu, fds }
}

pub(super) fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", n as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", n as f64 / 1_073_741_824.0),
    }
}

pub(super) fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

pub(super) fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |m| {
        if m < 1.0 {
            format!("{m:.1}")
        } else {
            format!("{m:.0}")
        }
    })
}

/// HTML-escapes text from rules or errors.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
