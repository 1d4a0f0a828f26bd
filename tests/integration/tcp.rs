//! Layer 4: TCP listeners in front of real redis servers, TLS passthrough by SNI to a real
//! `openssl s_server`, listener limits, idle timeouts and health checks on another port.

use crate::harness::{Kill, free_port, ready_field, spawn_proxy_ready, wait_until};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A real redis-server (Debian package) on `port`, answering PING before this returns.
pub fn redis(port: u16) -> Kill {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (.ci/run installs it)");
    let k = Kill(child);
    for _ in 0..100 {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port))
            && ping(&mut c).is_ok()
        {
            return k;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("redis-server on {port} did not start");
}

/// One inline PING on a raw connection; `Ok` only for `+PONG`.
fn ping(c: &mut TcpStream) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(3)))?;
    c.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 7];
    c.read_exact(&mut buf)?;
    if &buf == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("{buf:?}")))
    }
}

/// Whether the proxy closed `c` within `limit` (EOF or reset), without us writing.
fn closed_within(c: &mut TcpStream, limit: Duration) -> bool {
    c.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 16];
    match c.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// `redis-cli` (Debian package) through the proxy.
fn redis_cli(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["10", "redis-cli", "-h", &addr.ip().to_string()])
        .args(["-p", &addr.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tcp_port_of(info: &str) -> Option<u16> {
    info.lines()
        .find_map(|l| l.strip_prefix("tcp_port:"))
        .and_then(|p| p.trim().parse().ok())
}

/// A self-signed certificate and key for `name`, written as `<stem>.pem` / `<stem>.key`.
fn cert(dir: &Path, stem: &str, name: &str) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let c = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), c.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
}

struct Proxy {
    _child: Kill,
    line: String,
    dir: tempfile::TempDir,
}

impl Proxy {
    /// Gatehouse with an HTTPS listener (`x.localhost` terminated: every path 403), one TCP
    /// listener `front` (`listener` is the rest of its YAML flow map) and `rules`.
    fn start(listener: &str, rules: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        cert(dir.path(), "gh", "x.localhost");
        std::fs::write(
            dir.path().join("gatehouse.yaml"),
            format!(
                "rules: rules.yaml\nlisteners:\n  https: {{ bind: [127.0.0.1:0] }}\n  tcp:\n    - {{ name: front, bind: [127.0.0.1:0], {listener} }}\n\
                 tls: {{ certificates: [ {{ cert: gh.pem, key: gh.key }} ] }}\nstats: {{ bind: 127.0.0.1:0 }}\naccess_log: off\nworkers: 2\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("rules.yaml"),
            format!("{rules}\nsites:\n  - {{ name: x, hosts: [x.localhost], routes: [ {{ deny: 403 }} ] }}\n"),
        )
        .unwrap();
        let (child, line) = spawn_proxy_ready(
            &dir.path().join("gatehouse.yaml"),
            &dir.path().join("gatehouse.log"),
            &[],
        );
        Proxy {
            _child: Kill(child),
            line,
            dir,
        }
    }

    fn addr(&self, key: &str) -> SocketAddr {
        ready_field(&self.line, key)
    }

    fn csv(&self) -> String {
        let stats = self.addr("stats");
        let mut c = TcpStream::connect(stats).unwrap();
        c.write_all(b"GET /stats;csv HTTP/1.0\r\n\r\n").unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    }

    fn get(&self, path: &str) -> String {
        let mut c = TcpStream::connect(self.addr("stats")).unwrap();
        write!(c, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    }

    /// The CSV row of `px,sv` as (column name → value).
    fn row(&self, px: &str, sv: &str) -> std::collections::HashMap<String, String> {
        let csv = self.csv();
        let body = csv.split_once("\r\n\r\n").map_or(csv.as_str(), |x| x.1);
        let mut lines = body.lines();
        let head: Vec<String> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .map(String::from)
            .collect();
        let row = lines
            .find(|l| l.starts_with(&format!("{px},{sv},")))
            .unwrap_or_else(|| panic!("no row {px},{sv} in {body}"));
        head.into_iter()
            .zip(row.split(',').map(String::from))
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gatehouse.log")).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_nodes_behind_a_tcp_listener() {
    let (p1, p2) = (free_port(), free_port());
    let r1 = redis(p1);
    let _r2 = redis(p2);
    let proxy = Proxy::start(
        "service: redis",
        &format!(
            "services:\n  redis:\n    mode: tcp\n    blue:\n      - {{ name: redis-1, addr: 127.0.0.1:{p1} }}\n      - {{ name: redis-2, addr: 127.0.0.1:{p2} }}\n    health: {{ interval: 300ms, timeout: 200ms, rise: 2, fall: 2 }}\n"
        ),
    );
    let front = proxy.addr("tcp");
    assert_eq!(redis_cli(front, &["PING"]).trim(), "PONG");
    assert_eq!(redis_cli(front, &["SET", "k", "v"]).trim(), "OK");
    let ports: Vec<Option<u16>> = (0..4)
        .map(|_| tcp_port_of(&redis_cli(front, &["INFO", "server"])))
        .collect();
    assert!(
        ports.contains(&Some(p1)) && ports.contains(&Some(p2)),
        "round robin over both nodes: {ports:?}"
    );

    // Two long-lived sessions, one on each node (round robin).
    let mut a = TcpStream::connect(front).unwrap();
    let mut b = TcpStream::connect(front).unwrap();
    ping(&mut a).unwrap();
    ping(&mut b).unwrap();

    drop(r1); // SIGKILL: node 1 dies with sessions open
    let closed = [
        closed_within(&mut a, Duration::from_secs(3)),
        closed_within(&mut b, Duration::from_secs(3)),
    ];
    assert_eq!(
        closed.iter().filter(|c| **c).count(),
        1,
        "exactly the session on the dead node is closed: {closed:?}"
    );
    let survivor = if closed[0] { &mut b } else { &mut a };
    ping(survivor).expect("the other node's session carries on");

    // New connections go to the live node at once (a refused connect is retried on
    // another server), and always after the checks have taken node 1 DOWN.
    for _ in 0..4 {
        assert_eq!(
            tcp_port_of(&redis_cli(front, &["INFO", "server"])),
            Some(p2)
        );
    }
    wait_until(
        "redis-1 DOWN in stats",
        Duration::from_secs(5),
        async || proxy.row("redis", "redis-1")["status"] == "DOWN",
    )
    .await;
    for _ in 0..4 {
        assert_eq!(
            tcp_port_of(&redis_cli(front, &["INFO", "server"])),
            Some(p2)
        );
    }

    let fe = proxy.row("front", "FRONTEND");
    assert_eq!(fe["mode"], "tcp");
    assert_eq!(fe["status"], "OPEN");
    let n = |m: &std::collections::HashMap<String, String>, k: &str| -> u64 {
        m[k].parse().unwrap_or(0)
    };
    wait_until(
        "sessions counted as they end",
        Duration::from_secs(5),
        async || n(&proxy.row("front", "FRONTEND"), "stot") >= 10,
    )
    .await;
    let fe = proxy.row("front", "FRONTEND");
    assert!(
        n(&fe, "bin") > 0 && n(&fe, "bout") > 1000,
        "bytes counted: {fe:?}"
    );
    let s2 = proxy.row("redis", "redis-2");
    assert_eq!((s2["mode"].as_str(), s2["status"].as_str()), ("tcp", "UP"));
    assert!(n(&s2, "bout") > 0);
    let metrics = proxy.get("/metrics");
    assert!(
        metrics.contains(
            "gatehouse_server_up{service=\"redis\",colour=\"blue\",server=\"redis-1\"} 0"
        ),
        "{metrics}"
    );
    let sessions = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse_listener_sessions_total{listener=\"front\"} "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(sessions >= 10, "{metrics}");
    let page = proxy.get("/stats");
    assert!(
        page.contains("data-tcp=\"front\""),
        "TCP table on the stats page"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_listener_limit_idle_timeout_and_check_port() {
    let port = free_port();
    let _redis = redis(port);
    // The health check is an HTTP GET on another port (like OpenSearch's /_cluster/health
    // or RabbitMQ's management port): a python http.server serving `ping`.
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("ping"), "ok").unwrap();
    let check_port = free_port();
    let http = Kill(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &check_port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(web.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    let proxy = Proxy::start(
        "service: redis, max_connections: 2, idle_timeout: 3s",
        &format!(
            "services:\n  redis:\n    mode: tcp\n    blue:\n      - {{ name: node-1, addr: 127.0.0.1:{port} }}\n    health: {{ path: /ping, port: {check_port}, interval: 300ms, timeout: 200ms, rise: 1, fall: 2 }}\n"
        ),
    );
    let front = proxy.addr("tcp");
    wait_until(
        "the HTTP check on the other port passes",
        Duration::from_secs(10),
        async || proxy.row("redis", "node-1")["check_status"] == "L7OK",
    )
    .await;

    // Limit 2: a third connection waits in the backlog until one of the two closes.
    let mut a = TcpStream::connect(front).unwrap();
    let mut b = TcpStream::connect(front).unwrap();
    ping(&mut a).unwrap();
    ping(&mut b).unwrap();
    let mut c = TcpStream::connect(front).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    c.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 7];
    assert!(
        c.read_exact(&mut buf).is_err(),
        "a third session must not be served while two are open"
    );
    drop(a);
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.read_exact(&mut buf).expect("served once a slot is free");
    assert_eq!(&buf, b"+PONG\r\n");

    // Idle timeout 1s: silent sessions are closed by the proxy.
    assert!(
        closed_within(&mut b, Duration::from_secs(4)),
        "idle session closed"
    );
    assert!(
        closed_within(&mut c, Duration::from_secs(4)),
        "idle session closed"
    );

    // The check's port dies while redis is fine: the node goes DOWN by its check,
    // and a client finds no server (closed at once).
    drop(http);
    wait_until(
        "node-1 DOWN by its HTTP check",
        Duration::from_secs(5),
        async || proxy.row("redis", "node-1")["status"] == "DOWN",
    )
    .await;
    let mut d = TcpStream::connect(front).unwrap();
    assert!(
        closed_within(&mut d, Duration::from_secs(3)),
        "no server: closed"
    );
    assert!(proxy.log().contains("DOWN"), "{}", proxy.log());
}

/// `openssl s_client` through the proxy; stdin is `input`, output is everything printed.
fn s_client(addr: SocketAddr, sni: &str, input: &str) -> String {
    let mut child = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", &addr.to_string()])
        .args(["-servername", sni, "-ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A TLS server (`openssl s_server`) whose certificate Gatehouse does not hold, and a
/// proxy passing `pass.localhost` through to it (`extra`: more keys of that passthrough).
async fn passthrough_stack(extra: &str, networks: &str) -> (Kill, tempfile::TempDir, Proxy) {
    let port = free_port();
    let certs = tempfile::tempdir().unwrap();
    cert(certs.path(), "pass", "pass.localhost");
    let server = Kill(
        Command::new("openssl")
            .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
            .args(["-cert", "pass.pem", "-key", "pass.key", "-www", "-quiet"])
            .current_dir(certs.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl"),
    );
    let proxy = Proxy::start(
        "service: other",
        &format!(
            "{networks}services:\n  pass:\n    mode: tcp\n    blue:\n      - {{ name: pass-1, addr: 127.0.0.1:{port} }}\n  other:\n    mode: tcp\n    blue:\n      - {{ name: other-1, addr: 127.0.0.1:9 }}\n\
             passthrough:\n  - {{ name: pass, hosts: [pass.localhost], service: pass{extra} }}\n"
        ),
    );
    wait_until("s_server listening", Duration::from_secs(5), async || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    (server, certs, proxy)
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_passthrough_by_sni() {
    let (_server, _certs, proxy) = passthrough_stack("", "").await;
    let https = proxy.addr("https");

    let out = s_client(https, "pass.localhost", "GET / HTTP/1.0\r\n\r\n");
    assert!(
        out.contains("CN = pass.localhost") || out.contains("CN=pass.localhost"),
        "the server's own certificate: {out}"
    );
    assert!(out.contains("s_server"), "the server's own answer: {out}");

    let out = s_client(
        https,
        "x.localhost",
        "GET / HTTP/1.1\r\nHost: x.localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(
        out.contains("CN = x.localhost") || out.contains("CN=x.localhost"),
        "other names are terminated with Gatehouse's certificate: {out}"
    );
    assert!(
        out.contains("HTTP/1.1 403"),
        "and routed by the rules: {out}"
    );

    // The session is counted when the relay ends, a moment after s_client exits.
    wait_until(
        "the passthrough session counted",
        Duration::from_secs(5),
        async || proxy.row("pass", "FRONTEND")["stot"] == "1",
    )
    .await;
    let fe = proxy.row("pass", "FRONTEND");
    assert_eq!(fe["mode"], "tcp");
    assert!(
        fe["bin"].parse::<u64>().unwrap_or(0) > 100,
        "ClientHello counted: {fe:?}"
    );
}

/// What a server answers to a ClientHello for `sni` sent from `ip` (empty: closed first).
fn hello_answer(ip: &str, addr: SocketAddr, sni: &str) -> Vec<u8> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let mut tcp = connect_from(ip, addr);
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    tcp.write_all(&hello).unwrap();
    let mut got = vec![0u8; 5];
    match tcp.read(&mut got) {
        Ok(n) => got.truncate(n),
        Err(_) => got.clear(),
    }
    got
}

/// Hostile item 11: a passthrough name relays only the networks in its `allow_from`
/// (judged on the client, as routes are); before, anyone reached the server behind it.
#[tokio::test(flavor = "multi_thread")]
async fn tls_passthrough_allow_list() {
    let networks = "networks:\n  inside: [127.0.0.1/32]\n";
    let (_server, _certs, proxy) = passthrough_stack(", allow_from: [inside]", networks).await;
    let https = proxy.addr("https");
    let inside = hello_answer("127.0.0.1", https, "pass.localhost");
    assert_eq!(
        inside.first(),
        Some(&0x16),
        "the server's handshake: {inside:?}"
    );
    let outside = hello_answer("127.0.0.2", https, "pass.localhost");
    assert!(outside.is_empty(), "an outsider was relayed: {outside:?}");
    // Names that are not passed through are still served to everyone.
    let other = hello_answer("127.0.0.2", https, "x.localhost");
    assert_eq!(
        other.first(),
        Some(&0x16),
        "Gatehouse's own handshake: {other:?}"
    );
}

/// Connects to `addr` from `ip`.
fn connect_from(ip: &str, addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(ip.parse().unwrap(), 0).into())
        .unwrap();
    sock.connect(&addr.into()).unwrap();
    sock.into()
}

/// Hostile item 11: a TCP listener relays only the networks in its `allow_from`, and one
/// client address holds at most `max_connections_per_client` sessions (before, anyone
/// reached the service, as many times as it liked).
#[tokio::test(flavor = "multi_thread")]
async fn tcp_listener_allow_list_and_per_client_cap() {
    let port = free_port();
    let _redis = redis(port);
    let proxy = Proxy::start(
        "service: redis, allow_from: [127.0.0.1/32], max_connections_per_client: 2",
        &format!(
            "services:\n  redis:\n    mode: tcp\n    blue:\n      - {{ name: node-1, addr: 127.0.0.1:{port} }}\n    health: {{ interval: 300ms, timeout: 200ms, rise: 1, fall: 2 }}\n"
        ),
    );
    let front = proxy.addr("tcp");
    tokio::task::spawn_blocking(move || {
        let mut outsider = connect_from("127.0.0.2", front);
        let _ = outsider.write_all(b"PING\r\n");
        assert!(
            closed_within(&mut outsider, Duration::from_secs(2)),
            "an outsider was relayed"
        );
        let mut a = connect_from("127.0.0.1", front);
        let mut b = connect_from("127.0.0.1", front);
        ping(&mut a).expect("first session");
        ping(&mut b).expect("second session");
        let mut c = connect_from("127.0.0.1", front);
        let _ = c.write_all(b"PING\r\n");
        assert!(
            closed_within(&mut c, Duration::from_secs(2)),
            "a third session was relayed"
        );
        drop(a);
        std::thread::sleep(Duration::from_millis(300));
        let mut d = connect_from("127.0.0.1", front);
        ping(&mut d).expect("a slot given back is taken again");
    })
    .await
    .unwrap();
}
