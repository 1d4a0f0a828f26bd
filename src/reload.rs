//! The only writer of the live rule set: compile the rules, then swap them in or refuse.
//!
//! A refused reload changes nothing: the old generation keeps serving and the error
//! (with file:line:column) is logged, counted and shown on the stats panel.

use crate::generation::Generation;
use crate::proxy::Shared;
use crate::rules;
use arc_swap::ArcSwap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// The outcome of the most recent reload attempt.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    /// When it was tried.
    pub at: SystemTime,
    /// `None` when it succeeded; otherwise every error, one per line.
    pub error: Option<String>,
    /// Generation serving after it.
    pub generation: u64,
}

/// Reload counters by result.
#[derive(Debug, Default)]
pub struct ReloadCounters {
    /// Reloads applied.
    pub ok: AtomicU64,
    /// Reloads refused.
    pub failed: AtomicU64,
}

/// Compiles the rules at `path` and installs them, or logs and records why not.
pub fn reload(
    shared: &Shared,
    path: &Path,
    status: &ArcSwap<ReloadStatus>,
    counters: &ReloadCounters,
) -> bool {
    match rules::load(path) {
        Ok(set) => {
            let prev = shared.state.load_full();
            let next = Generation::new(set, Some(&prev), &shared.stats, &shared.health);
            let number = next.number;
            shared.state.store(Arc::new(next));
            counters.ok.fetch_add(1, Ordering::Relaxed);
            status.store(Arc::new(ReloadStatus {
                at: SystemTime::now(),
                error: None,
                generation: number,
            }));
            tracing::info!(generation = number, "rules reloaded");
            true
        }
        Err(diags) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            let generation = shared.state.load().number;
            tracing::error!(
                generation,
                "reload refused, old rules keep serving:\n{diags}"
            );
            status.store(Arc::new(ReloadStatus {
                at: SystemTime::now(),
                error: Some(diags.to_string()),
                generation,
            }));
            false
        }
    }
}
