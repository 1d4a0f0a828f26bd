//! Per-client shares of a pool: how many slots one client address may hold at once.
//!
//! A pool's slots are what a flood takes: forty unread downloads from one address once
//! filled the `files` pool and every other download in the world got 503. Each pool
//! therefore counts the slots held per client and lets one address hold at most its share;
//! the excess waits for one of *its own* requests to end (never for other clients'), up
//! to the queue timeout, then gets 429.
//!
//! The counts live in a fixed-size sketch (two rows of counters, each client hashed with a
//! per-process key into one cell of each row; a client's count is the smaller of its two
//! cells), so memory never grows with the number of clients and the hot path takes no
//! lock: two atomic additions to take a share, two subtractions to give it back. Two
//! clients only share a budget if they collide in both rows (about one pair in a million
//! with the key unknown to them). IPv6 clients are counted by their /64: one subscriber
//! holds a whole /64, so counting /128s would give one client 2^64 shares.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::Notify;

/// Cells per row: 2^BITS.
const BITS: u32 = 10;
const WIDTH: usize = 1 << BITS;

/// The counts of one pool.
#[derive(Debug)]
pub struct Shares {
    /// One random odd multiplier per row (multiply-shift hashing: a universal family, so
    /// a client who does not know them cannot aim at another's cells).
    key: [u64; 2],
    /// Slots held: row 0, then row 1.
    held: Box<[AtomicU32]>,
    /// Requests waiting for their own share: row 0, then row 1.
    waiting: Box<[AtomicU32]>,
    /// Requests waiting anywhere in this pool for a share (only then is a release told).
    waiters: AtomicU32,
    released: Notify,
}

/// A client's two cells.
#[derive(Clone, Copy, Debug)]
pub struct Cells([usize; 2]);

/// Why a share was not given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    /// The client already has as many requests waiting as it may hold: refused at once.
    TooManyWaiting,
    /// None of the client's own requests ended within the wait.
    Timeout,
}

/// A share held; given back on drop, unless [`ShareGuard::keep`] hands it to a longer
/// owner (the pool permit, which gives it back with [`Shares::give_back`]).
#[derive(Debug)]
pub struct ShareGuard<'a> {
    shares: &'a Shares,
    cells: Cells,
}

impl ShareGuard<'_> {
    /// The cells, now the caller's to give back.
    pub fn keep(self) -> Cells {
        let cells = self.cells;
        std::mem::forget(self);
        cells
    }
}

impl Default for Shares {
    fn default() -> Self {
        let row = || (0..2 * WIDTH).map(|_| AtomicU32::new(0)).collect();
        let odd = |n: u64| RandomState::new().hash_one(n) | 1;
        Shares {
            key: [odd(0), odd(1)],
            held: row(),
            waiting: row(),
            waiters: AtomicU32::new(0),
            released: Notify::new(),
        }
    }
}

impl Shares {
    /// The cells counting `ip` (an IPv6 client by its /64, a mapped IPv4 one as IPv4).
    #[inline]
    pub fn cells(&self, ip: IpAddr) -> Cells {
        let x = match ip {
            IpAddr::V4(a) => u64::from(a.to_bits()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => u64::from(v4.to_bits()),
                // The /64, kept apart from every IPv4 address.
                None => (a.to_bits() >> 64) as u64 ^ 0x9e37_79b9_7f4a_7c15,
            },
        };
        let cell = |k: u64| (k.wrapping_mul(x) >> (64 - BITS)) as usize;
        Cells([cell(self.key[0]), WIDTH + cell(self.key[1])])
    }

    /// Counts one more in `cells`; the client's count after it.
    fn add(row: &[AtomicU32], c: Cells) -> u32 {
        let a = row[c.0[0]].fetch_add(1, Ordering::AcqRel) + 1;
        let b = row[c.0[1]].fetch_add(1, Ordering::AcqRel) + 1;
        a.min(b)
    }

    fn sub(row: &[AtomicU32], c: Cells) {
        row[c.0[0]].fetch_sub(1, Ordering::AcqRel);
        row[c.0[1]].fetch_sub(1, Ordering::AcqRel);
    }

    /// A share for the client in `cells` if it holds fewer than `share` slots now.
    pub fn try_take(&self, cells: Cells, share: u32) -> Option<ShareGuard<'_>> {
        if Self::add(&self.held, cells) <= share {
            return Some(ShareGuard {
                shares: self,
                cells,
            });
        }
        Self::sub(&self.held, cells);
        None
    }

    /// Waits (until `deadline`) for the client's count to drop below `share`; at most
    /// `share` of its requests wait at once.
    pub async fn wait(
        &self,
        cells: Cells,
        share: u32,
        deadline: tokio::time::Instant,
    ) -> Result<ShareGuard<'_>, Over> {
        let _waiting = Waiting::enter(self, cells);
        if _waiting.count > share {
            return Err(Over::TooManyWaiting);
        }
        loop {
            let released = self.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            if let Some(g) = self.try_take(cells, share) {
                return Ok(g);
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(Over::Timeout);
            }
        }
    }

    /// Slots the client in `cells` holds now (an upper bound: see the module note).
    pub fn held(&self, cells: Cells) -> u32 {
        let [a, b] = cells.0;
        let (a, b) = (&self.held[a], &self.held[b]);
        a.load(Ordering::Relaxed).min(b.load(Ordering::Relaxed))
    }
}

impl Shares {
    /// Gives back a share kept with [`ShareGuard::keep`].
    pub fn give_back(&self, cells: Cells) {
        Shares::sub(&self.held, cells);
        if self.waiters.load(Ordering::Acquire) > 0 {
            self.released.notify_waiters();
        }
    }
}

impl Drop for ShareGuard<'_> {
    fn drop(&mut self) {
        self.shares.give_back(self.cells);
    }
}

/// One request of a client waiting for its share (counted for the pool and the client).
struct Waiting<'a> {
    shares: &'a Shares,
    cells: Cells,
    count: u32,
}

impl<'a> Waiting<'a> {
    fn enter(shares: &'a Shares, cells: Cells) -> Self {
        shares.waiters.fetch_add(1, Ordering::AcqRel);
        let count = Shares::add(&shares.waiting, cells);
        Waiting {
            shares,
            cells,
            count,
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        Shares::sub(&self.shares.waiting, self.cells);
        self.shares.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn one_client_holds_at_most_its_share_and_others_are_untouched() {
        let s = Arc::new(Shares::default());
        let a = s.cells("192.0.2.1".parse().expect("ip"));
        let held: Vec<_> = (0..4).map_while(|_| s.try_take(a, 4)).collect();
        assert_eq!(held.len(), 4);
        assert!(s.try_take(a, 4).is_none());
        assert_eq!(s.held(a), 4);
        let others = (2..=254).filter_map(|i| {
            let b = s.cells(format!("192.0.2.{i}").parse().expect("ip"));
            s.try_take(b, 1)
        });
        assert_eq!(
            others.count(),
            253,
            "no other client shares the first's budget"
        );
        drop(held);
        assert_eq!(s.held(a), 0);
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let s = Arc::new(Shares::default());
        let a = s.cells("2001:db8:1:2::1".parse().expect("ip"));
        let b = s.cells("2001:db8:1:2:ffff::9".parse().expect("ip"));
        let _g = s.try_take(a, 1).expect("first");
        assert!(s.try_take(b, 1).is_none(), "same /64, same share");
        let c = s.cells("::ffff:192.0.2.7".parse().expect("ip"));
        let d = s.cells("192.0.2.7".parse().expect("ip"));
        assert_eq!(c.0, d.0);
    }

    #[tokio::test]
    async fn the_excess_waits_for_its_own_release_then_times_out() {
        let s = Arc::new(Shares::default());
        let a = s.cells("198.51.100.1".parse().expect("ip"));
        let first = s.try_take(a, 1).expect("share");
        let soon = tokio::time::Instant::now() + Duration::from_secs(5);
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait(a, 1, soon).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        // A second waiter over the share of waiting requests is refused at once.
        let later = tokio::time::Instant::now() + Duration::from_millis(50);
        assert_eq!(s.wait(a, 1, later).await.err(), Some(Over::TooManyWaiting));
        drop(first);
        assert_eq!(waiter.await.expect("task"), Ok(()));
        let _held = s.try_take(a, 1).expect("given back");
        let r = s.wait(
            a,
            1,
            tokio::time::Instant::now() + Duration::from_millis(50),
        );
        assert_eq!(r.await.err(), Some(Over::Timeout));
    }
}
