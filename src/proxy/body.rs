//! The response body: the server's stream (or our own page), carrying the request's pool
//! slot and log record until its last byte.
//!
//! Nothing here buffers a body: frames pass through one at a time, and hyper's
//! back-pressure (a frame is only polled when the other side can take it) bounds memory.

use super::finish::Record;
use crate::body::BoxError;
use crate::upstream::direct::DirectBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// How a response body ended, and so who is to blame for one that did not end well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Every byte went out.
    Complete,
    /// The writer let go before the end: the client closed, or stopped reading.
    Dropped,
    /// The server's stream broke mid-body.
    ServerBroke,
    /// The server sent nothing for a whole `timeouts.server`.
    ServerStalled,
}

/// Something that must live exactly as long as the response body (pool slot, log record).
pub trait Hold: Send + Sync + 'static {
    /// Called once with the bytes sent when the body ends or is dropped.
    fn finish(&mut self, bytes_out: u64, end: End);

    /// The writer came back for a frame (HTTP/2: a stream whose client window stays shut
    /// moves no byte on the socket, so only the body can tell the connection's watchdog).
    fn polled(&mut self) {}

    /// A frame went to the writer, which owes a poll for the next one.
    fn handed(&mut self) {}

    /// The server's side has to wait: `Ready` once it has waited `timeouts.server`.
    fn poll_server_stalled(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }

    /// The server's side moved.
    fn server_moved(&mut self) {}
}

/// The server sent nothing of the body for a whole `timeouts.server`.
#[derive(Debug, thiserror::Error)]
#[error("the server stopped sending the response body")]
pub struct ServerStalled;

pin_project! {
    /// The response body: the server's stream or a page from memory, plus what it holds.
    pub struct ProxyBody {
        #[pin]
        kind: Kind,
        sent: u64,
        // The one holder, named rather than `dyn`: its calls on every frame inline.
        hold: Option<Box<Record>>,
    }

    impl PinnedDrop for ProxyBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(mut h) = this.hold.take() {
                // hyper stops polling once Content-Length bytes went out, so "ended" is
                // judged from the stream's own state, not from having seen its end.
                let complete = match this.kind.project() {
                    KindProj::Full { data } => data.is_none(),
                    KindProj::Upstream { inner } => inner.is_end_stream(),
                    KindProj::Direct { inner } => inner.is_end_stream(),
                };
                h.finish(*this.sent, if complete { End::Complete } else { End::Dropped });
            }
        }
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        Upstream { #[pin] inner: Incoming },
        Direct { inner: DirectBody },
        Full { data: Option<Bytes> },
    }
}

impl ProxyBody {
    /// A body streamed from the server.
    pub fn upstream(inner: Incoming) -> Self {
        ProxyBody {
            kind: Kind::Upstream { inner },
            sent: 0,
            hold: None,
        }
    }

    /// A body read straight from the server's socket (`upstream::direct`).
    pub fn direct(inner: DirectBody) -> Self {
        ProxyBody {
            kind: Kind::Direct { inner },
            sent: 0,
            hold: None,
        }
    }

    /// A body from memory (pages, redirects, stats).
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        ProxyBody {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
            sent: 0,
            hold: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody::full(Bytes::new())
    }

    /// Attaches what must be released or recorded when the body ends.
    #[inline]
    pub fn hold(mut self, hold: Box<Record>) -> Self {
        self.hold = Some(hold);
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(h) = this.hold.as_deref_mut() {
            h.polled();
        }
        let polled = match this.kind.project() {
            KindProj::Upstream { inner } => inner
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| Box::new(e) as BoxError))),
            KindProj::Direct { inner } => Pin::new(inner)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| Box::new(e) as BoxError))),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        let next = match polled {
            Poll::Ready(next) => {
                if let Some(h) = this.hold.as_deref_mut() {
                    h.server_moved();
                }
                next
            }
            Poll::Pending => {
                let Some(h) = this.hold.as_deref_mut() else {
                    return Poll::Pending;
                };
                ready!(h.poll_server_stalled(cx));
                if let Some(mut h) = this.hold.take() {
                    h.finish(*this.sent, End::ServerStalled);
                }
                return Poll::Ready(Some(Err(Box::new(ServerStalled))));
            }
        };
        match &next {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    *this.sent += d.len() as u64;
                }
                if let Some(h) = this.hold.as_deref_mut() {
                    h.handed();
                }
            }
            None => {
                if let Some(mut h) = this.hold.take() {
                    h.finish(*this.sent, End::Complete);
                }
            }
            Some(Err(_)) => {
                if let Some(mut h) = this.hold.take() {
                    h.finish(*this.sent, End::ServerBroke);
                }
            }
        }
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { inner } => inner.is_end_stream(),
            Kind::Direct { inner } => inner.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { inner } => inner.size_hint(),
            Kind::Direct { inner } => inner.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
