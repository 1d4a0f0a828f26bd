//! The audit log: every change to what the proxy serves (reloads with what changed, admin
//! actions, runtime socket commands, colour switches) as one JSON line, with who did it.
//!
//! Lines go to the `audit_log` file when configured (opened for each line, appended with
//! one write: changes are rare, and a rotated file is picked up without a signal), to the
//! journal (tracing target `audit`), and into a ring of the last ten for the stats page.

use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// How many recent entries the stats page shows.
pub const RECENT: usize = 10;

/// One audited change.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// When, RFC 3339 UTC.
    pub time: String,
    /// Who: `socket uid=0 pid=4242`, `http 127.0.0.1 user=ops`, `signal SIGHUP`,
    /// `file watcher`, `cli uid=0 user=alice`.
    pub who: String,
    /// What: `reload`, `reload_refused`, `server_state`, `server_weight`, `colour`, …
    pub action: String,
    /// The details, by action (server, from, to, generation, changes, error…).
    #[serde(flatten)]
    pub detail: Map<String, Value>,
}

struct Log {
    file: Option<PathBuf>,
    recent: Mutex<VecDeque<Entry>>,
}

static LOG: OnceLock<Log> = OnceLock::new();

/// Sets the audit file (once, at start); without it entries go to the journal and the page.
pub fn init(file: Option<PathBuf>) {
    let _ = LOG.set(Log {
        file,
        recent: Mutex::new(VecDeque::with_capacity(RECENT)),
    });
}

/// Records one change. `detail` must be a JSON object (anything else is kept as `detail`).
pub fn record(who: &str, action: &str, detail: Value) {
    let detail = match detail {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => Map::from_iter([("detail".to_string(), other)]),
    };
    let entry = Entry {
        time: now_rfc3339(),
        who: who.to_string(),
        action: action.to_string(),
        detail,
    };
    let line = serde_json::to_string(&entry).unwrap_or_default();
    tracing::info!(target: "audit", "{line}");
    let Some(log) = LOG.get() else { return };
    if let Some(path) = &log.file
        && let Err(e) = append(path, &line)
    {
        tracing::error!(file = %path.display(), error = %e, "cannot write the audit log");
    }
    let mut ring = log.recent.lock().unwrap_or_else(|p| p.into_inner());
    if ring.len() == RECENT {
        ring.pop_front();
    }
    ring.push_back(entry);
}

/// Appends one line to an audit file from outside the running process (`gatehouse
/// switch`, `rollback`): the same format, so the file tells the whole story.
pub fn append_to(file: &Path, who: &str, action: &str, detail: Value) -> std::io::Result<()> {
    let entry = Entry {
        time: now_rfc3339(),
        who: who.to_string(),
        action: action.to_string(),
        detail: match detail {
            Value::Object(m) => m,
            _ => Map::new(),
        },
    };
    append(file, &serde_json::to_string(&entry).unwrap_or_default())
}

/// The most recent entries, newest first.
pub fn recent() -> Vec<Entry> {
    LOG.get().map_or_else(Vec::new, |log| {
        let ring = log.recent.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().rev().cloned().collect()
    })
}

fn append(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(format!("{line}\n").as_bytes())
}

fn now_rfc3339() -> String {
    crate::accesslog::rfc3339(std::time::SystemTime::now())
}
