//! The Prometheus text exposition (`/metrics`); metric names come from `stats::names`.

use super::view::{View, process, tcp_fronts};
use crate::health::ServerState;
use crate::rules::Colour;
use crate::stats::{BUCKETS, Counters, names};
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

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
        sets.push((format!("site=\"{}\"", Label(&s.name)), &g.sites[i]));
        for (j, r) in s.routes.iter().enumerate() {
            sets.push((
                format!("site=\"{}\",route=\"{}\"", Label(&s.name), Label(&r.name)),
                &g.routes[i][j],
            ));
        }
    }
    let fronts = tcp_fronts(v);
    for f in &fronts {
        sets.push((format!("listener=\"{}\"", Label(&f.name)), &f.counters));
    }
    for (i, s) in g.rules.services.iter().enumerate() {
        sets.push((format!("service=\"{}\"", Label(&s.name)), &g.services[i]));
    }
    for (svc, colour, s) in g.rules.all_servers() {
        sets.push((
            format!(
                "service=\"{}\",colour=\"{}\",server=\"{}\"",
                Label(&svc.name),
                colour.as_str(),
                Label(&s.name)
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
            names::CLIENT_ABORTS,
            "counter",
            "Responses cut by the client (closed, or stopped reading).",
            |c| c.client_aborts.load(Relaxed),
        ),
        (
            names::SERVER_ABORTS,
            "counter",
            "Responses cut by the server (body broken, or stalled).",
            |c| c.server_aborts.load(Relaxed),
        ),
        (
            names::NO_SERVER,
            "counter",
            "Requests that found no usable server.",
            |c| c.no_server.load(Relaxed),
        ),
        (
            names::DENIED,
            "counter",
            "Requests refused by policy: deny rules, rate limits, allow-lists.",
            |c| c.denied.load(Relaxed),
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

#[cfg(test)]
mod tests {
    use super::Label;

    #[test]
    fn label_values_are_escaped() {
        let v = Label("a\"b\\c\nd").to_string();
        assert_eq!(v, "a\\\"b\\\\c\\nd");
    }
}
