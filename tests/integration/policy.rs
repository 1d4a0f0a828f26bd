//! The policy a repository runs at its edge (issue 18), driven by the real curl binary:
//! which methods a route takes.

use crate::harness::Stack;
use std::process::Command;

/// One curl request from `from`: the status and the response head.
fn curl(s: &Stack, from: &str, method: &str, url: &str) -> (u16, String) {
    let (host, path) = url.split_once('/').expect("host/path");
    let port = s.https.port();
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-k",
        "--http1.1",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
    ])
    .args([
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
