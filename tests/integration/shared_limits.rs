//! `limits_store: redis://…`: two instances share one rate limit through a real
//! redis-server; with the store stopped each goes on with its own limits (fail open to
//! local, shown on the page), and shares again once it is back.

use crate::harness::{Options, Stack, free_port, wait_until};
use crate::tcp::redis;
use std::process::Command;
use std::time::Duration;

/// An instance of the shipped stack whose API limit is 60/min (burst 60) per API key,
/// shared through the store on `port`.
async fn instance(port: u16) -> Stack {
    Stack::start_with(Options {
        rules_edits: vec![(
            "api: { rate: 20/s, burst: 40 }".into(),
            "api: { rate: 60/min, burst: 60, by: \"header:x-api-key\" }".into(),
        )],
        config_edits: vec![(
            "access_log:".into(),
            format!("limits_store: redis://127.0.0.1:{port}\naccess_log:"),
        )],
        ..Options::default()
    })
    .await
}

/// `n` requests with `key` to the API of `s`, by curl on one connection: the statuses.
fn burst(s: &Stack, key: &str, n: usize) -> Vec<String> {
    let ca = s.dir.path().join("certs/ca.pem");
    let port = s.https.port();
    let url = format!("https://data.localhost:{port}/api/records");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "-w", "%{http_code}\\n"])
        .arg("--cacert")
        .arg(&ca)
        .args(["--resolve", &format!("data.localhost:{port}:127.0.0.1")])
        .args(["-H", &format!("x-api-key: {key}")])
        .args((0..n).flat_map(|_| ["-o", "/dev/null", url.as_str()]))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// 140 requests with `key`, ten at a time to each instance in turn: how many passed.
/// Every answer is 200 or 429.
fn alternate(a: &Stack, b: &Stack, key: &str) -> usize {
    let mut passed = 0;
    for round in 0..14 {
        let s = if round % 2 == 0 { a } else { b };
        let got = burst(s, key, 10);
        assert_eq!(got.len(), 10, "{got:?}");
        assert!(got.iter().all(|c| c == "200" || c == "429"), "{got:?}");
        passed += got.iter().filter(|c| *c == "200").count();
    }
    passed
}

async fn store_up(s: &Stack, up: bool) {
    let want = format!("gatehouse_limits_store_up {}", u8::from(up));
    wait_until(
        "the limits store's state",
        Duration::from_secs(10),
        async || s.stats_get("/metrics").await.1.lines().any(|l| l == want),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_limit_and_fall_back_to_local() {
    let port = free_port();
    let store = redis(port);
    let (a, b) = (instance(port).await, instance(port).await);
    store_up(&a, true).await;
    store_up(&b, true).await;
    // Shared: 60 pass in all (and about one a second more), not 60 on each.
    let shared = alternate(&a, &b, "k1");
    assert!(
        (60..=66).contains(&shared),
        "shared: {shared} of 140 passed"
    );
    // The store stops: each instance counts alone, so each lets its own 60 through.
    drop(store);
    let local = alternate(&a, &b, "k2");
    assert!(local >= 110, "local: {local} of 140 passed");
    store_up(&a, false).await;
    let (_, page) = a.stats_get("/stats").await;
    assert!(
        page.contains("DOWN: rate limits local to this instance"),
        "{page}"
    );
    assert_eq!(
        a.log().matches("limits store unavailable").count(),
        1,
        "said once: {}",
        a.log()
    );
    // Back: shared again, by itself.
    let _store = redis(port);
    store_up(&a, true).await;
    store_up(&b, true).await;
    let again = alternate(&a, &b, "k3");
    assert!(
        (60..=66).contains(&again),
        "shared again: {again} of 140 passed"
    );
}

/// The server's admin state and weight columns in `show servers state` of `s`.
fn server_row(s: &Stack, server: &str) -> (String, String) {
    let sock = s.dir.path().join("config/gatehouse-api.sock");
    let state = crate::harness::socat(&sock, "show servers state ui\n");
    let row = state
        .lines()
        .find(|l| l.contains(&format!(" {server} ")))
        .unwrap_or_else(|| panic!("{server} in {state}"))
        .to_string();
    let cols: Vec<&str> = row.split(' ').collect();
    (cols[6].to_string(), cols[7].to_string())
}

async fn wait_row(s: &Stack, server: &str, want: (&str, &str), what: &str) {
    wait_until(what, Duration::from_secs(3), async || {
        let (a, w) = server_row(s, server);
        (a.as_str(), w.as_str()) == want
    })
    .await;
}

/// An operator's MAINT or weight on one instance takes effect on the other within a
/// second through the same store, and an instance restarted without its state file
/// takes the fleet's state back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_state_reaches_every_instance() {
    let port = free_port();
    let _store = redis(port);
    let (a, mut b) = (instance(port).await, instance(port).await);
    store_up(&a, true).await;
    store_up(&b, true).await;
    let sock = |s: &Stack| s.dir.path().join("config/gatehouse-api.sock");
    crate::harness::socat(&sock(&a), "disable server ui/ui-blue-1\n");
    wait_row(&b, "ui-blue-1", ("1", "1"), "MAINT on the other instance").await;
    crate::harness::socat(&sock(&b), "set weight ui/ui-blue-2 7\n");
    wait_row(
        &a,
        "ui-blue-2",
        ("0", "7"),
        "the weight on the other instance",
    )
    .await;
    // B restarts without its state file: the fleet's state comes back from the store.
    let _ = Command::new("kill")
        .args(["-TERM", &b.pid().to_string()])
        .status();
    let _ = b.child.wait();
    let _ = std::fs::remove_file(b.dir.path().join("config/servers.state"));
    let (child, https, _, _) = crate::harness::spawn_proxy(&b.config_path(), &b.stderr_log);
    b.child = child;
    b.https = https;
    wait_row(&b, "ui-blue-1", ("1", "1"), "MAINT after a restart").await;
    wait_row(&b, "ui-blue-2", ("0", "7"), "the weight after a restart").await;
    // And back to READY from the restarted one.
    crate::harness::socat(&sock(&b), "enable server ui/ui-blue-1\n");
    wait_row(&a, "ui-blue-1", ("0", "1"), "READY on the other instance").await;
}
