//! Renders the counters as the stats page (HTML), HAProxy CSV, JSON and Prometheus text.
//!
//! All four read the same [`View`], so they always agree.

use crate::generation::Generation;
use crate::reload::ReloadStatus;
use crate::rules::{Balance, Colour};
use crate::stats::{Counters, Stats};
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
}

/// HAProxy's CSV columns (management guide §9.1), in order, up to `dses`.
pub const CSV_HEADER: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,";

/// One CSV row, filled by name; unnamed columns stay empty.
struct Row {
    cells: Vec<String>,
}

impl Row {
    fn new(px: &str, sv: &str, kind: u8) -> Row {
        let n = CSV_HEADER
            .trim_start_matches("# ")
            .trim_end_matches(',')
            .split(',')
            .count();
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
        if let Some(i) = CSV_HEADER
            .trim_start_matches("# ")
            .split(',')
            .position(|c| c == col)
        {
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
                r.set("mode", "http");
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
        r.set("mode", "http");
        r.set(
            "algo",
            match svc.balance {
                Balance::Roundrobin => "roundrobin",
                Balance::Leastconn => "leastconn",
                Balance::HashSource => "source",
                Balance::HashUri => "uri",
            },
        );
        r.set("lastchg", uptime);
        r.set("downtime", 0);
        r.write(&mut out);
    }
    out
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
            serde_json::json!({"name": &*s.name, "live": s.live.as_str(), "counters": counters(&g.services[i]), "servers": servers})
        })
        .collect();
    let pools: Vec<_> = g.pools.iter().map(|p| serde_json::json!({"name": &*p.name, "in_use": p.in_use(), "slots": p.limit(), "queued": p.waiting(), "queue_limit": p.queue_limit(), "max_queued": p.max_waiting.load(Relaxed), "queue_full": p.queue_full.load(Relaxed), "queue_timeouts": p.queue_timeouts.load(Relaxed)})).collect();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": v.stats.started.elapsed().as_secs(),
        "generation": g.number,
        "last_reload": {"ok": v.reload.error.is_none(), "error": v.reload.error, "generation": v.reload.generation},
        "connections": v.stats.connections.load(Relaxed),
        "tls_handshakes": v.stats.tls_handshakes.load(Relaxed),
        "requests": counters(&v.stats.frontend),
        "sites": sites, "services": services, "pools": pools,
    })
    .to_string()
}

/// Prometheus text exposition; label values come only from the rules.
pub fn prometheus(v: &View<'_>) -> String {
    let g = v.generation;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# HELP gatehouse_requests_total Requests answered.\n# TYPE gatehouse_requests_total counter"
    );
    let family = |o: &mut String, label: &str, name: &str, c: &Counters| {
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx", "other"]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                o,
                "gatehouse_requests_total{{{label}=\"{name}\",code=\"{class}\"}} {}",
                c.responses[i].load(Relaxed)
            );
        }
    };
    for (i, s) in g.rules.sites.iter().enumerate() {
        family(&mut o, "site", &s.name, &g.sites[i]);
    }
    for (i, s) in g.rules.services.iter().enumerate() {
        family(&mut o, "service", &s.name, &g.services[i]);
    }
    for (_, _, s) in g.rules.all_servers() {
        family(&mut o, "server", &s.name, &g.servers[s.id]);
    }
    let _ = writeln!(
        o,
        "# HELP gatehouse_pool_slots_in_use Requests in flight per pool.\n# TYPE gatehouse_pool_slots_in_use gauge"
    );
    for p in &g.pools {
        let _ = writeln!(
            o,
            "gatehouse_pool_slots_in_use{{pool=\"{}\"}} {}",
            p.name,
            p.in_use()
        );
    }
    let _ = writeln!(
        o,
        "# HELP gatehouse_connections Client connections open.\n# TYPE gatehouse_connections gauge\ngatehouse_connections {}",
        v.stats.connections.load(Relaxed)
    );
    let _ = writeln!(
        o,
        "# HELP gatehouse_rules_generation Rules generation serving.\n# TYPE gatehouse_rules_generation gauge\ngatehouse_rules_generation {}",
        g.number
    );
    o
}

/// The human stats page (a first cut: the stats issue makes it complete).
pub fn html(v: &View<'_>) -> String {
    let g = v.generation;
    let mut o = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Gatehouse stats</title></head><body>",
    );
    let _ = write!(
        o,
        "<h1>Gatehouse {}</h1><p>generation {} · uptime {}s · connections {}</p>",
        env!("CARGO_PKG_VERSION"),
        g.number,
        v.stats.started.elapsed().as_secs(),
        v.stats.connections.load(Relaxed)
    );
    if let Some(e) = &v.reload.error {
        let _ = write!(
            o,
            "<p class=\"reload-error\">last reload refused: <pre>{}</pre></p>",
            escape(e)
        );
    }
    o.push_str("<table><tr><th>service</th><th>server</th><th>colour</th><th>status</th><th>requests</th></tr>");
    for (svc, colour, s) in g.rules.all_servers() {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&svc.name),
            escape(&s.name),
            colour.as_str(),
            g.health[s.id].status(),
            g.servers[s.id].requests.load(Relaxed)
        );
    }
    o.push_str("</table></body></html>");
    o
}

/// HTML-escapes text from rules or errors.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
