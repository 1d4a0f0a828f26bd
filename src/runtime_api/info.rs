//! `show info`: the process, in HAProxy's `Name: value` lines.
//!
//! `Version` says which HAProxy runtime API level the socket speaks (2.6) and then
//! Gatehouse's own version, so tools that gate a feature on the version (Ansible's
//! haproxy module only drains on ≥ 1.5) work, and a reader still sees what answers.

use super::exec::{Api, stopping};
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

/// The `show info` text.
pub fn show_info(api: &Api) -> String {
    let stats = &api.shared.stats;
    let config = &api.reloader.config;
    let up = stats.started.elapsed().as_secs();
    let nofile = open_files_limit();
    let fields: Vec<(&str, String)> = vec![
        ("Name", "Gatehouse".into()),
        (
            "Version",
            format!("2.6.0-gatehouse-{}", env!("CARGO_PKG_VERSION")),
        ),
        ("Release_date", "-".into()),
        ("Nbthread", config.workers.to_string()),
        ("Nbproc", "1".into()),
        ("Process_num", "1".into()),
        ("Pid", std::process::id().to_string()),
        (
            "Uptime",
            format!(
                "{}d {}h{:02}m{:02}s",
                up / 86400,
                up % 86400 / 3600,
                up % 3600 / 60,
                up % 60
            ),
        ),
        ("Uptime_sec", up.to_string()),
        ("Memmax_MB", "0".into()),
        ("Ulimit-n", nofile.to_string()),
        ("Maxsock", nofile.to_string()),
        ("Maxconn", config.limits.max_connections.to_string()),
        ("Hard_maxconn", config.limits.max_connections.to_string()),
        ("CurrConns", stats.connections.load(Relaxed).to_string()),
        (
            "CumConns",
            stats.connections_total.load(Relaxed).to_string(),
        ),
        ("CumReq", stats.frontend.requests.load(Relaxed).to_string()),
        (
            "CumSslConns",
            stats.tls_handshakes.load(Relaxed).to_string(),
        ),
        ("Maxpipes", "0".into()),
        ("PipesUsed", "0".into()),
        ("PipesFree", "0".into()),
        ("Tasks", "0".into()),
        ("Run_queue", "0".into()),
        ("node", hostname()),
        ("Stopping", u8::from(stopping(api)).to_string()),
        (
            "TotalBytesOut",
            stats.frontend.bytes_out.load(Relaxed).to_string(),
        ),
        ("Start_time_sec", stats.started_unix.to_string()),
    ];
    let mut out = String::new();
    for (k, v) in fields {
        let _ = writeln!(out, "{k}: {v}");
    }
    out
}

/// The soft limit on open files (`/proc/self/limits`), 0 when unknown.
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "-".into())
}
