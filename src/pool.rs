//! Traffic-class pools: slots (requests in flight), a bounded FIFO queue, a queue timeout.
//!
//! A `Pool` outlives rule generations (keyed by name), so in-flight requests keep their
//! slots across a reload and a resize only changes how many new ones may start.
//! The `PoolPermit` rides inside the response body: a download holds its slot until its
//! last byte has gone out.

use crate::rules::PoolSpec;
use crate::share::{Cells, ShareGuard, Shares};
use crate::stats::Counters;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Why a pool turned a request away (the request path maps it to its 503).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The queue was full: refused at once.
    #[error("queue full")]
    QueueFull,
    /// The request waited longer than the queue timeout.
    #[error("queue timeout")]
    QueueTimeout,
    /// The client already holds its share of the pool, and none of its own requests
    /// ended within the queue timeout (or too many of its requests already wait).
    #[error("over the client's share")]
    OverShare,
}

/// The runtime side of a traffic class.
#[derive(Debug)]
pub struct Pool {
    /// Class name (`static`, `app`, `files`).
    pub name: Arc<str>,
    /// Slots: one permit per request in flight. Tokio's semaphore is fair (FIFO), which
    /// is the queue order we promise.
    slots: Arc<Semaphore>,
    /// Configured slot count (the semaphore's total).
    limit: AtomicU32,
    /// Requests waiting for a slot now.
    waiting: AtomicU32,
    /// Most requests ever waiting at once.
    pub max_waiting: AtomicU32,
    /// Queue bound; one more gets 503 at once.
    queue: AtomicU32,
    /// Queue timeout in milliseconds.
    queue_timeout_ms: AtomicU64,
    /// Refusals because the queue was full.
    pub queue_full: AtomicU64,
    /// Refusals because a request waited too long.
    pub queue_timeouts: AtomicU64,
    /// Slots held per client address.
    shares: Shares,
    /// Refusals because the client was over its share.
    pub over_share: AtomicU64,
}

/// A held slot; dropping it frees the slot for the next queued request.
#[derive(Debug)]
pub struct PoolPermit {
    pool: Arc<Pool>,
    /// The client's share, when it is counted.
    share: Option<Cells>,
}

impl Drop for PoolPermit {
    fn drop(&mut self) {
        self.pool.slots.add_permits(1);
        if let Some(c) = self.share {
            self.pool.shares.give_back(c);
        }
    }
}

impl Pool {
    /// A pool sized by `spec`.
    pub fn new(spec: &PoolSpec) -> Arc<Pool> {
        Arc::new(Pool {
            name: spec.name.clone(),
            slots: Arc::new(Semaphore::new(spec.slots as usize)),
            limit: AtomicU32::new(spec.slots),
            waiting: AtomicU32::new(0),
            max_waiting: AtomicU32::new(0),
            queue: AtomicU32::new(spec.queue),
            queue_timeout_ms: AtomicU64::new(spec.queue_timeout.as_millis() as u64),
            queue_full: AtomicU64::new(0),
            queue_timeouts: AtomicU64::new(0),
            shares: Shares::default(),
            over_share: AtomicU64::new(0),
        })
    }

    /// Applies new sizes from a reload. Growing adds slots now; shrinking takes slots
    /// back as in-flight requests finish (held ones are never revoked).
    pub fn resize(self: &Arc<Self>, spec: &PoolSpec) {
        let old = self.limit.swap(spec.slots, Ordering::AcqRel);
        if spec.slots > old {
            self.slots.add_permits((spec.slots - old) as usize);
        } else if spec.slots < old {
            let mut shrink = (old - spec.slots) as usize;
            shrink -= self.slots.forget_permits(shrink);
            if shrink > 0 {
                let sem = self.slots.clone();
                tokio::spawn(async move {
                    for _ in 0..shrink {
                        if let Ok(p) = sem.clone().acquire_owned().await {
                            p.forget();
                        }
                    }
                });
            }
        }
        self.queue.store(spec.queue, Ordering::Relaxed);
        self.queue_timeout_ms
            .store(spec.queue_timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// Takes a slot: at once if one is free, else waits in the queue (FIFO) up to the
    /// queue timeout. A full queue refuses at once.
    /// `service` counts the wait too (HAProxy reports queues per backend). `share` is the
    /// client and how many slots it may hold (`None`: not counted); over it, the request
    /// first waits for one of the client's own to end.
    pub async fn acquire(
        self: &Arc<Self>,
        service: &Counters,
        share: Option<(IpAddr, u32)>,
    ) -> Result<PoolPermit, Refused> {
        let share = match share {
            None => None,
            Some((client, n)) => {
                let cells = self.shares.cells(client);
                match self.shares.try_take(cells, n) {
                    Some(g) => Some(g),
                    // Boxed, like the slot's wait below: the common case stays small.
                    None => Some(Box::pin(self.wait_share(cells, n)).await?),
                }
            }
        };
        match self.slots.try_acquire() {
            Ok(p) => p.forget(),
            // Boxed: waiting is the flood case, and its timer and semaphore wait would
            // otherwise take room in every request's future.
            Err(_) => Box::pin(self.wait(service)).await?.forget(),
        }
        Ok(PoolPermit {
            pool: self.clone(),
            share: share.map(ShareGuard::keep),
        })
    }

    /// The client's share once one of its own requests ends (within the queue timeout).
    async fn wait_share(&self, cells: Cells, n: u32) -> Result<ShareGuard<'_>, Refused> {
        let timeout = Duration::from_millis(self.queue_timeout_ms.load(Ordering::Relaxed));
        let deadline = tokio::time::Instant::now() + timeout;
        self.shares.wait(cells, n, deadline).await.map_err(|_| {
            self.over_share.fetch_add(1, Ordering::Relaxed);
            Refused::OverShare
        })
    }

    /// Queues for a slot (bounded, with the pool's timeout).
    async fn wait(&self, service: &Counters) -> Result<SemaphorePermit<'_>, Refused> {
        let queue = self.queue.load(Ordering::Relaxed);
        let now_waiting = self.waiting.fetch_add(1, Ordering::AcqRel) + 1;
        let _leave = Leave(&self.waiting);
        if now_waiting > queue {
            self.queue_full.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::QueueFull);
        }
        self.max_waiting.fetch_max(now_waiting, Ordering::Relaxed);
        let q = service.queued.fetch_add(1, Ordering::Relaxed) + 1;
        service.max_queued.fetch_max(q, Ordering::Relaxed);
        let _leave_service = LeaveU64(&service.queued);
        let timeout = Duration::from_millis(self.queue_timeout_ms.load(Ordering::Relaxed));
        match tokio::time::timeout(timeout, self.slots.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            _ => {
                self.queue_timeouts.fetch_add(1, Ordering::Relaxed);
                Err(Refused::QueueTimeout)
            }
        }
    }

    /// Requests in flight now.
    pub fn in_use(&self) -> u32 {
        let limit = self.limit.load(Ordering::Relaxed);
        limit.saturating_sub(self.slots.available_permits() as u32)
    }

    /// Configured slots.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Requests queued now.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Configured queue bound.
    pub fn queue_limit(&self) -> u32 {
        self.queue.load(Ordering::Relaxed)
    }
}

/// Leaves the service's queue count likewise.
struct LeaveU64<'a>(&'a AtomicU64);

impl Drop for LeaveU64<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Leaves the queue count when the waiting request finishes, times out or is cancelled.
struct Leave<'a>(&'a AtomicU32);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
