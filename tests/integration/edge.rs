//! Edge hygiene: normalized paths, ambiguous framing, body limits, header bounds.

use crate::harness::{Req, Stack, raw_tls};
use bytes::Bytes;
use http_body_util::{Full, StreamBody};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

fn served(s: &Stack, prefix: &str) -> u64 {
    s.served(prefix)
}

#[tokio::test(flavor = "multi_thread")]
async fn traversal_never_reaches_the_api() {
    let s = Stack::start().await;
    let c = s.client();
    for path in [
        "/records/a/files/../../api/records",
        "/records/a/files/%2e%2e/%2E%2E/api/records",
        "/records/a/files/..%2f..%2fapi",
        "/records/a/files/..\\..\\api",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: store.localhost\r\n\r\n");
        let (resp, _) = raw_tls(&c, "store.localhost", req.as_bytes(), WAIT).await;
        let status = &resp[9..12];
        assert!(status == "403" || status == "400", "{path}: {resp}");
    }
    assert_eq!(served(&s, "api-"), 0, "nothing may reach the API servers");
    // The checked path is the forwarded path.
    let (resp, _) = raw_tls(
        &c,
        "data.localhost",
        b"GET /api/a/./b//c/../d HTTP/1.1\r\nHost: data.localhost\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(resp.contains("\"path\":\"/api/a/b/d\""), "{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_framing_is_refused_and_closed() {
    let s = Stack::start().await;
    let c = s.client();
    let cases: [&[u8]; 4] = [
        b"POST /api/x HTTP/1.1\r\nHost: data.localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"GET /api/x HTTP/1.1\r\nHost: data.localhost\r\nX-Folded: a\r\n b\r\n\r\n",
        b"POST /api/x HTTP/1.1\r\nHost: data.localhost\r\nContent-Length: +4\r\n\r\nabcd",
        b"GET /api/x HTTP/1.1\r\nHost: data.localhost\r\nX-Bad: a\rb\r\n\r\n",
    ];
    for raw in cases {
        let (resp, closed) = raw_tls(&c, "data.localhost", raw, WAIT).await;
        assert!(
            resp.starts_with("HTTP/1.1 400"),
            "{:?} -> {resp}",
            String::from_utf8_lossy(raw)
        );
        assert!(closed, "connection must close after a framing error");
        assert!(!resp.contains("smuggled"));
    }
    assert_eq!(served(&s, "api-"), 0);
}

/// Content-Length with Transfer-Encoding: chunked wins, the length is dropped, and the
/// connection closes after the response, so the bytes behind the chunked body are never
/// read as a second request (the HAProxy resolution; see docs/architecture.md).
#[tokio::test(flavor = "multi_thread")]
async fn content_length_with_chunked_is_resolved_and_closed() {
    let s = Stack::start().await;
    let c = s.client();
    for te in [
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
    ] {
        let raw = format!(
            "POST /api/x HTTP/1.1\r\nHost: data.localhost\r\n{te}\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: data.localhost\r\n\r\n"
        );
        let (resp, closed) = raw_tls(&c, "data.localhost", raw.as_bytes(), WAIT).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(
            resp.contains("\"received\":3"),
            "chunked framing wins: {resp}"
        );
        assert!(resp.to_lowercase().contains("connection: close"), "{resp}");
        assert!(closed);
        assert_eq!(
            resp.matches("HTTP/1.1 ").count(),
            1,
            "the trailing request is never served: {resp}"
        );
    }
    assert_eq!(served(&s, "api-"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn encoded_separators_are_bad_requests() {
    let s = Stack::start().await;
    let c = s.client();
    for path in ["/api/a%2fb", "/api/a%5cb", "/api/a%00b", "/api/%zz"] {
        let r = c.get("data.localhost", path).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(
            r.headers.get("connection").map(|v| v.to_str().unwrap()),
            Some("close")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn header_limits() {
    let s = Stack::start().await;
    let c = s.client();
    let big = "a".repeat(20 * 1024);
    let raw = format!("GET /api/x HTTP/1.1\r\nHost: data.localhost\r\nX-Big: {big}\r\n\r\n");
    let (resp, closed) = raw_tls(&c, "data.localhost", raw.as_bytes(), WAIT).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert!(closed);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let raw = format!("GET /api/x HTTP/1.1\r\nHost: data.localhost\r\n{many}\r\n");
    let (resp, _) = raw_tls(&c, "data.localhost", raw.as_bytes(), WAIT).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn body_limits_on_every_path() {
    let s = Stack::start().await;
    let c = s.client();
    let two_mib = Bytes::from(vec![b'x'; 2 << 20]);

    // Content-Length over the limit: 413 before any byte is forwarded.
    let req = http::Request::post("/api/upload")
        .header("host", "data.localhost")
        .body(Full::new(two_mib.clone()))
        .unwrap();
    let r = c.send(&Req::default(), req).await;
    assert_eq!(r.status, 413);
    assert_eq!(
        served(&s, "api-"),
        0,
        "refused from Content-Length, never forwarded"
    );

    // Within the limit: forwarded whole.
    let req = http::Request::post("/api/upload")
        .header("host", "data.localhost")
        .body(Full::new(Bytes::from(vec![1u8; 1000])))
        .unwrap();
    let r = c.send(&Req::default(), req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["received"], 1000);

    // Chunked (HTTP/1.1) and length-less HTTP/2 bodies are cut at the limit.
    for h2 in [false, true] {
        let chunks = (0..32).map(|_| {
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![
                b'y';
                64 * 1024
            ])))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let req = http::Request::post("/api/upload")
            .header("host", "data.localhost")
            .body(body)
            .unwrap();
        let got = c
            .send_streaming(
                &Req {
                    h2,
                    ..Req::default()
                },
                req,
            )
            .await;
        match got {
            Ok(resp) => assert_eq!(resp.status(), 413, "h2={h2}"),
            Err(e) => assert!(!h2, "h2 must get a 413, got {e}"), // h1: the connection may be closed mid-upload
        }
    }
}
