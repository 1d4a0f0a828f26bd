//! Test harness: the real `gatehouse` binary with the shipped rules, stand-ins on ephemeral ports.
//!
//! The shipped `rules/repository.yaml` and `config/gatehouse.yaml` are used as they are,
//! except that addresses are rewritten to ports the test bound itself, so every test
//! exercises the deployment ops will run.

use bytes::Bytes;
use gatehouse::demo::{self, certs};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, ServerName};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A running proxy process and its stand-in stack.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub stats: SocketAddr,
    pub child: Child,
    pub standins: Arc<demo::Stack>,
    pub ca: Vec<CertificateDer<'static>>,
    pub stderr_log: PathBuf,
    /// Ports of dead servers, held so nothing else answers on them.
    pub _reserved: Vec<socket2::Socket>,
}

/// How to shape the rules and config before starting.
#[derive(Default, Clone)]
pub struct Options {
    /// Replacements applied to the rules text.
    pub rules_edits: Vec<(String, String)>,
    /// Replacements applied to the config text.
    pub config_edits: Vec<(String, String)>,
    /// Server names whose stand-in is not started (a dead server).
    pub dead: Vec<String>,
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_with(Options::default()).await
    }

    /// The stack with the config edited: each `(from, to)` replaces `from` once.
    pub async fn with_config(edits: &[(&str, &str)]) -> Stack {
        let config_edits = edits.iter().map(|(a, b)| (a.to_string(), b.to_string()));
        Stack::start_with(Options {
            config_edits: config_edits.collect(),
            ..Options::default()
        })
        .await
    }

    pub async fn start_with(opts: Options) -> Stack {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rules =
            std::fs::read_to_string(root().join("rules/repository.yaml")).expect("rules");
        let mut config =
            std::fs::read_to_string(root().join("config/gatehouse.yaml")).expect("config");
        for (a, b) in &opts.rules_edits {
            rules = rules.replace(a, b);
        }
        for (a, b) in &opts.config_edits {
            config = config.replace(a, b);
        }
        // Stand-ins on ephemeral ports, named as the rules name them.
        let standins = Arc::new(demo::Stack::default());
        let addr_re = regex::Regex::new(r"\{ name: ([a-z0-9-]+), +addr: (127\.0\.0\.1:\d+)[ ,]")
            .expect("regex");
        let pairs: Vec<(String, String)> = addr_re
            .captures_iter(&rules.clone())
            .map(|c| (c[1].to_string(), c[2].to_string()))
            .collect();
        let mut reserved = Vec::new();
        for (name, addr) in pairs {
            if opts.dead.contains(&name) {
                // Bound but never listening, for the stack's life: connects are refused,
                // and no other test's listener can be given the port meanwhile (a
                // released port was once handed to another test's proxy, whose redirect
                // then answered for the "dead" server).
                let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .expect("socket");
                let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
                sock.bind(&any.into()).expect("bind");
                let bound = sock.local_addr().expect("addr").as_socket().expect("inet");
                rules = rules.replace(&addr, &bound.to_string());
                reserved.push(sock);
                continue;
            }
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let new_addr = listener.local_addr().expect("addr").to_string();
            rules = rules.replace(&addr, &new_addr);
            drop(listener);
            let addr: SocketAddr = new_addr.parse().expect("addr");
            standins.start(&name, addr).await.expect("stand-in");
        }
        // The stats port is chosen here (not 0) so CLI commands reading the config reach it.
        // Its reservation stays bound for the stack's life (SO_REUSEPORT, never listening,
        // so the proxy binds beside it): released, the port could go to another test's
        // proxy binding port 0, and with SO_REUSEPORT both would then answer on it (a
        // stats request once landed in the wrong process and was cut off).
        let hold = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        hold.set_reuse_address(true).expect("reuseaddr");
        hold.set_reuse_port(true).expect("reuseport");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        hold.bind(&any.into()).expect("bind");
        let stats_port = hold
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet")
            .port();
        reserved.push(hold);
        config = config.replace(
            "bind: 127.0.0.1:8404",
            &format!("bind: 127.0.0.1:{stats_port}"),
        );
        for port in ["8443", "8080", "8404", "8920", "8672"] {
            config = config.replace(&format!("127.0.0.1:{port}]"), "127.0.0.1:0]");
            config = config.replace(&format!("bind: 127.0.0.1:{port}"), "bind: 127.0.0.1:0");
        }
        std::fs::create_dir_all(dir.path().join("config")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("rules/pages")).expect("mkdir");
        std::fs::write(dir.path().join("config/gatehouse.yaml"), config).expect("write");
        std::fs::write(dir.path().join("rules/repository.yaml"), rules).expect("write");
        std::fs::create_dir_all(dir.path().join("lists")).expect("mkdir");
        for f in [
            "rules/pages/maintenance.html",
            "rules/pages/too-many-requests.html",
            "lists/deny-agents.txt",
        ] {
            std::fs::copy(root().join(f), dir.path().join(f)).expect("copy");
        }
        certs::ensure(&dir.path().join("certs")).expect("certs");
        let ca = CertificateDer::pem_file_iter(dir.path().join("certs/ca.pem"))
            .expect("ca")
            .collect::<Result<Vec<_>, _>>()
            .expect("ca");
        let stderr_log = dir.path().join("stderr.log");
        let (child, https, http, stats) =
            spawn_proxy(&dir.path().join("config/gatehouse.yaml"), &stderr_log);
        Stack {
            dir,
            https,
            http,
            stats,
            child,
            standins,
            ca,
            stderr_log,
            _reserved: reserved,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory of the proxy process so far, in bytes (VmHWM).
    pub fn peak_rss(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:") * 1024
    }

    /// Stops a stand-in and waits until the stop has taken effect (its listener closed,
    /// its connections cut), as a killed process would be: requests sent after this
    /// returns can never be answered by it.
    pub async fn stop_server(&self, name: &str) {
        assert!(self.standins.stop(name), "{name}");
        let stand_in = self.standins.get(name).expect("stand-in");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !stand_in.stopped.load(std::sync::atomic::Ordering::Acquire) {
            assert!(Instant::now() < deadline, "{name} did not stop");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn start_server(&self, name: &str) {
        assert!(
            self.standins.restart(name).await.expect("restart"),
            "{name}"
        );
    }

    /// Requests (health checks excluded) served by stand-ins whose name starts with `prefix`.
    pub fn served(&self, prefix: &str) -> u64 {
        self.standins
            .all()
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, s)| s.served.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    /// The stats JSON.
    pub async fn stats_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stats_get("/stats?format=json").await.1).expect("json")
    }

    /// One service's entry in the stats JSON.
    pub async fn service_json(&self, name: &str) -> serde_json::Value {
        let j = self.stats_json().await;
        let services = j["services"].as_array().expect("services");
        let found = services.iter().find(|v| v["name"] == name);
        found
            .cloned()
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    /// Asserts that no server of `service` counted a response error (nothing the test's
    /// clients did was blamed on a server).
    pub async fn assert_no_server_blamed(&self, service: &str) {
        let svc = self.service_json(service).await;
        for srv in svc["servers"].as_array().expect("servers") {
            assert_eq!(srv["counters"]["response_errors"], 0, "{srv}");
        }
    }

    /// A server's status word from the stats JSON.
    pub async fn server_status(&self, name: &str) -> String {
        let j = self.stats_json().await;
        for svc in j["services"].as_array().expect("services") {
            for s in svc["servers"].as_array().expect("servers") {
                if s["name"] == name {
                    return s["status"].as_str().unwrap_or("").to_string();
                }
            }
        }
        panic!("no server {name}");
    }

    pub fn rules_path(&self) -> PathBuf {
        self.dir.path().join("rules/repository.yaml")
    }

    pub fn client(&self) -> Client {
        Client::new(&self.ca, self.https)
    }

    /// The config file the proxy runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config/gatehouse.yaml")
    }

    /// Runs the gatehouse binary with `args` (e.g. `switch`, `explain`): (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(args)
            .output()
            .expect("gatehouse");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// Sends SIGHUP (reload) to the proxy we started.
    pub fn hup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .map(|s| s.success());
        assert_eq!(ok.ok(), Some(true));
    }

    /// GET on the stats listener: (status, body).
    pub async fn stats_get(&self, path: &str) -> (u16, String) {
        let tcp = TcpStream::connect(self.stats).await.expect("stats");
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .expect("h1");
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", "stats")
            .body(Full::new(Bytes::new()))
            .expect("req");
        let resp = send.send_request(req).await.expect("send");
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A loopback port free right now (for peers that cannot bind port 0 and report it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Starts `gatehouse run` and waits for its ready line.
pub fn spawn_proxy(
    config: &Path,
    stderr_log: &Path,
) -> (Child, SocketAddr, SocketAddr, SocketAddr) {
    spawn_proxy_with(config, stderr_log, &[])
}

/// Starts `gatehouse run` with extra arguments (e.g. `--upgrade`) and waits for its ready line.
pub fn spawn_proxy_with(
    config: &Path,
    stderr_log: &Path,
    extra: &[&str],
) -> (Child, SocketAddr, SocketAddr, SocketAddr) {
    let (child, line) = spawn_proxy_ready(config, stderr_log, extra);
    let (h, p, s) = (
        ready_field(&line, "https"),
        ready_field(&line, "http"),
        ready_field(&line, "stats"),
    );
    (child, h, p, s)
}

/// Starts `gatehouse run` and returns it with its ready line.
pub fn spawn_proxy_ready(config: &Path, stderr_log: &Path, extra: &[&str]) -> (Child, String) {
    let log = std::fs::File::create(stderr_log).expect("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["run", "-c"])
        .arg(config)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn gatehouse");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("ready line");
    assert!(
        line.starts_with("gatehouse ready"),
        "no ready line: {line:?}; log: {}",
        std::fs::read_to_string(stderr_log).unwrap_or_default()
    );
    (child, line)
}

/// The first address of `key=` in a ready line (`tcp=` entries are `name@addr`).
pub fn ready_field(line: &str, key: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.split(',').next())
        .map(|v| v.rsplit('@').next().unwrap_or(v))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

/// A TLS client that can choose SNI, ALPN and its source address.
#[derive(Clone)]
pub struct Client {
    roots: Arc<rustls::RootCertStore>,
    pub addr: SocketAddr,
}

/// One request's knobs.
#[derive(Clone, Default)]
pub struct Req {
    pub sni: Option<String>,
    pub h2: bool,
    pub from: Option<IpAddr>,
}

pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Got {
    pub fn served_by(&self) -> String {
        self.headers
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl Client {
    pub fn new(ca: &[CertificateDer<'static>], addr: SocketAddr) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for c in ca {
            roots.add(c.clone()).expect("ca");
        }
        Client {
            roots: Arc::new(roots),
            addr,
        }
    }

    /// Opens a TLS connection with the given SNI (None: connect by IP, no SNI) and ALPN.
    pub async fn connect(
        &self,
        sni: Option<&str>,
        alpn: &[&[u8]],
        from: Option<IpAddr>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let cfg = self.tls_config(alpn);
        let name = match sni {
            Some(s) => ServerName::try_from(s.to_string()).expect("name"),
            None => ServerName::IpAddress(self.addr.ip().into()),
        };
        let sock = TcpSocket::new_v4()?;
        if let Some(ip) = from {
            sock.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = sock.connect(self.addr).await?;
        TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await
    }

    /// An HTTP/2 connection over TLS to `sni` from `from`, with the stream window
    /// `window` (hyper's default when `None`): the request sender and the task driving
    /// the connection (it ends when the connection does).
    pub async fn h2(
        &self,
        sni: &str,
        from: Option<IpAddr>,
        window: Option<u32>,
    ) -> (
        hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
        tokio::task::JoinHandle<hyper::Result<()>>,
    ) {
        let tls = self
            .connect(Some(sni), &[b"h2"], from)
            .await
            .expect("connect");
        let mut b = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        if let Some(w) = window {
            b.initial_stream_window_size(w);
        }
        let (send, conn) = b
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("h2 handshake");
        (send, tokio::spawn(conn))
    }

    /// A TLS client config trusting the demo CA, for tests that keep one across
    /// connections (session resumption).
    pub fn tls_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        self.tls_config_versions(alpn, rustls::DEFAULT_VERSIONS)
    }

    /// As `tls_config`, offering only `versions` (a TLS 1.2 client, say).
    pub fn tls_config_versions(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        cfg
    }

    /// Opens a TLS connection to `sni` with `cfg`.
    pub async fn connect_with(
        &self,
        cfg: Arc<rustls::ClientConfig>,
        sni: &str,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(sni.to_string()).expect("name");
        let tcp = TcpStream::connect(self.addr).await?;
        TlsConnector::from(cfg).connect(name, tcp).await
    }

    /// TLS 1.3 with the request sent in the same write as the client's Finished (the
    /// server reads both in its last handshake read); returns what came back before the
    /// server closed or `wait` passed. Blocking: call from `spawn_blocking`.
    pub fn request_with_finished(&self, sni: &str, request: &[u8], wait: Duration) -> String {
        use std::io::{Read, Write};
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(sni.to_string()).expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
        let mut sock = std::net::TcpStream::connect(self.addr).expect("connect");
        sock.set_read_timeout(Some(wait)).expect("timeout");
        // ClientHello out, server flight in, until our Finished is ready to go.
        while conn.is_handshaking() {
            while conn.wants_write() {
                conn.write_tls(&mut sock).expect("write");
            }
            if conn.is_handshaking() {
                conn.read_tls(&mut sock).expect("read");
                conn.process_new_packets().expect("handshake");
            }
        }
        // Finished and the request, one write.
        conn.writer().write_all(request).expect("request");
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).expect("buffer");
        }
        sock.write_all(&out).expect("send");
        let mut got = Vec::new();
        loop {
            match conn.read_tls(&mut sock) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if conn.process_new_packets().is_err() {
                break;
            }
            let mut buf = [0u8; 4096];
            while let Ok(n) = conn.reader().read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            if String::from_utf8_lossy(&got).contains("\r\n\r\n") {
                break;
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Sends one request on a new connection and reads the whole answer.
    pub async fn send(&self, r: &Req, req: Request<Full<Bytes>>) -> Got {
        let resp = self.send_streaming(r, req).await.expect("request");
        let version = resp.version();
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Got {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            version,
        }
    }

    /// Sends one request on a new connection; the body is left to the caller.
    pub async fn send_streaming<B>(
        &self,
        r: &Req,
        req: Request<B>,
    ) -> hyper::Result<Response<Incoming>>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let host = req
            .headers()
            .get("host")
            .and_then(|v| v.to_str().ok())
            .map(|h| h.split(':').next().unwrap_or(h).to_string());
        let sni = r.sni.clone().or(host);
        let alpn: &[&[u8]] = if r.h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let tls = self
            .connect(sni.as_deref(), alpn, r.from)
            .await
            .expect("connect");
        let io = hyper_util::rt::TokioIo::new(tls);
        if r.h2 {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await?;
            tokio::spawn(conn);
            // h2 carries the host in :authority, taken from the URI.
            let (mut parts, body) = req.into_parts();
            if let Some(h) = parts.headers.remove("host") {
                let uri = format!(
                    "https://{}{}",
                    h.to_str().unwrap_or(""),
                    parts.uri.path_and_query().map_or("/", |p| p.as_str())
                );
                parts.uri = uri.parse().expect("uri");
            }
            send.send_request(Request::from_parts(parts, body)).await
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            send.send_request(req).await
        }
    }

    /// GET `path` on `host` (a demo host name) with default knobs.
    pub async fn get(&self, host: &str, path: &str) -> Got {
        self.get_with(host, path, &Req::default()).await
    }

    pub async fn get_with(&self, host: &str, path: &str, r: &Req) -> Got {
        let req = Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .expect("req");
        self.send(r, req).await
    }
}

/// Writes raw bytes over a TLS connection (ALPN http/1.1) and reads until the server closes
/// or `wait` passes; for requests a well-behaved client library would refuse to send.
pub async fn raw_tls(client: &Client, sni: &str, bytes: &[u8], wait: Duration) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = client
        .connect(Some(sni), &[b"http/1.1"], None)
        .await
        .expect("connect");
    tls.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout(wait, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// A child process (a peer or a second proxy) stopped by PID however the test ends.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 50 ms until it holds; panics after `limit`. Returns how long it took.
pub async fn wait_until(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// Opens a WebSocket to `wss://data.localhost/ws` through the proxy, sends `hello 0..3`
/// and returns the echo server's replies.
pub async fn ws_echo_replies(s: &Stack) -> Vec<String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let tls = s
        .client()
        .connect(Some("data.localhost"), &[b"http/1.1"], None)
        .await
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://data.localhost/ws", tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    let mut replies = Vec::new();
    for i in 0..3 {
        ws.send(Message::Text(format!("hello {i}").into()))
            .await
            .unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        replies.push(reply.into_text().unwrap().to_string());
    }
    ws.close(None).await.unwrap();
    replies
}

/// `echo LINE | socat - UNIX-CONNECT:socket`, as an operator types it (`line` is sent as
/// given: end each command with a newline).
pub fn socat(sock: &Path, line: &str) -> String {
    let mut child = Command::new("socat")
        .args(["-t5", "-", &format!("UNIX-CONNECT:{}", sock.display())])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("socat (apt-get install socat)");
    use std::io::Write;
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(line.as_bytes()).expect("write");
    drop(stdin);
    let out = child.wait_with_output().expect("socat");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
