//! Accepting connections: binding the listening sockets, the process-wide connection
//! slots, per-client connection caps, the drain at shutdown, and reading a PROXY header.
//!
//! Shared by the HTTP listeners (`listener`) and the TCP fronts (`tcp`), which sit beside
//! each other above it.

use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// The drain at shutdown: a signal every connection watches, and a count of the open ones
/// to wait for. Idle connections close at the signal; busy ones finish their request.
#[derive(Clone, Default)]
pub struct Drain {
    signal: CancellationToken,
    open: TaskTracker,
}

/// One connection's part in the drain: counted until dropped.
pub struct Draining {
    /// Fired when the drain starts.
    pub signal: CancellationToken,
    _open: TaskTrackerToken,
}

impl Drain {
    /// Counts one connection in, until its `Draining` is dropped.
    pub fn enter(&self) -> Draining {
        Draining {
            signal: self.signal.clone(),
            _open: self.open.token(),
        }
    }

    /// Signals every connection, then waits until the last one has closed.
    pub async fn finish(self) {
        self.open.close();
        self.signal.cancel();
        self.open.wait().await;
    }
}

/// Counts connections per client address. Touched once when a connection opens and once
/// when it closes, never per request.
#[derive(Debug)]
pub struct PerClient {
    limit: usize,
    open: std::sync::Mutex<HashMap<IpAddr, usize>>,
    /// Connections refused for being over the limit.
    pub refused: std::sync::atomic::AtomicU64,
    /// Woken when a slot is given back, for those waiting in [`PerClient::wait_enter`].
    freed: tokio::sync::Notify,
}

/// One open connection of a client; leaves the count on drop.
pub struct ClientSlot {
    owner: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    /// A counter allowing `limit` connections per address.
    pub fn new(limit: usize) -> Arc<PerClient> {
        Arc::new(PerClient {
            limit,
            open: Default::default(),
            refused: Default::default(),
            freed: tokio::sync::Notify::new(),
        })
    }

    /// Takes a slot for `ip`, waiting while it already has `limit` in use (the caller
    /// bounds the wait): one address's burst queues behind its own share, and holds no
    /// more than that share of what comes after (the process-wide handshake slots).
    pub async fn wait_enter(self: &Arc<Self>, ip: IpAddr) -> ClientSlot {
        loop {
            let freed = self.freed.notified();
            if let Some(slot) = self.try_enter(ip) {
                return slot;
            }
            freed.await;
        }
    }

    fn try_enter(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            owner: self.clone(),
            ip,
        })
    }

    /// Takes a slot for `ip`, or `None` when it already has `limit` connections open.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let slot = self.try_enter(ip);
        if slot.is_none() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        slot
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
        drop(open);
        self.owner.freed.notify_waiters();
    }
}

/// Binds `addr` once per worker with SO_REUSEPORT: the kernel spreads connections over the
/// workers' sockets, and a new process can bind beside an old one during an upgrade.
/// Port 0 is resolved by the first socket and reused for the others. `client_first`
/// (HTTP and TLS, where the client speaks first) defers the accept to the first bytes.
pub fn bind_group(
    addr: SocketAddr,
    count: usize,
    client_first: bool,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        if client_first {
            defer_accept(&socket)?;
        }
        socket.listen(4096)?;
        let l: std::net::TcpListener = socket.into();
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Seconds the kernel holds a connection that has sent nothing yet before handing it over.
const DEFER_ACCEPT_SECS: libc::c_int = 1;

/// TCP_DEFER_ACCEPT: the kernel hands a connection to `accept` with its first bytes (the
/// ClientHello, the request line) rather than at the handshake's last ACK. One wake-up
/// per connection fewer, for us and for the client that pays to wake us; and a connection
/// that never speaks costs a kernel request slot for a second, not a task (nginx's
/// `deferred`, HAProxy's `defer-accept`). Silent connections are still handed over after
/// [`DEFER_ACCEPT_SECS`] and meet the request header timeout as before.
fn defer_accept(socket: &Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let fd = socket.as_raw_fd();
    setsockopt_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        DEFER_ACCEPT_SECS,
    )
}

/// Sets one integer socket option: the only `setsockopt` the proxy makes itself, for the
/// two options neither tokio nor socket2 offers (`TCP_DEFER_ACCEPT`, `SO_RCVLOWAT`).
#[allow(unsafe_code)]
fn setsockopt_int(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: `fd` is a socket the caller holds open, and the pointer is to a live c_int
    // with its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Peeks at a new connection's first bytes (up to `most`) until `judge` can tell what
/// they start (`Some`). A connection that sent a prefix and stopped is not polled: the
/// socket's receive low-water mark is raised to one byte more than it has, so the kernel
/// reports it readable only once more has come (or it closed).
pub async fn sniff<T>(
    tcp: &TcpStream,
    most: usize,
    judge: impl Fn(&[u8]) -> Option<T>,
) -> std::io::Result<T> {
    let mut buf = [0u8; 24];
    let most = most.min(buf.len());
    loop {
        let n = tcp.peek(&mut buf[..most]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(t) = judge(&buf[..n]) {
            return Ok(t);
        }
        more_than(tcp, n).await?;
    }
}

/// Waits until more than `have` bytes are readable (or the peer closed or failed).
async fn more_than(tcp: &TcpStream, have: usize) -> std::io::Result<()> {
    at_least(tcp, have + 1).await
}

/// Waits until `want` bytes are readable (or the peer closed or failed), not polling:
/// the kernel reports the socket readable only at its receive low-water mark.
async fn at_least(tcp: &TcpStream, want: usize) -> std::io::Result<()> {
    // The bytes already there made the socket ready; that readiness is forgotten first,
    // so the next wake-up is the kernel's, at the new mark.
    let _ = tcp.try_io(tokio::io::Interest::READABLE, || {
        Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
    });
    set_recv_lowat(tcp, want)?;
    let mut probe = vec![std::mem::MaybeUninit::<u8>::uninit(); want];
    let r = match socket2::SockRef::from(tcp).peek(&mut probe) {
        Ok(n) if n == 0 || n >= want => Ok(()),
        Ok(_) => tcp.readable().await,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => tcp.readable().await,
        Err(e) => Err(e),
    };
    set_recv_lowat(tcp, 1)?;
    r
}

/// Waits for a TLS connection's first record (its ClientHello) to have arrived whole,
/// so a handshake slot is taken for a client that has said what it wants, not for one
/// byte. Anything that does not start like a TLS handshake record is let through at once
/// (the handshake then fails on it).
pub async fn first_record(tcp: &TcpStream) -> std::io::Result<()> {
    let judge = |b: &[u8]| match b {
        [0x16, 0x03, _, hi, lo, ..] => Some(5 + usize::from(u16::from_be_bytes([*hi, *lo]))),
        [0x16] | [0x16, 0x03] | [0x16, 0x03, _] | [0x16, 0x03, _, _] => None,
        _ => Some(0),
    };
    let want = sniff(tcp, 5, judge).await?;
    if want > 5 {
        // At most one record's worth (16 KiB and its header).
        at_least(tcp, want.min(16_384 + 5)).await?;
    }
    Ok(())
}

/// SO_RCVLOWAT: the socket is readable only with at least `n` bytes (or at its end).
fn set_recv_lowat(tcp: &TcpStream, n: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let n = libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
    setsockopt_int(tcp.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVLOWAT, n)
}

/// Accepts one connection, then takes a connection permit for it from `slots`; `None`
/// once `stop` fires. Every worker accepts on its own socket, so the permit comes *after*
/// the accept: taken before, each idle worker would sit on a permit while a connection
/// that landed on a busier worker's socket waited in its backlog below the limit. At the
/// limit each worker holds at most one accepted connection, unread, until a slot frees;
/// the kernel backlog holds the rest.
pub async fn next_connection(
    slots: &Arc<Semaphore>,
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(tokio::sync::OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    let (tcp, peer) = loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => break accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.cancelled() => return None,
        }
    };
    let permit = match slots.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => tokio::select! {
            p = slots.clone().acquire_owned() => p.ok()?,
            _ = stop.cancelled() => return None,
        },
    };
    Some((permit, tcp, peer))
}

/// On a listener that expects the PROXY protocol: a trusted peer must send a header (its
/// conveyed source becomes the client); anyone else sending one is refused. Returns the
/// client and whether the outer proxy says the client came over TLS.
pub async fn proxy_header(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    from: &crate::rules::matcher::AllowList,
) -> std::io::Result<(SocketAddr, bool)> {
    use crate::proxy_protocol::{Start, classify, read_header};
    let refuse = |m: &str| std::io::Error::new(std::io::ErrorKind::PermissionDenied, m.to_string());
    let start = sniff(tcp, 12, classify).await?;
    match (from.contains(peer.ip()), start) {
        (true, Start::Proxy) => {
            let c = read_header(tcp).await?;
            Ok((c.source.unwrap_or(peer), c.tls))
        }
        (true, Start::Other) => Err(refuse("a trusted peer sent no PROXY header")),
        (false, Start::Proxy) => Err(refuse("PROXY header from an untrusted peer")),
        (false, Start::Other) => Ok((peer, false)),
    }
}
