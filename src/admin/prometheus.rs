//! The Prometheus text exposition (`/metrics`); metric names come from `stats::names`.

use super::view::{View, process, tcp_fronts};
use crate::health::ServerState;
use crate::rules::Colour;
use crate::stats::names::{self, per_level};
use crate::stats::{BUCKETS, Counters};
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// Prometheus text exposition; label values come only from the rules.
pub fn prometheus(v: &View<'_>) -> String {
    let g = v.generation;
    let mut o = String::with_capacity(16 * 1024);
    process_requests(&mut o, &v.stats.frontend);
    for level in levels(v) {
        level.write(&mut o);
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
                Label(&svc.name),
                colour.as_str(),
                Label(&s.name),
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
                Label(&s.name),
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
        (
            names::POOL_OVER_SHARE,
            "counter",
            "Requests refused (429): their client held its share of the pool.",
            |p| p.over_share.load(Relaxed),
        ),
    ] {
        head(&mut o, name, kind, help);
        for p in &g.pools {
            let _ = writeln!(o, "{name}{{pool=\"{}\"}} {}", Label(&p.name), get(p));
        }
    }
    let st = v.stats;
    head(
        &mut o,
        names::POLICY_DENIED,
        "counter",
        "Requests refused, by deny rule or rate limit.",
    );
    for (kind, name, n) in st.denials() {
        let _ = writeln!(
            o,
            "{}{{kind=\"{kind}\",rule=\"{}\"}} {n}",
            names::POLICY_DENIED,
            Label(&name)
        );
    }
    if let Some(store) = v.limits_store {
        limits_store(&mut o, store);
    }
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
        (
            names::UPSTREAM_STRAY,
            "counter",
            "Server connections retired: bytes followed a response's end.",
            crate::upstream::stray_retired(),
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
    if !v.dns.is_empty() {
        head(
            &mut o,
            names::DNS_ADDRESSES,
            "gauge",
            "Addresses a server name resolves to now (the last good answer while lookups fail).",
        );
        for (n, st) in &v.dns {
            let count = st.slots.iter().flatten().count();
            let _ = writeln!(
                o,
                "{}{{name=\"{}\"}} {count}",
                names::DNS_ADDRESSES,
                Label(n)
            );
        }
        head(
            &mut o,
            names::DNS_FAILING,
            "gauge",
            "1 while the last lookup of a server name failed.",
        );
        for (n, st) in &v.dns {
            let failing = u8::from(st.error.is_some());
            let _ = writeln!(
                o,
                "{}{{name=\"{}\"}} {failing}",
                names::DNS_FAILING,
                Label(n)
            );
        }
    }
    if !v.certs.is_empty() {
        head(
            &mut o,
            names::CERT_NOT_AFTER,
            "gauge",
            "When the certificate expires (notAfter), Unix seconds; alert on it minus time() below 14 days.",
        );
        for c in &v.certs {
            let _ = writeln!(
                o,
                "{}{{file=\"{}\",name=\"{}\"}} {}",
                names::CERT_NOT_AFTER,
                Label(&c.file.display().to_string()),
                Label(c.names.first().map_or("", |n| n.as_str())),
                c.not_after
            );
        }
    }
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

/// `# HELP` and `# TYPE` of one family.
fn head(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Status classes in `Counters::responses` order.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Every request the process answered, by status class: the one total with no level.
fn process_requests(o: &mut String, c: &Counters) {
    head(
        o,
        names::REQUESTS,
        "counter",
        "Requests answered by the process, by status class.",
    );
    for (i, class) in CLASSES.iter().enumerate() {
        let n = c.responses[i].load(Relaxed);
        let _ = writeln!(o, "{}{{code=\"{class}\"}} {n}", names::REQUESTS);
    }
}

/// One level's counter sets, each with its labels. Families are named for the level, so a
/// `sum()` over one never adds a site's count to its service's and its server's.
struct Level {
    name: &'static str,
    sets: Vec<(String, Arc<Counters>)>,
}

/// Sites, routes, services, servers and TCP fronts, in that order.
fn levels(v: &View<'_>) -> Vec<Level> {
    let g = v.generation;
    let mut site = Level::new("site");
    let mut route = Level::new("route");
    for (i, s) in g.rules.sites.iter().enumerate() {
        site.add(format!("site=\"{}\"", Label(&s.name)), &g.sites[i]);
        for (j, r) in s.routes.iter().enumerate() {
            let l = format!("site=\"{}\",route=\"{}\"", Label(&s.name), Label(&r.name));
            route.add(l, &g.routes[i][j]);
        }
    }
    let mut service = Level::new("service");
    for (i, s) in g.rules.services.iter().enumerate() {
        service.add(format!("service=\"{}\"", Label(&s.name)), &g.services[i]);
    }
    let mut server = Level::new("server");
    for (svc, colour, s) in g.rules.all_servers() {
        let l = format!(
            "service=\"{}\",colour=\"{}\",server=\"{}\"",
            Label(&svc.name),
            colour.as_str(),
            Label(&s.name)
        );
        server.add(l, &g.servers[s.id]);
    }
    vec![site, route, service, server, listeners(v)]
}

/// TCP listeners and passthrough names.
fn listeners(v: &View<'_>) -> Level {
    let mut l = Level::new("listener");
    for f in tcp_fronts(v) {
        l.add(format!("listener=\"{}\"", Label(&f.name)), &f.counters);
    }
    l
}

/// A counter read from a set.
type Get = fn(&Counters) -> u64;

/// The families every level has: (suffix, kind, help, value).
const COMMON: [(&str, &str, &str, Get); 4] = [
    (
        per_level::BYTES_IN,
        "counter",
        "Request body bytes received (TCP: bytes from clients).",
        |c| c.bytes_in.load(Relaxed),
    ),
    (
        per_level::BYTES_OUT,
        "counter",
        "Response body bytes sent (TCP: bytes to clients).",
        |c| c.bytes_out.load(Relaxed),
    ),
    (
        per_level::IN_FLIGHT,
        "gauge",
        "Requests (TCP: sessions) in flight now (HAProxy's scur).",
        |c| c.current.load(Relaxed),
    ),
    (
        per_level::IN_FLIGHT_MAX,
        "gauge",
        "Most requests (TCP: sessions) in flight at once (HAProxy's smax).",
        |c| c.max_current.load(Relaxed),
    ),
];

/// The families of HTTP levels: (suffix, kind, help, value).
const HTTP: [(&str, &str, &str, Get); 7] = [
    (
        per_level::CONNECT_ERRORS,
        "counter",
        "Connection errors to servers.",
        |c| c.connect_errors.load(Relaxed),
    ),
    (
        per_level::RESPONSE_ERRORS,
        "counter",
        "Bad or missing answers from servers.",
        |c| c.response_errors.load(Relaxed),
    ),
    (
        per_level::REDISPATCHES,
        "counter",
        "Requests retried on another server.",
        |c| c.redispatches.load(Relaxed),
    ),
    (
        per_level::CLIENT_ABORTS,
        "counter",
        "Responses cut by the client (closed, or stopped reading).",
        |c| c.client_aborts.load(Relaxed),
    ),
    (
        per_level::SERVER_ABORTS,
        "counter",
        "Responses cut by the server (body broken, or stalled).",
        |c| c.server_aborts.load(Relaxed),
    ),
    (
        per_level::NO_SERVER,
        "counter",
        "Requests that found no usable server.",
        |c| c.no_server.load(Relaxed),
    ),
    (
        per_level::DENIED,
        "counter",
        "Requests refused by policy: deny rules, rate limits, allow-lists.",
        |c| c.denied.load(Relaxed),
    ),
];

impl Level {
    fn new(name: &'static str) -> Self {
        Level {
            name,
            sets: Vec::new(),
        }
    }

    fn add(&mut self, labels: String, c: &Arc<Counters>) {
        self.sets.push((labels, c.clone()));
    }

    /// Every family of this level.
    fn write(&self, o: &mut String) {
        let tcp = self.name == "listener";
        if tcp {
            self.family(
                o,
                per_level::SESSIONS,
                "counter",
                "TCP sessions ended.",
                |c| c.requests.load(Relaxed),
            );
        } else {
            self.requests(o);
        }
        let extra: &[(&str, &str, &str, Get)] = if tcp { &[] } else { &HTTP };
        for (suffix, kind, help, get) in COMMON.iter().chain(extra) {
            self.family(o, suffix, kind, help, *get);
        }
        // Routes keep no histogram: a route's latency is its service's.
        if !tcp && self.name != "route" {
            self.histogram(o);
        }
    }

    fn family(&self, o: &mut String, suffix: &str, kind: &str, help: &str, get: Get) {
        let name = names::family(self.name, suffix);
        head(o, &name, kind, help);
        for (l, c) in &self.sets {
            let _ = writeln!(o, "{name}{{{l}}} {}", get(c));
        }
    }

    fn requests(&self, o: &mut String) {
        let name = names::family(self.name, per_level::REQUESTS);
        head(o, &name, "counter", "Requests answered, by status class.");
        for (l, c) in &self.sets {
            for (i, class) in CLASSES.iter().enumerate() {
                let n = c.responses[i].load(Relaxed);
                let _ = writeln!(o, "{name}{{{l},code=\"{class}\"}} {n}");
            }
        }
    }

    fn histogram(&self, o: &mut String) {
        let name = names::family(self.name, per_level::RESPONSE_SECONDS);
        head(
            o,
            &name,
            "histogram",
            "Response time to the response headers.",
        );
        for (l, c) in &self.sets {
            let mut acc = 0;
            for (i, n) in c.latency.snapshot().iter().enumerate() {
                acc += n;
                let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
                let _ = writeln!(o, "{name}_bucket{{{l},le=\"{le}\"}} {acc}");
            }
            let sum = c.latency.sum_us.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(o, "{name}_sum{{{l}}} {sum}\n{name}_count{{{l}}} {acc}");
        }
    }
}

/// A label value as the exposition format wants it: `\`, `"` and newlines escaped, so a
/// name with a quote cannot end its label early or forge another.
struct Label<'a>(&'a str);

impl std::fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => std::fmt::Write::write_char(f, c)?,
            }
        }
        Ok(())
    }
}

/// Whether the shared rate-limit store answers, and how requests were judged.
fn limits_store(o: &mut String, store: &crate::limit_store::Store) {
    use std::sync::atomic::Ordering::Relaxed;
    head(
        o,
        "gatehouse_limits_store_up",
        "gauge",
        "1 while the shared rate-limit store answers (limits shared), 0 while limits are local.",
    );
    let _ = writeln!(o, "gatehouse_limits_store_up {}", u8::from(store.is_up()));
    head(
        o,
        "gatehouse_limits_store_checks_total",
        "counter",
        "Rate-limited requests, by where they were judged (shared store or locally).",
    );
    let _ = writeln!(
        o,
        "gatehouse_limits_store_checks_total{{judged=\"shared\"}} {}",
        store.shared.load(Relaxed)
    );
    let _ = writeln!(
        o,
        "gatehouse_limits_store_checks_total{{judged=\"local\"}} {}",
        store.local.load(Relaxed)
    );
}

#[cfg(test)]
mod tests {
    use super::Label;

    #[test]
    fn label_values_are_escaped() {
        let v = Label("a\"b\\c\nd").to_string();
        assert_eq!(v, "a\\\"b\\\\c\\nd");
    }
}
