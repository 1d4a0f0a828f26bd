//! HTTP/2 stream tasks, each watched for a client window that stays shut.
//!
//! hyper runs every HTTP/2 stream (its request, then its response body) as a task of
//! its own, spawned through the connection's executor. This executor wraps each one: a
//! stream whose response waits on the client (a frame handed out, the writer not back for
//! the next) and has not moved for `timeouts.client` is dropped, which resets it and
//! frees its slot, while the connection and its other streams go on. The body reports
//! through [`stream`] (a thread-local: it is only polled inside this task), and the watch
//! is armed only when the task has to wait, on the coarse sweep ([`Stall`]): no timer or
//! shared count per stream (the one allocation is the stream future's box, below).

use crate::deadline::Stall;
use crate::proxy::conn::stream;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Spawns hyper's HTTP/2 stream tasks on tokio, each watched with `window`.
#[derive(Clone, Copy, Debug)]
pub struct StreamExec {
    window: Duration,
}

impl StreamExec {
    /// Stream tasks whose client takes nothing for `window` are cut.
    pub fn new(window: Duration) -> Self {
        StreamExec { window }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Watched {
            fut: Some(Box::pin(fut)),
            stall: Stall::new(self.window),
            owed: false,
        });
    }
}

pin_project! {
    /// One stream's task and its watch.
    struct Watched<F> {
        // `None` once cut. Boxed: hyper's stream future is large, and moved into a
        // wrapper and then into the task it would be copied twice more.
        fut: Option<Pin<Box<F>>>,
        stall: Stall,
        // The body handed out a frame and the writer has not come back for the next.
        owed: bool,
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Ready(());
        };
        stream::take();
        let polled = fut.as_mut().poll(cx);
        let events = stream::take();
        if polled.is_ready() {
            return Poll::Ready(());
        }
        if events & stream::MOVED != 0 {
            *this.owed = false;
        }
        if events & stream::OWED != 0 {
            *this.owed = true;
        }
        if !*this.owed {
            // Moving, or waiting on something other than the client.
            this.stall.progress();
            return Poll::Pending;
        }
        if this.stall.poll_stalled(cx).is_pending() {
            return Poll::Pending;
        }
        // Dropping the task's future resets the stream; its record, dropped with it,
        // reads that the client stalled.
        stream::note(stream::CUT);
        *this.fut = None;
        stream::take();
        Poll::Ready(())
    }
}
