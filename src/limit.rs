//! Rate limiters: GCRA over a fixed table, so memory never grows with the clients.
//!
//! Each limiter is a table of `tracked` 64-bit cells in sets of four. A key (the hash the
//! decision computed: a client's prefix or a header's value) is mixed with a per-process
//! random multiplier, which picks a set and a 20-bit tag; a cell holds that tag and the
//! key's theoretical arrival time (TAT, GCRA's one number of state) in 16 µs ticks. One
//! compare-and-swap per request, no lock, no allocation, no sweep. A key not in its set
//! takes the cell with the oldest TAT: an idle key's TAT is in the past, so forgetting
//! it changes nothing; only when all four are busy does the quietest lose its count
//! (it starts again with a full burst). Memory: 8 bytes a cell (512 KiB for the
//! default 65,536), whatever the number of clients.
//!
//! Ticks are 16 µs in 44 bits (about 8.9 years of uptime); comparisons wrap.

use crate::rules::policy::LimitSpec;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TICK_NS: u64 = 16_000;
const TAT_BITS: u32 = 44;
const TAT_MASK: u64 = (1 << TAT_BITS) - 1;
const WAYS: usize = 4;

/// One limit's state. Kept across reloads while its spec stays the same.
#[derive(Debug)]
pub struct Limiter {
    /// The spec it enforces.
    pub spec: LimitSpec,
    cells: Box<[AtomicU64]>,
    set_bits: u32,
    mult: u64,
    epoch: Instant,
    interval: u64,
    tolerance: u64,
    /// Requests refused.
    pub denied: AtomicU64,
    /// Requests let through.
    pub passed: AtomicU64,
}

/// What a check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let through; this many more could pass at once now.
    Pass {
        /// Requests left in the burst.
        remaining: u32,
    },
    /// Refused; a request passes again after this long.
    Deny {
        /// Time until the next request would pass.
        retry_after: Duration,
    },
}

impl Limiter {
    /// An empty table for `spec` (`tracked` rounded up to whole sets of four, a power of two).
    pub fn new(spec: &LimitSpec) -> Limiter {
        let cells = (spec.tracked as usize).next_power_of_two().max(WAYS * 16);
        let set_bits = (cells / WAYS).trailing_zeros();
        let interval = ticks(spec.interval()).max(1);
        Limiter {
            spec: spec.clone(),
            cells: (0..cells).map(|_| AtomicU64::new(0)).collect(),
            set_bits,
            mult: RandomState::new().hash_one(spec.name.as_ref()) | 1,
            epoch: Instant::now(),
            interval,
            tolerance: interval * u64::from(spec.burst.max(1) - 1),
            denied: AtomicU64::new(0),
            passed: AtomicU64::new(0),
        }
    }

    /// Bytes of state, whatever the number of keys.
    pub fn memory(&self) -> usize {
        self.cells.len() * 8
    }

    /// Counts one request of `key` at `now`.
    pub fn check(&self, key: u64, now: Instant) -> Verdict {
        let t = ticks(now.saturating_duration_since(self.epoch)) & TAT_MASK;
        let h = key.wrapping_mul(self.mult);
        let set = (h >> (64 - self.set_bits)) as usize * WAYS;
        // The tag is never 0, so an empty cell never matches a key.
        let tag = ((h >> 8) & 0xF_FFFF) | 1;
        let ways = &self.cells[set..set + WAYS];
        let cell = ways
            .iter()
            .find(|c| c.load(Ordering::Relaxed) >> TAT_BITS == tag)
            .unwrap_or_else(|| oldest(ways, t));
        let mut cur = cell.load(Ordering::Acquire);
        loop {
            let tat = if cur >> TAT_BITS == tag {
                cur & TAT_MASK
            } else {
                t
            };
            // How far ahead of now the key's TAT is (0 when it is in the past).
            let ahead = ahead(tat, t);
            if ahead > self.tolerance {
                self.denied.fetch_add(1, Ordering::Relaxed);
                return Verdict::Deny {
                    retry_after: duration(ahead - self.tolerance),
                };
            }
            let next = (t + ahead + self.interval) & TAT_MASK;
            match cell.compare_exchange_weak(
                cur,
                tag << TAT_BITS | next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.passed.fetch_add(1, Ordering::Relaxed);
                    let used = (ahead + self.interval).div_ceil(self.interval);
                    let remaining = u64::from(self.spec.burst).saturating_sub(used);
                    return Verdict::Pass {
                        remaining: remaining as u32,
                    };
                }
                Err(now_there) => cur = now_there,
            }
        }
    }

    /// Counts a verdict reached elsewhere (the shared store) in this limiter's counters.
    pub fn count(&self, v: Verdict) -> Verdict {
        let n = match v {
            Verdict::Pass { .. } => &self.passed,
            Verdict::Deny { .. } => &self.denied,
        };
        n.fetch_add(1, Ordering::Relaxed);
        v
    }

    /// Time until `key`'s full burst is back, given it just passed with `remaining` left.
    pub fn reset_after(&self, remaining: u32) -> Duration {
        let used = u64::from(self.spec.burst.saturating_sub(remaining));
        duration(used * self.interval)
    }
}

/// The cell of `ways` whose TAT is furthest in the past (or empty).
fn oldest(ways: &[AtomicU64], t: u64) -> &AtomicU64 {
    ways.iter()
        .min_by_key(|c| {
            let v = c.load(Ordering::Relaxed);
            if v == 0 {
                0
            } else {
                ahead(v & TAT_MASK, t) + 1
            }
        })
        .unwrap_or(&ways[0])
}

/// Ticks from `t` ahead to `tat`, 0 when `tat` is not ahead (wrapping in 44 bits; a TAT
/// is never more than a day's burst ahead, far less than half the range).
fn ahead(tat: u64, t: u64) -> u64 {
    let d = tat.wrapping_sub(t) & TAT_MASK;
    if d < 1 << (TAT_BITS - 1) { d } else { 0 }
}

fn ticks(d: Duration) -> u64 {
    (d.as_nanos() / u128::from(TICK_NS)) as u64
}

fn duration(ticks: u64) -> Duration {
    Duration::from_nanos(ticks.saturating_mul(TICK_NS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::policy::LimitKey;

    fn spec(rate: u32, burst: u32, tracked: u32) -> LimitSpec {
        LimitSpec {
            name: "t".into(),
            index: 0,
            rate,
            per: Duration::from_secs(1),
            burst,
            key: LimitKey::Client { v4: 32, v6: 64 },
            tracked,
            text: format!("{rate}/s"),
        }
    }

    #[test]
    fn burst_then_rate() {
        let l = Limiter::new(&spec(20, 40, 1024));
        let t0 = Instant::now();
        let passed = (0..100)
            .filter(|_| matches!(l.check(7, t0), Verdict::Pass { .. }))
            .count();
        assert_eq!(passed, 40);
        match l.check(7, t0) {
            Verdict::Deny { retry_after } => assert!(retry_after <= Duration::from_millis(50)),
            v => panic!("{v:?}"),
        }
        // Another key has its own budget.
        assert!(matches!(l.check(8, t0), Verdict::Pass { remaining: 39 }));
        // A second later, 20 more.
        let t1 = t0 + Duration::from_secs(1);
        let again = (0..100)
            .filter(|_| matches!(l.check(7, t1), Verdict::Pass { .. }))
            .count();
        assert_eq!(again, 20);
    }

    #[test]
    fn a_million_keys_keep_the_table_and_the_busy_key() {
        let l = Limiter::new(&spec(1, 5, 4096));
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(matches!(l.check(42, t0), Verdict::Pass { .. }));
        }
        for k in 0..1_000_000u64 {
            l.check(
                k.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 << 63,
                t0 + Duration::from_secs(2),
            );
        }
        assert_eq!(l.memory(), 4096 * 8);
        assert_eq!(l.passed.load(Ordering::Relaxed), 1_000_005);
    }
}
