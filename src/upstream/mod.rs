//! Connections to backend servers: one keep-alive pool per worker thread.
//!
//! Each worker has its own pool (the request, its client connection and its server
//! connection stay on one thread), so the lock here is never contended. Per server, a
//! connection goes into a FIFO of busy ones when its response headers arrive, moves to a
//! stack of ready ones once hyper says so (its previous response fully read), and the top
//! of that stack is reused first. No task per request, no hashing of URIs: connections are keyed by the
//! server's socket address. Measured against hyper-util's pooled client in
//! docs/performance.md.

pub mod direct;

use crate::body::LimitedBody;
use crate::config::Config;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The pool every request of one worker uses to reach its server.
pub type UpstreamClient = Arc<Upstream>;

/// Keep-alive connections to the servers, per server address.
pub struct Upstream {
    idle: Mutex<HashMap<Key, PerServer, BuildHasherDefault<AddrHasher>>>,
    /// Idle connections of bodyless exchanges (`direct.rs`), a stack per server.
    direct: Mutex<HashMap<SocketAddr, Vec<Idle>, BuildHasherDefault<AddrHasher>>>,
    max_per_server: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    http1: http1::Builder,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("max_per_server", &self.max_per_server)
            .finish()
    }
}

/// Pooled connections are told apart by address and by TLS settings: after a reload
/// that changes a service's CA, SNI or verification, its old connections are not reused.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Key {
    addr: SocketAddr,
    /// 0 for plain connections, else the TLS settings' fingerprint.
    tls: u64,
}

/// One server's connections: busy ones (their last response may still be streaming) in the
/// order they were handed back, and ready ones as a stack, so the most recently used are
/// reused first and the rest go cold and expire (a few hot connections, not hundreds
/// warmed in turn).
#[derive(Default)]
struct PerServer {
    busy: VecDeque<Pooled>,
    ready: Vec<Pooled>,
}

impl PerServer {
    fn len(&self) -> usize {
        self.busy.len() + self.ready.len()
    }
}

/// A pooled connection and when it was last handed back.
struct Pooled {
    send: SendRequest<LimitedBody>,
    since: Instant,
}

/// A direct-exchange connection waiting for its next request.
struct Idle {
    tcp: tokio::net::TcpStream,
    since: Instant,
}

/// FNV-1a over the few bytes of a socket address: keys are ours, not the client's, so a
/// DoS-resistant hash buys nothing here.
#[derive(Default)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Largest read buffer of one server connection.
const READ_BUF: usize = 64 * 1024;

/// How many pooled connections one checkout looks at before opening a new one.
const SCAN: usize = 8;

/// Builds one worker's pool from the config's timeouts and limits, and starts its sweeper
/// (must run inside the worker's runtime).
pub fn client(config: &Config) -> UpstreamClient {
    let mut http1 = http1::Builder::new();
    // The read buffer starts at 8 KiB and grows to this only on connections that carry
    // large bodies (64 KiB reads keep 1 MiB downloads at full speed; 256 KiB bought nothing).
    http1.max_buf_size(READ_BUF);
    let up = Arc::new(Upstream {
        idle: Mutex::new(HashMap::default()),
        direct: Mutex::new(HashMap::default()),
        max_per_server: config.limits.upstream_idle_per_server,
        idle_timeout: config.timeouts.upstream_idle,
        connect_timeout: config.timeouts.connect,
        http1,
    });
    tokio::spawn(sweep(Arc::downgrade(&up)));
    up
}

/// Drops closed connections and idle ones past the idle timeout, every few seconds, so a
/// quiet server does not keep sockets open for ever.
async fn sweep(pool: Weak<Upstream>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        let mut map = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        for q in map.values_mut() {
            let live = |p: &Pooled| {
                let expired = p.send.is_ready() && now.duration_since(p.since) > pool.idle_timeout;
                !(p.send.is_closed() || expired)
            };
            q.busy.retain(live);
            q.ready.retain(live);
        }
        map.retain(|_, q| q.len() > 0);
        drop(map);
        let mut direct = pool.direct.lock().unwrap_or_else(|p| p.into_inner());
        for q in direct.values_mut() {
            q.retain(|i| now.duration_since(i.since) <= pool.idle_timeout);
        }
        direct.retain(|_, q| !q.is_empty());
    }
}

impl Upstream {
    /// Sends `req` (origin-form URI, `Host` set) to `addr` on a pooled connection, or a new
    /// one. A request a pooled connection never wrote (the server had just closed it) is
    /// sent again on a new connection.
    pub async fn send(
        &self,
        addr: SocketAddr,
        tls: Option<Tls<'_>>,
        req: http::Request<LimitedBody>,
    ) -> Result<http::Response<Incoming>, SendError> {
        let mut req = req;
        let key = Key {
            addr,
            tls: tls.map_or(0, |t| t.spec.fingerprint),
        };
        loop {
            let (mut send, reused) = match self.checkout(key) {
                Some(s) => (s, true),
                // Boxed: the connect and handshake state is large and rarely live; inline,
                // every request's future would carry (and copy) it.
                None => (Box::pin(self.connect(addr, &[], tls)).await?, false),
            };
            match send.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin(key, send);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => req = r,
                    _ => {
                        return Err(SendError {
                            connect: false,
                            source: Box::new(e.into_error()),
                        });
                    }
                },
            }
        }
    }

    /// A ready connection to `addr`, the most recently used first. Busy connections that
    /// have finished their response since are moved to the ready stack on the way (a few
    /// per call, oldest first); closed or expired ones are dropped.
    fn checkout(&self, key: Key) -> Option<SendRequest<LimitedBody>> {
        let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let q = map.get_mut(&key)?;
        for _ in 0..q.busy.len().min(SCAN) {
            let Some(p) = q.busy.pop_front() else { break };
            if p.send.is_closed() {
                continue;
            }
            if p.send.is_ready() {
                q.ready.push(p);
            } else {
                q.busy.push_back(p); // still streaming its last response
            }
        }
        let mut now = None;
        while let Some(p) = q.ready.pop() {
            let now = *now.get_or_insert_with(Instant::now);
            if p.send.is_ready() && now.duration_since(p.since) <= self.idle_timeout {
                return Some(p.send);
            }
        }
        None
    }

    /// The most recently returned direct-exchange connection to `addr` that has not
    /// passed the idle timeout and has nothing waiting to be read. A stale one that looks
    /// quiet fails before any response byte, and `exchange` then sends again on a new
    /// connection.
    fn direct_checkout(&self, addr: SocketAddr) -> Option<tokio::net::TcpStream> {
        let mut map = self.direct.lock().unwrap_or_else(|p| p.into_inner());
        let q = map.get_mut(&addr)?;
        let mut now = None;
        while let Some(i) = q.pop() {
            // Coarse (the worker's sweep): an idle timeout of seconds needs no clock read.
            let now = *now.get_or_insert_with(crate::deadline::coarse_now);
            if now.saturating_duration_since(i.since) <= self.idle_timeout && quiet(&i.tcp) {
                return Some(i.tcp);
            }
        }
        None
    }

    /// Keeps a connection whose response ended exactly where its framing said, up to the
    /// per-server bound (it is checked again, for bytes that came later, when taken).
    fn direct_checkin(&self, addr: SocketAddr, tcp: tokio::net::TcpStream) {
        let mut map = self.direct.lock().unwrap_or_else(|p| p.into_inner());
        let q = map.entry(addr).or_default();
        if q.len() < self.max_per_server {
            q.push(Idle {
                tcp,
                since: crate::deadline::coarse_now(),
            });
        }
    }

    /// Hands a connection back as soon as its response headers are in; it becomes ready
    /// again when the body has been read. Beyond the per-server bound it is dropped (and
    /// closes once its response is done).
    fn checkin(&self, key: Key, send: SendRequest<LimitedBody>) {
        let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let q = map.entry(key).or_default();
        if q.len() < self.max_per_server {
            q.busy.push_back(Pooled {
                send,
                since: Instant::now(),
            });
        }
    }

    /// Sends one request on a fresh connection that starts with a PROXY v2 header carrying
    /// the client's address (and whether it came over TLS). Not pooled: a PROXY header
    /// describes one client, so its connection must never carry another client's requests.
    pub async fn send_with_proxy_header(
        &self,
        addr: SocketAddr,
        client: SocketAddr,
        client_tls: bool,
        tls: Option<Tls<'_>>,
        req: http::Request<LimitedBody>,
    ) -> Result<http::Response<Incoming>, SendError> {
        let header = crate::proxy_protocol::v2_header(client, addr, client_tls);
        let mut send = self.connect(addr, &header, tls).await?;
        send.send_request(req).await.map_err(|e| SendError {
            connect: false,
            source: Box::new(e),
        })
    }

    /// A new HTTP/1.1 connection to `addr`, its first bytes `preface` (a PROXY header, or
    /// nothing), then TLS when the service speaks it; its connection task runs beside
    /// (upgrades included).
    async fn connect(
        &self,
        addr: SocketAddr,
        preface: &[u8],
        tls: Option<Tls<'_>>,
    ) -> Result<SendRequest<LimitedBody>, SendError> {
        use tokio::io::AsyncWriteExt;
        let connect_err = |e: Box<dyn std::error::Error + Send + Sync>| SendError {
            connect: true,
            source: e,
        };
        let mut tcp = dial(addr, self.connect_timeout)
            .await
            .map_err(|e| connect_err(Box::new(e)))?;
        if !preface.is_empty() {
            tcp.write_all(preface)
                .await
                .map_err(|e| connect_err(Box::new(e)))?;
        }
        match tls {
            None => self.handshake(tcp).await,
            Some(t) => {
                let connector = tokio_rustls::TlsConnector::from(t.spec.config.clone());
                let stream = connector
                    .connect(t.spec.server_name(t.server), tcp)
                    .await
                    .map_err(|e| connect_err(Box::new(e)))?;
                self.handshake(stream).await
            }
        }
    }

    /// HTTP/1.1 over `io`, its connection task spawned.
    async fn handshake<T>(&self, io: T) -> Result<SendRequest<LimitedBody>, SendError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = self
            .http1
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| SendError {
                connect: true,
                source: Box::new(e),
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "server connection ended with an error");
            }
        });
        Ok(send)
    }
}

/// A TCP connection to a server within `timeout`, Nagle off: how every connection to a
/// server starts (HTTP pool, PROXY-header sends, TCP relay).
pub async fn dial(addr: SocketAddr, timeout: Duration) -> std::io::Result<tokio::net::TcpStream> {
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// TLS to one server: the service's settings, and the server (its name for SNI).
#[derive(Clone, Copy, Debug)]
pub struct Tls<'a> {
    /// The service's client config and SNI choice.
    pub spec: &'a crate::rules::upstream_tls::UpstreamTls,
    /// The server connected to.
    pub server: &'a crate::rules::Server,
}

/// A failed attempt to get a response from a server.
#[derive(Debug)]
pub struct SendError {
    /// Nothing reached the server (connect refused or timed out): safe to retry elsewhere.
    pub connect: bool,
    /// What happened.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl SendError {
    /// Whether the connection itself failed (nothing was sent).
    pub fn is_connect(&self) -> bool {
        self.connect
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.source)
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Whether nothing waits to be read on an idle server connection. A response ends exactly
/// where its framing says, so any byte here (a body sent for HEAD, 204 or 304, too long a
/// body arriving in a later packet) would be read as the next request's response, and an
/// end of stream means the server closed it: either way the connection is retired. One
/// non-blocking read when a connection is reused.
fn quiet(tcp: &tokio::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match tcp.try_read(&mut byte) {
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        Ok(0) => false,
        Ok(_) => {
            STRAY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            false
        }
    }
}

/// Server connections retired because bytes followed a response's end (process-wide;
/// a server that sends them has broken framing, and the stats page shows the count).
static STRAY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many server connections were retired for bytes after a response's end.
pub fn stray_retired() -> u64 {
    STRAY.load(std::sync::atomic::Ordering::Relaxed)
}
