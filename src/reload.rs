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
use crate::rules::{self, RuleSet};
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
            config,
        })
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
                let changes = audit(&prev.rules, &set);
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
                tracing::info!(target: "audit", generation = number, trigger = why, "rules reloaded: {changes}");
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
        tracing::info!(target: "audit", trigger = "file change", "certificates reloaded");
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

/// What changed between two rule sets, for the audit log: live colours, servers, pools, routes.
pub fn audit(prev: &RuleSet, next: &RuleSet) -> String {
    let mut out = Vec::new();
    for s in &next.services {
        match prev.services.iter().find(|p| p.name == s.name) {
            None => out.push(format!("service {} added", s.name)),
            Some(p) => {
                if p.live != s.live {
                    out.push(format!(
                        "service {} live {} -> {}",
                        s.name,
                        p.live.as_str(),
                        s.live.as_str()
                    ));
                }
                let names = |svc: &crate::rules::Service| {
                    let mut v: Vec<String> = svc
                        .blue
                        .servers
                        .iter()
                        .chain(&svc.green.servers)
                        .map(|x| format!("{}={}", x.name, x.addr))
                        .collect();
                    v.sort();
                    v
                };
                let (a, b) = (names(p), names(s));
                for x in b.iter().filter(|x| !a.contains(x)) {
                    out.push(format!("service {} server {x} added", s.name));
                }
                for x in a.iter().filter(|x| !b.contains(x)) {
                    out.push(format!("service {} server {x} removed", s.name));
                }
            }
        }
    }
    for p in prev
        .services
        .iter()
        .filter(|p| !next.services.iter().any(|s| s.name == p.name))
    {
        out.push(format!("service {} removed", p.name));
    }
    for p in &next.pools {
        match prev.pools.iter().find(|x| x.name == p.name) {
            Some(x) if x != p => out.push(format!(
                "pool {} slots {}->{} queue {}->{} queue_timeout {:?}->{:?}",
                p.name, x.slots, p.slots, x.queue, p.queue, x.queue_timeout, p.queue_timeout
            )),
            None => out.push(format!("pool {} added", p.name)),
            _ => {}
        }
    }
    let routes = |r: &RuleSet| -> Vec<String> {
        r.sites
            .iter()
            .flat_map(|s| {
                s.routes
                    .iter()
                    .map(move |x| format!("{}/{}", s.name, x.name))
            })
            .collect()
    };
    let (a, b) = (routes(prev), routes(next));
    for x in b.iter().filter(|x| !a.contains(x)) {
        out.push(format!("route {x} added"));
    }
    for x in a.iter().filter(|x| !b.contains(x)) {
        out.push(format!("route {x} removed"));
    }
    if out.is_empty() {
        "no changes".into()
    } else {
        out.join("; ")
    }
}
