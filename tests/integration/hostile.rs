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
