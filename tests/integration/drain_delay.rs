//! `timeouts.drain_delay`: on SIGTERM, `/healthz` answers 503 at once while the listeners
//! still serve for the delay (`accept`), or hold new connections by dropping their SYNs
//! unanswered (`hold`: the client's kernel sends them again, by then to the instance
//! that took the address over). tests/ha/failover.py runs both under keepalived.

use crate::harness::Stack;
use std::process::Command;
use std::time::{Duration, Instant};

async fn stopping(mode: &str) -> Stack {
    let s = Stack::with_config(&[
        ("  idle: 60s", "  idle: 60s\n  drain_delay: 3s"),
        (
            "access_log:",
            &format!("drain_delay_mode: {mode}\naccess_log:"),
        ),
    ])
    .await;
    assert_eq!(s.stats_get("/healthz").await.0, 200);
    let _ = Command::new("kill")
        .args(["-TERM", &s.pid().to_string()])
        .status();
    let start = Instant::now();
    while s.stats_get("/healthz").await.0 != 503 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "/healthz 503 at once"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_serves_through_the_delay() {
    let s = stopping("accept").await;
    let c = s.client();
    assert_eq!(c.get("data.localhost", "/").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        c.get("data.localhost", "/").await.status,
        200,
        "still serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_drops_new_connections_unanswered() {
    let s = stopping("hold").await;
    // Neither accepted nor refused: the SYN goes unanswered, so connect() waits.
    let tried = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(s.https),
    )
    .await;
    assert!(tried.is_err(), "connect should wait, got {tried:?}");
    // The stats listener is not held: health checks still read the 503.
    assert_eq!(s.stats_get("/healthz").await.0, 503);
}
