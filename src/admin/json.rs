//! The stats as JSON (`/stats?format=json`), read by `gatehouse switch` and `explain`.

use super::view::{View, tcp_fronts};
use crate::stats::Counters;
use std::sync::atomic::Ordering::Relaxed;

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
            "client_aborts": c.client_aborts.load(Relaxed),
            "server_aborts": c.server_aborts.load(Relaxed),
            "no_server": c.no_server.load(Relaxed),
            "denied": c.denied.load(Relaxed),
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
    let pools: Vec<_> = g.pools.iter().map(|p| serde_json::json!({"name": &*p.name, "in_use": p.in_use(), "slots": p.limit(), "queued": p.waiting(), "queue_limit": p.queue_limit(), "max_queued": p.max_waiting.load(Relaxed), "queue_full": p.queue_full.load(Relaxed), "queue_timeouts": p.queue_timeouts.load(Relaxed), "over_share": p.over_share.load(Relaxed)})).collect();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": v.stats.started.elapsed().as_secs(),
        "generation": g.number,
        "last_reload": {"ok": v.reload.error.is_none(), "error": v.reload.error, "generation": v.reload.generation},
        "connections": v.stats.connections.load(Relaxed),
        "connections_parked": v.stats.parked.load(Relaxed),
        "upstream_stray_retired": crate::upstream::stray_retired(),
        "tls_handshakes": v.stats.tls_handshakes.load(Relaxed),
        "requests": counters(&v.stats.frontend),
        "sites": sites, "services": services, "pools": pools,
        "policy": v.stats.denials().into_iter().map(|(kind, name, n)| serde_json::json!({"kind": kind, "name": &*name, "denied": n})).collect::<Vec<_>>(),
        "limits": g.limiters.iter().map(|l| serde_json::json!({"name": &*l.spec.name, "rate": &l.spec.text, "burst": l.spec.burst, "passed": l.passed.load(Relaxed), "denied": l.denied.load(Relaxed), "memory_bytes": l.memory()})).collect::<Vec<_>>(),
        "dns": v.dns.iter().map(|(n, st)| serde_json::json!({"name": n, "addresses": st.slots.iter().map(|ip| ip.map(|ip| ip.to_string())).collect::<Vec<_>>(), "resolved_s_ago": super::view::secs_since(st.resolved_at), "failures": st.failures, "error": st.error})).collect::<Vec<_>>(),
        "tcp_frontends": tcp_fronts(v).into_iter().map(|f| serde_json::json!({"name": &*f.name, "listens": f.listens, "limit": f.limit, "counters": counters(&f.counters)})).collect::<Vec<_>>(),
    })
    .to_string()
}
