//! A coarse per-worker timer for deadlines that almost never fire: the response timeout
//! every forwarded request carries.
//!
//! tokio's timer is exact, and every request paid for that: a clock read for the deadline,
//! a lock and a timer-wheel insert when it is armed, another lock and a remove when the
//! response comes (well within the timeout, nearly always). Here arming is a push into a
//! thread-local slab (no lock, no clock read: the deadline is computed from a time the
//! request already read), disarming is a pop, and one sweeper task per worker looks over
//! the armed deadlines every [`SWEEP`] and wakes those that have passed. A deadline thus
//! fires up to one sweep late, which for timeouts counted in seconds is noise.
//!
//! The slab belongs to the worker thread whose sweeper made it. A future polled where no
//! sweeper runs (a multi-thread runtime, a test) uses tokio's timer instead, so a deadline
//! can never go unwatched.

use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often the sweeper looks: the most a deadline fires late.
pub const SWEEP: Duration = Duration::from_millis(250);

/// The deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

thread_local! {
    static SLAB: RefCell<Option<Slab>> = const { RefCell::new(None) };
    /// The sweeper's last look at the clock: a time that is at most one sweep old,
    /// read without a system call.
    static NOW: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Now, give or take one sweep: the sweeper's last reading where one runs, else the clock.
#[inline]
pub fn coarse_now() -> Instant {
    NOW.with(|n| n.get()).unwrap_or_else(Instant::now)
}

/// Tells slabs apart, so an entry is only ever touched in the slab that holds it.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Slab {
    id: u64,
    entries: Vec<Entry>,
    free: Vec<usize>,
}

struct Entry {
    deadline: Instant,
    /// `None` once expired (woken) or free.
    waker: Option<Waker>,
    expired: bool,
    /// Held by a future; only that future frees it (on drop).
    live: bool,
}

/// Where a future's deadline sits: which slab, which entry.
#[derive(Clone, Copy)]
struct Handle {
    slab: u64,
    index: usize,
}

/// Runs this thread's sweeper: started once per worker runtime, on its thread; returns
/// only when the runtime drops it. Deadlines armed on this thread are watched from here on.
pub async fn sweeper() {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    SLAB.with_borrow_mut(|s| {
        *s = Some(Slab {
            id,
            entries: Vec::new(),
            free: Vec::new(),
        })
    });
    // Taken down with the task, so deadlines armed after it fall back to tokio's timer.
    struct Remove;
    impl Drop for Remove {
        fn drop(&mut self) {
            // Every waiting future is woken: it finds no slab and arms tokio's timer for
            // what is left of its deadline.
            let wake: Vec<Waker> = SLAB
                .try_with(|s| {
                    s.borrow_mut().take().map_or_else(Vec::new, |slab| {
                        slab.entries
                            .into_iter()
                            .filter_map(|mut e| e.waker.take())
                            .collect()
                    })
                })
                .unwrap_or_default();
            wake.into_iter().for_each(Waker::wake);
            let _ = NOW.try_with(|n| n.set(None));
        }
    }
    let _remove = Remove;
    NOW.with(|n| n.set(Some(Instant::now())));
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        NOW.with(|n| n.set(Some(now)));
        // Collected first: a woken task is only queued, but nothing is called with the
        // slab borrowed.
        let due: Vec<Waker> = SLAB.with_borrow_mut(|s| {
            let Some(slab) = s else { return Vec::new() };
            slab.entries
                .iter_mut()
                .filter(|e| e.live && !e.expired && e.deadline <= now)
                .filter_map(|e| {
                    e.expired = true;
                    e.waker.take()
                })
                .collect()
        });
        due.into_iter().for_each(Waker::wake);
    }
}

/// Runs `fut` until it finishes or `deadline` passes (then `Err(Elapsed)`).
pub async fn within<F: Future>(deadline: Instant, fut: F) -> Result<F::Output, Elapsed> {
    let mut fut = pin!(fut);
    let mut armed = Armed::default();
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        armed.poll(deadline, cx)
    })
    .await
}

/// A progress watch: an operation (a write to the client, a read from the server) that
/// waits for longer than its window without moving a byte is stalled. Nothing is armed
/// while the operation makes progress: the window starts when it first has to wait
/// ([`Stall::poll_stalled`], called only on `Pending`) and [`Stall::progress`] ends it,
/// so a busy transfer pays a field store per step and an idle-slab entry per wait, and
/// no timer per read or write.
pub struct Stall {
    window: Duration,
    /// When the current wait began (`None`: not waiting).
    since: Option<Instant>,
    armed: Armed,
}

impl Stall {
    /// A watch that calls a wait of more than `window` a stall.
    pub fn new(window: Duration) -> Self {
        Stall {
            window,
            since: None,
            armed: Armed::None,
        }
    }

    /// Bytes moved: the current wait (if any) is over.
    #[inline]
    pub fn progress(&mut self) {
        if self.since.take().is_some() {
            self.armed = Armed::None;
        }
    }

    /// The operation has to wait: `Ready` once it has waited a whole window (the waker
    /// is kept for when it has).
    pub fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = *self.since.get_or_insert_with(coarse_now) + self.window;
        match self.armed.poll::<()>(deadline, cx) {
            Poll::Ready(_) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl std::fmt::Debug for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stall")
            .field("window", &self.window)
            .field("since", &self.since)
            .finish()
    }
}

/// A deadline as it is watched: in this thread's slab, by tokio's timer, or not yet.
#[derive(Default)]
enum Armed {
    #[default]
    None,
    Slab(Handle),
    // Boxed: the rare case, kept out of every request's future.
    Tokio(std::pin::Pin<Box<tokio::time::Sleep>>),
}

impl Armed {
    /// Pending while the deadline has not passed (the waker is kept for when it does).
    fn poll<T>(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<Result<T, Elapsed>> {
        if let Armed::Slab(h) = *self {
            match check(h, cx.waker()) {
                Some(true) => return Poll::Ready(Err(Elapsed)),
                Some(false) => return Poll::Pending,
                // Polled away from its slab's thread (or the slab is gone): tokio's timer.
                None => *self = Armed::None,
            }
        }
        if let Armed::None = self {
            match arm(deadline, cx.waker()) {
                Some(h) => {
                    *self = Armed::Slab(h);
                    return Poll::Pending;
                }
                None => *self = Armed::Tokio(Box::pin(tokio::time::sleep_until(deadline.into()))),
            }
        }
        match self {
            Armed::Tokio(sleep) => sleep.as_mut().poll(cx).map(|()| Err(Elapsed)),
            _ => Poll::Pending,
        }
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        if let Armed::Slab(h) = *self {
            let _ = SLAB.try_with(|s| {
                if let Ok(mut s) = s.try_borrow_mut()
                    && let Some(slab) = s.as_mut()
                    && slab.id == h.slab
                    && let Some(e) = slab.entries.get_mut(h.index)
                    && e.live
                {
                    e.live = false;
                    e.waker = None;
                    slab.free.push(h.index);
                }
            });
        }
    }
}

/// Puts a deadline in this thread's slab; `None` where no sweeper runs.
fn arm(deadline: Instant, waker: &Waker) -> Option<Handle> {
    SLAB.try_with(|s| {
        let mut s = s.try_borrow_mut().ok()?;
        let slab = s.as_mut()?;
        let index = match slab.free.pop() {
            Some(i) => i,
            None => {
                slab.entries.push(Entry {
                    deadline,
                    waker: None,
                    expired: false,
                    live: false,
                });
                slab.entries.len() - 1
            }
        };
        let e = &mut slab.entries[index];
        e.deadline = deadline;
        e.waker = Some(waker.clone());
        e.expired = false;
        e.live = true;
        Some(Handle {
            slab: slab.id,
            index,
        })
    })
    .ok()
    .flatten()
}

/// Whether an armed deadline has passed (`Some(true)`), or not yet (`Some(false)`, the
/// waker kept up to date); `None` if this thread does not hold it.
fn check(h: Handle, waker: &Waker) -> Option<bool> {
    SLAB.try_with(|s| {
        let mut s = s.try_borrow_mut().ok()?;
        let slab = s.as_mut().filter(|slab| slab.id == h.slab)?;
        let e = slab.entries.get_mut(h.index)?;
        if !e.live {
            return None;
        }
        if e.expired {
            return Some(true);
        }
        match &e.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => e.waker = Some(waker.clone()),
        }
        Some(false)
    })
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A deadline that never fires fails the test instead of hanging it.
    async fn bounded<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), f)
            .await
            .expect("the deadline never fired")
    }

    #[test]
    fn a_deadline_fires_within_a_sweep_of_passing() {
        rt().block_on(async {
            tokio::spawn(sweeper());
            tokio::task::yield_now().await;
            let start = Instant::now();
            let r = bounded(within(
                start + Duration::from_millis(100),
                std::future::pending::<()>(),
            ))
            .await;
            let took = start.elapsed();
            assert_eq!(r, Err(Elapsed));
            assert!(took >= Duration::from_millis(100), "{took:?}");
            assert!(took < Duration::from_millis(100) + SWEEP * 4, "{took:?}");
        });
    }

    #[test]
    fn a_finished_future_frees_its_entry_for_the_next() {
        rt().block_on(async {
            tokio::spawn(sweeper());
            tokio::task::yield_now().await;
            for _ in 0..100 {
                let far = Instant::now() + Duration::from_secs(60);
                let r = within(far, tokio::task::yield_now()).await;
                assert_eq!(r, Ok(()));
            }
            let (live, len) = SLAB.with_borrow(|s| {
                let slab = s.as_ref().expect("slab");
                (
                    slab.entries.iter().filter(|e| e.live).count(),
                    slab.entries.len(),
                )
            });
            assert_eq!((live, len), (0, 1));
        });
    }

    #[test]
    fn without_a_sweeper_tokio_watches_the_deadline() {
        rt().block_on(async {
            let start = Instant::now();
            let r = bounded(within(
                start + Duration::from_millis(50),
                std::future::pending::<()>(),
            ))
            .await;
            assert_eq!(r, Err(Elapsed));
            assert!(start.elapsed() >= Duration::from_millis(50));
        });
    }
}
