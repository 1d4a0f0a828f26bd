//! The response body: the server's stream (or our own page), carrying the request's pool
//! slot and log record until its last byte.
//!
//! Nothing here buffers a body: frames pass through one at a time, and hyper's
//! back-pressure (a frame is only polled when the other side can take it) bounds memory.

use crate::body::BoxError;
use crate::upstream::direct::DirectBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// Something that must live exactly as long as the response body (pool slot, log record).
pub trait Hold: Send + Sync + 'static {
    /// Called once with the bytes sent when the body ends or is dropped.
    fn finish(&mut self, bytes_out: u64, complete: bool);
}

pin_project! {
    /// The response body: the server's stream or a page from memory, plus what it holds.
    pub struct ProxyBody {
        #[pin]
        kind: Kind,
        sent: u64,
        hold: Option<Box<dyn Hold>>,
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
                h.finish(*this.sent, complete);
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
    pub fn hold(mut self, hold: Box<dyn Hold>) -> Self {
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
        let next = match this.kind.project() {
            KindProj::Upstream { inner } => {
                ready!(inner.poll_frame(cx)).map(|r| r.map_err(|e| Box::new(e) as BoxError))
            }
            KindProj::Direct { inner } => ready!(Pin::new(inner).poll_frame(cx))
                .map(|r| r.map_err(|e| Box::new(e) as BoxError)),
            KindProj::Full { data } => data.take().map(|d| Ok(Frame::data(d))),
        };
        match &next {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    *this.sent += d.len() as u64;
                }
            }
            None => {
                if let Some(mut h) = this.hold.take() {
                    h.finish(*this.sent, true);
                }
            }
            Some(Err(_)) => {
                if let Some(mut h) = this.hold.take() {
                    h.finish(*this.sent, false);
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
