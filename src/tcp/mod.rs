//! Layer 4: TCP listeners and TLS passthrough relay bytes to a `mode: tcp` service.
//!
//! Server choice, health and maxconn are the HTTP path's own (the same `Group`, the same
//! `ServerState`), so a TCP server shows on the stats page like any other. A session is
//! one client connection relayed to one server; bytes are counted as they pass, so a long
//! AMQP or search connection shows its traffic while it is open. When the server side
//! ends (closed, reset, killed), the client connection is closed at once; when the client
//! half-closes, the server's answer still flows back until it ends too.

pub mod sni;

use crate::generation::Generation;
use crate::proxy::{Shared, choose_server};
use crate::rules::select::stable_hash;
use crate::rules::{Balance, Server, Service};
use crate::stats::Counters;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Bytes buffered per direction of a session.
const BUF: usize = 16 * 1024;

/// Connection attempts (on different servers) before the client is closed.
const ATTEMPTS: usize = 3;

/// One TCP listener's settings and counters, shared by its accept loops (one per worker).
#[derive(Debug)]
pub struct TcpFront {
    /// Name for logs and stats.
    pub name: Arc<str>,
    /// The rules' TCP service, by name (looked up in each connection's generation).
    pub service: String,
    /// Connections open at once on this listener.
    pub slots: Arc<Semaphore>,
    /// Close after this long without a byte either way.
    pub idle: Duration,
    /// Peers that must send a PROXY header.
    pub proxy_protocol: Option<crate::rules::matcher::AllowList>,
    /// Clients relayed (`None`: everyone).
    pub allow: Option<crate::rules::matcher::AllowList>,
    /// Sessions open per client address.
    pub per_client: Arc<crate::accept::PerClient>,
    /// FRONTEND counters.
    pub counters: Arc<Counters>,
}

/// Where a relayed session came from and what it already read.
pub struct Origin<'a> {
    /// The client (conveyed by PROXY protocol when a trusted outer proxy sent one).
    pub client: SocketAddr,
    /// The address the client connected to (the PROXY v2 destination sent on).
    pub local: SocketAddr,
    /// Bytes already read from the client (a peeked ClientHello), sent first.
    pub first: &'a [u8],
    /// The frontend whose counters the session also counts in.
    pub front: &'a Counters,
    /// Inactivity limit.
    pub idle: Duration,
}

/// Accepts connections on one TCP listener socket until stopped. Sessions run on
/// `sessions`, which the worker waits for (up to the drain deadline) at shutdown.
pub async fn serve(
    shared: Arc<Shared>,
    front: Arc<TcpFront>,
    listener: TcpListener,
    stop: CancellationToken,
    sessions: tokio_util::task::TaskTracker,
) {
    while let Some((permit, tcp, peer)) =
        crate::accept::next_connection(&front.slots, &listener, &stop).await
    {
        let (shared, front, stop) = (shared.clone(), front.clone(), stop.clone());
        sessions.spawn(async move {
            let _permit = permit;
            let stats = &shared.stats;
            stats.connections.fetch_add(1, Relaxed);
            stats.connections_total.fetch_add(1, Relaxed);
            tokio::select! {
                _ = session(&shared, &front, tcp, peer) => {}
                // A TCP session has no request boundary to drain at: at shutdown it
                // gets the drain deadline, then is closed.
                _ = async { stop.cancelled().await; tokio::time::sleep(shared.timeouts.drain).await } => {}
            }
            stats.connections.fetch_sub(1, Relaxed);
        });
    }
}

async fn session(shared: &Shared, front: &TcpFront, mut tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let client = match &front.proxy_protocol {
        None => peer,
        Some(from) => {
            let read = crate::accept::proxy_header(&mut tcp, peer, from);
            match tokio::time::timeout(Duration::from_secs(5), read).await {
                Ok(Ok((c, _))) => c,
                _ => {
                    tracing::debug!(%peer, listener = &*front.name, "PROXY protocol: connection refused");
                    return;
                }
            }
        }
    };
    // Judged on the client the PROXY header conveys, when one does.
    if front
        .allow
        .as_ref()
        .is_some_and(|a| !a.contains(client.ip()))
    {
        tracing::debug!(%client, listener = &*front.name, "not in allow_from: closed");
        return;
    }
    let Some(_slot) = front.per_client.enter(client.ip()) else {
        tracing::debug!(%client, listener = &*front.name, "over the per-client cap: closed");
        return;
    };
    let g = shared.state.load_full();
    let Some(service) = g.rules.service_named(&front.service) else {
        // The reloader refuses rules without the service; this is a race with nothing.
        tracing::warn!(listener = &*front.name, service = %front.service, "no such TCP service");
        return;
    };
    let local = tcp.local_addr().unwrap_or(peer);
    let origin = Origin {
        client,
        local,
        first: &[],
        front: &front.counters,
        idle: front.idle,
    };
    relay(shared, &g, service, tcp, origin).await;
}

/// Relays `client` to a server of service `service`: picks and connects (retrying other
/// servers, then the backup service), sends the PROXY v2 header if asked, then copies both
/// ways until one side ends or the session is idle too long.
pub async fn relay(
    shared: &Shared,
    g: &Generation,
    service: usize,
    mut client: TcpStream,
    origin: Origin<'_>,
) {
    let start = Instant::now();
    origin.front.enter();
    let Some((svc_ix, server, _guard, mut upstream)) = connect(shared, g, service, &origin).await
    else {
        origin.front.connect_errors.fetch_add(1, Relaxed);
        origin
            .front
            .leave_session(start.elapsed().as_micros() as u64);
        return;
    };
    let counters: [&Counters; 3] = [origin.front, &g.services[svc_ix], &g.servers[server.id]];
    counters[1].enter();
    counters[2].enter();
    let svc = &g.rules.services[svc_ix];
    let first = async {
        if svc.send_proxy {
            // Bytes are relayed as they came: whoever terminates TLS sees it first-hand.
            let h = crate::proxy_protocol::v2_header(origin.client, origin.local, false);
            upstream.write_all(&h).await?;
        }
        upstream.write_all(origin.first).await
    };
    let result = match first.await {
        Ok(()) => {
            for c in counters {
                c.bytes_in.fetch_add(origin.first.len() as u64, Relaxed);
            }
            pipe(&mut client, &mut upstream, &counters, origin.idle).await
        }
        Err(e) => Err(e),
    };
    let micros = start.elapsed().as_micros() as u64;
    for c in counters {
        c.leave_session(micros);
    }
    tracing::debug!(
        client = %origin.client, service = &*svc.name, server = &*server.name,
        ms = micros / 1000, end = ?result, "tcp session ended"
    );
}

/// Picks a live server and connects to it, trying others on failure; then the backup
/// service's servers. Counts failures on the server (passive health) and the service.
async fn connect(
    shared: &Shared,
    g: &Generation,
    service: usize,
    origin: &Origin<'_>,
) -> Option<(usize, Arc<Server>, crate::health::ServerGuard, TcpStream)> {
    let mut current = Some(service);
    while let Some(ix) = current {
        let svc: &Service = &g.rules.services[ix];
        let key = match svc.balance {
            Balance::HashSource => stable_hash(origin.client.ip()),
            _ => 0,
        };
        let mut avoid: Option<Arc<Server>> = None;
        for _ in 0..ATTEMPTS {
            let deadline = Instant::now() + shared.timeouts.connect;
            let picked = choose_server(
                g,
                svc,
                svc.live,
                svc.balance,
                key,
                avoid.as_deref(),
                deadline,
            )
            .await;
            let Ok((server, guard)) = picked else { break };
            match crate::upstream::dial(server.addr, shared.timeouts.connect).await {
                Ok(tcp) => return Some((ix, server, guard, tcp)),
                _ => {
                    g.servers[server.id].connect_errors.fetch_add(1, Relaxed);
                    g.health[server.id].observe_traffic(false, &svc.health, &server.name);
                    tracing::debug!(server = &*server.name, "tcp connect failed; trying another");
                    avoid = Some(server);
                }
            }
        }
        g.services[ix].no_server.fetch_add(1, Relaxed);
        current = svc.backup_service.filter(|b| *b != service);
    }
    None
}

/// Copies both ways until the server side ends (the client is then closed), the client
/// side fails, or nothing moves for `idle`. A client half-close is passed on and the
/// server's remaining answer still flows back.
async fn pipe(
    client: &mut TcpStream,
    server: &mut TcpStream,
    counters: &[&Counters; 3],
    idle: Duration,
) -> io::Result<()> {
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let (cr, cw) = client.split();
    let (sr, sw) = server.split();
    let up = pump(cr, sw, |n| {
        for c in counters {
            c.bytes_in.fetch_add(n, Relaxed);
        }
        last.store(start.elapsed().as_millis() as u64, Relaxed);
    });
    let down = pump(sr, cw, |n| {
        for c in counters {
            c.bytes_out.fetch_add(n, Relaxed);
        }
        last.store(start.elapsed().as_millis() as u64, Relaxed);
    });
    let watchdog = async {
        loop {
            let due = start + Duration::from_millis(last.load(Relaxed)) + idle;
            tokio::time::sleep_until(due.into()).await;
            if start.elapsed() >= Duration::from_millis(last.load(Relaxed)) + idle {
                return io::Error::new(io::ErrorKind::TimedOut, "idle timeout");
            }
        }
    };
    tokio::pin!(up, down, watchdog);
    tokio::select! {
        r = &mut down => r,
        e = &mut watchdog => Err(e),
        r = &mut up => match r {
            Ok(()) => tokio::select! {
                r = &mut down => r,
                e = &mut watchdog => Err(e),
            },
            Err(e) => Err(e),
        },
    }
}

/// Copies one direction; at the reader's end, shuts the writer's side (passes the FIN on).
async fn pump<R, W>(mut r: R, mut w: W, counted: impl Fn(u64)) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
        counted(n as u64);
    }
}
