//! The stats page people read (`/stats`): self-contained HTML, no JavaScript.

use super::view::{TcpRow, View, ago, algo, bytes, escape, ms, tcp_fronts};
use crate::rules::Colour;
use crate::stats::Kind;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

const STYLE: &str = "body{font:13px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1d2430;background:#f5f6f8}\
header{background:#1d2430;color:#fff;padding:14px 24px;display:flex;flex-wrap:wrap;gap:24px;align-items:baseline}\
header h1{font-size:18px;margin:0 12px 0 0}header .kv{opacity:.9}header .kv b{font-weight:600}\
main{padding:16px}h2{font-size:15px;margin:22px 0 8px}h2 small{font-weight:400;color:#5b6577}\
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0001;margin-bottom:8px;width:100%}\
th,td{padding:4px 8px;border-bottom:1px solid #e7e9ee;text-align:right;white-space:nowrap}\
th{background:#eef0f4;font-weight:600;color:#3a4456;font-size:12px}th:first-child,td:first-child{text-align:left}\
tr.backend td{background:#f0f3f9;font-weight:600}tr.other td{color:#6b7385}\
.st{display:inline-block;min-width:48px;text-align:center;border-radius:3px;padding:1px 6px;color:#fff;font-weight:600;font-size:11px}\
.UP{background:#1f9d55}.DOWN{background:#d64545}.MAINT{background:#6b7385}.DRAIN{background:#d98b1c}\
.live{color:#1f6fd1;font-weight:600}.err{background:#fdecec;border:1px solid #f3b7b7;padding:8px 12px;white-space:pre-wrap;font-family:monospace}\
.ok{color:#1f9d55}.bar{display:inline-block;width:80px;height:8px;background:#e7e9ee;border-radius:4px;vertical-align:middle;margin-right:6px}\
.bar i{display:block;height:8px;border-radius:4px;background:#1f6fd1}form{display:inline;margin:0}button{font-size:11px;padding:0 4px}\
table.service th,table.service td{padding:2px 3px;font-size:12px}table.service th{white-space:normal;vertical-align:bottom}\
table.service td.check{white-space:normal;min-width:70px}td.what{white-space:normal;text-align:left}\
.spark{background:#fff;border:1px solid #e7e9ee;vertical-align:middle}.trend{margin:0 0 6px;color:#5b6577}";

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
    o.push_str("</table><h2>Sites <small>frontends</small></h2><table id=\"sites\"><tr><th>site</th><th>hosts</th><th>requests</th><th>1xx</th><th>2xx</th><th>3xx</th><th>4xx</th><th>5xx</th><th>bytes in</th><th>bytes out</th><th>p50 ms (last min)</th><th>p99 ms (last min)</th><th>last 15 min: requests/s · 5xx/s · p99</th></tr>");
    for (i, s) in g.rules.sites.iter().enumerate() {
        let c = &g.sites[i];
        let hosts: Vec<String> = s.hosts.iter().map(|h| h.to_string()).collect();
        let (p50, p99) = st.recent_latency(Kind::Site, &s.name, c);
        let _ = write!(
            o,
            "<tr data-site=\"{n}\"><td>{n}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
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
            plots(&st.trend(Kind::Site, &s.name)),
            n = escape(&s.name)
        );
    }
    o.push_str("</table>");
    let policy = st.denials();
    if !policy.is_empty() {
        o.push_str("<h2>Policy <small>deny rules and rate limits</small></h2><table id=\"policy\"><tr><th>kind</th><th>rule</th><th>refused</th></tr>");
        for (kind, name, n) in policy {
            let _ = write!(
                o,
                "<tr data-rule=\"{n_}\"><td>{kind}</td><td>{n_}</td><td>{n}</td></tr>",
                n_ = escape(&name)
            );
        }
        o.push_str("</table>");
    }
    if let Some(store) = v.limits_store {
        limits_store(&mut o, store);
    }
    if !v.dns.is_empty() {
        o.push_str("<h2>DNS <small>servers named by host</small></h2><table id=\"dns\"><tr><th>name</th><th>addresses</th><th>resolved</th><th>failures</th><th>last error</th></tr>");
        for (name, st) in &v.dns {
            let _ = write!(
                o,
                "<tr data-dns=\"{n}\"{cls}><td>{n}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&super::view::dns_slots(st)),
                super::view::secs_since(st.resolved_at)
                    .map_or("never".into(), |s| format!("{} ago", ago(s))),
                st.failures,
                st.error.as_deref().map_or(String::new(), |e| format!(
                    "failing, last good addresses kept: {}",
                    escape(e)
                )),
                n = escape(name),
                cls = if st.error.is_some() {
                    " class=\"down\""
                } else {
                    ""
                },
            );
        }
        o.push_str("</table>");
    }
    if !v.certs.is_empty() {
        o.push_str("<h2>Certificates</h2><table id=\"certs\"><tr><th>file</th><th>names</th><th>expires</th><th>days left</th></tr>");
        for c in &v.certs {
            let days = c.seconds_left().div_euclid(86_400);
            let _ = write!(
                o,
                "<tr data-cert=\"{f}\"{cls}><td>{f}</td><td>{}</td><td>{}</td><td>{days}</td></tr>",
                escape(&c.names.join(" ")),
                httpdate::fmt_http_date(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::from_secs(c.not_after.max(0) as u64)
                ),
                f = escape(&c.file.display().to_string()),
                cls = if days < 14 { " class=\"down\"" } else { "" },
            );
        }
        o.push_str("</table>");
    }
    recent_changes(&mut o, &crate::audit::recent());
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
        let _ = write!(
            o,
            "<div class=\"trend\" data-trend=\"{}\">last 15 min: requests/s · 5xx/s · p99 {}</div>",
            escape(&svc.name),
            plots(&st.trend(Kind::Service, &svc.name))
        );
        o.push_str("<table class=\"service\"><tr><th>server</th><th>status</th><th>since</th><th>colour</th><th>weight</th><th>cur</th><th>max</th><th>limit</th><th>queue</th><th>requests</th><th>bytes in</th><th>bytes out</th><th>1xx</th><th>2xx</th><th>3xx</th><th>4xx</th><th>5xx</th><th>conn err</th><th>resp err</th><th>redisp</th><th>last check</th><th>downtime</th><th>p50 ms (last min)</th><th>p99 ms (last min)</th>");
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

/// Three small plots (inline SVG, no script): request rate, 5xx rate and p99 over the
/// trend window; each says its peak on hover.
fn plots(points: &[crate::stats::TrendPoint]) -> String {
    let rate: Vec<f64> = points.iter().map(|p| p.0).collect();
    let errors: Vec<f64> = points.iter().map(|p| p.1).collect();
    let p99: Vec<f64> = points.iter().map(|p| p.2.unwrap_or(0.0)).collect();
    [
        spark(&rate, "requests/s", "#1f6fd1"),
        spark(&errors, "5xx/s", "#d64545"),
        spark(&p99, "p99 ms", "#6b7385"),
    ]
    .join(" ")
}

/// One sparkline: 180 steps wide (15 min of 5 s samples), scaled to its own peak.
fn spark(values: &[f64], what: &str, colour: &str) -> String {
    let peak = values.iter().copied().fold(0.0, f64::max);
    let step = 180.0 / (crate::stats::TREND.as_secs() / 5) as f64;
    let x0 = 180.0 - step * values.len().saturating_sub(1) as f64;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let y = if peak > 0.0 {
                19.0 - v / peak * 18.0
            } else {
                19.0
            };
            format!("{:.1},{y:.1}", x0 + i as f64 * step)
        })
        .collect();
    format!(
        "<svg class=\"spark\" width=\"64\" height=\"18\" viewBox=\"0 0 180 20\" preserveAspectRatio=\"none\"><title>{what}, peak {peak:.1}</title><polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/></svg>",
        points.join(" ")
    )
}

/// The last ten audited changes, newest first (the audit file has them all).
fn recent_changes(o: &mut String, entries: &[crate::audit::Entry]) {
    if entries.is_empty() {
        return;
    }
    o.push_str("<h2>Recent changes <small>the audit log's last ten</small></h2><table id=\"audit\"><tr><th>time (UTC)</th><th>who</th><th>action</th><th>what</th></tr>");
    for e in entries {
        let _ = write!(
            o,
            "<tr data-action=\"{a}\"><td>{}</td><td>{}</td><td>{a}</td><td class=\"what\">{}</td></tr>",
            escape(&e.time),
            escape(&e.who),
            escape(&summary(e)),
            a = escape(&e.action),
        );
    }
    o.push_str("</table>");
}

/// One line for an audit entry: a reload's changed keys (`path: from → to`), else its
/// details as `key=value`.
fn summary(e: &crate::audit::Entry) -> String {
    let short = |v: Option<&serde_json::Value>| {
        let t = v.map_or("–".to_string(), |v| v.to_string());
        if t.len() > 60 {
            format!("{}…", &t[..t.floor_char_boundary(60)])
        } else {
            t
        }
    };
    if let Some(serde_json::Value::Array(changes)) = e.detail.get("changes") {
        if changes.is_empty() {
            return "no change in the rules files".into();
        }
        let mut parts: Vec<String> = changes
            .iter()
            .take(5)
            .map(|c| {
                let path = c.get("path").and_then(|p| p.as_str()).unwrap_or("?");
                format!("{path}: {} → {}", short(c.get("from")), short(c.get("to")))
            })
            .collect();
        if changes.len() > 5 {
            parts.push(format!("and {} more", changes.len() - 5));
        }
        return parts.join("; ");
    }
    e.detail
        .iter()
        .map(|(k, v)| format!("{k}={}", short(Some(v))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The shared rate-limit store: up (limits shared) or not (each instance counts alone).
fn limits_store(o: &mut String, store: &crate::limit_store::Store) {
    use std::sync::atomic::Ordering::Relaxed;
    let (state, cls) = match store.is_up() {
        true => ("up: rate limits shared", ""),
        false => (
            "DOWN: rate limits local to this instance",
            " class=\"down\"",
        ),
    };
    let _ = write!(
        o,
        "<h2>Limits store <small>rate limits shared with other instances</small></h2><table id=\"limits-store\"><tr><th>store</th><th>state</th><th>judged shared</th><th>judged locally</th><th>outages</th></tr><tr{cls} data-store-up=\"{}\"><td>{}</td><td>{state}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        store.is_up(),
        escape(&store.url),
        store.shared.load(Relaxed),
        store.local.load(Relaxed),
        store.outages.load(Relaxed),
    );
}
