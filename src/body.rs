//! Request bodies on their way through: the client's body as the edge hands it over, and
//! the same body cut at the route's limit as it goes to a server.
//!
//! A leaf: the edge builds these, the request path and the upstream client read them.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

/// The error a body yields when its stream breaks or passes its limit.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the request body did, shared with the handler that decides the answer.
#[derive(Debug, Default)]
pub struct BodyProgress {
    /// Bytes read from the client so far.
    pub bytes: AtomicU64,
    /// Set when the body passed the route's `max_body`.
    pub too_large: AtomicBool,
    /// Set when reading the client's body failed (bad chunked framing, a reset): the
    /// exchange failed because of the client, never the server.
    pub client_error: AtomicBool,
    /// Whether the last read of the body is waiting for the client (rather than for the
    /// server to take what was read): who stalled, when an upload stops moving.
    pub waiting_on_client: AtomicBool,
    /// When the body ended (ms after [`epoch`], plus one; 0 while it has not).
    ended_ms: AtomicU64,
}

/// A process-wide origin for times kept in atomics.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl BodyProgress {
    /// When the whole body had been read from the client, if it has.
    pub fn ended(&self) -> Option<Instant> {
        match self.ended_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(epoch() + Duration::from_millis(ms - 1)),
        }
    }

    fn end(&self) {
        let ms = epoch().elapsed().as_millis() as u64 + 1;
        self.ended_ms.store(ms, Ordering::Relaxed);
    }
}

/// Raised when a request body passes its limit.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct TooLarge(pub u64);

/// The client's request body as the proxy takes it: hyper's stream, or nothing at all for
/// a request read by the listener's own HTTP/1.1 path (`h1`), which takes only
/// requests without a body.
#[derive(Debug)]
pub enum ClientBody {
    /// A body hyper reads from the connection.
    Hyper(Incoming),
    /// No body.
    Empty,
    /// A body read whole before sending (`buffer_chunked`), and its length; the bytes
    /// are taken on the first poll.
    Whole(Option<Bytes>, u64),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx),
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::Whole(b, _) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::Empty => true,
            ClientBody::Whole(b, _) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Whole(_, n) => SizeHint::with_exact(*n),
        }
    }
}

pin_project! {
    /// The client's request body on its way to the server, cut at `limit` bytes.
    pub struct LimitedBody {
        #[pin]
        inner: Option<ClientBody>,
        limit: u64,
        progress: Arc<BodyProgress>,
        linger: Option<fn(ClientBody)>,
    }

    impl PinnedDrop for LimitedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let Some(linger) = this.linger.take() else { return };
            // Dropped before its end: the server answered (or failed) while the client
            // was still sending. The rest is read and discarded, so the client reads
            // the answer instead of a reset.
            if let Some(inner) = Pin::get_mut(this.inner).take()
                && !inner.is_end_stream()
                && !this.progress.client_error.load(Ordering::Relaxed)
            {
                linger(inner);
            }
        }
    }
}

impl LimitedBody {
    /// Whatever of the body is left when this is dropped goes to `f` (the proxy's
    /// lingering read), so a client still sending can read an early answer.
    pub fn lingering(mut self, f: fn(ClientBody)) -> Self {
        self.linger = Some(f);
        self
    }

    /// Wraps the client body; `limit` is `u64::MAX` when the route sets none.
    pub fn new(inner: ClientBody, limit: u64, progress: Arc<BodyProgress>) -> Self {
        LimitedBody {
            inner: Some(inner),
            limit,
            progress,
            linger: None,
        }
    }

    /// An empty body (for a retried request that never had one).
    pub fn empty(progress: Arc<BodyProgress>) -> Self {
        LimitedBody {
            inner: None,
            limit: 0,
            progress,
            linger: None,
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(None);
        };
        let polled = inner.poll_frame(cx);
        this.progress
            .waiting_on_client
            .store(polled.is_pending(), Ordering::Relaxed);
        match ready!(polled) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let total = this
                        .progress
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if total > *this.limit {
                        this.progress.too_large.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(TooLarge(*this.limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.progress.client_error.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            None => {
                this.progress.end();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}
