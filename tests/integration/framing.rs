//! Response framing from servers, on the path that exchanges bodyless requests in the
//! request's own task (`upstream::direct`): a scripted origin answers each path with
//! exactly the bytes below, and counts the connections it accepted.

use crate::harness::{Kill, ready_field, spawn_proxy_ready};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// What the origin writes for a request line's path, and whether it then closes.
fn script(path: &str) -> (Vec<u8>, bool) {
    let r = |s: &str, close: bool| (s.as_bytes().to_vec(), close);
    match path {
        "/chunked" => r(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
        ),
        "/length" => r("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false),
        "/to-close" => r("HTTP/1.1 200 OK\r\n\r\nuntil the end", true),
        "/both" => r(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
            false,
        ),
        "/two-lengths" => r(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            false,
        ),
        "/hints" => r(
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/short" => r("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true),
        // Answers, then closes without saying so: the kept connection goes stale.
        "/then-stale" => r("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true),
        _ => r("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false),
    }
}

/// Serves `script` on each connection (keep-alive until the script closes).
fn origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    if path == "/hang" {
                        // A server that takes far longer than the response timeout.
                        std::thread::sleep(Duration::from_secs(6));
                    }
                    let (bytes, close) = script(&path);
                    if w.write_all(&bytes).is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

struct Proxy {
    _child: Kill,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

fn proxy(origin: SocketAddr) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gatehouse.yaml"),
        "rules: rules.yaml\nlisteners:\n  http: { bind: [127.0.0.1:0], redirect: false }\naccess_log: off\nworkers: 1\n\
         timeouts:\n  response: 1s\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        format!(
            "pools:\n  app: {{ slots: 100, queue: 10, queue_timeout: 2s }}\nservices:\n  o:\n    live: blue\n    blue: [ {{ name: o-1, addr: {origin} }} ]\n\
             sites:\n  - name: s\n    hosts: [up.localhost]\n    routes:\n      - {{ name: all, path: {{ prefix: / }}, pool: app, service: o }}\n"
        ),
    )
    .unwrap();
    let (child, line) = spawn_proxy_ready(
        &dir.path().join("gatehouse.yaml"),
        &dir.path().join("gatehouse.log"),
        &[],
    );
    Proxy {
        _child: Kill(child),
        http: ready_field(&line, "http"),
        _dir: dir,
    }
}

/// One request on its own connection: (status line, headers, body as sent to the client).
fn get(p: &Proxy, method: &str, path: &str) -> (String, String, Vec<u8>) {
    let mut c = TcpStream::connect(p.http).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: up.localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no response head in {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let (status, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    let headers = headers.to_ascii_lowercase();
    if headers.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status.to_string(), headers, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap();
        b = &b[end + 2..];
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[..n]);
        b = &b[n + 2..];
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn server_response_framing_is_decoded_strictly() {
    let (addr, accepted) = origin();
    let p = proxy(addr);

    let (s, _, body) = get(&p, "GET", "/chunked");
    assert!(s.contains(" 200"), "{s}");
    assert_eq!(
        body, b"hello world",
        "chunks decoded, extension and trailer dropped"
    );
    let (s, h, body) = get(&p, "GET", "/length");
    assert!(s.contains(" 200"), "{s}");
    assert!(h.contains("content-length: 5"), "{h}");
    assert_eq!(body, b"hello");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "a chunked response that ended cleanly leaves its connection reusable"
    );

    let (_, _, body) = get(&p, "GET", "/to-close");
    assert_eq!(
        body, b"until the end",
        "no length, no coding: read to the close"
    );

    let before = accepted.load(Ordering::SeqCst);
    let (s, h, body) = get(&p, "GET", "/both");
    assert!(s.contains(" 200"), "{s}");
    assert!(
        !h.contains("content-length: 3"),
        "the length beside a coding is dropped: {h}"
    );
    assert_eq!(
        body, b"hello world",
        "Transfer-Encoding wins over Content-Length"
    );
    get(&p, "GET", "/length");
    get(&p, "GET", "/length");
    // One connection for `/both` (the one before was closed by `/to-close`), one new for
    // the next request, which the one after reuses.
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        before + 2,
        "a response framed both ways is the connection's last"
    );

    let (s, _, _) = get(&p, "GET", "/two-lengths");
    assert!(s.contains(" 502"), "differing lengths are refused: {s}");

    let (s, _, body) = get(&p, "GET", "/hints");
    assert!(s.contains(" 200"), "interim responses are skipped: {s}");
    assert_eq!(body, b"ok");

    let (s, h, body) = get(&p, "HEAD", "/length");
    assert!(s.contains(" 200"), "{s}");
    assert!(
        h.contains("content-length: 5"),
        "HEAD keeps the length: {h}"
    );
    assert!(body.is_empty());

    // Cut short by the server: the client must not get a response that looks complete
    // (hyper drops the connection; whatever arrived is less than the announced length).
    let mut c = TcpStream::connect(p.http).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /short HTTP/1.1\r\nHost: up.localhost\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    if let Some(at) = text.find("\r\n\r\n") {
        assert!(
            text[at + 4..].len() < 10,
            "a body cut short is cut short for the client too: {text}"
        );
    }

    // The server closes a kept connection after answering: the next request, sent on
    // that stale connection, is sent again on a new one and succeeds.
    let (s, _, _) = get(&p, "GET", "/then-stale");
    assert!(s.contains(" 200"), "{s}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        let (s, _, body) = get(&p, "GET", "/length");
        assert!(
            s.contains(" 200"),
            "a stale kept connection is retried: {s}"
        );
        assert_eq!(body, b"hello");
    }
}

/// The response timeout (1 s here) answers 504 once it passes, never before, on both of the
/// proxy's ways to a server (bodyless requests in their own task, and hyper's client), and
/// the next request is served as usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_slower_than_the_response_timeout_gets_a_504() {
    let (addr, _) = origin();
    let p = proxy(addr);
    for method in ["GET", "POST"] {
        let start = std::time::Instant::now();
        let (s, h, _) = get(&p, method, "/hang");
        let took = start.elapsed();
        assert!(s.contains(" 504"), "{method}: {s}");
        assert!(h.contains("text/html"), "{method}: a page of our own: {h}");
        assert!(
            took >= Duration::from_secs(1),
            "{method}: not before the timeout: {took:?}"
        );
        assert!(
            took < Duration::from_millis(2500),
            "{method}: soon after it (the deadline sweep runs every 250 ms): {took:?}"
        );
        let (s, _, body) = get(&p, "GET", "/length");
        assert!(s.contains(" 200"), "{s}");
        assert_eq!(body, b"hello");
    }
}
