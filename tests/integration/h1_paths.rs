//! HTTP/1.1 served by both paths on one connection: Gatehouse's own reader for bodyless
//! GET and HEAD requests, hyper for everything else, in the order the client sent them.

use crate::harness::{Stack, raw_tls};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

/// One response cut from the byte stream: status, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Cuts `bytes` into responses; `head_only[i]` marks the answers to HEAD (no body).
fn answers(mut bytes: &[u8], head_only: &[bool]) -> Vec<Answer> {
    let mut out = Vec::new();
    for &head in head_only {
        let mut h = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut h);
        let Ok(httparse::Status::Complete(n)) = r.parse(bytes) else {
            break;
        };
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let status = r.code.unwrap();
        bytes = &bytes[n..];
        let len = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
        let len = if head { 0 } else { len };
        let body = bytes[..len].to_vec();
        bytes = &bytes[len..];
        out.push(Answer {
            status,
            headers,
            body,
        });
    }
    assert!(
        bytes.is_empty(),
        "bytes after the last answer: {:?}",
        String::from_utf8_lossy(bytes)
    );
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_cross_both_paths_in_order() {
    let s = Stack::start().await;
    let c = s.client();
    let sent = concat!(
        "GET /one?x=1 HTTP/1.1\r\nHost: data.localhost\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
        "HEAD /two HTTP/1.1\r\nHost: data.localhost\r\n\r\n",
        "GET /nowhere HTTP/1.1\r\nHost: unknown.localhost\r\n\r\n",
        "POST /api/three HTTP/1.1\r\nHost: data.localhost\r\nContent-Length: 5\r\n\r\nhello",
        "GET /four HTTP/1.1\r\nHost: data.localhost\r\nConnection: close\r\n\r\n",
    );
    let (resp, closed) = raw_tls(&c, "data.localhost", sent.as_bytes(), WAIT).await;
    assert!(closed, "Connection: close must close: {resp}");
    let a = answers(resp.as_bytes(), &[false, true, false, false, false]);
    assert_eq!(a.len(), 5, "{resp}");

    // GET, our reader: the server saw the path and query, and our forwarding headers,
    // not the client's.
    assert_eq!(a[0].status, 200);
    let one = String::from_utf8_lossy(&a[0].body);
    assert!(one.contains("\"path\":\"/one\""), "{one}");
    assert!(one.contains("\"query\":\"x=1\""), "{one}");
    assert!(
        !one.contains("6.6.6.6"),
        "client XFF must be replaced: {one}"
    );
    assert!(a[0].header("date").is_some());

    // HEAD: the length GET would get, and no body bytes (the next answer parses).
    assert_eq!(a[1].status, 200);
    let len: usize = a[1].header("content-length").unwrap().parse().unwrap();
    assert!(len > 0, "HEAD keeps the length");

    // A page of our own (no such site): framed by its length.
    assert_eq!(
        a[2].status, 421,
        "SNI data.localhost, Host unknown.localhost"
    );
    assert_eq!(
        a[2].header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        a[2].body.len()
    );

    // POST with a body: hyper's, after our reader handed it the bytes it had read.
    assert_eq!(a[3].status, 200);
    assert_eq!(String::from_utf8_lossy(&a[3].body), "{\"received\":5}\n");

    assert_eq!(a[4].status, 200);
    assert!(String::from_utf8_lossy(&a[4].body).contains("\"path\":\"/four\""));
    assert_eq!(a[4].header("connection"), Some("close"));
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_requests_in_separate_writes_share_a_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Stack::start().await;
    let c = s.client();
    let mut tls = c
        .connect(Some("data.localhost"), &[b"http/1.1"], None)
        .await
        .unwrap();
    for i in 0..3 {
        let last = i == 2;
        let req = format!(
            "GET /k{i} HTTP/1.1\r\nHost: data.localhost\r\n{}\r\n",
            if last { "Connection: close\r\n" } else { "" }
        );
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Read until this answer is whole (its length is known from its head).
        loop {
            let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0 || last, "connection closed after {i} answers");
            got.extend_from_slice(&buf[..n]);
            let mut h = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut h);
            if let Ok(httparse::Status::Complete(head)) = r.parse(&got) {
                let len: usize = r
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                    .unwrap();
                if got.len() >= head + len {
                    assert_eq!(got.len(), head + len, "nothing after the answer");
                    let body = String::from_utf8_lossy(&got[head..]);
                    assert!(body.contains(&format!("\"path\":\"/k{i}\"")), "{body}");
                    break;
                }
            }
            if n == 0 {
                panic!("closed before the whole answer");
            }
        }
    }
    // After `Connection: close` the proxy closes.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "still open after Connection: close"
    );
}
