//! Micro benchmarks (divan): route lookup, allow-list lookup, rule compilation, stats
//! rendering. Run: `cargo bench --bench micro`.
#![allow(missing_docs, clippy::unwrap_used)]

use gatehouse::generation::Generation;
use gatehouse::health::HealthTable;
use gatehouse::reload::ReloadStatus;
use gatehouse::rules::matcher::AllowList;
use gatehouse::rules::{self, RuleSet};
use gatehouse::stats::Stats;
use std::hint::black_box;
use std::path::PathBuf;

fn main() {
    divan::main();
}

/// A rules file with `sites` sites of `routes` routes each, and `services` services.
fn rules_text(sites: usize, routes: usize, services: usize) -> String {
    let mut t =
        String::from("pools:\n  app: { slots: 100, queue: 100, queue_timeout: 5s }\nservices:\n");
    for s in 0..services {
        t.push_str(&format!(
            "  svc{s}:\n    live: blue\n    blue: [ {{ name: s{s}-b1, addr: 127.0.0.1:{} }}, {{ name: s{s}-b2, addr: 127.0.0.1:{} }} ]\n    green: [ {{ name: s{s}-g1, addr: 127.0.0.1:{} }} ]\n",
            10000 + s * 3,
            10001 + s * 3,
            10002 + s * 3
        ));
    }
    t.push_str("sites:\n");
    for site in 0..sites {
        t.push_str(&format!(
            "  - name: site{site}\n    hosts: [h{site}.example.org]\n    routes:\n"
        ));
        for r in 0..routes {
            t.push_str(&format!(
                "      - {{ path: {{ prefix: /p{r}/ }}, pool: app, service: svc{} }}\n",
                r % services
            ));
        }
    }
    t
}

fn compile(text: String) -> RuleSet {
    rules::compile(&[(PathBuf::from("bench.yaml"), text)]).unwrap()
}

/// Looking up a host and the last of `n` routes on one site (worst case for ordered prefixes).
#[divan::bench(args = [10, 1_000, 10_000])]
fn route_lookup_routes(bencher: divan::Bencher, n: usize) {
    let set = compile(rules_text(1, n, 4));
    let path = format!("/p{}/x/y", n - 1);
    bencher.bench(|| {
        black_box(
            set.route(black_box("h0.example.org"), black_box(&path))
                .is_some(),
        )
    });
}

/// Looking up one of `n` hosts (first route).
#[divan::bench(args = [10, 1_000, 10_000])]
fn route_lookup_hosts(bencher: divan::Bencher, n: usize) {
    let set = compile(rules_text(n, 1, 4));
    let host = format!("h{}.example.org", n / 2);
    bencher.bench(|| black_box(set.route(black_box(&host), black_box("/p0/x")).is_some()));
}

/// Allow-list membership over `n` CIDRs (100,000: a large network deny list).
#[divan::bench(args = [10, 10_000, 100_000])]
fn allow_list(bencher: divan::Bencher, n: usize) {
    let nets: Vec<ipnet::IpNet> = (0..n as u32)
        .map(|i| {
            // Every other /24, so no two merge: `n` ranges to search.
            format!(
                "{}.{}.{}.0/24",
                10 + (i >> 15),
                (i >> 7) & 255,
                (i & 127) * 2
            )
            .parse()
            .unwrap()
        })
        .collect();
    let list = AllowList::new(vec![], &nets);
    let inside: std::net::IpAddr = "10.0.4.7".parse().unwrap();
    let outside: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    bencher.bench(|| {
        black_box(list.contains(black_box(inside)) && !list.contains(black_box(outside)))
    });
}

/// Compiling a 10,000-route rules file (what a reload costs).
#[divan::bench(sample_count = 10)]
fn compile_10k_routes(bencher: divan::Bencher) {
    let text = rules_text(100, 100, 50);
    bencher.bench(|| black_box(compile(text.clone())));
}

/// Rendering the stats page, CSV and Prometheus text for 100 services (300 servers).
#[divan::bench(args = ["html", "csv", "prometheus"], sample_count = 20)]
fn render_100_services(bencher: divan::Bencher, what: &str) {
    let stats = Stats::default();
    let health = HealthTable::default();
    let g = Generation::new(compile(rules_text(20, 10, 100)), None, &stats, &health);
    let reload = ReloadStatus {
        at: std::time::SystemTime::now(),
        error: None,
        generation: 1,
    };
    let view = gatehouse::admin::view::View {
        generation: &g,
        stats: &stats,
        reload: &reload,
        reloads: (0, 0),
        refresh: None,
        admin_token: None,
        dns: Vec::new(),
        certs: Vec::new(),
        limits_store: None,
    };
    bencher.bench(|| {
        black_box(match what {
            "html" => gatehouse::admin::html::html(&view),
            "csv" => gatehouse::admin::csv::csv(&view),
            _ => gatehouse::admin::prometheus::prometheus(&view),
        })
    });
}

/// A deny list of 1,000 user-agent patterns against a browser's `User-Agent` (no match:
/// the whole header is scanned) and a listed crawler's.
#[divan::bench(args = ["Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36", "Mozilla/5.0 (compatible; crawler-777/2.1; +http://example.org/bot)"])]
fn agent_list_1000(bencher: divan::Bencher, agent: &str) {
    let patterns: Vec<String> = (0..1000).map(|i| format!("crawler-{i}/")).collect();
    let list = gatehouse::rules::policy::AgentList::new("bench".into(), &patterns).unwrap();
    bencher.bench(|| list.matches(black_box(agent.as_bytes())));
}

/// A limiter of `rate` per `per_secs` with `burst`, by client, tracking 65,536 keys.
fn limiter(rate: u32, per_secs: u64, burst: u32) -> gatehouse::limit::Limiter {
    use gatehouse::rules::policy::{LimitKey, LimitSpec};
    gatehouse::limit::Limiter::new(&LimitSpec {
        name: "bench".into(),
        index: 0,
        rate,
        per: std::time::Duration::from_secs(per_secs),
        burst,
        key: LimitKey::Client { v4: 32, v6: 64 },
        tracked: 65_536,
        text: format!("{rate}/{per_secs}s"),
    })
}

/// One request counted by a rate limit (GCRA cell, compare-and-swap) among a million
/// distinct keys in a 65,536-cell table.
#[divan::bench(sample_count = 200, sample_size = 5000)]
fn rate_limit_check(bencher: divan::Bencher) {
    let limiter = limiter(20, 1, 40);
    let now = std::time::Instant::now();
    let mut key = 0u64;
    bencher.bench_local(|| {
        key = (key + 1) % 1_000_000;
        limiter.check(black_box(key.wrapping_mul(0x9E37_79B9_7F4A_7C15)), now)
    });
}

/// Resident memory of a rate limit after a million distinct client keys: the table is
/// allocated whole at the start, so the million add nothing (printed once; the check
/// cost is `rate_limit_check`).
#[divan::bench(sample_count = 1, sample_size = 1)]
fn rate_limit_million_keys_memory() {
    let rss = || {
        std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            * 4
    };
    let limiter = limiter(60, 60, 60);
    let now = std::time::Instant::now();
    limiter.check(0, now);
    let before = rss();
    for k in 0..1_000_000u64 {
        black_box(limiter.check(k.wrapping_mul(0x9E37_79B9_7F4A_7C15), now));
    }
    eprintln!(
        "rate limit: {} KiB table; RSS {before} KiB before a million keys, {} KiB after",
        limiter.memory() / 1024,
        rss()
    );
}
