//! Two tiers: the real client address carried by the PROXY protocol, from HAProxy and from
//! Gatehouse as the outer proxy; refusals for untrusted or missing headers.

use crate::harness::{Kill, Options, Req, Stack, free_port, spawn_proxy_with};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The inner tier: campus is 127.0.0.1 and 127.0.0.2; only 127.0.0.1 (the outer proxy)
/// may send PROXY headers, on both listeners; the plain listener proxies (no redirect).
fn inner() -> Options {
    Options {
        rules_edits: vec![("campus: [127.0.0.1/32]".into(), "campus: [127.0.0.1/32, 127.0.0.2/32]".into())],
        config_edits: vec![
            ("    bind: [127.0.0.1:8443]".into(), "    bind: [127.0.0.1:8443]\n    proxy_protocol_from: [127.0.0.1/32]".into()),
            ("    redirect_port: 8443".into(), "    redirect_port: 8443\n    redirect: false\n    proxy_protocol_from: [127.0.0.1/32]".into()),
        ],
        ..Options::default()
    }
}

/// The outer proxy's CSV, over a plain socket.
fn stats_csv(stats: std::net::SocketAddr) -> String {
    let mut c = std::net::TcpStream::connect(stats).unwrap();
    c.write_all(b"GET /stats;csv HTTP/1.0\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

fn from(ip: &str) -> Req {
    Req {
        from: Some(ip.parse().unwrap()),
        ..Req::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn haproxy_outer_sends_proxy_v2() {
    let s = Stack::start_with(inner()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 3s\n  timeout client 30s\n  timeout server 30s\n\
             frontend outer\n  bind 127.0.0.1:{port}\n  default_backend inner\n\
             backend inner\n  server gh {} send-proxy-v2\n",
            s.https
        ),
    )
    .unwrap();
    let _haproxy = Kill(
        Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is installed (.ci/run installs it)"),
    );
    let mut c = s.client();
    c.addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut got = None;
    for _ in 0..50 {
        if c.connect(Some("data.localhost"), &[b"http/1.1"], None)
            .await
            .is_ok()
        {
            got = Some(());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(got.is_some(), "haproxy did not start");
    let r = c
        .get_with("data.localhost", "/api/who", &from("127.0.0.2"))
        .await;
    assert_eq!(
        r.status, 200,
        "127.0.0.2 is campus, judged by its real address"
    );
    assert_eq!(
        r.json()["x_forwarded_for"],
        "127.0.0.2",
        "the server sees the real client"
    );
    let r = c.get_with("data.localhost", "/", &from("127.0.0.3")).await;
    assert_eq!(r.status, 403, "127.0.0.3 is outside");
    // A forged X-Forwarded-For through the outer proxy changes nothing.
    let req = http::Request::get("/")
        .header("host", "data.localhost")
        .header("x-forwarded-for", "127.0.0.1")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(c.send(&from("127.0.0.3"), req).await.status, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn gatehouse_outer_sends_proxy_v2() {
    let s = Stack::start_with(inner()).await;
    // The outer tier: terminates TLS, forwards everything to the inner tier's plain listener
    // with a PROXY v2 header.
    let dir = s.dir.path().join("outer");
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    let config = std::fs::read_to_string(s.config_path())
        .unwrap()
        .replace("../certs/", &format!("{}/certs/", s.dir.path().display()))
        .replace("upgrade_socket: gatehouse.sock", "")
        .replace("    proxy_protocol_from: [127.0.0.1/32]\n", "");
    // The outer tier has no TCP fronts (its rules have no TCP services).
    let config = regex::Regex::new(r"(?s)\n  tcp:.*?\ntls:")
        .unwrap()
        .replace(&config, "\ntls:")
        .into_owned();
    let config = regex::Regex::new(r"bind: 127\.0\.0\.1:\d+")
        .unwrap()
        .replace_all(&config, "bind: 127.0.0.1:0")
        .into_owned();
    std::fs::write(dir.join("config/gatehouse.yaml"), config).unwrap();
    std::fs::write(
        dir.join("rules/outer.yaml"),
        format!(
            "pools:\n  app: {{ slots: 100, queue: 100, queue_timeout: 5s }}\nservices:\n  inner:\n    live: blue\n    send_proxy: v2\n    blue: [ {{ name: inner-1, addr: {} }} ]\n\
             \x20   health: {{ path: /no-site-for-an-address-host, expect: 404, interval: 200ms, timeout: 500ms, fall: 1 }}\n\
             sites:\n  - name: all\n    hosts: [data.*, store.*]\n    routes:\n      - {{ path: {{ prefix: / }}, pool: app, service: inner }}\n",
            s.http
        ),
    )
    .unwrap();
    let (outer, https, _, outer_stats) =
        spawn_proxy_with(&dir.join("config/gatehouse.yaml"), &dir.join("log"), &[]);
    let _outer = Kill(outer);
    // The outer's HTTP checks reach the inner listener, which insists on PROXY headers
    // from the outer: they start with a v2 LOCAL header, so they pass (a refused check
    // would take inner-1 DOWN after one failure).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let csv = stats_csv(outer_stats);
    let row = csv
        .lines()
        .find(|l| l.starts_with("inner,inner-1,"))
        .unwrap_or_else(|| panic!("{csv}"));
    assert!(row.contains(",UP,") && row.contains(",L7OK,"), "{row}");
    let mut c = s.client();
    c.addr = https;
    let r = c
        .get_with("data.localhost", "/api/who", &from("127.0.0.2"))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["x_forwarded_for"], "127.0.0.2");
    assert_eq!(
        r.json()["x_forwarded_proto"],
        "https",
        "the outer tier's TLS travels in the PROXY v2 SSL TLV"
    );
    assert!(r.served_by().starts_with("api-blue-"));
    let r = c.get_with("data.localhost", "/", &from("127.0.0.3")).await;
    assert_eq!(r.status, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_or_missing_headers_are_refused() {
    let s = Stack::start_with(inner()).await;
    // An untrusted peer (127.0.0.2) sending a PROXY header: closed without an answer.
    let addr = s.http;
    let out = tokio::task::spawn_blocking(move || {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&"127.0.0.2:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
        sock.connect(&addr.into()).unwrap();
        let mut tcp: std::net::TcpStream = sock.into();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.write_all(b"PROXY TCP4 127.0.0.1 127.0.0.1 1234 80\r\nGET /api/x HTTP/1.1\r\nHost: data.localhost\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        let _ = tcp.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await
    .unwrap();
    assert_eq!(out, "", "refused: {out}");
    // A trusted peer that sends no header: refused too (TLS never starts).
    let c = s.client();
    assert!(
        c.connect(Some("data.localhost"), &[b"http/1.1"], None)
            .await
            .is_err()
    );
    assert_eq!(s.served("api-"), 0);
}

/// curl's `--haproxy-protocol` (v1) on the trusted plain listener is accepted and its
/// conveyed address used; a v1 header conveying an outside address is judged outside.
#[tokio::test(flavor = "multi_thread")]
async fn curl_haproxy_protocol_v1() {
    let s = Stack::start_with(inner()).await;
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--haproxy-protocol", "--resolve"])
        .arg(format!("data.localhost:{}:127.0.0.1", s.http.port()))
        .arg(format!("http://data.localhost:{}/api/who", s.http.port()))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert_eq!(j["x_forwarded_for"], "127.0.0.1", "{body}");
    let addr = s.http;
    let out = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.write_all(b"PROXY TCP4 127.0.0.9 127.0.0.1 1234 80\r\nGET / HTTP/1.1\r\nHost: data.localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        let _ = tcp.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await
    .unwrap();
    assert!(
        out.starts_with("HTTP/1.1 403"),
        "the conveyed 127.0.0.9 is outside: {out}"
    );
}

/// The outer tier at layer 4: a Gatehouse TCP listener relays TLS untouched to the inner
/// tier's HTTPS listener with a PROXY v2 header; the inner tier terminates TLS and judges
/// the real client.
#[tokio::test(flavor = "multi_thread")]
async fn gatehouse_tcp_front_sends_proxy_v2() {
    let s = Stack::start_with(inner()).await;
    let dir = s.dir.path().join("outer-tcp");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("gatehouse.yaml"),
        "rules: rules.yaml\nlisteners:\n  tcp:\n    - { name: edge, bind: [127.0.0.1:0], service: inner-tls }\nstats: { bind: 127.0.0.1:0 }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("rules.yaml"),
        format!(
            "services:\n  inner-tls:\n    mode: tcp\n    send_proxy: v2\n    blue: [ {{ name: inner-tls-1, addr: {} }} ]\n",
            s.https
        ),
    )
    .unwrap();
    let (outer, line) =
        crate::harness::spawn_proxy_ready(&dir.join("gatehouse.yaml"), &dir.join("log"), &[]);
    let _outer = Kill(outer);
    let mut c = s.client();
    c.addr = crate::harness::ready_field(&line, "tcp");
    let r = c
        .get_with("data.localhost", "/api/who", &from("127.0.0.2"))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["x_forwarded_for"], "127.0.0.2");
    let r = c.get_with("data.localhost", "/", &from("127.0.0.3")).await;
    assert_eq!(
        r.status, 403,
        "127.0.0.3 is outside, though the TCP hop came from 127.0.0.1"
    );
}

/// One request over a new plain connection that opens with a PROXY v1 header conveying
/// `client`; the connection is left open. `None`: closed without an answer.
fn proxied_request(
    addr: std::net::SocketAddr,
    client: &str,
) -> (std::net::TcpStream, Option<String>) {
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let head = format!(
        "PROXY TCP4 {client} 127.0.0.1 1234 80\r\nGET /records/x/files/1K.bin HTTP/1.1\r\nHost: store.localhost\r\n\r\n"
    );
    let _ = tcp.write_all(head.as_bytes());
    let mut buf = [0u8; 4096];
    let got = match tcp.read(&mut buf) {
        Ok(n) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    };
    (tcp, got)
}

/// Hostile item 11: behind an outer proxy, the per-client connection cap counts the
/// client each PROXY header conveys, not the outer proxy (which speaks for everyone).
/// Before, the outer proxy's third connection was closed whoever it carried.
#[tokio::test(flavor = "multi_thread")]
async fn the_connection_cap_counts_the_conveyed_client() {
    let mut o = inner();
    o.config_edits.push((
        "  max_connections: 20000".into(),
        "  max_connections: 20000\n  max_connections_per_client: 2".into(),
    ));
    let s = Stack::start_with(o).await;
    let addr = s.http;
    tokio::task::spawn_blocking(move || {
        let mut open = Vec::new();
        for i in 1..=4 {
            let (tcp, got) = proxied_request(addr, &format!("192.0.2.{i}"));
            let got = got.unwrap_or_default();
            assert!(got.starts_with("HTTP/1.1 200"), "client {i}: {got:?}");
            open.push(tcp);
        }
        for i in 1..=3 {
            let (tcp, got) = proxied_request(addr, "198.51.100.7");
            match i {
                3 => assert!(got.is_none(), "a third connection of one client: {got:?}"),
                _ => assert!(got.is_some_and(|g| g.starts_with("HTTP/1.1 200"))),
            }
            open.push(tcp);
        }
    })
    .await
    .unwrap();
}
