//! Gives memory freed after a burst back to the operating system.
//!
//! A burst (a flood of new connections, a load spike) leaves glibc's heap at its high
//! water: buffers of connections that have since parked or closed are free, but they sit
//! between long-lived allocations, and glibc returns only the top of a heap by itself.
//! Without this, a proxy that once served 10,000 busy connections keeps their buffers'
//! pages for ever. `malloc_trim(0)` hands free pages in the middle of the heap back too
//! (HAProxy calls it for the same reason).
//!
//! The trim runs on a blocking thread, and only when the resident size has grown by
//! [`GROWTH`] since the last one: a steady process is never trimmed, and a busy one at
//! most once per [`EVERY`].

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the resident size is looked at.
pub const EVERY: Duration = Duration::from_secs(5);

/// Growth of the resident size (since the last trim) that makes the next look trim.
pub const GROWTH: u64 = 16 << 20;

/// Watches the resident size until `stop`, trimming after growth (see the module notes).
pub async fn return_freed(stop: CancellationToken) {
    let mut floor = resident().unwrap_or(0);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.cancelled() => return,
        }
        let Some(now) = resident() else { return };
        if now < floor.saturating_add(GROWTH) {
            floor = floor.min(now);
            continue;
        }
        let Ok(after) = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            trim();
            let after = resident().unwrap_or(now);
            tracing::debug!(
                before_mib = now >> 20,
                after_mib = after >> 20,
                took_us = started.elapsed().as_micros() as u64,
                "returned freed memory to the system"
            );
            after
        })
        .await
        else {
            return;
        };
        floor = after;
    }
}

/// The process's resident set size in bytes (`VmRSS` of `/proc/self/status`).
pub fn resident() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Returns free heap pages to the system (glibc only; elsewhere the allocator decides).
#[allow(unsafe_code)]
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it walks glibc's own heaps under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// The pattern a burst leaves: big buffers freed between small live allocations.
    /// glibc keeps those pages; `trim` must hand them back.
    #[test]
    fn trim_returns_pages_freed_between_live_allocations() {
        let mut keep = Vec::new();
        let mut freed = Vec::new();
        for i in 0..8192u32 {
            let mut buf = vec![0u8; 8192];
            buf[0] = i as u8;
            buf[4096] = 1;
            freed.push(buf);
            keep.push(Box::new([i; 16]));
        }
        let full = resident().expect("VmRSS");
        drop(freed);
        trim();
        let trimmed = resident().expect("VmRSS");
        assert!(
            trimmed + (32 << 20) < full,
            "64 MiB freed, resident {} MiB before trim, {} MiB after",
            full >> 20,
            trimmed >> 20
        );
        assert_eq!(keep.len(), 8192);
    }
}
