//! Idle HTTP/1.1 connections parked without buffers.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer in every HTTP/1.1
//! connection for its whole life, idle or not: 10,000 idle keep-alive clients cost
//! 160 MiB of buffers alone. HAProxy releases its buffers while a connection waits. So do
//! we: [`ParkIo`] sits between hyper and the socket, and once the connection has been idle
//! for [`PARK_AFTER`] (no request in flight, everything written) it tells hyper the client
//! has closed. hyper then ends that connection *without* shutting the socket down, and
//! hands the socket back (`into_parts`). The listener waits for the client's next bytes on
//! the bare socket ([`Readiness`]), under the idle timeout, and starts a fresh hyper
//! connection on it. A busy connection never parks, so the hot path pays one timer reset
//! per idle gap and nothing else.

use crate::deadline::Stall;
use crate::proxy::Activity;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

/// The park tick: a keep-alive connection quiet for a whole tick (so 0.5 to 1 s after its
/// last byte) is parked. Short enough that idle clients cost little; long enough that a
/// browser's burst of requests (and any client that answers promptly) never pays for a
/// new hyper connection.
pub const PARK_AFTER: Duration = Duration::from_millis(500);

/// A socket that can say when it has bytes to read without reading them (so a parked
/// connection holds no buffer while it waits).
pub trait Readiness {
    /// Ready once a read would not block (data, EOF or an error).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// The connection's last bytes are about to be written: hold them (TCP_CORK) so the
    /// response, TLS close_notify and FIN leave in one segment at the close, and the
    /// client is woken once instead of three times.
    fn cork_until_close(&self) {}

    /// The connection is about to wait for its client's next request: buffers that hold
    /// nothing are given back (an idle connection keeps only its state).
    fn release_idle(&mut self) {}

    /// The bare TCP socket, when this is one (its first bytes can be waited for by the
    /// kernel's low-water mark).
    fn as_tcp(&self) -> Option<&tokio::net::TcpStream> {
        None
    }
}

impl Readiness for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }

    fn cork_until_close(&self) {
        // A failure only costs the extra segments.
        let _ = socket2::SockRef::from(self).set_tcp_cork(true);
    }

    fn as_tcp(&self) -> Option<&tokio::net::TcpStream> {
        Some(self)
    }
}

impl<S: Readiness + ?Sized> Readiness for Box<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_read_ready(cx)
    }

    fn cork_until_close(&self) {
        (**self).cork_until_close()
    }

    fn release_idle(&mut self) {
        (**self).release_idle()
    }

    fn as_tcp(&self) -> Option<&tokio::net::TcpStream> {
        (**self).as_tcp()
    }
}

impl<S: Readiness> Readiness for crate::rewind::Rewind<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.has_buffered() {
            return Poll::Ready(Ok(()));
        }
        self.get_ref().poll_read_ready(cx)
    }

    fn cork_until_close(&self) {
        self.get_ref().cork_until_close()
    }

    fn release_idle(&mut self) {
        self.get_mut().release_idle()
    }
}

/// Waits until `io` has bytes to read, holding nothing but the socket.
pub async fn readable<I: Readiness>(io: &I) -> io::Result<()> {
    std::future::poll_fn(|cx| io.poll_read_ready(cx)).await
}

/// The park tick: the timer is a tick, not a deadline pushed back per request, so a busy
/// connection pays one timer wake per tick instead of a timer reset per request, and an
/// idle one is found quiet between one and two ticks after its last byte. Shared by
/// hyper's rounds ([`ParkIo`]) and the listener's own HTTP/1.1 path (`h1.rs`).
pub struct Tick {
    /// Armed at the first look, then re-armed at each tick.
    timer: Option<Pin<Box<Sleep>>>,
    /// Bytes moved since the last tick.
    active: bool,
}

impl Default for Tick {
    /// Counts the connection as active until its first tick has passed.
    fn default() -> Tick {
        Tick {
            timer: None,
            active: true,
        }
    }
}

impl Tick {
    /// Bytes moved: the connection is not quiet this tick.
    pub fn touch(&mut self) {
        self.active = true;
    }

    /// Drops the timer while nothing is being served (it is armed again at the next
    /// look): a parked connection keeps no timer.
    pub fn release(&mut self) {
        self.timer = None;
        self.active = true;
    }

    /// Active again, with the next tick starting now.
    pub fn restart(&mut self) {
        self.active = true;
        if let Some(t) = self.timer.as_mut() {
            t.as_mut().reset(Instant::now() + PARK_AFTER);
        }
    }

    /// True once a whole [`PARK_AFTER`] tick has passed untouched and `idle()` holds;
    /// otherwise the tick is re-armed and `cx` woken at its end.
    pub fn quiet(&mut self, cx: &mut Context<'_>, idle: impl FnOnce() -> bool) -> bool {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(PARK_AFTER)));
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        if !std::mem::take(&mut self.active) && idle() {
            return true;
        }
        timer.as_mut().reset(Instant::now() + PARK_AFTER);
        let _ = timer.as_mut().poll(cx);
        false
    }
}

/// A write to the client that has waited a whole `timeouts.client`: the connection is
/// marked (its cut requests are logged `client_timeout`) and the write fails.
fn client_stalled<T>(
    stall: &mut Stall,
    activity: &Activity,
    cx: &mut Context<'_>,
) -> Poll<io::Result<T>> {
    ready!(stall.poll_stalled(cx));
    activity.client_stalled.store(true, Ordering::Relaxed);
    Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
}

/// Passes `r` on, watching for a client that stops taking what is written to it.
#[inline]
fn watched<T>(
    r: Poll<io::Result<T>>,
    stall: &mut Stall,
    activity: &Activity,
    cx: &mut Context<'_>,
) -> Poll<io::Result<T>> {
    match r {
        Poll::Pending => client_stalled(stall, activity, cx),
        r => {
            stall.progress();
            r
        }
    }
}

/// A client socket whose writes fail once the client has taken nothing for a whole
/// window (`timeouts.client`): the HTTP/2 connection's socket, and the own HTTP/1.1
/// path's writes. `A` is the connection's [`Activity`], owned or borrowed.
pub struct Watched<I, A> {
    io: I,
    stall: Stall,
    activity: A,
}

impl<I, A: std::ops::Deref<Target = Activity>> Watched<I, A> {
    /// `io`, its writes watched with `window`.
    pub fn new(io: I, window: Duration, activity: A) -> Self {
        Watched {
            io,
            stall: Stall::new(window),
            activity,
        }
    }

    /// The connection's activity.
    fn activity(&self) -> &Activity {
        &self.activity
    }
}

impl<I, A> Watched<I, A> {
    /// The socket.
    pub fn get_ref(&self) -> &I {
        &self.io
    }

    /// The socket, to read and write past the watch.
    pub fn get_mut(&mut self) -> &mut I {
        &mut self.io
    }

    /// The socket, owned.
    pub fn into_inner(self) -> I {
        self.io
    }
}

impl<I: AsyncRead + Unpin, A: Unpin> AsyncRead for Watched<I, A> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I, A> AsyncWrite for Watched<I, A>
where
    I: AsyncWrite + Unpin,
    A: std::ops::Deref<Target = Activity> + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        watched(r, &mut this.stall, &this.activity, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        watched(r, &mut this.stall, &this.activity, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        watched(r, &mut this.stall, &this.activity, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The socket under hyper, watching for an idle gap long enough to park in, and for a
/// client that stops taking what is written to it.
pub struct ParkIo<I> {
    /// The socket; its activity counts the requests whose response is not finished.
    io: TokioIo<Watched<I, Arc<Activity>>>,
    tick: Tick,
    /// Bytes already read from the socket (by `h1.rs`) that hyper reads first.
    unread: bytes::Bytes,
    /// A write since the last completed flush: hyper may still hold bytes to send.
    dirty: bool,
    parked: bool,
}

impl<I> ParkIo<I> {
    /// `io`, parking once idle; `in_flight` is the connection's activity; a write that
    /// waits on the client for `client_timeout` fails.
    pub fn new(io: I, in_flight: Arc<Activity>, client_timeout: Duration) -> Self {
        ParkIo {
            io: TokioIo::new(Watched::new(io, client_timeout, in_flight)),
            tick: Tick::default(),
            unread: bytes::Bytes::new(),
            dirty: false,
            parked: false,
        }
    }

    /// Whether hyper's connection ended because this one was parked (rather than the
    /// client closing, an error or `Connection: close`).
    pub fn parked(&self) -> bool {
        self.parked
    }

    /// Ready for another hyper connection after a park.
    pub fn unpark(&mut self) {
        self.parked = false;
        self.tick.restart();
    }

    /// The socket.
    pub fn get_ref(&self) -> &I {
        self.io.inner().get_ref()
    }

    /// The socket, to read and write past hyper (`h1.rs`).
    pub fn get_mut(&mut self) -> &mut I {
        self.io.inner_mut().get_mut()
    }

    /// About to wait for the client's next request: the tick's timer and the socket's
    /// empty buffers are given back (see [`Readiness::release_idle`]).
    pub fn release_idle(&mut self)
    where
        I: Readiness,
    {
        self.tick.release();
        self.io.inner_mut().get_mut().release_idle();
    }

    /// Gives hyper `bytes` to read before the socket's.
    pub fn unread(&mut self, bytes: bytes::Bytes) {
        self.unread = bytes;
    }

    /// Whether bytes given back with [`ParkIo::unread`] are still waiting.
    pub fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }

    /// The socket, owned (an upgraded connection's tunnel takes it).
    pub fn into_inner(self) -> I {
        self.io.into_inner().into_inner()
    }

    /// Bytes are going out: not idle, and not flushed yet.
    fn wrote(&mut self) {
        self.dirty = true;
        self.tick.touch();
    }

    /// Called when a read would block: parks (returns true) once a whole [`Tick`] has
    /// passed with no bytes moved, no request in flight and nothing unflushed.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let (in_flight, dirty) = (self.io.inner().activity(), self.dirty);
        self.tick.quiet(cx, || in_flight.idle() && !dirty)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> Read for ParkIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(n));
            this.tick.touch();
            return Poll::Ready(Ok(()));
        }
        if this.parked {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => {}
            ready => {
                this.tick.touch();
                return ready;
            }
        }
        if this.idle_expired(cx) {
            // Zero bytes: hyper takes it for the client closing an idle connection.
            this.parked = true;
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> Write for ParkIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.wrote();
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.wrote();
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            this.dirty = false;
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
