//! The HAProxy-compatible CSV (`/stats;csv`): FRONTEND rows per site, BACKEND and server rows per service.

use super::view::{View, tcp_fronts};
use crate::rules::Colour;
use crate::stats::{Counters, Kind, Stats};
use std::sync::atomic::Ordering::Relaxed;

/// HAProxy 2.6's CSV columns (management guide §9.1), in order, up to `agg_check_status`
/// (the per-protocol columns after it are left out: Gatehouse keeps no such counts).
pub const CSV_HEADER: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,";

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
        // To the response headers (HAProxy's `rtime`), averaged over every request.
        let timed: u64 = c.latency.snapshot().iter().sum();
        let rtime_ms = c
            .latency
            .sum_us
            .load(Relaxed)
            .checked_div(timed)
            .unwrap_or(0)
            / 1000;
        self.set("rtime", rtime_ms);
    }

    /// `rate` and `rate_max` from the stats sampler (requests per second).
    fn rates(&mut self, stats: &Stats, kind: Kind, name: &std::sync::Arc<str>) {
        let (now, max) = stats.rate(kind, name);
        self.set("rate", now);
        self.set("rate_max", max);
    }

    /// Columns HAProxy fills with zero where Gatehouse's count is zero by design too: no
    /// compression, cache, response denial, failed header rewrite, interception or
    /// connection denial at this level.
    fn none_by_design(&mut self, cols: &[&str]) {
        for c in cols {
            self.set(c, 0);
        }
    }

    /// Empties columns HAProxy leaves empty for this kind of row.
    fn clear(&mut self, cols: &[&str]) {
        for c in cols {
            if let Some(&i) = columns().get(c) {
                self.cells[i].clear();
            }
        }
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
        r.rates(v.stats, Kind::Site, &site.name);
        let (now, max) = v.stats.rate(Kind::Site, &site.name);
        r.set("req_rate", now);
        r.set("req_rate_max", max);
        r.set("rate_lim", 0);
        r.set("sid", 0);
        r.none_by_design(&FRONTEND_ZEROS);
        r.clear(&FRONTEND_EMPTY);
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
                r.rates(v.stats, Kind::Server, &s.name);
                r.set("lbtot", g.servers[s.id].requests.load(Relaxed));
                r.set("uweight", h.weight());
                r.none_by_design(&["dresp", "wrew"]);
                r.clear(&["dreq"]);
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
                    r.set("check_desc", check_desc(status));
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
        r.rates(v.stats, Kind::Service, &svc.name);
        r.set("lbtot", c.requests.load(Relaxed));
        r.set("sid", 0);
        r.set("chkdown", 0);
        r.none_by_design(&[
            "dresp", "wrew", "comp_in", "comp_out", "comp_byp", "comp_rsp",
        ]);
        r.none_by_design(&["cache_lookups", "cache_hits"]);
        r.set("qcur", c.queued.load(Relaxed));
        r.set("qmax", c.max_queued.load(Relaxed));
        r.set("status", if act + bck > 0 { "UP" } else { "DOWN" });
        r.set("act", act);
        r.set("bck", bck);
        let weight = svc
            .servers(live)
            .iter()
            .filter(|s| !s.backup)
            .map(|s| s.weight)
            .sum::<u32>();
        r.set("weight", weight);
        r.set("uweight", weight);
        r.set("mode", svc.mode_str());
        r.set("lastchg", uptime);
        r.set("downtime", 0);
        r.write(&mut out);
    }
    out
}

/// Counts a site never has (see `Row::none_by_design`).
const FRONTEND_ZEROS: [&str; 11] = [
    "dresp",
    "comp_in",
    "comp_out",
    "comp_byp",
    "comp_rsp",
    "intercepted",
    "dcon",
    "dses",
    "wrew",
    "cache_lookups",
    "cache_hits",
];

/// Server-side columns HAProxy leaves empty on a frontend row.
const FRONTEND_EMPTY: [&str; 8] = [
    "econ", "eresp", "wretr", "wredis", "cli_abrt", "srv_abrt", "rtime", "ttime",
];

/// HAProxy's text for a check result (`check_desc`).
fn check_desc(status: &str) -> &'static str {
    match status {
        "L7OK" => "Layer7 check passed",
        "L7STS" => "Layer7 wrong status",
        "L4OK" => "Layer4 check passed",
        _ => "Layer4 connection problem",
    }
}
