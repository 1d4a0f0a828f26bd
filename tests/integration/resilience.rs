//! Traffic classes and resilience: slots, queues, health, backups, maxconn, WebSocket,
//! slow clients. Timing assertions only as tight as the behaviour needs.

use crate::harness::{Options, Req, Stack, raw_tls, wait_until, ws_echo_replies};
use bytes::Bytes;
use http_body_util::Full;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn edits(pairs: &[(&str, &str)]) -> Options {
    Options {
        rules_edits: pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        ..Options::default()
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A flood of slow downloads never takes more than the files pool's slots, and the UI
/// (app pool) stays fast meanwhile; a full queue answers 503 at once.
/// One pool's entry in the stats JSON.
async fn pool(s: &Stack, name: &str) -> serde_json::Value {
    let j = s.stats_json().await;
    j["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn downloads_flood_never_starves_the_ui() {
    let s = Stack::start_with(edits(&[(
        "files:  { slots: 20, queue: 20,  queue_timeout: 30s, balance: leastconn, per_client: 4",
        "files:  { slots: 20, queue: 180, queue_timeout: 30s, balance: leastconn, per_client: 20",
    )]))
    .await;
    let c = s.client();
    let outside = Req {
        from: Some("127.0.0.2".parse().unwrap()),
        ..Req::default()
    };
    let ok = Arc::new(AtomicU32::new(0));
    let mut downloads = Vec::new();
    for i in 0..200 {
        let (c, ok, r) = (c.clone(), ok.clone(), outside.clone());
        downloads.push(tokio::spawn(async move {
            let g = c
                .get_with(
                    "store.localhost",
                    &format!("/records/r{i}/files/64K.bin?delay=1500ms"),
                    &r,
                )
                .await;
            if g.status == 200 && g.body.len() == 65536 {
                ok.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Watch the pool while the flood runs: never more than 20 in flight.
    let max_in_use = Arc::new(AtomicU64::new(0));
    wait_until(
        "the files queue to fill",
        Duration::from_secs(20),
        async || {
            let files = pool(&s, "files").await;
            max_in_use.fetch_max(files["in_use"].as_u64().unwrap(), Ordering::Relaxed);
            files["queued"] == 180
        },
    )
    .await;
    // Queue full: the next download is refused at once.
    let t = Instant::now();
    let r = c
        .get_with("store.localhost", "/records/x/files/1K.bin", &outside)
        .await;
    assert_eq!(r.status, 503, "full queue");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "refused at once, took {:?}",
        t.elapsed()
    );
    // Meanwhile 100 UI requests on the app pool all succeed quickly.
    let mut ui = Vec::new();
    for _ in 0..100 {
        let c = c.clone();
        ui.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = c.get("data.localhost", "/").await;
            (r.status, t.elapsed())
        }));
    }
    let mut times = Vec::new();
    for h in ui {
        let (status, took) = h.await.unwrap();
        assert_eq!(status, 200);
        times.push(took);
    }
    times.sort();
    eprintln!(
        "UI during the download flood: p50 {:?}, p99 {:?}",
        pct(&times, 0.5),
        pct(&times, 0.99)
    );
    assert!(
        pct(&times, 0.99) < Duration::from_secs(5),
        "UI starved: p99 {:?}",
        pct(&times, 0.99)
    );
    for d in downloads {
        d.await.unwrap();
        let files = pool(&s, "files").await;
        max_in_use.fetch_max(files["in_use"].as_u64().unwrap(), Ordering::Relaxed);
    }
    assert_eq!(
        ok.load(Ordering::Relaxed),
        200,
        "every queued download completes"
    );
    assert!(max_in_use.load(Ordering::Relaxed) <= 20);
    let api_max = s.standins.service("api").max.load(Ordering::Relaxed);
    assert!(
        (15..=20).contains(&api_max),
        "the API servers saw {api_max} at once"
    );
}

/// A request queued past the pool's queue timeout gets 503, Retry-After and the backup page.
#[tokio::test(flavor = "multi_thread")]
async fn queue_timeout_serves_the_backup_page() {
    let s = Stack::start_with(edits(&[(
        "files:  { slots: 20, queue: 20,  queue_timeout: 30s, balance: leastconn, per_client: 4",
        "files:  { slots: 1, queue: 5,  queue_timeout: 500ms",
    )]))
    .await;
    let c = s.client();
    let slow = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get("store.localhost", "/records/a/files/1K.bin?delay=3s")
                .await
                .status
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let r = c.get("store.localhost", "/records/b/files/1K.bin").await;
    assert_eq!(r.status, 503);
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "waited the queue timeout: {:?}",
        t.elapsed()
    );
    assert!(r.headers.contains_key("retry-after"));
    assert!(
        String::from_utf8_lossy(&r.body).contains("We'll be right back"),
        "the backup page"
    );
    assert_eq!(slow.await.unwrap(), 200);
}

/// A stopped server goes DOWN within fall × interval while idempotent requests see no
/// error, and comes back UP after `rise` passing checks.
#[tokio::test(flavor = "multi_thread")]
async fn dead_server_marked_down_and_back_up() {
    let s = Stack::start().await;
    let c = s.client();
    wait_until("first checks", Duration::from_secs(5), async || {
        s.server_status("ui-blue-1").await == "UP"
    })
    .await;
    s.stop_server("ui-blue-1").await;
    let stopped = Instant::now();
    let load = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut failures = 0;
            for _ in 0..60 {
                let r = c.get("data.localhost", "/").await;
                if r.status != 200 || r.served_by() == "ui-blue-1" {
                    failures += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            failures
        })
    };
    // interval 1s, fall 2 (shipped rules): DOWN within ~2s plus a check's timeout.
    wait_until("ui-blue-1 DOWN", Duration::from_secs(4), async || {
        s.server_status("ui-blue-1").await == "DOWN"
    })
    .await;
    eprintln!("ui-blue-1 DOWN after {:?}", stopped.elapsed());
    assert_eq!(
        load.await.unwrap(),
        0,
        "idempotent requests redispatched: no error seen"
    );
    s.start_server("ui-blue-1").await;
    let took = wait_until("ui-blue-1 UP", Duration::from_secs(5), async || {
        s.server_status("ui-blue-1").await == "UP"
    })
    .await;
    eprintln!("ui-blue-1 UP again after {took:?}");
    let (_, csv) = s.stats_get("/stats;csv").await;
    let row = csv
        .lines()
        .find(|l| l.starts_with("ui,ui-blue-1,"))
        .unwrap();
    assert!(row.contains(",UP,"), "{row}");
}

/// Every primary down: the backup server serves; it too: the backup page with 503.
#[tokio::test(flavor = "multi_thread")]
async fn backups_then_backup_page() {
    let s = Stack::start().await;
    let c = s.client();
    assert!(
        c.get("data.localhost", "/")
            .await
            .served_by()
            .starts_with("ui-blue-")
    );
    s.stop_server("ui-blue-1").await;
    s.stop_server("ui-blue-2").await;
    wait_until("backup serving", Duration::from_secs(5), async || {
        c.get("data.localhost", "/").await.served_by() == "ui-blue-3"
    })
    .await;
    for _ in 0..5 {
        assert_eq!(c.get("data.localhost", "/").await.served_by(), "ui-blue-3");
    }
    s.stop_server("ui-blue-3").await;
    wait_until("the backup page", Duration::from_secs(5), async || {
        c.get("data.localhost", "/").await.status == 503
    })
    .await;
    let r = c.get("data.localhost", "/").await;
    assert_eq!(r.status, 503);
    assert!(r.headers.contains_key("retry-after"));
    assert!(String::from_utf8_lossy(&r.body).contains("We'll be right back"));
    let j = s.stats_json().await;
    let ui = j["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "ui")
        .unwrap()
        .clone();
    assert!(ui["counters"]["no_server"].as_u64().unwrap() > 0);
}

/// Per-server maxconn is never exceeded (the stand-ins count their own concurrency);
/// the excess waits instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_server_maxconn_holds() {
    let s = Stack::start_with(edits(&[
        (
            "{ name: api-blue-1,  addr: 127.0.0.1:5201 }",
            "{ name: api-blue-1,  addr: 127.0.0.1:5201, maxconn: 3 }",
        ),
        (
            "{ name: api-blue-2,  addr: 127.0.0.1:5202 }",
            "{ name: api-blue-2,  addr: 127.0.0.1:5202, maxconn: 3 }",
        ),
    ]))
    .await;
    let c = s.client();
    let mut all = Vec::new();
    for i in 0..18 {
        let c = c.clone();
        all.push(tokio::spawn(async move {
            c.get("data.localhost", &format!("/api/x{i}?delay=300ms"))
                .await
                .status
        }));
    }
    for h in all {
        assert_eq!(h.await.unwrap(), 200);
    }
    for n in ["api-blue-1", "api-blue-2"] {
        let m = s
            .standins
            .get(n)
            .unwrap()
            .max_in_flight
            .load(Ordering::Relaxed);
        assert!((1..=3).contains(&m), "{n} saw {m} at once");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_echo_through_the_proxy() {
    let s = Stack::start().await;
    for (i, text) in ws_echo_replies(&s).await.iter().enumerate() {
        assert!(
            text.starts_with("ui-blue-") && text.ends_with(&format!(": hello {i}")),
            "{text}"
        );
    }
}

/// A client dribbling its headers is cut at the header timeout while others are served.
#[tokio::test(flavor = "multi_thread")]
async fn slowloris_is_cut_at_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Stack::start_with(Options {
        config_edits: vec![("request_header: 10s".into(), "request_header: 2s".into())],
        ..Options::default()
    })
    .await;
    let c = s.client();
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut tls = c
            .connect(Some("data.localhost"), &[b"http/1.1"], None)
            .await
            .unwrap();
        slow.push(tokio::spawn(async move {
            let start = Instant::now();
            let head = b"GET / HTTP/1.1\r\nHost: data.localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            for b in head {
                if tls.write_all(&[*b]).await.is_err() {
                    return start.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut buf = [0u8; 64];
                if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(1), tls.read(&mut buf)).await {
                    return start.elapsed();
                }
            }
            Duration::from_secs(3600)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.get("data.localhost", "/").await.status,
        200,
        "others are served meanwhile"
    );
    for h in slow {
        let cut = h.await.unwrap();
        assert!(cut < Duration::from_secs(6), "slow client kept for {cut:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn uri_too_long_is_414() {
    let s = Stack::start().await;
    let c = s.client();
    let long = format!("/api/{}", "a".repeat(9000));
    let (resp, _) = raw_tls(
        &c,
        "data.localhost",
        format!("GET {long} HTTP/1.1\r\nHost: data.localhost\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 414"),
        "{}",
        &resp[..resp.len().min(200)]
    );
    let r = c
        .send(
            &Req::default(),
            http::Request::get("/api/short")
                .header("host", "data.localhost")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
}

/// An idle keep-alive connection is parked (hyper's buffers given back) and serves its
/// next request as if nothing happened; a parked connection closes at `timeouts.idle`; a
/// pipelined pair of requests is answered in order across the park boundary.
#[tokio::test(flavor = "multi_thread")]
async fn idle_keepalive_connections_park_then_serve_then_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Stack::start_with(Options {
        config_edits: vec![("idle: 60s".into(), "idle: 3s".into())],
        ..Options::default()
    })
    .await;
    let parked = async || s.stats_json().await["connections_parked"].as_u64().unwrap();
    let mut tls = s
        .client()
        .connect(Some("data.localhost"), &[b"http/1.1"], None)
        .await
        .unwrap();
    // Reads one response (the stand-ins answer with Content-Length) and returns its text.
    async fn response(tls: &mut (impl AsyncReadExt + Unpin)) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
                .await
                .expect("response in time")
                .expect("read");
            assert!(
                n > 0,
                "closed mid-response: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("content-length");
                if got.len() >= end + 4 + len {
                    return text;
                }
            }
        }
    }
    let get = b"GET /api/x HTTP/1.1\r\nHost: data.localhost\r\n\r\n";
    tls.write_all(get).await.unwrap();
    assert!(response(&mut tls).await.starts_with("HTTP/1.1 200"));
    wait_until(
        "the idle connection to park",
        Duration::from_secs(5),
        async || parked().await == 1,
    )
    .await;
    // Parked, then woken by the next request: same connection, same answer.
    tls.write_all(get).await.unwrap();
    assert!(response(&mut tls).await.starts_with("HTTP/1.1 200"));
    assert_eq!(parked().await, 0, "busy again");
    // Two pipelined requests after another park: both answered, in order.
    wait_until("parked again", Duration::from_secs(5), async || {
        parked().await == 1
    })
    .await;
    let two = [
        &get[..],
        b"GET /api/y HTTP/1.1\r\nHost: data.localhost\r\n\r\n",
    ]
    .concat();
    tls.write_all(&two).await.unwrap();
    let first = response(&mut tls).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // The second may already be in the first read; count both status lines overall.
    let mut all = first;
    if all.matches("HTTP/1.1 200").count() < 2 {
        all.push_str(&response(&mut tls).await);
    }
    assert_eq!(all.matches("HTTP/1.1 200").count(), 2, "{all}");
    // Idle past `timeouts.idle` (3s): the proxy closes the parked connection.
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
        .await
        .expect("closed by the proxy within the idle timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing but the close");
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "closed at the idle timeout, not before"
    );
    assert_eq!(parked().await, 0);
}

/// A request that arrives in the same read as the client's TLS Finished is decrypted
/// during the handshake and waits inside rustls, not in the socket: it is served at once
/// (a connection that only watched the socket would wait for the header timeout).
#[tokio::test(flavor = "multi_thread")]
async fn request_sent_with_the_tls_finished_is_served_at_once() {
    let s = Stack::start().await;
    let c = s.client();
    let start = Instant::now();
    let got = tokio::task::spawn_blocking(move || {
        c.request_with_finished(
            "data.localhost",
            b"GET /api/x HTTP/1.1\r\nHost: data.localhost\r\n\r\n",
            Duration::from_secs(8),
        )
    })
    .await
    .unwrap();
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}
