//! Renders the counters as the stats page (HTML), HAProxy CSV, JSON and Prometheus text.
//!
//! All four read the same [`View`], so they always agree.

use crate::generation::Generation;
use crate::reload::ReloadStatus;
use crate::rules::{Balance, Colour};
use crate::stats::{BUCKETS, Counters, Kind, Stats, names};
use crate::upstream::health::ServerState;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

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
}

/// HAProxy's CSV columns (management guide §9.1), in order, up to `dses`.
pub const CSV_HEADER: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,";

/// Column positions of the CSV header, computed once.
fn columns() -> &'static std::collections::HashMap<&'static str, usize> {
    static COLS: std::sync::OnceLock<std::collections::HashMap<&'static str, usize>> =
        std::sync::OnceLock::new();
    COLS.get_or_init(|| {
        CSV_HEADER
            .trim_start_matches("# ")
            .trim_end_matches(',')
            .split(',')
            .enumerate()
            .map(|(i, c)| (c, i))
            .collect()
    })
}

/// One CSV row, filled by name; unnamed columns stay empty.
struct Row {
    cells: Vec<String>,
}

impl Row {
    fn new(px: &str, sv: &str, kind: u8) -> Row {
        let n = columns().len();
        let mut r = Row {
            cells: vec![String::new(); n],
        };
        r.set("pxname", px);
        r.set("svname", sv);
        r.set("type", kind);
        r.set("pid", 1);
        r.set("iid", 1);
        r
    }

    fn set(&mut self, col: &str, v: impl std::fmt::Display) {
        if let Some(&i) = columns().get(col) {
            self.cells[i] = v.to_string();
        }
    }

    fn counters(&mut self, c: &Counters) {
        self.set("scur", c.current.load(Relaxed));
        self.set("smax", c.max_current.load(Relaxed));
        self.set("stot", c.requests.load(Relaxed));
        self.set("req_tot", c.requests.load(Relaxed));
        self.set("bin", c.bytes_in.load(Relaxed));
        self.set("bout", c.bytes_out.load(Relaxed));
        self.set("econ", c.connect_errors.load(Relaxed));
        self.set("eresp", c.response_errors.load(Relaxed));
        self.set("wredis", c.redispatches.load(Relaxed));
        self.set("wretr", 0);
        for (i, col) in [
            "hrsp_1xx",
            "hrsp_2xx",
            "hrsp_3xx",
            "hrsp_4xx",
            "hrsp_5xx",
            "hrsp_other",
        ]
        .iter()
        .enumerate()
        {
            self.set(col, c.responses[i].load(Relaxed));
        }
        let n = c.requests.load(Relaxed);
        let avg_ms = c.total_time_us.load(Relaxed).checked_div(n).unwrap_or(0) / 1000;
        self.set("ttime", avg_ms);
    }

    fn write(&self, out: &mut String) {
        out.push_str(&self.cells.join(","));
        out.push_str(",\n");
    }
}

/// HAProxy-compatible CSV: FRONTEND rows per site, BACKEND and server rows per service.
pub fn csv(v: &View<'_>) -> String {
    let g = v.generation;
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for (i, site) in g.rules.sites.iter().enumerate() {
        let mut r = Row::new(&site.name, "FRONTEND", 0);
        r.counters(&g.sites[i]);
        r.set("status", "OPEN");
        r.set("mode", "http");
        r.write(&mut out);
    }
    for f in tcp_fronts(v) {
        let mut r = Row::new(&f.name, "FRONTEND", 0);
        r.counters(&f.counters);
        r.set("status", "OPEN");
        r.set("mode", "tcp");
        if let Some(l) = f.limit {
            r.set("slim", l);
        }
        r.set("conn_tot", f.counters.requests.load(Relaxed));
        r.write(&mut out);
    }
    let uptime = v.stats.started.elapsed().as_secs();
    for (i, svc) in g.rules.services.iter().enumerate() {
        let live = svc.live;
        let (mut act, mut bck) = (0, 0);
        for (colour, group) in [(Colour::Blue, &svc.blue), (Colour::Green, &svc.green)] {
            for s in group.servers.iter() {
                let h = &g.health[s.id];
                let mut r = Row::new(&svc.name, &s.name, 2);
                r.counters(&g.servers[s.id]);
                r.set("scur", h.active.load(Relaxed));
                r.set("status", h.status());
                r.set("weight", s.weight);
                r.set("act", u8::from(!s.backup));
                r.set("bck", u8::from(s.backup));
                r.set("sid", s.id + 1);
                r.set("addr", s.addr);
                r.set("mode", svc.mode_str());
                r.set("qcur", 0);
                r.set("qmax", 0);
                if let Some(m) = s.maxconn {
                    r.set("slim", m);
                }
                r.set("chkfail", h.checks_failed.load(Relaxed));
                r.set("chkdown", h.went_down.load(Relaxed));
                r.set("lastchg", h.since_change_secs());
                r.set("downtime", h.downtime_secs());
                r.set("check_rise", svc.health.rise);
                r.set("check_fall", svc.health.fall);
                if h.checked.load(Relaxed) {
                    let ok = h.last_check_ok.load(Relaxed);
                    let code = h.last_check_code.load(Relaxed);
                    let status = match (svc.health.path.is_some(), ok) {
                        (true, true) => "L7OK",
                        (true, false) if code > 0 => "L7STS",
                        (false, true) => "L4OK",
                        _ => "L4CON",
                    };
                    r.set("check_status", status);
                    if code > 0 {
                        r.set("check_code", code);
                    }
                    r.set("check_duration", h.last_check_ms.load(Relaxed));
                }
                if colour == live && h.usable() {
                    if s.backup {
                        bck += 1;
                    } else {
                        act += 1;
                    }
                }
                r.write(&mut out);
            }
        }
        let c = &g.services[i];
        let mut r = Row::new(&svc.name, "BACKEND", 1);
        r.counters(c);
        r.set("qcur", c.queued.load(Relaxed));
        r.set("qmax", c.max_queued.load(Relaxed));
        r.set("status", if act + bck > 0 { "UP" } else { "DOWN" });
        r.set("act", act);
        r.set("bck", bck);
        r.set(
            "weight",
            svc.servers(live)
                .iter()
                .filter(|s| !s.backup)
                .map(|s| s.weight)
                .sum::<u32>(),
        );
        r.set("mode", svc.mode_str());
        r.set("algo", algo(svc.balance));
        r.set("lastchg", uptime);
        r.set("downtime", 0);
        r.write(&mut out);
    }
    out
}

/// One TCP frontend row: a TCP listener or a passthrough name.
struct TcpRow {
    name: std::sync::Arc<str>,
    /// What it listens on and where it relays to.
    listens: String,
    counters: std::sync::Arc<Counters>,
    /// Connections allowed at once (passthrough shares the HTTPS listener's limit).
    limit: Option<u64>,
}

/// Every TCP frontend: the process's TCP listeners, then the rules' passthrough names.
fn tcp_fronts(v: &View<'_>) -> Vec<TcpRow> {
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
fn algo(b: Balance) -> &'static str {
    match b {
        Balance::Roundrobin => "roundrobin",
        Balance::Leastconn => "leastconn",
        Balance::HashSource => "source",
        Balance::HashUri => "uri",
    }
}

/// The same data as JSON.
pub fn json(v: &View<'_>) -> String {
    let g = v.generation;
    let counters = |c: &Counters| {
        serde_json::json!({
            "requests": c.requests.load(Relaxed), "current": c.current.load(Relaxed),
            "max": c.max_current.load(Relaxed), "bytes_in": c.bytes_in.load(Relaxed),
            "bytes_out": c.bytes_out.load(Relaxed),
            "responses": { "1xx": c.responses[0].load(Relaxed), "2xx": c.responses[1].load(Relaxed),
                "3xx": c.responses[2].load(Relaxed), "4xx": c.responses[3].load(Relaxed),
                "5xx": c.responses[4].load(Relaxed), "other": c.responses[5].load(Relaxed) },
            "connect_errors": c.connect_errors.load(Relaxed),
            "response_errors": c.response_errors.load(Relaxed),
            "redispatches": c.redispatches.load(Relaxed),
            "no_server": c.no_server.load(Relaxed),
            "queued": c.queued.load(Relaxed),
        })
    };
    let sites: Vec<_> = g
        .rules
        .sites
        .iter()
        .enumerate()
        .map(|(i, s)| serde_json::json!({"name": &*s.name, "counters": counters(&g.sites[i])}))
        .collect();
    let services: Vec<_> = g
        .rules
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let servers: Vec<_> = g
                .rules
                .all_servers()
                .filter(|(svc, _, _)| svc.name == s.name)
                .map(|(_, colour, srv)| {
                    let h = &g.health[srv.id];
                    serde_json::json!({"name": &*srv.name, "colour": colour.as_str(), "addr": srv.addr.to_string(),
                        "status": h.status(), "backup": srv.backup, "weight": srv.weight, "maxconn": srv.maxconn,
                        "active": h.active.load(Relaxed), "since_change_s": h.since_change_secs(),
                        "downtime_s": h.downtime_secs(), "checks_failed": h.checks_failed.load(Relaxed),
                        "last_check": {"ok": h.last_check_ok.load(Relaxed), "code": h.last_check_code.load(Relaxed), "ms": h.last_check_ms.load(Relaxed)},
                        "counters": counters(&g.servers[srv.id])})
                })
                .collect();
            serde_json::json!({"name": &*s.name, "mode": s.mode_str(), "live": s.live.as_str(), "counters": counters(&g.services[i]), "servers": servers})
        })
        .collect();
    let pools: Vec<_> = g.pools.iter().map(|p| serde_json::json!({"name": &*p.name, "in_use": p.in_use(), "slots": p.limit(), "queued": p.waiting(), "queue_limit": p.queue_limit(), "max_queued": p.max_waiting.load(Relaxed), "queue_full": p.queue_full.load(Relaxed), "queue_timeouts": p.queue_timeouts.load(Relaxed)})).collect();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": v.stats.started.elapsed().as_secs(),
        "generation": g.number,
        "last_reload": {"ok": v.reload.error.is_none(), "error": v.reload.error, "generation": v.reload.generation},
        "connections": v.stats.connections.load(Relaxed),
        "connections_parked": v.stats.parked.load(Relaxed),
        "tls_handshakes": v.stats.tls_handshakes.load(Relaxed),
        "requests": counters(&v.stats.frontend),
        "sites": sites, "services": services, "pools": pools,
        "tcp_frontends": tcp_fronts(v).into_iter().map(|f| serde_json::json!({"name": &*f.name, "listens": f.listens, "limit": f.limit, "counters": counters(&f.counters)})).collect::<Vec<_>>(),
    })
    .to_string()
}

/// Prometheus text exposition; label values come only from the rules.
pub fn prometheus(v: &View<'_>) -> String {
    let g = v.generation;
    let mut o = String::with_capacity(16 * 1024);
    let head = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    // Every family of counters, labelled by where it was counted.
    let mut sets: Vec<(String, &Counters)> = Vec::new();
    for (i, s) in g.rules.sites.iter().enumerate() {
        sets.push((format!("site=\"{}\"", s.name), &g.sites[i]));
        for (j, r) in s.routes.iter().enumerate() {
            sets.push((
                format!("site=\"{}\",route=\"{}\"", s.name, r.name),
                &g.routes[i][j],
            ));
        }
    }
    let fronts = tcp_fronts(v);
    for f in &fronts {
        sets.push((format!("listener=\"{}\"", f.name), &f.counters));
    }
    for (i, s) in g.rules.services.iter().enumerate() {
        sets.push((format!("service=\"{}\"", s.name), &g.services[i]));
    }
    for (svc, colour, s) in g.rules.all_servers() {
        sets.push((
            format!(
                "service=\"{}\",colour=\"{}\",server=\"{}\"",
                svc.name,
                colour.as_str(),
                s.name
            ),
            &g.servers[s.id],
        ));
    }
    head(
        &mut o,
        names::REQUESTS,
        "counter",
        "Requests answered, by status class.",
    );
    for (l, c) in sets.iter().filter(|(l, _)| !l.starts_with("listener=")) {
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx", "other"]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                o,
                "{}{{{l},code=\"{class}\"}} {}",
                names::REQUESTS,
                c.responses[i].load(Relaxed)
            );
        }
    }
    head(
        &mut o,
        names::TCP_SESSIONS,
        "counter",
        "TCP sessions ended, by TCP listener or passthrough name.",
    );
    for (l, c) in sets.iter().filter(|(l, _)| l.starts_with("listener=")) {
        let _ = writeln!(
            o,
            "{}{{{l}}} {}",
            names::TCP_SESSIONS,
            c.requests.load(Relaxed)
        );
    }
    for (name, kind, help, get) in [
        (
            names::BYTES_IN,
            "counter",
            "Request body bytes received.",
            (|c: &Counters| c.bytes_in.load(Relaxed)) as fn(&Counters) -> u64,
        ),
        (
            names::BYTES_OUT,
            "counter",
            "Response body bytes sent.",
            |c| c.bytes_out.load(Relaxed),
        ),
        (names::IN_FLIGHT, "gauge", "Requests in flight.", |c| {
            c.current.load(Relaxed)
        }),
        (
            names::CONNECT_ERRORS,
            "counter",
            "Connection errors to servers.",
            |c| c.connect_errors.load(Relaxed),
        ),
        (
            names::RESPONSE_ERRORS,
            "counter",
            "Bad or missing answers from servers.",
            |c| c.response_errors.load(Relaxed),
        ),
        (
            names::REDISPATCHES,
            "counter",
            "Requests retried on another server.",
            |c| c.redispatches.load(Relaxed),
        ),
        (
            names::NO_SERVER,
            "counter",
            "Requests that found no usable server.",
            |c| c.no_server.load(Relaxed),
        ),
    ] {
        head(&mut o, name, kind, help);
        for (l, c) in &sets {
            let _ = writeln!(o, "{name}{{{l}}} {}", get(c));
        }
    }
    head(
        &mut o,
        names::RESPONSE_SECONDS,
        "histogram",
        "Response time to the response headers.",
    );
    for (l, c) in sets
        .iter()
        .filter(|(l, _)| !l.contains("route=") && !l.starts_with("listener="))
    {
        let snap = c.latency.snapshot();
        let mut acc = 0;
        for (i, n) in snap.iter().enumerate() {
            acc += n;
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                o,
                "{}_bucket{{{l},le=\"{le}\"}} {acc}",
                names::RESPONSE_SECONDS
            );
        }
        let _ = writeln!(
            o,
            "{}_sum{{{l}}} {}",
            names::RESPONSE_SECONDS,
            c.latency.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "{}_count{{{l}}} {acc}", names::RESPONSE_SECONDS);
    }
    for (name, kind, help, get) in [
        (
            names::SERVER_UP,
            "gauge",
            "1 when the server is UP and READY.",
            (|h: &ServerState| u64::from(h.usable())) as fn(&ServerState) -> u64,
        ),
        (
            names::CHECK_FAILURES,
            "counter",
            "Failed health checks.",
            |h| h.checks_failed.load(Relaxed),
        ),
    ] {
        head(&mut o, name, kind, help);
        for (svc, colour, s) in g.rules.all_servers() {
            let _ = writeln!(
                o,
                "{name}{{service=\"{}\",colour=\"{}\",server=\"{}\"}} {}",
                svc.name,
                colour.as_str(),
                s.name,
                get(&g.health[s.id])
            );
        }
    }
    head(
        &mut o,
        names::LIVE_COLOUR,
        "gauge",
        "1 for the live colour of each service.",
    );
    for s in &g.rules.services {
        for c in [Colour::Blue, Colour::Green] {
            let _ = writeln!(
                o,
                "{}{{service=\"{}\",colour=\"{}\"}} {}",
                names::LIVE_COLOUR,
                s.name,
                c.as_str(),
                u8::from(s.live == c)
            );
        }
    }
    for (name, kind, help, get) in [
        (
            names::POOL_IN_USE,
            "gauge",
            "Pool slots in use.",
            (|p: &crate::pool::Pool| u64::from(p.in_use())) as fn(&crate::pool::Pool) -> u64,
        ),
        (names::POOL_SLOTS, "gauge", "Pool slot limit.", |p| {
            u64::from(p.limit())
        }),
        (
            names::POOL_QUEUED,
            "gauge",
            "Requests waiting for a slot.",
            |p| u64::from(p.waiting()),
        ),
        (
            names::POOL_QUEUE_FULL,
            "counter",
            "Requests refused: queue full.",
            |p| p.queue_full.load(Relaxed),
        ),
        (
            names::POOL_QUEUE_TIMEOUTS,
            "counter",
            "Requests that waited past the queue timeout.",
            |p| p.queue_timeouts.load(Relaxed),
        ),
    ] {
        head(&mut o, name, kind, help);
        for p in &g.pools {
            let _ = writeln!(o, "{name}{{pool=\"{}\"}} {}", p.name, get(p));
        }
    }
    let st = v.stats;
    for (name, kind, help, val) in [
        (
            names::CONNECTIONS,
            "gauge",
            "Client connections open.",
            st.connections.load(Relaxed),
        ),
        (
            names::CONNECTIONS_PARKED,
            "gauge",
            "Idle HTTP/1.1 keep-alive connections parked (holding no buffers).",
            st.parked.load(Relaxed),
        ),
        (
            names::CONNECTIONS_TOTAL,
            "counter",
            "Client connections accepted.",
            st.connections_total.load(Relaxed),
        ),
        (
            names::TLS_HANDSHAKES,
            "counter",
            "TLS handshakes completed.",
            st.tls_handshakes.load(Relaxed),
        ),
        (
            names::TLS_FAILURES,
            "counter",
            "TLS handshakes failed.",
            st.tls_failures.load(Relaxed),
        ),
        (
            names::GENERATION,
            "gauge",
            "Rules generation serving.",
            g.number,
        ),
    ] {
        head(&mut o, name, kind, help);
        let _ = writeln!(o, "{name} {val}");
    }
    head(
        &mut o,
        names::RELOADS,
        "counter",
        "Rules reloads by result.",
    );
    let _ = writeln!(
        o,
        "{}{{result=\"ok\"}} {}\n{}{{result=\"error\"}} {}",
        names::RELOADS,
        v.reloads.0,
        names::RELOADS,
        v.reloads.1
    );
    let p = process();
    head(
        &mut o,
        names::PROCESS_RSS,
        "gauge",
        "Resident memory in bytes.",
    );
    let _ = writeln!(o, "{} {}", names::PROCESS_RSS, p.rss);
    head(&mut o, names::PROCESS_CPU, "counter", "CPU seconds used.");
    let _ = writeln!(o, "{} {}", names::PROCESS_CPU, p.cpu);
    head(
        &mut o,
        names::PROCESS_FDS,
        "gauge",
        "Open file descriptors.",
    );
    let _ = writeln!(o, "{} {}", names::PROCESS_FDS, p.fds);
    head(
        &mut o,
        names::PROCESS_START,
        "gauge",
        "Start time, Unix seconds.",
    );
    let _ = writeln!(o, "{} {}", names::PROCESS_START, v.stats.started_unix);
    o
}

struct Process {
    rss: u64,
    cpu: f64,
    fds: usize,
}

/// Process figures from /proc/self (0 where unavailable).
fn process() -> Process {
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

fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", n as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", n as f64 / 1_073_741_824.0),
    }
}

fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |m| {
        if m < 1.0 {
            format!("{m:.1}")
        } else {
            format!("{m:.0}")
        }
    })
}

const STYLE: &str = "body{font:13px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1d2430;background:#f5f6f8}\
header{background:#1d2430;color:#fff;padding:14px 24px;display:flex;flex-wrap:wrap;gap:24px;align-items:baseline}\
header h1{font-size:18px;margin:0 12px 0 0}header .kv{opacity:.9}header .kv b{font-weight:600}\
main{padding:16px 24px}h2{font-size:15px;margin:22px 0 8px}h2 small{font-weight:400;color:#5b6577}\
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0001;margin-bottom:8px;width:100%}\
th,td{padding:4px 8px;border-bottom:1px solid #e7e9ee;text-align:right;white-space:nowrap}\
th{background:#eef0f4;font-weight:600;color:#3a4456;font-size:12px}th:first-child,td:first-child{text-align:left}\
tr.backend td{background:#f0f3f9;font-weight:600}tr.other td{color:#6b7385}\
.st{display:inline-block;min-width:48px;text-align:center;border-radius:3px;padding:1px 6px;color:#fff;font-weight:600;font-size:11px}\
.UP{background:#1f9d55}.DOWN{background:#d64545}.MAINT{background:#6b7385}.DRAIN{background:#d98b1c}\
.live{color:#1f6fd1;font-weight:600}.err{background:#fdecec;border:1px solid #f3b7b7;padding:8px 12px;white-space:pre-wrap;font-family:monospace}\
.ok{color:#1f9d55}.bar{display:inline-block;width:80px;height:8px;background:#e7e9ee;border-radius:4px;vertical-align:middle;margin-right:6px}\
.bar i{display:block;height:8px;border-radius:4px;background:#1f6fd1}form{display:inline;margin:0}button{font-size:11px;padding:0 4px}";

/// The human stats page: self-contained (no external assets, no JavaScript).
pub fn html(v: &View<'_>) -> String {
    let g = v.generation;
    let st = v.stats;
    let mut o = String::with_capacity(32 * 1024);
    o.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Gatehouse stats</title>");
    if let Some(r) = v.refresh {
        let _ = write!(o, "<meta http-equiv=\"refresh\" content=\"{r}\">");
    }
    let _ = write!(
        o,
        "<style>{STYLE}</style></head><body><header><h1>Gatehouse {}</h1>",
        env!("CARGO_PKG_VERSION")
    );
    let reload = match &v.reload.error {
        None => "<span class=\"ok\">ok</span>".to_string(),
        Some(_) => "<b style=\"color:#ff8a8a\">refused</b>".to_string(),
    };
    for (k, val) in [
        ("uptime", ago(st.started.elapsed().as_secs())),
        ("rules generation", g.number.to_string()),
        (
            "last reload",
            format!(
                "{reload} {} ago",
                ago(v.reload.at.elapsed().map_or(0, |d| d.as_secs()))
            ),
        ),
        (
            "connections",
            format!(
                "{} ({} idle, parked)",
                st.connections.load(Relaxed),
                st.parked.load(Relaxed)
            ),
        ),
        ("requests", st.frontend.requests.load(Relaxed).to_string()),
        ("rate", format!("{:.1}/s", st.request_rate())),
        (
            "TLS handshakes",
            format!(
                "{} ({} failed)",
                st.tls_handshakes.load(Relaxed),
                st.tls_failures.load(Relaxed)
            ),
        ),
    ] {
        let _ = write!(o, "<span class=\"kv\">{k} <b>{val}</b></span>");
    }
    o.push_str("</header><main>");
    if let Some(e) = &v.reload.error {
        let _ = write!(
            o,
            "<h2>Last reload refused <small>the previous rules keep serving</small></h2><div class=\"err reload-error\">{}</div>",
            escape(e)
        );
    }
    o.push_str("<h2>Pools <small>traffic classes</small></h2><table id=\"pools\"><tr><th>pool</th><th>slots used / limit</th><th>queued / limit</th><th>max queued</th><th>queue full</th><th>queue timeouts</th></tr>");
    for p in &g.pools {
        let pct = if p.limit() > 0 {
            p.in_use() * 100 / p.limit()
        } else {
            0
        };
        let _ = write!(
            o,
            "<tr data-pool=\"{n}\"><td>{n}</td><td><span class=\"bar\"><i style=\"width:{pct}%\"></i></span>{} / {}</td><td>{} / {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            p.in_use(),
            p.limit(),
            p.waiting(),
            p.queue_limit(),
            p.max_waiting.load(Relaxed),
            p.queue_full.load(Relaxed),
            p.queue_timeouts.load(Relaxed),
            n = escape(&p.name)
        );
    }
    o.push_str("</table><h2>Sites <small>frontends</small></h2><table id=\"sites\"><tr><th>site</th><th>hosts</th><th>requests</th><th>1xx</th><th>2xx</th><th>3xx</th><th>4xx</th><th>5xx</th><th>bytes in</th><th>bytes out</th><th>p50 ms</th><th>p99 ms</th></tr>");
    for (i, s) in g.rules.sites.iter().enumerate() {
        let c = &g.sites[i];
        let hosts: Vec<String> = s.hosts.iter().map(|h| h.to_string()).collect();
        let (p50, p99) = st.recent_latency(Kind::Site, &s.name, c);
        let _ = write!(
            o,
            "<tr data-site=\"{n}\"><td>{n}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&hosts.join(" ")),
            c.requests.load(Relaxed),
            c.class(1),
            c.class(2),
            c.class(3),
            c.class(4),
            c.class(5),
            bytes(c.bytes_in.load(Relaxed)),
            bytes(c.bytes_out.load(Relaxed)),
            ms(p50),
            ms(p99),
            n = escape(&s.name)
        );
    }
    o.push_str("</table>");
    let fronts = tcp_fronts(v);
    if !fronts.is_empty() {
        o.push_str("<h2>TCP <small>listeners and passthrough names</small></h2><table id=\"tcp\"><tr><th>frontend</th><th>listens</th><th>sessions now</th><th>max</th><th>limit</th><th>total</th><th>bytes in</th><th>bytes out</th><th>no server</th></tr>");
        for TcpRow {
            name,
            listens: what,
            counters: c,
            limit,
        } in &fronts
        {
            let _ = write!(
                o,
                "<tr data-tcp=\"{n}\"><td>{n}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(what),
                c.current.load(Relaxed),
                c.max_current.load(Relaxed),
                limit.map_or("–".into(), |l| l.to_string()),
                c.requests.load(Relaxed),
                bytes(c.bytes_in.load(Relaxed)),
                bytes(c.bytes_out.load(Relaxed)),
                c.connect_errors.load(Relaxed),
                n = escape(name)
            );
        }
        o.push_str("</table>");
    }
    for (i, svc) in g.rules.services.iter().enumerate() {
        let c = &g.services[i];
        let _ = write!(
            o,
            "<h2 id=\"service-{n}\">{n} <small>{} · live colour: <span class=\"live\">{}</span> · balance {} · checks {}</small></h2>",
            svc.mode_str(),
            svc.live.as_str(),
            algo(svc.balance),
            svc.health
                .path
                .as_deref()
                .map_or("TCP connect".to_string(), |p| format!("GET {}", escape(p)))
                + &svc
                    .health
                    .port
                    .map_or(String::new(), |p| format!(" on port {p}")),
            n = escape(&svc.name)
        );
        o.push_str("<table class=\"service\"><tr><th>server</th><th>status</th><th>since</th><th>colour</th><th>weight</th><th>cur</th><th>max</th><th>limit</th><th>queue</th><th>requests</th><th>bytes in</th><th>bytes out</th><th>1xx</th><th>2xx</th><th>3xx</th><th>4xx</th><th>5xx</th><th>conn err</th><th>resp err</th><th>redisp</th><th>last check</th><th>downtime</th><th>p50 ms</th><th>p99 ms</th>");
        if v.admin_token.is_some() {
            o.push_str("<th>admin</th>");
        }
        o.push_str("</tr>");
        let (p50, p99) = st.recent_latency(Kind::Service, &svc.name, c);
        let _ = write!(
            o,
            "<tr class=\"backend\"><td>BACKEND</td><td></td><td></td><td></td><td></td><td>{}</td><td>{}</td><td></td><td>{} / {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>no server: {}</td><td></td><td>{}</td><td>{}</td>{}</tr>",
            c.current.load(Relaxed),
            c.max_current.load(Relaxed),
            c.queued.load(Relaxed),
            c.max_queued.load(Relaxed),
            c.requests.load(Relaxed),
            bytes(c.bytes_in.load(Relaxed)),
            bytes(c.bytes_out.load(Relaxed)),
            c.class(1),
            c.class(2),
            c.class(3),
            c.class(4),
            c.class(5),
            c.connect_errors.load(Relaxed),
            c.response_errors.load(Relaxed),
            c.redispatches.load(Relaxed),
            c.no_server.load(Relaxed),
            ms(p50),
            ms(p99),
            if v.admin_token.is_some() {
                "<td></td>"
            } else {
                ""
            }
        );
        for (colour, group) in [(Colour::Blue, &svc.blue), (Colour::Green, &svc.green)] {
            for s in &group.servers {
                let h = &g.health[s.id];
                let sc = &g.servers[s.id];
                let (p50, p99) = st.recent_latency(Kind::Server, &s.name, sc);
                let check = if h.checked.load(Relaxed) {
                    let code = h.last_check_code.load(Relaxed);
                    format!(
                        "{} {}{} ms",
                        if h.last_check_ok.load(Relaxed) {
                            "ok"
                        } else {
                            "failed"
                        },
                        if code > 0 {
                            format!("{code} ")
                        } else {
                            String::new()
                        },
                        h.last_check_ms.load(Relaxed)
                    )
                } else {
                    "–".into()
                };
                let live = colour == svc.live;
                let _ = write!(
                    o,
                    "<tr data-server=\"{n}\" class=\"{}\"><td>{n}{}</td><td><span class=\"st {status}\">{status}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
                    if live { "on" } else { "other" },
                    if s.backup {
                        " <small>(backup)</small>"
                    } else {
                        ""
                    },
                    ago(h.since_change_secs()),
                    if live {
                        format!("<span class=\"live\">{}</span>", colour.as_str())
                    } else {
                        colour.as_str().to_string()
                    },
                    s.weight,
                    h.active.load(Relaxed),
                    sc.max_current.load(Relaxed),
                    s.maxconn.map_or("–".into(), |m| m.to_string()),
                    sc.requests.load(Relaxed),
                    bytes(sc.bytes_in.load(Relaxed)),
                    bytes(sc.bytes_out.load(Relaxed)),
                    sc.class(1),
                    sc.class(2),
                    sc.class(3),
                    sc.class(4),
                    sc.class(5),
                    sc.connect_errors.load(Relaxed),
                    sc.response_errors.load(Relaxed),
                    sc.redispatches.load(Relaxed),
                    check,
                    ago(h.downtime_secs()),
                    ms(p50),
                    ms(p99),
                    n = escape(&s.name),
                    status = h.status(),
                );
                if let Some(token) = v.admin_token {
                    o.push_str("<td>");
                    for action in ["ready", "drain", "maint"] {
                        let _ = write!(
                            o,
                            "<form method=\"post\" action=\"/stats/admin\"><input type=\"hidden\" name=\"token\" value=\"{token}\"><input type=\"hidden\" name=\"server\" value=\"{}\"><input type=\"hidden\" name=\"action\" value=\"{action}\"><button>{action}</button></form>",
                            escape(&s.name)
                        );
                    }
                    o.push_str("</td>");
                }
                o.push_str("</tr>");
            }
        }
        o.push_str("</table>");
    }
    o.push_str("<p style=\"color:#6b7385\">Also: <a href=\"/stats;csv\">CSV (HAProxy layout)</a> · <a href=\"/stats?format=json\">JSON</a> · <a href=\"/metrics\">Prometheus</a> · <a href=\"/stats?refresh=5\">auto-refresh</a></p></main></body></html>");
    o
}

/// HTML-escapes text from rules or errors.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
