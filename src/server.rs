//! Wires the parts into a running proxy: listeners, the stats listener, reloads, shutdown.
//!
//! The only place that knows every module; `proxy` never imports `listener`, `reload`
//! or `admin`.

use crate::admin::{self, Admin};
use crate::config::Config;
use crate::generation::Generation;
use crate::listener::{self, ConnCtx, Listening};
use crate::proxy::Shared;
use crate::reload::{self, ReloadCounters, ReloadStatus};
use crate::stats::Stats;
use crate::tls::CertStore;
use crate::{rules, upstream};
use anyhow::Context;
use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A started proxy: its bound addresses and the handles to reload and stop it.
pub struct Running {
    /// Bound HTTPS addresses (ports resolved when the config said 0).
    pub https: Vec<SocketAddr>,
    /// Bound plain-HTTP addresses.
    pub http: Vec<SocketAddr>,
    /// Bound stats address.
    pub stats: Option<SocketAddr>,
    /// Request state.
    pub shared: Arc<Shared>,
    config: Config,
    stop: CancellationToken,
    graceful: Arc<GracefulShutdown>,
    tasks: Vec<JoinHandle<()>>,
    draining: Arc<AtomicBool>,
    reload_status: Arc<ArcSwap<ReloadStatus>>,
    reload_counters: Arc<ReloadCounters>,
}

/// Loads the rules and certificates, binds every listener and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let set = rules::load(&config.rules).map_err(|d| anyhow::anyhow!("{d}"))?;
    let stats = Arc::new(Stats::default());
    let generation = Generation::new(set, None, &stats);
    let shared = Arc::new(Shared {
        state: ArcSwap::from_pointee(generation),
        client: upstream::client(&config),
        trusted: config.trusted_proxies.clone(),
        timeouts: config.timeouts,
        access_log: config.access_log,
        redirect_port: config.redirect_port,
        stats,
    });
    let stop = CancellationToken::new();
    let graceful = Arc::new(GracefulShutdown::new());
    let l = Listening {
        conn: Arc::new(ConnCtx {
            shared: shared.clone(),
            http: listener::http_builder(&config),
            handshake_timeout: config.timeouts.handshake,
            redirect_http: config.redirect_http,
        }),
        connections: Arc::new(Semaphore::new(config.limits.max_connections)),
        stop: stop.clone(),
        graceful: graceful.clone(),
    };
    let mut tasks = Vec::new();
    let mut https = Vec::new();
    if !config.https.is_empty() {
        let store = CertStore::load(&config.path, &config.certificates)
            .map_err(|d| anyhow::anyhow!("{d}"))?;
        let certs = Arc::new(ArcSwap::from_pointee(store));
        for addr in &config.https {
            let sock = listener::bind(*addr).with_context(|| format!("cannot listen on {addr}"))?;
            https.push(sock.local_addr()?);
            tasks.push(tokio::spawn(listener::serve_tls(
                l.clone(),
                sock,
                certs.clone(),
            )));
        }
    }
    let mut http = Vec::new();
    for addr in &config.http {
        let sock = listener::bind(*addr).with_context(|| format!("cannot listen on {addr}"))?;
        http.push(sock.local_addr()?);
        tasks.push(tokio::spawn(listener::serve_plain(l.clone(), sock)));
    }
    drop(l);
    let draining = Arc::new(AtomicBool::new(false));
    let reload_status = Arc::new(ArcSwap::from_pointee(ReloadStatus {
        at: SystemTime::now(),
        error: None,
        generation: 1,
    }));
    let mut stats_addr = None;
    if let Some(addr) = config.stats {
        let sock = listener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        stats_addr = Some(sock.local_addr()?);
        let admin = Arc::new(Admin {
            shared: shared.clone(),
            draining: draining.clone(),
            last_reload: reload_status.clone(),
        });
        tokio::spawn(admin::serve(admin, sock, stop.clone()));
    }
    Ok(Running {
        https,
        http,
        stats: stats_addr,
        shared,
        config,
        stop,
        graceful,
        tasks,
        draining,
        reload_status,
        reload_counters: Arc::new(ReloadCounters::default()),
    })
}

impl Running {
    /// One line saying where the proxy listens (tests and scripts read it from stdout).
    pub fn ready_line(&self) -> String {
        let list = |v: &[SocketAddr]| {
            v.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "gatehouse ready https={} http={} stats={}",
            list(&self.https),
            list(&self.http),
            self.stats.map(|a| a.to_string()).unwrap_or_default()
        )
    }

    /// Re-reads the rules; on error the old rules keep serving. Returns whether it applied.
    pub fn reload(&self) -> bool {
        reload::reload(
            &self.shared,
            &self.config.rules,
            &self.reload_status,
            &self.reload_counters,
        )
    }

    /// Stops accepting, lets in-flight requests finish up to the drain deadline.
    pub async fn shutdown(self) {
        self.draining.store(true, Ordering::Relaxed);
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let deadline = self.config.timeouts.drain;
        match Arc::try_unwrap(self.graceful) {
            Ok(g) => {
                if tokio::time::timeout(deadline, g.shutdown()).await.is_err() {
                    tracing::warn!("drain deadline passed; closing the remaining connections");
                }
            }
            Err(_) => tracing::warn!("connections still referenced; not waiting"),
        }
    }

    /// Serves until SIGTERM or SIGINT (drain, then return; a second signal exits at once),
    /// reloading the rules on SIGHUP.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        loop {
            tokio::select! {
                _ = hup.recv() => { self.reload(); }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        tracing::info!("draining: no new connections, finishing in-flight requests");
        tokio::select! {
            _ = self.shutdown() => {}
            _ = term.recv() => tracing::warn!("second signal: exiting now"),
            _ = int.recv() => tracing::warn!("second signal: exiting now"),
        }
        Ok(())
    }
}
