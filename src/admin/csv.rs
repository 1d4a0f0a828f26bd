//! The HAProxy-compatible CSV (`/stats;csv`): FRONTEND rows per site, BACKEND and server rows per service.

use super::view::{View, algo, tcp_fronts};
use crate::rules::Colour;
use crate::stats::Counters;
use std::sync::atomic::Ordering::Relaxed;

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
    fn new(px: &str, sv: &str, kind: u8, iid: usize) -> Row {
        let n = columns().len();
        let mut r = Row {
            cells: vec![String::new(); n],
        };
        r.set("pxname", px);
        r.set("svname", sv);
        r.set("type", kind);
        r.set("pid", std::process::id());
        r.set("iid", iid);
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
        self.set("dreq", c.denied.load(Relaxed));
        self.set("cli_abrt", c.client_aborts.load(Relaxed));
        self.set("srv_abrt", c.server_aborts.load(Relaxed));
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

/// Which rows `show stat <iid> <type> <sid>` asks for: proxy id (-1 all), a mask of
/// object types (1 frontends, 2 backends, 4 servers), server id (-1 all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter {
    /// Proxy id, or -1.
    pub iid: i64,
    /// Object types, a bit mask (-1 all).
    pub types: i64,
    /// Server id, or -1.
    pub sid: i64,
}

impl Filter {
    /// Every row.
    pub const ALL: Filter = Filter {
        iid: -1,
        types: -1,
        sid: -1,
    };

    fn wants(&self, iid: usize, kind: u8, sid: usize) -> bool {
        (self.iid < 0 || self.iid == iid as i64)
            && (self.types & (1 << kind)) != 0
            && (kind != 2 || self.sid < 0 || self.sid == sid as i64)
    }
}

/// HAProxy-compatible CSV: FRONTEND rows per site, BACKEND and server rows per service.
pub fn csv(v: &View<'_>) -> String {
    csv_where(v, Filter::ALL)
}

/// Proxy ids (HAProxy's `iid`): sites, then TCP fronts, then services, from 1.
pub fn iids(v: &View<'_>) -> (usize, usize) {
    let sites = v.generation.rules.sites.len();
    (sites, sites + tcp_fronts(v).len())
}

/// The CSV rows `filter` asks for.
pub fn csv_where(v: &View<'_>, filter: Filter) -> String {
    let g = v.generation;
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    let (fronts_from, services_from) = iids(v);
    for (i, site) in g.rules.sites.iter().enumerate() {
        if !filter.wants(i + 1, 0, 0) {
            continue;
        }
        let mut r = Row::new(&site.name, "FRONTEND", 0, i + 1);
        r.counters(&g.sites[i]);
        r.set("status", "OPEN");
        r.set("mode", "http");
        r.write(&mut out);
    }
    for (k, f) in tcp_fronts(v).into_iter().enumerate() {
        if !filter.wants(fronts_from + k + 1, 0, 0) {
            continue;
        }
        let mut r = Row::new(&f.name, "FRONTEND", 0, fronts_from + k + 1);
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
        let iid = services_from + i + 1;
        let live = svc.live;
        let (mut act, mut bck) = (0, 0);
        for (colour, group) in [(Colour::Blue, &svc.blue), (Colour::Green, &svc.green)] {
            for s in group.servers.iter() {
                let h = &g.health[s.id];
                let mut r = Row::new(&svc.name, &s.name, 2, iid);
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
                if filter.wants(iid, 2, s.id + 1) {
                    r.write(&mut out);
                }
            }
        }
        if !filter.wants(iid, 1, 0) {
            continue;
        }
        let c = &g.services[i];
        let mut r = Row::new(&svc.name, "BACKEND", 1, iid);
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
