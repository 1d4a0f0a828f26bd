//! The policy a repository runs at its edge (issue 18), driven by the real curl binary:
//! which methods a route takes, deny lists, rate limits, request ids, header rules,
//! header conditions and redirects.

use crate::harness::{Options, Stack, wait_until};
use std::process::Command;
use std::time::Duration;

/// One curl request from `from`: the status and the response head.
fn curl(s: &Stack, from: &str, method: &str, url: &str) -> (u16, String) {
    curl_with(s, from, method, url, &[])
}

/// [`curl`] with extra arguments (`-A`, `-H`); the response body is printed before the
/// status when `--output -` is among them.
fn curl_with(s: &Stack, from: &str, method: &str, url: &str, extra: &[&str]) -> (u16, String) {
    let (host, path) = url.split_once('/').expect("host/path");
    let port = s.https.port();
    let mut cmd = Command::new("curl");
    // -g: `{` and `[` in a URL are sent, not expanded by curl.
    cmd.args(["-s", "-g", "-k", "--http1.1", "--max-time", "10"]);
    if !extra.contains(&"--output") {
        cmd.args(["-o", "/dev/null"]);
    }
    cmd.args([
        "-D",
        "-",
        "-w",
        "%{http_code}",
        "--interface",
        from,
        "-X",
        method,
    ])
    .args(["--resolve", &format!("{host}:{port}:127.0.0.1")]);
    match method {
        "HEAD" => {
            cmd.arg("-I");
        }
        "PUT" | "POST" => {
            cmd.args(["-H", "Expect:", "--data-binary", "deposit"]);
        }
        _ => {}
    }
    let out = cmd
        .args(extra)
        .arg(format!("https://{host}:{port}/{path}"))
        .output()
        .expect("curl is installed (.ci/run installs it)");
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    let status = out[out.len().saturating_sub(3)..].parse().unwrap_or(0);
    (status, out)
}

/// Issue 18, item 1 and the demo contract: `store.*` file routes take GET and HEAD only;
/// any other method is 405 with `Allow: GET, HEAD`, from anywhere, reaches no server and
/// counts against none. Deposits go to `data.*`'s upload route (PUT only, campus only).
#[tokio::test(flavor = "multi_thread")]
async fn store_files_take_only_get_and_head() {
    let s = Stack::start().await;
    let (inside, outside) = ("127.0.0.1", "127.0.0.2");
    let file = "store.localhost/records/a/files/1K.bin";
    let served = s.served("api-");
    for method in ["PUT", "POST", "DELETE", "OPTIONS", "PATCH"] {
        for from in [outside, inside] {
            let (status, head) = curl(&s, from, method, file);
            assert_eq!(status, 405, "{method} from {from}: {head}");
            assert!(
                head.to_ascii_lowercase().contains("allow: get, head\r\n"),
                "{method}: {head}"
            );
        }
    }
    assert_eq!(
        s.served("api-"),
        served,
        "a refused method reached a server"
    );
    for method in ["GET", "HEAD"] {
        assert_eq!(curl(&s, outside, method, file).0, 200, "{method}");
    }
    // Deposits: the campus PUTs to data.*'s upload route (a POST there is 405 with its
    // own list); outsiders get 403 whatever the method (networks are judged first).
    let upload = "data.localhost/api/records/a/draft/files/x.bin/content";
    assert_eq!(curl(&s, inside, "PUT", upload).0, 200);
    let (status, head) = curl(&s, inside, "POST", upload);
    assert_eq!(status, 405, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("allow: get, head, put\r\n"),
        "{head}"
    );
    assert_eq!(curl(&s, outside, "PUT", upload).0, 403);
    let log = s.log();
    assert!(log.contains("method_not_allowed"), "{log}");
    assert!(log.contains("data-upload"), "{log}");
    s.assert_no_server_blamed("api").await;
}

/// One cell of the HAProxy CSV: the row starting with `row`, the column named `col`.
async fn csv_cell(s: &Stack, row: &str, col: &str) -> String {
    let (_, csv) = s.stats_get("/stats;csv").await;
    let head = csv.lines().next().unwrap_or("").trim_start_matches("# ");
    let at = head.split(',').position(|c| c == col).expect("column");
    let line = csv.lines().find(|l| l.starts_with(row)).expect("row");
    line.split(',').nth(at).unwrap_or("").to_string()
}

/// The rules with `(from, to)` edits applied.
async fn stack_with_rules(edits: &[(&str, &str)]) -> Stack {
    Stack::start_with(Options {
        rules_edits: edits
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        ..Options::default()
    })
    .await
}

/// Issue 18, item 2 and the demo contract: the shipped deny rule refuses any `User-Agent`
/// containing an entry of `lists/deny-agents.txt` with 429 and the demo's page, on every
/// site, before anything reaches a server; the refusals are counted (rule, site `dreq`).
/// An edit of the list file alone is picked up, and a broken network list is refused
/// with the list file's own line while the old rules keep serving.
#[tokio::test(flavor = "multi_thread")]
async fn listed_agents_get_429_on_every_site_and_the_list_reloads() {
    let s = Stack::start().await;
    let served = s.served("");
    let page = ["--output", "-"];
    for url in [
        "store.localhost/records/a/files/1K.bin",
        "store-dev.localhost/records/a/files/1K.bin",
        "data.localhost/api/records",
        "data.localhost/",
        "nowhere.localhost/",
    ] {
        for agent in ["BadBot/1.0", "Mozilla/5.0 (compatible; badbot/2.1)"] {
            let (status, out) = curl_with(
                &s,
                "127.0.0.1",
                "GET",
                url,
                &[&page[..], &["-A", agent]].concat(),
            );
            assert_eq!(status, 429, "{agent} to {url}: {out}");
            assert!(
                out.contains("Too many requests</h1>"),
                "not the 429 page: {out}"
            );
            assert!(out.to_ascii_lowercase().contains("x-request-id: "), "{out}");
        }
    }
    assert_eq!(s.served(""), served, "a listed agent reached a server");
    let (status, _) = curl_with(
        &s,
        "127.0.0.1",
        "GET",
        "store.localhost/records/a/files/1K.bin",
        &["-A", "GoodBot/1.0"],
    );
    assert_eq!(status, 200);
    let stats = s.stats_json().await;
    let rule = stats["policy"]
        .as_array()
        .and_then(|p| p.iter().find(|r| r["name"] == "deny-agents"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(rule["denied"], 10, "{stats}");
    assert_eq!(csv_cell(&s, "store,FRONTEND", "dreq").await, "2");
    let (_, prom) = s.stats_get("/metrics").await;
    assert!(
        prom.contains("gatehouse_policy_denied_total{kind=\"deny\",rule=\"deny-agents\"} 10"),
        "{prom}"
    );

    // The list file alone changes: a new crawler is refused within the watcher's settle.
    let list = s.dir.path().join("lists/deny-agents.txt");
    let text = std::fs::read_to_string(&list).expect("list");
    std::fs::write(&list, format!("{text}EvilCrawler\n")).expect("write");
    let url = "store.localhost/records/a/files/1K.bin";
    wait_until(
        "the list edit to apply",
        Duration::from_secs(5),
        async || curl_with(&s, "127.0.0.1", "GET", url, &["-A", "evilcrawler/1"]).0 == 429,
    )
    .await;
    // A network list with a bad line: refused, pointing into the list file; the old
    // rules (with EvilCrawler) keep serving.
    std::fs::write(
        s.dir.path().join("lists/blocked.txt"),
        "192.0.2.0/24\n# comment\n198.51.100.300\n",
    )
    .expect("write");
    let rules = std::fs::read_to_string(s.rules_path()).expect("rules");
    let rules = rules.replace(
        "lists:                          # plain",
        "lists:\n  blocked: { networks: ../lists/blocked.txt }\nx-lists:                          # plain",
    );
    let bad = rules.replace("x-lists:", "#");
    std::fs::write(s.rules_path(), bad).expect("write rules");
    s.hup();
    wait_until("the refused reload", Duration::from_secs(5), async || {
        s.stats_json().await["last_reload"]["ok"] == false
    })
    .await;
    let error = s.stats_json().await["last_reload"]["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        error.contains("lists/blocked.txt:3:1: list `blocked`: `198.51.100.300` is not a CIDR"),
        "{error}"
    );
    assert_eq!(
        curl_with(&s, "127.0.0.1", "GET", url, &["-A", "EvilCrawler"]).0,
        429
    );
    assert_eq!(
        curl_with(&s, "127.0.0.1", "GET", url, &["-A", "curl"]).0,
        200
    );
}

/// Issue 18, item 3 and the demo contract: `data-api` allows 20 requests/s per client
/// with a burst of 40. 100 concurrent requests from one address: about 40 pass, the rest
/// get 429 with `Retry-After` and the `RateLimit-*` headers, without reaching a server;
/// a second later requests pass again. Passing answers say what is left. Claiming other
/// addresses in `X-Forwarded-For` does not spread a client over several budgets.
#[tokio::test(flavor = "multi_thread")]
async fn api_limit_answers_429_with_retry_after_then_recovers() {
    let s = Stack::start().await;
    let served = s.served("api-");
    let port = s.https.port();
    // Each request claims another address in X-Forwarded-For: from an untrusted peer that
    // is dropped, and the limit counts the peer (an attacker cannot spread itself).
    let urls: String = (0..100)
        .map(|i| {
            format!(
                "url = \"https://data.localhost:{port}/api/records\"\noutput = \"/dev/null\"\n\
                 header = \"X-Forwarded-For: 10.9.{i}.1\"\n"
            )
        })
        .collect();
    let cfg = s.dir.path().join("urls.txt");
    std::fs::write(&cfg, urls).expect("write");
    let out = Command::new("curl")
        .args(["-s", "-k", "--parallel", "--parallel-immediate", "--parallel-max", "100"])
        .args(["--max-time", "20", "-w"])
        .arg("%{http_code} %header{retry-after} %header{ratelimit-limit} %header{ratelimit-remaining} %header{x-ratelimit-limit}\n")
        .args(["--resolve", &format!("data.localhost:{port}:127.0.0.1")])
        .arg("-K")
        .arg(&cfg)
        .output()
        .expect("curl");
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 100, "{out}");
    let ok = lines.iter().filter(|l| l.starts_with("200 ")).count();
    let limited: Vec<&&str> = lines.iter().filter(|l| l.starts_with("429 ")).collect();
    assert_eq!(ok + limited.len(), 100, "{out}");
    assert!(
        (40..=45).contains(&ok),
        "{ok} passed of 100 (burst 40 at 20/s)"
    );
    for l in &limited {
        // status, Retry-After, RateLimit-Limit, RateLimit-Remaining, X-RateLimit-Limit
        let f: Vec<&str> = l.split(' ').collect();
        let retry: u64 = f.get(1).and_then(|r| r.parse().ok()).unwrap_or(0);
        assert!((1..=2).contains(&retry), "Retry-After: {l}");
        assert_eq!(f.get(2..5), Some(&["20", "0", "20"][..]), "{l}");
    }
    assert_eq!(
        s.served("api-") - served,
        ok as u64,
        "a limited request reached a server"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, head) = curl(&s, "127.0.0.1", "GET", "data.localhost/api/records");
    assert_eq!(status, 200, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("x-ratelimit-remaining: "), "{head}");
    let stats = s.stats_json().await;
    let limit = &stats["limits"][0];
    assert_eq!(limit["name"], "api");
    assert_eq!(limit["denied"], limited.len() as u64, "{stats}");
    assert_eq!(
        csv_cell(&s, "data,FRONTEND", "dreq").await,
        limited.len().to_string()
    );
    let cfg = s.config_path();
    let url = format!("https://data.localhost:{port}/api/records");
    let (_, out, err) = s.cli(&["explain", "-c", cfg.to_str().unwrap_or(""), &url]);
    assert!(
        out.contains("api (20/s, burst 40, by client /32 /64) -> 429 with Retry-After beyond it"),
        "{out}{err}"
    );
}

/// Issue 18, item 4 and the demo contract: every answer carries `X-Request-ID`; the
/// server got the same id; an outside client's own id is replaced (it could pin its
/// requests on someone else's in the logs); the access log line carries it. The shipped
/// response rule removes the application's session headers.
#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_made_forwarded_returned_and_logged() {
    let s = Stack::start().await;
    let got = s.client().get("data.localhost", "/api/records").await;
    let id = got
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert_eq!(id.len(), 32, "{id:?}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(
        got.json()["headers"]["x-request-id"],
        id.as_str(),
        "the server saw another id"
    );
    let (_, head) = curl_with(
        &s,
        "127.0.0.1",
        "GET",
        "store.localhost/records/a/files/1K.bin",
        &["-H", "X-Request-ID: forged-by-client"],
    );
    let head = head.to_ascii_lowercase();
    assert!(head.contains("x-request-id: "), "{head}");
    assert!(!head.contains("forged-by-client"), "{head}");
    // The application's session headers stay in the logs' side of the edge.
    assert!(
        got.headers.get("x-session-id").is_none(),
        "{:?}",
        got.headers
    );
    assert!(!head.contains("x-session-id"), "{head}");
    wait_until("the access log line", Duration::from_secs(3), async || {
        s.log().contains(&id)
    })
    .await;
    let line = s
        .log()
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or("")
        .to_string();
    assert!(line.contains("/api/records"), "{line}");
}

/// Issue 18, items 1 and 5: a route taken only when a header condition holds (the next
/// route otherwise), and redirect routes with `{host}`, `{path}` and `{query}`; `explain`
/// names both. A client cannot smuggle a placeholder through its path.
#[tokio::test(flavor = "multi_thread")]
async fn header_conditions_and_redirects() {
    let s = stack_with_rules(&[(
        "      - { name: store-files, path:",
        "      - { name: store-old, path: { prefix: /old/ }, redirect: { to: 'https://data.{host}{path}{query}', status: 308 } }\n      \
         - { name: store-bots, path: { prefix: /records/ }, match_headers: { accept: { contains: application/x-bot }, user-agent: { regex: '^bot/[0-9]' } }, deny: 406 }\n      \
         - { name: store-files, path:",
    )])
    .await;
    let file = "store.localhost/records/a/files/1K.bin";
    let both = ["-H", "Accept: text/html, APPLICATION/X-BOT", "-A", "bot/1"];
    assert_eq!(curl_with(&s, "127.0.0.2", "GET", file, &both).0, 406);
    // One condition missing: the next route takes it.
    assert_eq!(curl_with(&s, "127.0.0.2", "GET", file, &both[..2]).0, 200);
    assert_eq!(
        curl_with(&s, "127.0.0.2", "GET", file, &["-A", "bot/1"]).0,
        200
    );
    let (status, head) = curl(
        &s,
        "127.0.0.2",
        "GET",
        "store.localhost/old/x/y?a=1&b={path}",
    );
    assert_eq!(status, 308, "{head}");
    assert!(
        head.contains("location: https://data.store.localhost/old/x/y?a=1&b={path}\r\n"),
        "{head}"
    );
    let (status, head) = curl(&s, "127.0.0.2", "GET", "store.localhost/old/{query}");
    assert_eq!(status, 308, "{head}");
    assert!(
        head.contains("location: https://data.store.localhost/old/"),
        "{head}"
    );
    let cfg = s.config_path();
    let port = s.https.port();
    let url = format!("https://store.localhost:{port}/old/x?a=1");
    let (code, out, err) = s.cli(&[
        "explain",
        "-c",
        cfg.to_str().unwrap_or(""),
        "--from",
        "127.0.0.2",
        &url,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("308 Permanent Redirect to https://data.store.localhost/old/x?a=1"),
        "{out}"
    );
    let url = format!("https://store.localhost:{port}/records/a/files/1K.bin");
    let (_, out, _) = s.cli(&[
        "explain",
        "-c",
        cfg.to_str().unwrap_or(""),
        "--from",
        "127.0.0.2",
        "-H",
        "Accept: application/x-bot",
        "-H",
        "User-Agent: bot/2",
        &url,
    ]);
    assert!(
        out.contains("accept contains \"application/x-bot\" and user-agent matches /^bot/[0-9]/"),
        "{out}"
    );
    assert!(out.contains("deny-agents ("), "{out}");
}

/// Makes `one`'s health checks answer `status`, then waits for its status word `word`.
async fn answer_pings(s: &Stack, one: &gatehouse::demo::standin::StandIn, status: u16, word: &str) {
    one.ping_status
        .store(status, std::sync::atomic::Ordering::Relaxed);
    wait_until(word, Duration::from_secs(3), async || {
        s.server_status("api-blue-1").await == word
    })
    .await;
}

/// Issue 18, item 8: checks with a method, a `Host`, a list of healthy statuses, and
/// `on_404: drain` (HAProxy's `disable-on-404`): a server whose check answers 404 goes
/// DRAIN (healthy, no new requests) and comes back when its check passes; any other
/// unexpected status still takes it DOWN.
#[tokio::test(flavor = "multi_thread")]
async fn a_check_answering_404_drains_its_server() {
    let s = stack_with_rules(&[(
        "health: { path: /ping, interval: 1s, timeout: 500ms, rise: 2, fall: 2 }",
        "health: { path: /ping, method: HEAD, host: health.internal, expect: [200, 204], on_404: drain, interval: 200ms, timeout: 500ms, rise: 1, fall: 2 }",
    )])
    .await;
    let one = s.standins.get("api-blue-1").expect("stand-in");
    let seen = || one.last_ping.lock().map(|p| p.clone()).unwrap_or_default();
    wait_until(
        "a HEAD check with its Host",
        Duration::from_secs(3),
        async || seen() == ("HEAD".to_string(), "health.internal".to_string()),
    )
    .await;
    async fn servers(s: &Stack) -> std::collections::HashMap<String, u32> {
        let mut by = std::collections::HashMap::new();
        for _ in 0..12 {
            let got = s
                .client()
                .get("store.localhost", "/records/a/files/1K.bin")
                .await;
            assert_eq!(got.status, 200);
            *by.entry(got.served_by()).or_insert(0) += 1;
        }
        by
    }
    answer_pings(&s, &one, 404, "DRAIN").await;
    let by = servers(&s).await;
    assert_eq!(
        by.get("api-blue-1"),
        None,
        "a drained server got requests: {by:?}"
    );
    answer_pings(&s, &one, 204, "UP").await;
    assert!(
        servers(&s).await.contains_key("api-blue-1"),
        "not back in rotation"
    );
    answer_pings(&s, &one, 500, "DOWN").await;
}
