//! The only writer of the live rule set: compile the rules, then swap them in or refuse.
//!
//! Triggers: a change in the rules folder (watched, debounced, so editors' temp files and
//! atomic renames count once), SIGHUP, `gatehouse reload` (POST /reload on the stats
//! listener, loopback only). A refused reload changes nothing: the old generation keeps
//! serving and the error (file:line:column) is logged, counted and shown on the panel.
//! Certificates are re-read at the same time; a bad one keeps the last good set.

use crate::config::Config;
use crate::generation::Generation;
use crate::proxy::Shared;
use crate::rules;
use crate::tls::CertStore;
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

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

/// Everything a reload touches.
pub struct Reloader {
    /// Request state whose generation is swapped.
    pub shared: Arc<Shared>,
    /// The process config (rules path, certificate paths).
    pub config: Config,
    /// The live certificates (swapped when they change and load).
    pub certs: Option<Arc<ArcSwap<CertStore>>>,
    /// The last attempt's outcome.
    pub status: Arc<ArcSwap<ReloadStatus>>,
    /// Counts by result.
    pub counters: Arc<ReloadCounters>,
    /// Serializes reloads (signal, watcher and admin may race) and remembers a digest of
    /// the last rules text applied; never touched by requests.
    lock: tokio::sync::Mutex<u64>,
    /// Told when ops change a server's state or weight (the state file is written then).
    pub changes: tokio::sync::Notify,
    /// A digest of the certificate and key files last loaded, so a change of those files
    /// alone reloads the certificates.
    certs_digest: AtomicU64,
    /// The rules files as last applied, parsed, for the audit log's list of changes.
    tree: std::sync::Mutex<serde_json::Value>,
}

/// A digest of the certificate and key files' bytes.
fn certs_digest(config: &Config) -> u64 {
    let bytes: Vec<Vec<u8>> = config
        .certificates
        .iter()
        .flat_map(|c| [&c.cert, &c.key])
        .map(|p| std::fs::read(p).unwrap_or_default())
        .collect();
    crate::rules::select::stable_hash(&bytes)
}

/// A digest of the rules files' text and of the list files they name, so a watcher event
/// after a reload that already applied the same text (an editor's second write, `gatehouse
/// switch`) changes nothing, and an edit of a list file alone does.
fn rules_digest(path: &Path, lists: &[PathBuf]) -> u64 {
    let files = rules::compile::rule_files(path).unwrap_or_default();
    let texts: Vec<(PathBuf, String)> = files
        .into_iter()
        .chain(lists.iter().cloned())
        .map(|f| (f.clone(), std::fs::read_to_string(&f).unwrap_or_default()))
        .collect();
    crate::rules::select::stable_hash(&texts)
}

impl Reloader {
    /// A reloader over the running state.
    pub fn new(
        shared: Arc<Shared>,
        config: Config,
        certs: Option<Arc<ArcSwap<CertStore>>>,
    ) -> Arc<Self> {
        let generation = shared.state.load().number;
        let digest = rules_digest(&config.rules, &shared.state.load().rules.list_files);
        Arc::new(Reloader {
            shared,
            certs,
            status: Arc::new(ArcSwap::from_pointee(ReloadStatus {
                at: SystemTime::now(),
                error: None,
                generation,
            })),
            counters: Arc::new(ReloadCounters::default()),
            lock: tokio::sync::Mutex::new(digest),
            changes: tokio::sync::Notify::new(),
            certs_digest: AtomicU64::new(certs_digest(&config)),
            tree: std::sync::Mutex::new(crate::rules::diff::tree(&config.rules)),
            config,
        })
    }

    /// Reloads and says what happened, as `gatehouse reload` (HTTP) and the runtime
    /// socket's `reload` answer: `Err` when the rules were refused.
    pub async fn reload_and_say(&self, why: &str) -> Result<String, String> {
        let applied = self.reload(why).await;
        let status = self.status.load();
        match (&status.error, applied) {
            (_, true) => Ok(format!("reloaded: generation {}\n", status.generation)),
            (Some(e), false) => Err(format!(
                "refused, generation {} keeps serving:\n{e}\n",
                status.generation
            )),
            (None, false) => Ok(format!(
                "no change: generation {} serves\n",
                status.generation
            )),
        }
    }

    /// Compiles the rules and installs them, or logs and records why not. Returns whether
    /// the new rules were applied.
    pub async fn reload(&self, why: &str) -> bool {
        let mut last_digest = self.lock.lock().await;
        let digest = rules_digest(
            &self.config.rules,
            &self.shared.state.load().rules.list_files,
        );
        if why == "file change" && digest == *last_digest {
            // The files are back to what is serving (e.g. a broken edit was undone).
            if self.status.load().error.is_some() {
                let generation = self.shared.state.load().number;
                tracing::info!(generation, "rules files match the serving generation again");
                self.status.store(Arc::new(ReloadStatus {
                    at: SystemTime::now(),
                    error: None,
                    generation,
                }));
            }
            return false;
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading, monotonic_now()]);
        self.reload_certs();
        let applied = match self.shared.resolver.load_rules(&self.config).await {
            Ok(set) => {
                for w in &set.warnings {
                    tracing::warn!("{w}");
                }
                let prev = self.shared.state.load_full();
                let changes = self.changes_since_last();
                // The digest of what is now serving (its list files may differ).
                let digest = rules_digest(&self.config.rules, &set.list_files);
                let next =
                    Generation::new(set, Some(&prev), &self.shared.stats, &self.shared.health);
                let number = next.number;
                self.shared.state.store(Arc::new(next));
                *last_digest = digest;
                self.counters.ok.fetch_add(1, Ordering::Relaxed);
                self.status.store(Arc::new(ReloadStatus {
                    at: SystemTime::now(),
                    error: None,
                    generation: number,
                }));
                crate::audit::record(
                    why,
                    "reload",
                    serde_json::json!({ "generation": number, "changes": changes }),
                );
                true
            }
            Err(diags) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                let generation = self.shared.state.load().number;
                tracing::error!(
                    generation,
                    trigger = why,
                    "reload refused, old rules keep serving:\n{diags}"
                );
                crate::audit::record(
                    why,
                    "reload_refused",
                    serde_json::json!({ "generation": generation, "error": diags.to_string() }),
                );
                self.status.store(Arc::new(ReloadStatus {
                    at: SystemTime::now(),
                    error: Some(diags.to_string()),
                    generation,
                }));
                false
            }
        };
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        applied
    }

    /// Builds the next generation from the serving rules, without reading any file (a
    /// rules file mid-edit cannot block it): for changes made at run time (weights).
    /// Returns the new generation's number.
    pub async fn rebuild(&self, why: &str) -> u64 {
        let _serial = self.lock.lock().await;
        let prev = self.shared.state.load_full();
        let next = Generation::new(
            prev.rules.clone(),
            Some(&prev),
            &self.shared.stats,
            &self.shared.health,
        );
        let number = next.number;
        self.shared.state.store(Arc::new(next));
        tracing::info!(generation = number, trigger = why, "rules rebuilt");
        number
    }

    /// Says that ops changed a server's state or weight.
    pub fn state_changed(&self) {
        self.changes.notify_one();
    }

    /// Asks DNS again for the servers' names as they come due, and rebuilds the rules
    /// when an answer changed the addresses (servers whose address stayed keep their
    /// slot, health and counters).
    pub async fn follow_dns(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                _ = stop.cancelled() => return,
            }
            let names = self.shared.state.load().rules.dns_names.clone();
            if !names.is_empty() && self.shared.resolver.refresh(&names).await {
                self.reload("dns change").await;
            }
        }
    }

    fn reload_certs(&self) {
        let Some(certs) = &self.certs else { return };
        self.certs_digest
            .store(certs_digest(&self.config), Ordering::Relaxed);
        match CertStore::load(&self.config.path, &self.config.certificates) {
            Ok(store) => certs.store(Arc::new(store)),
            Err(d) => tracing::error!("certificates not reloaded, the last good ones stay:\n{d}"),
        }
    }

    /// Reloads the certificates when their files changed since they were last loaded (a
    /// renewal writes them without touching the rules). Returns whether they changed.
    fn certs_changed(&self) -> bool {
        if self.certs.is_none()
            || certs_digest(&self.config) == self.certs_digest.load(Ordering::Relaxed)
        {
            return false;
        }
        self.reload_certs();
        crate::audit::record("file watcher", "certificates", serde_json::json!({}));
        true
    }

    /// Watches the rules folder (and the certificates' folders) and reloads after changes
    /// settle for 300 ms. Runs until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
            if let Ok(e) = e
                && !matches!(e.kind, notify::EventKind::Access(_))
            {
                let _ = tx.send(());
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the rules; reload with SIGHUP");
                return;
            }
        };
        let mut watched = Vec::new();
        self.watch_new_dirs(&mut watcher, &mut watched);
        loop {
            tokio::select! {
                got = rx.recv() => if got.is_none() { return },
                _ = stop.cancelled() => return,
            }
            // Debounce: editors write, rename and chmod in bursts.
            loop {
                match tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            self.certs_changed();
            self.reload("file change").await;
            // A reload may name list files in folders not watched yet.
            self.watch_new_dirs(&mut watcher, &mut watched);
        }
    }

    /// Watches the folders of the rules, certificates and list files not watched yet.
    fn watch_new_dirs(&self, watcher: &mut impl notify::Watcher, watched: &mut Vec<PathBuf>) {
        for dir in self.watched_dirs() {
            if watched.contains(&dir) {
                continue;
            }
            if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch");
            }
            watched.push(dir);
        }
    }

    fn watched_dirs(&self) -> Vec<PathBuf> {
        let rules = &self.config.rules;
        let mut dirs = vec![if rules.is_dir() {
            rules.clone()
        } else {
            parent(rules)
        }];
        let lists = self.shared.state.load().rules.list_files.clone();
        let certs = self
            .config
            .certificates
            .iter()
            .flat_map(|c| [&c.cert, &c.key]);
        for p in certs.chain(lists.iter()) {
            let d = parent(p);
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        dirs
    }
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn monotonic_now() -> sd_notify::NotifyState<'static> {
    // RELOADING=1 wants the monotonic clock; tokio's Instant has no epoch, so read it.
    let usec = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|x| x.parse::<f64>().ok())
        })
        .map_or(0, |s| (s * 1e6) as i128);
    sd_notify::NotifyState::MonotonicUsec(usec)
}

impl Reloader {
    /// What changed in the rules files since the last applied reload (then remembers
    /// these files as applied).
    fn changes_since_last(&self) -> Vec<crate::rules::diff::Change> {
        let next = crate::rules::diff::tree(&self.config.rules);
        let mut tree = self.tree.lock().unwrap_or_else(|p| p.into_inner());
        let changes = crate::rules::diff::diff(&tree, &next);
        *tree = next;
        changes
    }
}
