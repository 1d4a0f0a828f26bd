//! What an outside client can send to get around the rules, stall the edge, or make it
//! blame someone else (issue: the hostile internet). One test (or more) per finding.

use crate::harness::Stack;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends raw bytes over plain TCP and reads until the server closes or `wait` passes.
async fn raw_plain(addr: std::net::SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(Ok(n)) = tokio::time::timeout(wait, tcp.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Item 9: `%61` is `a`. A rule on `/api/` must judge `/%61pi/…` as `/api/…`, and the
/// server must get the path that was judged.
#[tokio::test(flavor = "multi_thread")]
async fn escapes_of_unreserved_characters_are_judged_decoded() {
    let s = Stack::start().await;
    let c = s.client();
    let got = c.get("data.localhost", "/%61pi/records").await;
    assert_eq!(got.status, 200);
    assert!(got.served_by().starts_with("api-"), "{}", got.served_by());
    assert_eq!(got.json()["path"], "/api/records");
    // On the files-only host, an escaped path is no way past the deny rule either.
    let got = c.get("store.localhost", "/%61pi/records").await;
    assert_eq!(got.status, 403);
}

/// Item 9: `..;` is `..` to Java servers (Tomcat, Jetty): refused, not forwarded.
#[tokio::test(flavor = "multi_thread")]
async fn dot_segments_with_parameters_are_refused() {
    let s = Stack::start().await;
    let c = s.client();
    for path in [
        "/records/a/files/..;/..;/api/records",
        "/static/.;/x",
        "/a/%2e%2e;x/api",
    ] {
        let got = c.get("store.localhost", path).await;
        assert_eq!(got.status, 400, "{path}");
    }
    // `;` elsewhere is an ordinary character.
    let got = c
        .get("store.localhost", "/records/a;v=1/files/1K.bin")
        .await;
    assert_eq!(got.status, 200);
}

/// Item 9: the ACME exemption from the HTTPS redirect is judged on the normalized path;
/// a traversal out of it is redirected like any other plain-HTTP request.
#[tokio::test(flavor = "multi_thread")]
async fn acme_exemption_is_judged_on_the_normalized_path() {
    let s = Stack::start().await;
    let wait = Duration::from_secs(3);
    let ask = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: data.localhost\r\nConnection: close\r\n\r\n")
    };
    let out = raw_plain(
        s.http,
        ask("/.well-known/acme-challenge/../../api/records").as_bytes(),
        wait,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    let out = raw_plain(
        s.http,
        ask("/.well-known/%61cme-challenge/../../api/records").as_bytes(),
        wait,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    // A real challenge path is still served over plain HTTP.
    let out = raw_plain(
        s.http,
        ask("/.well-known/acme-challenge/token").as_bytes(),
        wait,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// Item 4: one authority per request. Several `Host` headers, or a `Host` naming another
/// authority than the request target, are refused; before, the first (or the target) was
/// routed and the client's own `Host` forwarded.
#[tokio::test(flavor = "multi_thread")]
async fn one_authority_per_request() {
    let s = Stack::start().await;
    let c = s.client();
    let wait = Duration::from_secs(3);
    let two_hosts = "GET /records/a/files/1K.bin HTTP/1.1\r\nHost: store.localhost\r\nHost: data.localhost\r\nConnection: close\r\n\r\n";
    let (out, _) = crate::harness::raw_tls(&c, "store.localhost", two_hosts.as_bytes(), wait).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let port = s.https.port();
    let absolute = format!(
        "GET https://store.localhost:{port}/records/a/files/1K.bin HTTP/1.1\r\nHost: data.localhost:{port}\r\nConnection: close\r\n\r\n"
    );
    let (out, _) = crate::harness::raw_tls(&c, "store.localhost", absolute.as_bytes(), wait).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // The same target with a matching Host is served.
    let matching = format!(
        "GET https://store.localhost:{port}/records/a/files/1K.bin HTTP/1.1\r\nHost: store.localhost:{port}\r\nConnection: close\r\n\r\n"
    );
    let (out, _) = crate::harness::raw_tls(&c, "store.localhost", matching.as_bytes(), wait).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// Item 4: `Connection` may not name `Host` (or a header the proxy writes): the server
/// still gets the host the request was routed on.
#[tokio::test(flavor = "multi_thread")]
async fn connection_cannot_remove_the_host() {
    let s = Stack::start().await;
    let c = s.client();
    let wait = Duration::from_secs(3);
    let req = "GET /api/records HTTP/1.1\r\nHost: data.localhost\r\nConnection: close, host, x-forwarded-for\r\n\r\n";
    let (out, _) = crate::harness::raw_tls(&c, "data.localhost", req.as_bytes(), wait).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
    let json_start = body.find('{').unwrap();
    let j: serde_json::Value =
        serde_json::from_str(body[json_start..].lines().next().unwrap()).unwrap();
    assert_eq!(j["host"], "data.localhost", "{out}");
    assert_eq!(j["x_forwarded_for"], "127.0.0.1", "{out}");
}
