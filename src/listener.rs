//! Listeners: accept, bound the number of connections, TLS handshake, serve HTTP/1.1 and HTTP/2.
//!
//! Each worker holds at most one accepted connection waiting for a permit (see
//! `next_connection`), so at the connection limit the kernel backlog absorbs the excess
//! instead of us spawning unbounded tasks. Each connection holds a [`Drain`] token so a
//! drain lets in-flight requests finish.
//!
//! HTTP/1.1 connections are driven here, round by round: complete bodyless GET and HEAD
//! requests are read and answered by [`crate::h1`]; anything else starts a hyper round,
//! which serves requests until the connection has been idle for a moment, then gives the
//! socket back. Between rounds the connection waits with no buffers (see
//! [`crate::park`]). HTTP/2 connections are hyper's throughout.

use crate::accept::{Drain, Draining, PerClient};
use crate::body::ClientBody;
use crate::config::Config;
use crate::h2stream::StreamExec;
use crate::park::{self, ParkIo, Readiness};
use crate::proxy::body::ProxyBody;
use crate::proxy::{self, ConnInfo, Shared};
use crate::tls::stream::TlsStream;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Everything an accept loop needs.
#[derive(Clone)]
pub struct Listening {
    /// What each connection needs.
    pub conn: Arc<ConnCtx>,
    /// Client connections allowed at once, process-wide.
    pub connections: Arc<Semaphore>,
    /// Fired to stop accepting.
    pub stop: CancellationToken,
    /// Tells open connections to finish, and counts them for the drain.
    pub drain: Drain,
}

/// What each connection task needs.
pub struct ConnCtx {
    /// Shared request state.
    pub shared: Arc<Shared>,
    /// HTTP/2 server settings.
    pub http: http2::Builder<StreamExec>,
    /// HTTP/1.1 server settings for the connections driven here.
    pub http1: http1::Builder,
    /// What the listener's own HTTP/1.1 path takes (less than hyper takes).
    pub h1_limits: crate::h1::Limits,
    /// The wait for a new connection's first request.
    pub request_header_timeout: Duration,
    /// The wait for a parked keep-alive connection's next request.
    pub idle_timeout: Duration,
    /// TLS handshake timeout.
    pub handshake_timeout: Duration,
    /// Whether plain connections are redirected to HTTPS.
    pub redirect_http: bool,
    /// This worker's keep-alive client to the servers.
    pub upstream: crate::upstream::UpstreamClient,
    /// Connections per client address (process-wide).
    pub per_client: Arc<PerClient>,
    /// TLS handshakes in progress at once (process-wide); a flood waits here.
    pub handshakes: Arc<Semaphore>,
    /// TLS handshakes in progress per client address (process-wide).
    pub handshakes_per_client: Arc<PerClient>,
    /// Peers that must send a PROXY header on the TLS listeners.
    pub proxy_protocol_tls: Option<crate::rules::matcher::AllowList>,
    /// Peers that must send a PROXY header on the plain listeners.
    pub proxy_protocol_plain: Option<crate::rules::matcher::AllowList>,
    /// Fired when the worker stops (relayed passthrough sessions then get the drain deadline).
    pub stop: CancellationToken,
}

/// hyper's HTTP/1.1 read buffer limit, which is its head size limit too.
fn hyper_buf(config: &Config) -> usize {
    config.limits.max_header_bytes.max(8192)
}

/// The limits of the listener's own HTTP/1.1 path: within hyper's.
pub fn h1_limits(config: &Config) -> crate::h1::Limits {
    crate::h1::Limits::new(hyper_buf(config), config.limits.max_headers)
}

/// The HTTP/1.1 server settings every client connection uses.
pub fn http1_builder(config: &Config) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(config.timeouts.request_header)
        .max_buf_size(hyper_buf(config))
        .max_headers(config.limits.max_headers)
        .keep_alive(true)
        .half_close(false);
    b
}

/// The HTTP/2 server settings every client connection uses (HTTP/1.1 is `http1_builder`:
/// the listener sorts connections by ALPN or preface, so hyper never has to).
pub fn http_builder(config: &Config) -> http2::Builder<StreamExec> {
    let mut b = http2::Builder::new(StreamExec::new(config.timeouts.client));
    b.timer(TokioTimer::new())
        .max_header_list_size(config.limits.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_send_buf_size(256 * 1024)
        .keep_alive_interval(Some(config.timeouts.idle))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// Accepts TLS connections until stopped. The TLS config is shared by every worker so
/// session tickets and the session cache work whichever worker a client lands on.
pub async fn serve_tls(l: Listening, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    accept_loop(l, listener, Some(tls)).await
}

/// Accepts plain HTTP connections (redirects to HTTPS) until stopped.
pub async fn serve_plain(l: Listening, listener: TcpListener) {
    accept_loop(l, listener, None).await
}

async fn accept_loop(l: Listening, listener: TcpListener, tls: Option<Arc<ServerConfig>>) {
    while let Some((permit, tcp, peer)) =
        crate::accept::next_connection(&l.connections, &listener, &l.stop).await
    {
        let ctx = l.conn.clone();
        let draining = l.drain.enter();
        let tls = tls.clone();
        // A configured outer proxy speaks for many clients: its connections are counted
        // for the client its PROXY header conveys (in `serve_connection`), not for it.
        let outer = match if tls.is_some() {
            &ctx.proxy_protocol_tls
        } else {
            &ctx.proxy_protocol_plain
        } {
            Some(from) => from.contains(peer.ip()),
            None => false,
        };
        let client_slot = match outer {
            true => None,
            false => match ctx.per_client.enter(peer.ip()) {
                Some(slot) => Some(slot),
                // Over the per-address limit: closed before any byte is read.
                None => {
                    drop(tcp);
                    continue;
                }
            },
        };
        // Boxed, to keep the task small (see below): what the connection holds until it
        // ends, and what its setup consumes.
        let mut held = Box::new((permit, client_slot));
        let setup = Box::new((tcp, peer, tls));
        tokio::spawn(async move {
            let (tcp, peer, tls) = *setup;
            let stats = &ctx.shared.stats;
            stats.connections.fetch_add(1, Ordering::Relaxed);
            stats.connections_total.fetch_add(1, Ordering::Relaxed);
            // The setup (PROXY header, handshake, sniffing; HTTP/2 and passthrough whole)
            // runs boxed: its states are large and brief. The task itself keeps room
            // only for serving HTTP/1.1, which is what an idle keep-alive client holds.
            let slot = &mut held.1;
            let accepted = Box::pin(serve_connection(&ctx, &draining, tcp, peer, tls, slot)).await;
            match accepted {
                Some(Accepted::Plain(io, info)) => serve_h1(&ctx, &draining, io, info).await,
                Some(Accepted::Tls(io, info)) => serve_h1(&ctx, &draining, io, info).await,
                Some(Accepted::TlsAfterHello(io, info)) => {
                    serve_h1(&ctx, &draining, io, info).await
                }
                None => {}
            }
            stats.connections.fetch_sub(1, Ordering::Relaxed);
            drop(held);
        });
    }
}

/// A connection ready to serve HTTP/1.1 (everything else is served by
/// [`serve_connection`] itself). The sockets are boxed so that the task's serving state
/// is the same small size for all three.
enum Accepted {
    Plain(Box<TcpStream>, Arc<ConnInfo>),
    Tls(Box<TlsStream<TcpStream>>, Arc<ConnInfo>),
    /// TLS on a listener that read the ClientHello first (some names are passed through).
    TlsAfterHello(
        Box<TlsStream<crate::rewind::Rewind<TcpStream>>>,
        Arc<ConnInfo>,
    ),
}

/// Sets a new connection up and serves it, except for HTTP/1.1, which it returns for
/// the connection's task to serve (see `accept_loop`).
async fn serve_connection(
    l: &ConnCtx,
    d: &Draining,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    client_slot: &mut Option<crate::accept::ClientSlot>,
) -> Option<Accepted> {
    let _ = tcp.set_nodelay(true);
    let mut tcp = tcp;
    let expect = if tls.is_some() {
        &l.proxy_protocol_tls
    } else {
        &l.proxy_protocol_plain
    };
    let (peer, outer, forwarded_tls) = match expect {
        None => (peer, None, false),
        Some(from) => {
            let header = tokio::time::timeout(
                Duration::from_secs(5),
                crate::accept::proxy_header(&mut tcp, peer, from),
            );
            match Box::pin(header).await {
                Ok(Ok((client, tls))) => {
                    if client_slot.is_none() {
                        // Behind an outer proxy: the conveyed client is the one counted.
                        *client_slot = Some(l.per_client.enter(client.ip())?);
                    }
                    (client, (client != peer).then_some(peer), tls)
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "PROXY protocol: connection refused");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(%peer, "PROXY protocol: no header in time");
                    return None;
                }
            }
        }
    };
    let Some(acceptor) = tls else {
        let info = Arc::new(ConnInfo {
            forwarded_tls,
            // Already HTTPS at the outer proxy: redirecting would loop.
            redirect_https: l.redirect_http && !forwarded_tls,
            outer_proxy: outer,
            in_flight: Arc::new(proxy::Activity::new(l.shared.timeouts.server)),
            ..ConnInfo::new(peer, l.upstream.clone())
        });
        return match first_bytes_h2(&tcp, l.request_header_timeout, &d.signal).await? {
            false => Some(Accepted::Plain(Box::new(tcp), info)),
            // HTTP/2 with prior knowledge.
            // Boxed, as below: rarer, larger states stay out of every connection's task.
            true => {
                Box::pin(serve_h2(l, d, tcp, info)).await;
                None
            }
        };
    };
    let start = Instant::now();
    if !l.shared.state.load().rules.has_passthrough() {
        let (io, info) = terminate(l, d, tcp, peer, outer, acceptor, start).await?;
        return Some(Accepted::Tls(io, info));
    }
    // Some names are passed through: read the ClientHello to see which name this is.
    let hello = match Box::pin(tokio::time::timeout(
        l.handshake_timeout,
        crate::tcp::sni::read_client_hello(&mut tcp),
    ))
    .await
    {
        Ok(Ok(h)) => h,
        _ => {
            l.shared.stats.tls_failures.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    let g = l.shared.state.load_full();
    let chosen = crate::tcp::sni::server_name(&hello)
        .and_then(|name| g.rules.passthrough_for(&name).map(|p| (p, name)));
    if let Some(((ix, p), name)) = chosen {
        // Judged on the client a PROXY header conveys, when one does.
        if p.allow.as_ref().is_some_and(|a| !a.contains(peer.ip())) {
            tracing::debug!(%peer, sni = %name, passthrough = &*p.name, "not in allow_from: closed");
            return None;
        }
        tracing::debug!(%peer, sni = %name, passthrough = &*p.name, "TLS passed through");
        let origin = crate::tcp::Origin {
            client: peer,
            local: tcp.local_addr().unwrap_or(peer),
            first: &hello,
            front: &g.passthrough[ix],
            idle: l.shared.timeouts.tunnel,
        };
        let service = p.service;
        // Shutdown: like a TCP listener's sessions, a relayed one gets the drain deadline.
        let drain = l.shared.timeouts.drain;
        tokio::select! {
            _ = Box::pin(crate::tcp::relay(&l.shared, &g, service, tcp, origin)) => {}
            _ = async { l.stop.cancelled().await; tokio::time::sleep(drain).await } => {}
        }
        return None;
    }
    drop(g);
    let stream = crate::rewind::Rewind::new(hello, tcp);
    let (io, info) = terminate(l, d, stream, peer, outer, acceptor, start).await?;
    Some(Accepted::TlsAfterHello(io, info))
}

/// Terminates TLS on `tcp`: serves HTTP/2 itself, returns HTTP/1.1 connections.
async fn terminate<S>(
    l: &ConnCtx,
    d: &Draining,
    tcp: S,
    peer: SocketAddr,
    outer: Option<SocketAddr>,
    acceptor: Arc<ServerConfig>,
    start: Instant,
) -> Option<(Box<TlsStream<S>>, Arc<ConnInfo>)>
where
    S: AsyncRead + AsyncWrite + Readiness + Unpin + Send + 'static,
{
    let handshake = async {
        // A handshake slot is taken only once the client's first record (its ClientHello)
        // has arrived whole (a silent or trickling connection holds none), and one
        // address holds at most its share of them (its excess waits for its own, within
        // the handshake timeout).
        match tcp.as_tcp() {
            Some(t) => crate::accept::first_record(t).await?,
            None => park::readable(&tcp).await?,
        }
        let _mine = l.handshakes_per_client.wait_enter(peer.ip()).await;
        let _slot = l.handshakes.acquire().await;
        crate::tls::stream::accept(tcp, acceptor).await
    };
    // Boxed, like the stream it yields: a connection's task is sized for its largest
    // state, and it holds that size for its whole life, parked or not.
    let handshake = Box::pin(tokio::time::timeout(l.handshake_timeout, handshake));
    // The TLS state (~1.3 KB) lives on the heap too: moved through the HTTP/1.1 rounds
    // and the close as a pointer, rather than reserved inline at each of those states.
    let mut stream = match handshake.await {
        Ok(Ok(s)) => Box::new(s),
        Ok(Err(e)) => {
            l.shared.stats.tls_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            l.shared.stats.tls_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "TLS handshake timed out");
            return None;
        }
    };
    l.shared
        .stats
        .tls_handshakes
        .fetch_add(1, Ordering::Relaxed);
    let sni = stream.take_server_name();
    let h2 = stream.alpn_protocol() == Some(b"h2");
    let info = Arc::new(ConnInfo {
        sni,
        tls: true,
        tls_time: start.elapsed(),
        outer_proxy: outer,
        in_flight: Arc::new(proxy::Activity::new(l.shared.timeouts.server)),
        ..ConnInfo::new(peer, l.upstream.clone())
    });
    if h2 {
        Box::pin(serve_h2(l, d, stream, info)).await;
        return None;
    }
    Some((stream, info))
}

/// Waits for a plain connection's first bytes: `Some(true)` if they open HTTP/2 (prior
/// knowledge), `Some(false)` for anything else, `None` if nothing came in time.
async fn first_bytes_h2(tcp: &TcpStream, wait: Duration, stop: &CancellationToken) -> Option<bool> {
    const PREFACE: &[u8] = b"PRI ";
    let sniff = async {
        park::readable(tcp).await.ok()?;
        // "P", "PR", "PRI": a split first segment waits for the rest (not polled).
        let judge = |b: &[u8]| match b.len() >= PREFACE.len() || !PREFACE.starts_with(b) {
            true => Some(b == PREFACE),
            false => None,
        };
        crate::accept::sniff(tcp, PREFACE.len(), judge).await.ok()
    };
    tokio::select! {
        r = tokio::time::timeout(wait, sniff) => r.ok().flatten(),
        _ = stop.cancelled() => None,
    }
}

/// What hyper gets for a request: [`proxy::handle`]'s answer (it never fails), or, for a
/// malformed HTTP/2 request, the reason its stream is reset.
type Answer = Result<Response<ProxyBody>, h2::Error>;

/// hyper's service for a connection: each request to [`proxy::handle`].
///
/// The request future is boxed: it is ~3.5 KB, and hyper keeps a slot for it inline in
/// every connection and copies it into each HTTP/2 stream task. A box makes both a
/// pointer, for one allocation per request (measured in docs/performance.md).
fn proxy_service(
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = h2::Error,
    Future = Answering<impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>,
> + Clone {
    service_fn(move |req: Request<Incoming>| {
        // RFC 9113 §8.1.1: a malformed request is a stream error (PROTOCOL_ERROR), and
        // nothing of it is decided on or forwarded.
        if req.version() == http::Version::HTTP_2 && proxy::malformed::h2_malformed(&req) {
            return Answering::Reset;
        }
        let req = req.map(ClientBody::Hyper);
        Answering::Handle(Box::pin(proxy::handle(shared.clone(), info.clone(), req)))
    })
}

/// The service's future: a stream reset, or the request path boxed once. An enum rather
/// than an `async` wrapper, which would move the large request future one more time.
enum Answering<F> {
    /// The request is malformed: reset its stream.
    Reset,
    /// The request path at work.
    Handle(Pin<Box<F>>),
}

impl<F> Future for Answering<F>
where
    F: Future<Output = Result<Response<ProxyBody>, Infallible>>,
{
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Answer> {
        match self.get_mut() {
            Answering::Reset => {
                std::task::Poll::Ready(Err(h2::Error::from(h2::Reason::PROTOCOL_ERROR)))
            }
            Answering::Handle(f) => f
                .as_mut()
                .poll(cx)
                .map(|r| r.map_err(|never: Infallible| match never {})),
        }
    }
}

/// Serves HTTP/2 until the client leaves or the drain has let its streams finish.
async fn serve_h2<I>(l: &ConnCtx, d: &Draining, io: I, info: Arc<ConnInfo>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = info.in_flight.clone();
    let io = park::Watched::new(io, l.shared.timeouts.client, activity.clone());
    let conn = l
        .http
        .serve_connection(TokioIo::new(io), proxy_service(l.shared.clone(), info));
    let mut conn = std::pin::pin!(conn);
    let mut watch = H2Watch::new(l.shared.timeouts.client, l.idle_timeout);
    let r = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = d.signal.cancelled() => {
                conn.as_mut().graceful_shutdown();
                break conn.await;
            }
            _ = watch.tick.tick() => match watch.look(&activity) {
                H2Look::Fine => {}
                // Every stream's client stopped taking data: the streams are cut (and
                // logged `client_timeout`), their slots freed.
                H2Look::Stalled => {
                    activity.client_stalled.store(true, Ordering::Relaxed);
                    return;
                }
                // No request for a whole idle timeout: GOAWAY, then the close.
                H2Look::Idle => {
                    conn.as_mut().graceful_shutdown();
                    break conn.await;
                }
            },
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// What an HTTP/2 connection's watchdog found.
enum H2Look {
    Fine,
    /// Responses wait on the client and none moved for `timeouts.client`.
    Stalled,
    /// No request in flight and none moved for `timeouts.idle`.
    Idle,
}

/// The watchdog of an HTTP/2 connection: a stream whose client window stays shut moves
/// no byte on the socket, so the socket cannot tell; the response bodies can
/// ([`proxy::Activity`]). One timer per HTTP/2 connection, at a quarter of the shorter
/// window, so a stall is found within 1.25 windows.
struct H2Watch {
    tick: tokio::time::Interval,
    client: Duration,
    idle: Duration,
    frames: u64,
    since: tokio::time::Instant,
}

impl H2Watch {
    fn new(client: Duration, idle: Duration) -> Self {
        let every = (client.min(idle) / 4).max(Duration::from_millis(250));
        let start = tokio::time::Instant::now();
        let mut tick = tokio::time::interval_at(start + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        H2Watch {
            tick,
            client,
            idle,
            frames: 0,
            since: start,
        }
    }

    fn look(&mut self, a: &proxy::Activity) -> H2Look {
        let now = tokio::time::Instant::now();
        let frames = a.frames.load(Ordering::Relaxed);
        if frames != self.frames || (a.owed.load(Ordering::Relaxed) == 0 && !a.idle()) {
            // Moving, or waiting on servers (their own timeouts watch them).
            (self.frames, self.since) = (frames, now);
            return H2Look::Fine;
        }
        let quiet = now - self.since;
        if a.owed.load(Ordering::Relaxed) > 0 && quiet >= self.client {
            H2Look::Stalled
        } else if a.idle() && quiet >= self.idle {
            H2Look::Idle
        } else {
            H2Look::Fine
        }
    }
}

/// Serves HTTP/1.1 round by round: hyper serves requests until the connection has been
/// idle for [`park::PARK_AFTER`] and hands the socket back; the connection then waits for
/// the client's next bytes holding nothing but the socket (under `timeouts.idle`), and
/// the next round starts a fresh hyper connection on it.
async fn serve_h1<I>(l: &ConnCtx, d: &Draining, io: I, info: Arc<ConnInfo>)
where
    I: AsyncRead + AsyncWrite + Readiness + Unpin + Send + 'static,
{
    let client_timeout = l.shared.timeouts.client;
    let mut io = ParkIo::new(io, info.in_flight.clone(), client_timeout);
    let mut wait = l.request_header_timeout;
    let mut first = true;
    loop {
        let ready = io.has_unread()
            || {
                io.release_idle();
                let _parked = (!first).then(|| Parked::new(&l.shared.stats));
                tokio::select! {
                    r = tokio::time::timeout(wait, park::readable(io.get_ref())) => matches!(r, Ok(Ok(()))),
                    _ = d.signal.cancelled() => false,
                }
            };
        first = false;
        if !ready {
            Box::pin(close(io)).await;
            return;
        }
        wait = l.idle_timeout;
        if !io.has_unread() {
            // The common request is served without hyper; the rest, with what was read
            // of it, goes to a hyper round below. Boxed like hyper's round: a parked
            // connection's task keeps no room for a request.
            let (shared, limits) = (&l.shared, l.h1_limits);
            let served = crate::h1::serve(shared, &info, limits, &d.signal, io.get_mut());
            match Box::pin(served).await {
                crate::h1::Outcome::Idle => continue,
                crate::h1::Outcome::Close => {
                    Box::pin(close(io)).await;
                    return;
                }
                crate::h1::Outcome::Hyper(read) => io.unread(read),
            }
        }
        // Boxed for the round only: inline, hyper's connection state would be reserved in
        // the task of every parked connection too.
        let svc = proxy_service(l.shared.clone(), info.clone());
        let mut conn = Box::pin(l.http1.serve_connection(io, svc));
        let mut draining = false;
        let ended = loop {
            tokio::select! {
                r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
                _ = d.signal.cancelled(), if !draining => draining = true,
            }
            // Idle: closes now; busy: finishes this request with `Connection: close`.
            conn.as_mut().graceful_shutdown();
        };
        let parts = Pin::into_inner(conn).into_parts();
        io = parts.io;
        if let Err(e) = ended {
            tracing::debug!(error = %e, "connection ended with an error");
            return;
        }
        if let Some(tunnel) = info.take_upgrade()
            && !tunnel.is_closed()
        {
            // The 101 is written: the socket, and whatever the client sent after its
            // request, go to the tunnel.
            let stream = crate::rewind::Rewind::new(parts.read_buf.to_vec(), io.into_inner());
            let _ = tunnel.send(Box::new(stream));
            return;
        }
        let closing = info.in_flight.closing.load(Ordering::Relaxed);
        if !io.parked() || draining || closing || !parts.read_buf.is_empty() {
            Box::pin(close(io)).await;
            return;
        }
        io.unpark();
    }
}

/// Counts a connection as parked while it lives.
struct Parked(Arc<crate::stats::Stats>);

impl Parked {
    fn new(stats: &Arc<crate::stats::Stats>) -> Self {
        stats.parked.fetch_add(1, Ordering::Relaxed);
        Parked(stats.clone())
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Closes a connection hyper has finished with (TLS close_notify, then FIN), bounded so
/// a client that stopped reading cannot hold the task.
/// (Awaited boxed: inline, its timer would be reserved in every connection's task.)
async fn close<I: AsyncWrite + Unpin>(io: ParkIo<I>) {
    use tokio::io::AsyncWriteExt as _;
    let mut io = io.into_inner();
    let _ = tokio::time::timeout(Duration::from_secs(5), io.shutdown()).await;
}
