//! Blue/green by editing rules: flips under load, long transfers across a flip, refused
//! edits, guarded switches, graceful shutdown and the zero-downtime upgrade.

use crate::harness::{Kill, Req, Stack, spawn_proxy_with};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn set_live(s: &Stack, service: &str, colour: &str) {
    let path = s.rules_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let marker = format!("  {service}:\n    live: ");
    let at = text.find(&marker).unwrap() + marker.len();
    let end = at + text[at..].find('\n').unwrap();
    let new = format!("{}{colour}{}", &text[..at], &text[end..]);
    // Atomic rename into place, as editors and config management do.
    let tmp = path.with_extension("tmp-edit");
    std::fs::write(&tmp, new).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

async fn generation(s: &Stack) -> u64 {
    s.stats_json().await["generation"].as_u64().unwrap()
}

/// 32 keep-alive clients, at least 20,000 requests, 20 flips: no failed request, and
/// every request started after a flip was applied is served by the new colour.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flips_under_load_lose_nothing() {
    let s = Stack::start().await;
    let c = s.client();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let log: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..32 {
        let (c, done, failures, log) = (c.clone(), done.clone(), failures.clone(), log.clone());
        clients.push(tokio::spawn(async move {
            let tls = c
                .connect(Some("data.localhost"), &[b"http/1.1"], None)
                .await
                .unwrap();
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) || n < 625 {
                let started = Instant::now();
                let req = http::Request::get("/")
                    .header("host", "data.localhost")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                match send.send_request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        let by = resp.headers()["x-served-by"].to_str().unwrap().to_string();
                        let _ = resp.into_body().collect().await;
                        log.lock().unwrap().push((started, by));
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
        }));
    }
    // (applied, colour) per flip, and when each flip's file was written: a flip's check
    // window runs from its applied time to the next flip's write.
    let mut applied: Vec<(Instant, &str)> = Vec::new();
    let mut writes: Vec<Instant> = Vec::new();
    let mut latencies = Vec::new();
    for flip in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let colour = if flip % 2 == 0 { "green" } else { "blue" };
        let before = generation(&s).await;
        let written = Instant::now();
        writes.push(written);
        set_live(&s, "ui", colour);
        loop {
            if generation(&s).await > before {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(10),
                "flip {flip} not applied"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        applied.push((Instant::now(), colour));
        let first = loop {
            let r = c.get("data.localhost", "/").await;
            if r.served_by().starts_with(&format!("ui-{colour}-")) {
                break written.elapsed();
            }
        };
        latencies.push(first);
    }
    done.store(true, Ordering::Relaxed);
    for h in clients {
        h.await.unwrap();
    }
    let log = log.lock().unwrap();
    assert_eq!(failures.load(Ordering::Relaxed), 0, "failed requests");
    assert!(log.len() >= 20_000, "only {} requests", log.len());
    for (i, (at, colour)) in applied.iter().enumerate() {
        let until = writes.get(i + 1).copied();
        let wrong_list: Vec<_> = log
            .iter()
            .filter(|(t, _)| t > at && until.is_none_or(|u| *t < u))
            .filter(|(_, by)| !by.starts_with(&format!("ui-{colour}-")))
            .collect();
        let wrong = wrong_list.len();
        assert_eq!(
            wrong, 0,
            "flip {i} to {colour}: {wrong} later requests served by the old colour"
        );
    }
    latencies.sort();
    eprintln!(
        "{} requests, 20 flips; file write -> first new-colour response: median {:?}, max {:?}",
        log.len(),
        latencies[latencies.len() / 2],
        latencies.last().unwrap()
    );
}

/// A 1 GiB download and an open WebSocket started before a flip complete untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_transfers_survive_a_flip() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let s = Stack::start().await;
    let c = s.client();
    let tls = c
        .connect(Some("data.localhost"), &[b"http/1.1"], None)
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://data.localhost/ws", tls)
        .await
        .unwrap();
    ws.send(Message::Text("before".into())).await.unwrap();
    let first = ws
        .next()
        .await
        .unwrap()
        .unwrap()
        .into_text()
        .unwrap()
        .to_string();
    assert!(first.starts_with("ui-blue-"));
    let req = http::Request::get("/records/big/files/1G.bin")
        .header("host", "store.localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = c.send_streaming(&Req::default(), req).await.unwrap();
    let from = resp.headers()["x-served-by"].to_str().unwrap().to_string();
    let mut body = resp.into_body();
    let mut n: u64 = 0;
    let mut flipped = false;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            assert_eq!(d[0], (n % 251) as u8);
            n += d.len() as u64;
        }
        if !flipped && n > 100 << 20 {
            set_live(&s, "api", "green");
            set_live(&s, "ui", "green");
            let t = Instant::now();
            while !c
                .get("data.localhost", "/")
                .await
                .served_by()
                .starts_with("ui-green-")
            {
                assert!(t.elapsed() < Duration::from_secs(10));
            }
            flipped = true;
        }
    }
    assert!(flipped);
    assert_eq!(n, 1 << 30, "the download started on {from} completed whole");
    ws.send(Message::Text("after".into())).await.unwrap();
    let after = ws
        .next()
        .await
        .unwrap()
        .unwrap()
        .into_text()
        .unwrap()
        .to_string();
    assert_eq!(
        after,
        first.replace("before", "after"),
        "the WebSocket stays on its server"
    );
}

/// Broken edits change nothing: the old colour keeps serving; the error and its line are
/// on the stats page and from `gatehouse check`.
#[tokio::test(flavor = "multi_thread")]
async fn broken_edits_are_refused() {
    let s = Stack::start().await;
    let c = s.client();
    let good = std::fs::read_to_string(s.rules_path()).unwrap();
    let cases = [
        ("    live: blue", "    live: [blue", "YAML syntax"),
        (
            "service: ui,  max_body: 1MiB }",
            "service: uii,  max_body: 1MiB }",
            "unknown service `uii`",
        ),
        (
            "campus: [127.0.0.1/32]",
            "campus: [127.0.0.999/32]",
            "is not a CIDR",
        ),
    ];
    let g = generation(&s).await;
    for (from, to, what) in cases {
        assert!(good.contains(from), "{from}");
        // Flip to green in the same edit: it must not take effect.
        let bad = good
            .replacen(from, to, 1)
            .replacen("    live: blue", "    live: green", 1);
        let line = bad.lines().position(|l| l.contains(to.trim())).unwrap() + 1;
        std::fs::write(s.rules_path(), &bad).unwrap();
        let t = Instant::now();
        loop {
            let (_, page) = s.stats_get("/stats").await;
            if page.contains(&format!("repository.yaml:{line}:")) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{what}: error with line {line} not on the panel:\n{page}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(generation(&s).await, g, "{what}: nothing applied");
        for _ in 0..5 {
            assert!(
                c.get("data.localhost", "/")
                    .await
                    .served_by()
                    .starts_with("ui-blue-"),
                "{what}: old colour serves"
            );
        }
        let (code, _, err) = s.cli(&["check", "-c", s.config_path().to_str().unwrap()]);
        assert_eq!(code, 1);
        assert!(
            err.contains(&format!("repository.yaml:{line}:")),
            "{what}: {err}"
        );
        std::fs::write(s.rules_path(), &good).unwrap();
        let t = Instant::now();
        while s.stats_json().await["last_reload"]["ok"] != true {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "undoing the edit clears the error"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(generation(&s).await, g, "the same rules: no new generation");
    }
    let (_, metrics) = s.stats_get("/metrics").await;
    assert!(
        metrics.contains("gatehouse_reloads_total{result=\"error\"} 3"),
        "{metrics}"
    );
}

/// `gatehouse switch` refuses a colour whose servers are all down unless forced;
/// `--rollback` restores the previous rules.
#[tokio::test(flavor = "multi_thread")]
async fn switch_is_guarded_and_rolls_back() {
    let s = Stack::start().await;
    let c = s.client();
    let cfg = s.config_path();
    let cfg = cfg.to_str().unwrap();
    s.stop_server("api-green-1").await;
    s.stop_server("api-green-2").await;
    let t = Instant::now();
    while !s.stats_json().await["services"]
        .to_string()
        .contains("\"name\":\"api-green-2\"")
        || s.server_status("api-green-2").await != "DOWN"
        || s.server_status("api-green-1").await != "DOWN"
    {
        assert!(t.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _, err) = s.cli(&["switch", "-c", cfg, "api", "green"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("refused: no server of api green is UP"),
        "{err}"
    );
    assert!(
        std::fs::read_to_string(s.rules_path())
            .unwrap()
            .contains("api:\n    live: blue")
    );
    let (code, out, err) = s.cli(&["switch", "-c", cfg, "ui", "green"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ui live blue -> green"), "{out}");
    assert!(
        c.get("data.localhost", "/")
            .await
            .served_by()
            .starts_with("ui-green-")
    );
    let (code, out, err) = s.cli(&["switch", "-c", cfg, "--rollback"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        c.get("data.localhost", "/")
            .await
            .served_by()
            .starts_with("ui-blue-")
    );
    let (code, out, _) = s.cli(&["switch", "-c", cfg, "api", "green", "--force"]);
    assert_eq!(code, 0);
    assert!(out.contains("api live blue -> green"));
    let (_, _, log) = (0, 0, s.log());
    assert!(
        log.contains(r#"{"from":"blue","path":"repository.yaml.services.ui.live","to":"green"}"#),
        "audit line: {log}"
    );
}

/// SIGTERM during a 1 GiB download: the download completes, new connections are refused,
/// the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_then_exits() {
    let mut s = Stack::start().await;
    let c = s.client();
    let req = http::Request::get("/records/big/files/1G.bin")
        .header("host", "store.localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = c.send_streaming(&Req::default(), req).await.unwrap();
    let mut body = resp.into_body();
    let mut n: u64 = 0;
    let mut signalled = false;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            n += d.len() as u64;
        }
        if !signalled && n > 64 << 20 {
            std::process::Command::new("kill")
                .args(["-TERM", &s.pid().to_string()])
                .status()
                .unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                c.connect(Some("data.localhost"), &[b"http/1.1"], None)
                    .await
                    .is_err(),
                "new connections are refused while draining"
            );
            signalled = true;
        }
        if signalled {
            // Read slowly for a moment so the drain really waits for us.
            tokio::time::sleep(Duration::from_micros(50)).await;
        }
    }
    assert_eq!(n, 1 << 30);
    let status = s.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit 0 after the drain");
}

/// The upgrade procedure: a second process takes over the listeners of the first
/// (`run --upgrade`), the first drains and exits; a continuous client opening a new
/// connection per request sees no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_takes_over_without_a_failed_request() {
    let mut s = Stack::start().await;
    let c = s.client();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (c, stop, ok, failed) = (c.clone(), stop.clone(), ok.clone(), failed.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // The UI, not the API: the shipped API limit (20/s) would refuse most.
                let req = http::Request::get("/x")
                    .header("host", "data.localhost")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let good = match c.send_streaming(&Req::default(), req).await {
                    Ok(r) if r.status() == 200 => r.into_body().collect().await.is_ok(),
                    _ => false,
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let log2 = s.dir.path().join("second.log");
    let (second, https2, _, _) = spawn_proxy_with(&s.config_path(), &log2, &["--upgrade"]);
    // Stopped (by PID) however the test ends.
    let _second = Kill(second);
    assert_eq!(https2, s.https, "the same socket, not a new bind");
    let exit = tokio::task::spawn_blocking(move || {
        let status = s.child.wait().unwrap();
        (s, status)
    });
    let (s, status) = tokio::time::timeout(Duration::from_secs(40), exit)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "the old process drained and exited");
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    eprintln!(
        "upgrade: {} requests, {} failed",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 100);
    drop(s);
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_gives_the_decision() {
    let s = Stack::start().await;
    let cfg = s.config_path();
    let explain = |args: &[&str]| {
        let mut all = vec!["explain", "-c", cfg.to_str().unwrap()];
        all.extend_from_slice(args);
        s.cli(&all)
    };
    let (code, out, _) = explain(&["--from", "127.0.0.1", "https://data.localhost/api/records"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("route          data-api")
            && out.contains("is inside: allowed")
            && out.contains("forward to api blue"),
        "{out}"
    );
    assert!(
        out.contains("api-blue-1") && out.contains("[UP]"),
        "live state from the running proxy: {out}"
    );
    let (_, out, _) = explain(&["--from", "127.0.0.2", "https://data.localhost/"]);
    assert!(out.contains("outside: 403 Forbidden"), "{out}");
    let (_, out, _) = explain(&[
        "--from",
        "127.0.0.2",
        "https://store.localhost/records/a/files/1M.bin",
    ]);
    assert!(
        out.contains("forward to api blue") && out.contains("pool           files"),
        "{out}"
    );
    let (_, out, _) = explain(&["--from", "127.0.0.1", "https://store.localhost/api/records"]);
    assert!(out.contains("403") && out.contains("deny route"), "{out}");
    let (_, out, _) = explain(&["--from", "127.0.0.1", "https://data-dev.localhost/"]);
    assert!(out.contains("forward to ui green"), "{out}");
    let (_, out, _) = explain(&[
        "--from",
        "127.0.0.1",
        "--via-proxy",
        "127.0.0.2",
        "https://data.localhost/",
    ]);
    assert!(
        out.contains("not in trusted_proxies") && out.contains("403"),
        "{out}"
    );
}

/// Issue 19, item 11: `switch` with a config whose rules the running proxy does not read
/// (a copy elsewhere, as the repository's own rules beside a running demo) edits that file
/// but says plainly that the traffic did not move, and fails.
#[tokio::test(flavor = "multi_thread")]
async fn switch_on_rules_the_running_proxy_does_not_read_fails() {
    let s = Stack::start().await;
    let other = tempfile::tempdir().unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .arg(s.dir.path().join("."))
        .arg(other.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let cfg = other.path().join("config/gatehouse.yaml");
    let (code, out, err) = s.cli(&[
        "switch",
        "-c",
        cfg.to_str().unwrap(),
        "ui",
        "green",
        "--force",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("the running proxy still serves ui on blue"),
        "{out}{err}"
    );
    let c = s.client();
    assert!(
        c.get("data.localhost", "/")
            .await
            .served_by()
            .starts_with("ui-blue-")
    );
}
