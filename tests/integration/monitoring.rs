//! The stats panel read by real clients: headless chromium, a real prometheus server and
//! Debian's prometheus-haproxy-exporter reading the HAProxy CSV.

use crate::harness::{Kill, Stack, root};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn http_get(url: &str) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "10", url])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn eventually(
    what: &str,
    limit: Duration,
    mut f: impl AsyncFnMut() -> Option<String>,
) -> String {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Chromium renders /stats under load; the DOM names every service, server, status and
/// pool. The screenshot is kept in target/artifacts/stats.png.
#[tokio::test(flavor = "multi_thread")]
async fn chromium_renders_the_stats_page() {
    let s = Stack::start().await;
    let c = s.client();
    let load = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                let _ = c.get("data.localhost", &format!("/api/x{i}")).await;
                let _ = c.get("data-dev.localhost", "/").await;
            }
        })
    };
    s.stop_server("api-green-2").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let url = format!("http://{}/stats", s.stats);
    let profile = tempfile::tempdir().unwrap();
    let artifacts = root().join("target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let chromium = |extra: &[String]| {
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1600,1200",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(&url)
        .stderr(Stdio::null())
        .output()
        .expect("chromium is installed (.ci/run installs it)")
    };
    load.await.unwrap();
    // The API's plot has a point with its request rate once the sampler (every 5 s) has
    // seen the load: inline SVG, its peak in the title.
    eventually(
        "a trend point for api",
        Duration::from_secs(15),
        async || {
            let (_, page) = s.stats_get("/stats").await;
            let trend = page.split("data-trend=\"api\"").nth(1)?;
            let peak: f64 = trend
                .split("<title>requests/s, peak ")
                .nth(1)?
                .split('<')
                .next()?
                .parse()
                .ok()?;
            (peak > 0.0 && trend.contains("<polyline")).then(|| page.clone())
        },
    )
    .await;
    let dom = String::from_utf8_lossy(&chromium(&["--dump-dom".to_string()]).stdout).into_owned();
    for name in ["ui", "api"] {
        assert!(
            dom.contains(&format!("id=\"service-{name}\"")),
            "service {name} missing"
        );
    }
    for server in [
        "ui-blue-1",
        "ui-blue-2",
        "ui-blue-3",
        "ui-green-1",
        "ui-green-2",
        "ui-green-3",
        "api-blue-1",
        "api-blue-2",
        "api-green-1",
        "api-green-2",
    ] {
        assert!(
            dom.contains(&format!("data-server=\"{server}\"")),
            "server {server} missing"
        );
    }
    for pool in ["static", "app", "files"] {
        assert!(
            dom.contains(&format!("data-pool=\"{pool}\"")),
            "pool {pool} missing"
        );
    }
    assert!(dom.contains("<span class=\"st UP\">UP</span>"));
    let down_row = dom.split("data-server=\"api-green-2\"").nth(1).unwrap();
    assert!(
        down_row[..400].contains("st DOWN"),
        "api-green-2 shown DOWN: {}",
        &down_row[..400]
    );
    let shot = artifacts.join("stats.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&[format!("--screenshot={}", shot.display())]);
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "screenshot written"
    );
    // Fits a 1400-pixel-wide window without sideways scrolling: the page as served, with
    // one probe line that writes the laid-out width into the DOM chromium dumps.
    let (_, page) = s.stats_get("/stats").await;
    let probe = page.replace(
        "</body>",
        "<script>document.body.dataset.width=document.documentElement.scrollWidth</script></body>",
    );
    let file = profile.path().join("probe.html");
    std::fs::write(&file, probe).unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=1400,1000",
            "--dump-dom",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("p2").display()
        ))
        .arg(format!("file://{}", file.display()))
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let width: u32 = dom
        .split("data-width=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no width in {dom}"));
    println!("stats page laid out at 1400 px: {width} px wide");
    assert!(width <= 1400, "the page is {width} px wide");
}

/// A real prometheus scrapes /metrics; its query API returns the counts this test caused,
/// and `sum()` over any family is the true total at that level (each family belongs to one
/// level: site, route, service, server), as with HAProxy's exporter.
#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_metrics() {
    let s = Stack::start().await;
    let c = s.client();
    for i in 0..7 {
        assert_eq!(
            c.get("data.localhost", &format!("/api/p{i}")).await.status,
            200
        );
    }
    for _ in 0..4 {
        assert_eq!(c.get("data.localhost", "/").await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(
            c.get_with("store.localhost", "/nope", &Default::default())
                .await
                .status,
            403
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!("global: {{ scrape_interval: 1s }}\nscrape_configs:\n  - job_name: gatehouse\n    static_configs: [ {{ targets: ['{}'] }} ]\n", s.stats),
    )
    .unwrap();
    let _prom = Kill(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is installed (.ci/run installs it)"),
    );
    let q = |expr: &str| {
        format!(
            "http://127.0.0.1:{port}/api/v1/query?query={}",
            expr.replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
                .replace('=', "%3D")
                .replace(',', "%2C")
        )
    };
    let api = eventually(
        "prometheus to scrape",
        Duration::from_secs(30),
        async || {
            let body = http_get(&q(
                "gatehouse_service_requests_total{service=\"api\",code=\"2xx\"}",
            ))
            .await;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let r = v["data"]["result"].as_array()?.first()?.clone();
            Some(r["value"][1].as_str()?.to_string())
        },
    )
    .await;
    assert_eq!(api, "7");
    let body = http_get(&q(
        "gatehouse_route_requests_total{site=\"store\",route=\"store-deny\",code=\"4xx\"}",
    ))
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["result"][0]["value"][1], "3");
    let body = http_get(&q("gatehouse_pool_slots{pool=\"files\"}")).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["result"][0]["value"][1], "20");
    // 14 requests: 7 API and 4 UI forwarded, 3 refused on store before any service.
    let sum = async |expr: &str| {
        let body = http_get(&q(&format!("sum({expr})"))).await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"][0]["value"][1]
            .as_str()
            .unwrap_or_else(|| panic!("{expr}: {body}"))
            .to_string()
    };
    for (family, total) in [
        ("gatehouse_requests_total", "14"),
        ("gatehouse_site_requests_total", "14"),
        ("gatehouse_route_requests_total", "14"),
        ("gatehouse_service_requests_total", "11"),
        ("gatehouse_server_requests_total", "11"),
        ("gatehouse_site_response_seconds_count", "14"),
        ("gatehouse_server_response_seconds_count", "11"),
        ("gatehouse_site_denied_requests_total", "3"),
        ("gatehouse_site_in_flight", "0"),
    ] {
        assert_eq!(sum(family).await, total, "sum({family})");
    }
    // Every request was in flight at its site, service and server once (HAProxy's smax).
    for family in [
        "gatehouse_site_in_flight_max",
        "gatehouse_service_in_flight_max",
        "gatehouse_server_in_flight_max",
    ] {
        let n: u64 = sum(family).await.parse().unwrap();
        assert!(n >= 2, "sum({family}) = {n}");
    }
}

/// Debian's prometheus-haproxy-exporter reads /stats;csv unchanged: server up/down,
/// backend queue and bytes out match what the test caused; counters survive a reload.
#[tokio::test(flavor = "multi_thread")]
async fn haproxy_exporter_reads_the_csv() {
    let s = Stack::start().await;
    let c = s.client();
    let mut body_bytes = 0;
    for i in 0..5 {
        let r = c
            .get(
                "store.localhost",
                &format!("/records/r/files/{}K.bin", i + 1),
            )
            .await;
        body_bytes += r.body.len() as u64;
    }
    let port = free_port();
    let _exp = Kill(
        Command::new("prometheus-haproxy-exporter")
            .arg(format!("--haproxy.scrape-uri=http://{}/stats;csv", s.stats))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-haproxy-exporter is installed (.ci/run installs it)"),
    );
    let url = format!("http://127.0.0.1:{port}/metrics");
    let metric = |text: &str, name: &str, labels: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(labels))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let text = eventually("the exporter", Duration::from_secs(15), async || {
        let t = http_get(&url).await;
        t.contains("haproxy_up 1").then_some(t)
    })
    .await;
    assert_eq!(
        metric(&text, "haproxy_server_up", "server=\"api-blue-1\""),
        Some(1.0),
        "{text}"
    );
    let out: f64 = ["api-blue-1", "api-blue-2"]
        .iter()
        .map(|n| {
            metric(
                &text,
                "haproxy_server_bytes_out_total",
                &format!("server=\"{n}\""),
            )
            .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(out as u64, body_bytes);
    assert_eq!(
        metric(&text, "haproxy_backend_current_queue", "backend=\"api\""),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            "haproxy_frontend_http_requests_total",
            "frontend=\"store\""
        ),
        Some(5.0)
    );

    // A stopped server reads 0 once health marks it DOWN.
    s.stop_server("api-blue-2").await;
    eventually(
        "api-blue-2 down in the exporter",
        Duration::from_secs(10),
        async || {
            let t = http_get(&url).await;
            (metric(&t, "haproxy_server_up", "server=\"api-blue-2\"") == Some(0.0)).then_some(t)
        },
    )
    .await;

    // A reload (same rules) keeps every counter.
    s.hup();
    eventually("generation 2", Duration::from_secs(10), async || {
        let j = s.stats_json().await;
        (j["generation"] == 2).then_some(String::new())
    })
    .await;
    let t = http_get(&url).await;
    assert_eq!(
        metric(
            &t,
            "haproxy_frontend_http_requests_total",
            "frontend=\"store\""
        ),
        Some(5.0),
        "counters survive reloads"
    );
    assert_eq!(
        metric(&t, "haproxy_server_up", "server=\"api-blue-2\""),
        Some(0.0),
        "health survives reloads"
    );
}

/// Admin actions from the page: refused without auth or CSRF token; with both, a server
/// goes to MAINT (no requests reach it), the action is audited and survives a reload.
#[tokio::test(flavor = "multi_thread")]
async fn admin_actions_need_auth_and_token() {
    let s = Stack::start_with(crate::harness::Options {
        config_edits: vec![(
            "stats:\n  bind: 127.0.0.1:8404".into(),
            "stats:\n  admin: true\n  auth: { user: ops, password: s3cret }\n  bind: 127.0.0.1:8404".into(),
        )],
        ..Default::default()
    })
    .await;
    let base = format!("http://{}", s.stats);
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    assert_eq!(curl(&[&format!("{base}/stats")]).0, "401", "auth required");
    assert_eq!(
        curl(&[&format!("{base}/healthz")]).0,
        "200",
        "healthz stays open"
    );
    let (code, page) = curl(&["-u", "ops:s3cret", &format!("{base}/stats")]);
    assert_eq!(code, "200");
    let token = page
        .split("name=\"token\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let post = |form: String| {
        curl(&[
            "-u",
            "ops:s3cret",
            "-X",
            "POST",
            "--data",
            &form,
            &format!("{base}/stats/admin"),
        ])
    };
    assert_eq!(
        post("server=ui-blue-1&action=maint&token=forged".into()).0,
        "403",
        "CSRF token checked"
    );
    assert_eq!(
        post(format!("server=ui-blue-1&action=maint&token={token}")).0,
        "303"
    );
    let c = s.client();
    for _ in 0..6 {
        assert_eq!(
            c.get("data.localhost", "/").await.served_by(),
            "ui-blue-2",
            "MAINT takes no requests"
        );
    }
    s.hup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut csv = String::new();
    for _ in 0..20 {
        csv = curl(&["-u", "ops:s3cret", &format!("{base}/stats;csv")]).1;
        if csv.contains("ui,ui-blue-1,") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        csv.lines()
            .any(|l| l.starts_with("ui,ui-blue-1,") && l.contains(",MAINT,")),
        "MAINT survives a reload:\n{csv}"
    );
    assert!(
        s.log()
            .lines()
            .any(|l| l.contains(r#""who":"http 127.0.0.1 user=ops""#)
                && l.contains(r#""action":"server_state""#)),
        "audited: {}",
        s.log()
    );
    assert_eq!(
        post(format!("server=ui-blue-1&action=ready&token={token}")).0,
        "303"
    );
}
