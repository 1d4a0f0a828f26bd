//! What is known about the client connection a request came on, shared by its requests.

use super::tunnel;
use crate::upstream::UpstreamClient;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

impl ConnInfo {
    /// Whether the client's request is HTTPS: TLS here, or at the outer proxy that says so.
    pub fn https(&self) -> bool {
        self.tls || self.forwarded_tls
    }
}

/// What is known about the client connection a request came on.
pub struct ConnInfo {
    /// TCP peer.
    pub peer: SocketAddr,
    /// TLS server name the client asked for, lower-case.
    pub sni: Option<Box<str>>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Whether an outer proxy says (PROXY v2 `PP2_TYPE_SSL`) the client reached it over TLS.
    pub forwarded_tls: bool,
    /// Whether a plain connection's requests are redirected to HTTPS.
    pub redirect_https: bool,
    /// TLS handshake time.
    pub tls_time: Duration,
    /// The worker's keep-alive client to the servers (one per worker runtime, so a
    /// request and its upstream connection always run on the same thread).
    pub upstream: UpstreamClient,
    /// The outer proxy when the client address came in a PROXY header (`peer` is then
    /// the conveyed client).
    pub outer_proxy: Option<SocketAddr>,
    /// Requests whose response has not ended, and whether the client stalled.
    pub in_flight: Arc<Activity>,
    /// An HTTP/1.1 upgrade waiting for the socket: the listener fills it once hyper has
    /// written the 101 and handed the connection back.
    pub upgrade: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Box<dyn tunnel::ClientIo>>>>,
}

impl ConnInfo {
    /// What is known of a new connection.
    pub fn new(peer: SocketAddr, upstream: UpstreamClient) -> Self {
        ConnInfo {
            peer,
            sni: None,
            tls: false,
            forwarded_tls: false,
            redirect_https: false,
            tls_time: Duration::ZERO,
            upstream,
            outer_proxy: None,
            in_flight: Arc::default(),
            upgrade: std::sync::Mutex::new(None),
        }
    }

    /// The client side of an upgrade: the listener hands the socket over once hyper has
    /// written the 101 and let go of the connection.
    pub(super) fn client_upgrade(
        &self,
    ) -> tokio::sync::oneshot::Receiver<Box<dyn tunnel::ClientIo>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self.upgrade.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// The upgrade waiting for this connection's socket, if any.
    pub fn take_upgrade(&self) -> Option<tokio::sync::oneshot::Sender<Box<dyn tunnel::ClientIo>>> {
        self.upgrade
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// What a connection's requests and its serving loop tell each other.
#[derive(Debug, Default)]
pub struct Activity {
    /// Requests whose response has not ended: an HTTP/1.1 connection parks only at zero.
    pub requests: AtomicUsize,
    /// The client stopped taking what was written to it for a whole `timeouts.client`
    /// (set by the connection's writer; the requests it cut are logged `client_timeout`).
    pub client_stalled: AtomicBool,
    /// HTTP/2 only: polls of response bodies (any movement of any stream's response).
    pub frames: AtomicU64,
    /// HTTP/2 only: response bodies that handed out a frame and wait for the writer to
    /// come back for the next one (a stream whose client window stays shut stays here).
    pub owed: AtomicUsize,
    /// `timeouts.server`: how long a server may send nothing of a response body.
    pub server_window: Duration,
    /// An answer said `Connection: close`: the connection ends after it, even if the
    /// round ends by parking (an unread body cut short by the idle tick).
    pub closing: AtomicBool,
}

impl Activity {
    /// A new connection's, its servers watched with `server_window`.
    pub fn new(server_window: Duration) -> Self {
        Activity {
            server_window,
            ..Activity::default()
        }
    }

    /// Whether no request of the connection is in flight.
    pub fn idle(&self) -> bool {
        self.requests.load(Ordering::Relaxed) == 0
    }
}

/// Counts a request in flight on its connection for as long as it lives (kept in the
/// request's record, which lives until the response's last byte).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl InFlight {
    /// One more request on the connection whose activity is `a`.
    pub fn enter(a: &Arc<Activity>) -> Self {
        a.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(a.clone())
    }

    /// HTTP/2: the writer came back for a frame (`owed`: after one it was handed).
    pub fn polled(&self, owed: bool) {
        self.0.frames.fetch_add(1, Ordering::Relaxed);
        if owed {
            self.0.owed.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// HTTP/2: a frame went to the writer.
    pub fn handed(&self) {
        self.0.owed.fetch_add(1, Ordering::Relaxed);
    }

    /// `timeouts.server` of the connection's listener.
    pub fn server_window(&self) -> Duration {
        self.0.server_window
    }

    /// Whether the connection's client stalled.
    pub fn client_stalled(&self) -> bool {
        self.0.client_stalled.load(Ordering::Relaxed)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// HTTP/2: what a stream's response body did during one poll of the task that carries
/// the stream (`h2stream`), so a stream whose client window stays shut is cut even while
/// other streams of its connection move (the connection's watchdog sees only the whole).
/// The body is only ever polled inside its stream's task, so a thread-local carries the
/// news from one to the other: no allocation or shared count per stream.
pub mod stream {
    use std::cell::Cell;

    /// The writer came back for a frame: the stream moved.
    pub const MOVED: u8 = 1;
    /// A frame went to the writer, which owes a poll for the next one.
    pub const OWED: u8 = 2;
    /// The task is cutting the stream: its client took nothing for `timeouts.client`.
    pub const CUT: u8 = 4;

    thread_local! {
        static EVENTS: Cell<u8> = const { Cell::new(0) };
    }

    /// Notes `e` for the task being polled. `MOVED` clears `OWED`: what the task reads
    /// is whether a frame is owed *now*, after everything that happened in its poll.
    #[inline]
    pub fn note(e: u8) {
        EVENTS.with(|c| {
            let was = if e == MOVED { c.get() & !OWED } else { c.get() };
            c.set(was | e)
        });
    }

    /// What was noted since the last take, cleared.
    #[inline]
    pub fn take() -> u8 {
        EVENTS.with(|c| c.replace(0))
    }

    /// Whether the task being polled is cutting its stream.
    pub fn cutting() -> bool {
        EVENTS.with(|c| c.get() & CUT != 0)
    }
}
