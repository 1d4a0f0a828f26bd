//! `gatehouse explain --json` against the proxy itself: real requests (curl, over real TLS
//! and plain HTTP) and the explanation of each, compared on status class, route, service
//! and colour. Any disagreement between the two is a failure.

use crate::harness::{Options, Stack, wait_until};
use std::process::Command;
use std::time::{Duration, Instant};

/// One request, said once for curl and once for `explain`.
struct Case {
    method: &'static str,
    /// `https://host/path` or `http://host/path` (the port is added per stack).
    url: String,
    headers: Vec<&'static str>,
    /// Client address: 127.0.0.1 is the demo's campus, 127.0.0.2 is outside.
    from: &'static str,
    /// The TLS name, when the client sends another than the URL's host.
    sni: Option<&'static str>,
    /// Bytes of body to send.
    body: usize,
    http2: bool,
}

fn case(method: &'static str, url: &str, from: &'static str) -> Case {
    Case {
        method,
        url: url.to_string(),
        headers: Vec::new(),
        from,
        sni: None,
        body: 0,
        http2: false,
    }
}

/// What the proxy did, read from the response and its access-log line.
#[derive(Debug, PartialEq)]
struct Seen {
    class: u16,
    route: String,
    service: String,
    colour: String,
}

fn with_port(url: &str, s: &Stack) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let port = if scheme == "https" {
        s.https.port()
    } else {
        s.http.port()
    };
    format!("{scheme}://{host}:{port}/{path}")
}

fn curl(c: &Case, s: &Stack, dir: &std::path::Path) -> u16 {
    let url = with_port(&c.url, s);
    let (scheme, rest) = url.split_once("://").unwrap();
    let authority = rest.split('/').next().unwrap();
    // The name the client connects with: the SNI override, else the URL's host.
    let port = authority.rsplit(':').next().unwrap();
    let connect_host = c
        .sni
        .unwrap_or_else(|| authority.rsplit_once(':').unwrap().0);
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-k",
        "--path-as-is",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
    ])
    .args(["-w", "%{http_code}", "--interface", c.from, "-X", c.method])
    .args(["--resolve", &format!("{connect_host}:{port}:127.0.0.1")]);
    if c.http2 {
        cmd.arg("--http2");
    } else {
        cmd.arg("--http1.1");
    }
    for h in &c.headers {
        cmd.args(["-H", h]);
    }
    let target = match c.sni {
        // Connect with the SNI name, say the URL's host in `Host`.
        Some(sni) => {
            cmd.args(["-H", &format!("Host: {authority}")]);
            format!("{scheme}://{sni}:{port}{}", &rest[authority.len()..])
        }
        None => url.clone(),
    };
    if c.body > 0 {
        let f = dir.join("body.bin");
        std::fs::write(&f, vec![b'x'; c.body]).unwrap();
        cmd.args([
            "-H",
            "Expect:",
            "--data-binary",
            &format!("@{}", f.display()),
        ]);
    }
    if c.method == "HEAD" {
        cmd.arg("-I");
    }
    let out = cmd.arg(&target).output().expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn explain(c: &Case, s: &Stack) -> serde_json::Value {
    let cfg = s.config_path();
    let url = with_port(&c.url, s);
    let mut args = vec![
        "explain",
        "-c",
        cfg.to_str().unwrap(),
        "--json",
        "--from",
        c.from,
        "-X",
        c.method,
    ];
    let body_len = format!("Content-Length: {}", c.body);
    if c.body > 0 {
        args.extend(["-H", &body_len]);
    }
    for h in &c.headers {
        args.extend(["-H", h]);
    }
    if let Some(sni) = c.sni {
        args.extend(["--sni", sni]);
    }
    args.push(&url);
    let (code, out, err) = s.cli(&args);
    assert_eq!(code, 0, "explain {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("explain --json: {e}: {out}"))
}

fn predicted(j: &serde_json::Value) -> Seen {
    let text = |k: &str| j[k].as_str().unwrap_or("-").to_string();
    Seen {
        class: j["status"].as_u64().unwrap() as u16 / 100,
        route: text("route"),
        service: text("service"),
        colour: text("colour"),
    }
}

/// Access-log lines so far (text format: `client site/route pool service/colour/server …`).
fn access_lines(s: &Stack) -> Vec<regex::Captures<'static>> {
    let re = regex::Regex::new(
        r#"\S+ (\S+)/(\S+) (\S+) (\S+)/(\S+)/(\S+) \d+/\d+/\d+/\d+ (\d{3}) \d+ \d+ (\S+) ""#,
    )
    .unwrap();
    let log: &'static str = Box::leak(s.log().into_boxed_str());
    log.lines().filter_map(|l| re.captures(l)).collect()
}

/// Sends `c` with curl and reads what the proxy did from its access-log line.
fn real(c: &Case, s: &Stack, dir: &std::path::Path) -> Seen {
    let before = access_lines(s).len();
    let status = curl(c, s, dir);
    assert!(status > 0, "curl got no answer for {}", c.url);
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let lines = access_lines(s);
        if lines.len() > before {
            break lines.into_iter().nth(before).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no access-log line for {}",
            c.url
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(line[7].parse::<u16>().unwrap(), status, "log vs curl");
    // A forwarded request's class is the server's; ours is what the decision said.
    let served = &line[6] != "-" && &line[8] == "-";
    Seen {
        class: if served { 2 } else { status / 100 },
        route: line[2].to_string(),
        service: if served {
            line[4].to_string()
        } else {
            "-".into()
        },
        colour: if served {
            line[5].to_string()
        } else {
            "-".into()
        },
    }
}

fn check(cases: &[Case], s: &Stack, dir: &std::path::Path) -> usize {
    let mut wrong = Vec::new();
    for c in cases {
        let said = predicted(&explain(c, s));
        let seen = real(c, s, dir);
        if said != seen {
            wrong.push(format!(
                "{} {} from {} (sni {:?}): explain {said:?}, proxy {seen:?}",
                c.method, c.url, c.from, c.sni
            ));
        }
    }
    assert!(wrong.is_empty(), "explain disagrees:\n{}", wrong.join("\n"));
    cases.len()
}

/// Every site and route of the shipped rules, inside and outside the campus, paths that
/// normalize, bad encodings, a wrong SNI, plain HTTP, an over-long URI, a body over the
/// limit; then colours going dead: backup servers, the backup service, the backup page.
#[tokio::test(flavor = "multi_thread")]
async fn explain_predicts_what_the_proxy_does() {
    let s = Stack::start_with(Options {
        rules_edits: vec![(
            "  api:\n    live: blue\n".into(),
            "  api:\n    live: blue\n    backup_service: ui\n".into(),
        )],
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (inside, outside) = ("127.0.0.1", "127.0.0.2");
    let mut cases = Vec::new();
    for (host, from) in [
        ("data", inside),
        ("data", outside),
        ("data-dev", inside),
        ("data-dev", outside),
    ] {
        for path in [
            "/",
            "/static/app.css",
            "/api/records",
            "/api/records?q=x",
            "/records/abc",
        ] {
            cases.push(case(
                "GET",
                &format!("https://{host}.localhost{path}"),
                from,
            ));
        }
    }
    for host in ["store", "store-dev"] {
        for path in [
            "/records/abc/files/1K.bin",
            "/records/abc/files/1K.bin?download=1",
            "/api/records",
            "/",
            "/records/abc",
            "/records/a/files/../../api/records",
        ] {
            cases.push(case(
                "GET",
                &format!("https://{host}.localhost{path}"),
                outside,
            ));
        }
    }
    for path in [
        "/a/../api/records",
        "/static/../api/x",
        "/%2e%2e/api/x",
        "/api//records",
        "/static/./x.css",
        "/a%2fb",
        "/a%5cb",
        "/a%00b",
    ] {
        cases.push(case(
            "GET",
            &format!("https://data.localhost{path}"),
            inside,
        ));
    }
    cases.push(case(
        "HEAD",
        "https://store.localhost/records/a/files/1K.bin",
        outside,
    ));
    cases.push(case(
        "DELETE",
        "https://data.localhost/api/records/1",
        inside,
    ));
    for (method, url, from) in [
        (
            "PUT",
            "https://store.localhost/records/a/files/1K.bin",
            outside,
        ),
        (
            "POST",
            "https://store-dev.localhost/records/a/files/1K.bin",
            inside,
        ),
        (
            "PUT",
            "https://data.localhost/api/records/a/draft/files/x/content",
            inside,
        ),
        (
            "POST",
            "https://data.localhost/api/records/a/draft/files/x/content",
            inside,
        ),
        (
            "PUT",
            "https://data.localhost/api/records/a/draft/files/x/content",
            outside,
        ),
    ] {
        cases.push(case(method, url, from));
    }
    cases.push(case("GET", "https://unknown.localhost/", inside));
    // Deny rules (issue 18): a listed agent on any site, and one that is not listed.
    for (url, agent) in [
        (
            "https://store.localhost/records/a/files/1K.bin",
            "User-Agent: BadBot/1.0",
        ),
        (
            "https://data.localhost/api/records",
            "User-Agent: x badbot y",
        ),
        (
            "https://store.localhost/records/a/files/1K.bin",
            "User-Agent: GoodBot/1.0",
        ),
    ] {
        let mut c = case("GET", url, outside);
        c.headers.push(agent);
        cases.push(c);
    }
    let mut wrong_sni = case("GET", "https://data.localhost/", inside);
    wrong_sni.sni = Some("store.localhost");
    cases.push(wrong_sni);
    cases.push(case("GET", "http://data.localhost/x?y=1", inside));
    cases.push(case(
        "GET",
        "http://store.localhost/records/a/files/1K.bin",
        outside,
    ));
    cases.push(case(
        "GET",
        "http://data.localhost/.well-known/acme-challenge/token",
        inside,
    ));
    cases.push(case(
        "GET",
        &format!("https://data.localhost/api/{}", "x".repeat(9000)),
        inside,
    ));
    let mut big = case("POST", "https://data.localhost/api/records", inside);
    big.body = 2 << 20;
    cases.push(big);
    let mut small = case("POST", "https://data.localhost/api/records", inside);
    small.body = 1000;
    cases.push(small);
    let mut xff = case("GET", "https://data.localhost/", outside);
    xff.headers.push("X-Forwarded-For: 127.0.0.1");
    cases.push(xff);
    for path in ["/", "/api/records"] {
        let mut h2 = case("GET", &format!("https://data.localhost{path}"), inside);
        h2.http2 = true;
        cases.push(h2);
    }
    let mut checked = check(&cases, &s, dir.path());

    // Dead colours: the API's blue servers (its backup service, ui, takes over), then
    // ui's blue primaries (its backup server), then that one too (the backup page).
    let api = || case("GET", "https://data.localhost/api/records", inside);
    let ui = || case("GET", "https://data.localhost/", inside);
    for (dead, probes) in [
        (vec!["api-blue-1", "api-blue-2"], vec![api(), ui()]),
        (vec!["ui-blue-1", "ui-blue-2"], vec![api(), ui()]),
        (vec!["ui-blue-3"], vec![api(), ui()]),
    ] {
        for name in &dead {
            s.stop_server(name).await;
        }
        for name in &dead {
            wait_until(name, Duration::from_secs(15), async || {
                s.server_status(name).await == "DOWN"
            })
            .await;
        }
        checked += check(&probes, &s, dir.path());
    }
    assert!(checked >= 40, "only {checked} requests compared");
}
