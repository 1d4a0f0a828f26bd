//! Wires the parts into a running proxy: worker threads, listeners, the stats listener,
//! reloads and shutdown.
//!
//! One `current_thread` tokio runtime per worker thread, each with its own SO_REUSEPORT
//! socket per listen address and its own upstream keep-alive pool: a request, its client
//! connection and its server connection stay on one thread (no cross-thread wake-ups,
//! no work-stealing overhead). Shared state is read-mostly: the `ArcSwap` generation and
//! atomic counters. The stats listener and signal handling run on the caller's runtime.
//! This is the only module that knows every other; `proxy` never imports `listener`,
//! `reload` or `admin`.

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
    workers: Vec<std::thread::JoinHandle<()>>,
    draining: Arc<AtomicBool>,
    reload_status: Arc<ArcSwap<ReloadStatus>>,
    reload_counters: Arc<ReloadCounters>,
}

/// Process-wide limits every worker shares.
struct Limits {
    connections: Arc<Semaphore>,
    per_client: Arc<listener::PerClient>,
    handshakes: Arc<Semaphore>,
}

/// The sockets one worker serves.
struct WorkerSockets {
    tls: Vec<std::net::TcpListener>,
    plain: Vec<std::net::TcpListener>,
}

/// Loads the rules and certificates, binds every listener, starts the workers.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let set = rules::load(&config.rules).map_err(|d| anyhow::anyhow!("{d}"))?;
    let stats = Arc::new(Stats::default());
    let health = crate::upstream::health::HealthTable::default();
    let generation = Generation::new(set, None, &stats, &health);
    let shared = Arc::new(Shared {
        health,
        state: ArcSwap::from_pointee(generation),
        trusted: config.trusted_proxies.clone(),
        timeouts: config.timeouts,
        access_log: config.access_log,
        redirect_port: config.redirect_port,
        max_uri_bytes: config.limits.max_uri_bytes,
        stats,
    });
    let tls = if config.https.is_empty() {
        None
    } else {
        let store = CertStore::load(&config.path, &config.certificates)
            .map_err(|d| anyhow::anyhow!("{d}"))?;
        let certs = Arc::new(ArcSwap::from_pointee(store));
        Some(crate::tls::server_config(certs).context("cannot build the TLS config")?)
    };

    let n = config.workers.max(1);
    let mut sockets: Vec<WorkerSockets> = (0..n)
        .map(|_| WorkerSockets {
            tls: Vec::new(),
            plain: Vec::new(),
        })
        .collect();
    let mut https = Vec::new();
    for addr in &config.https {
        let group =
            listener::bind_group(*addr, n).with_context(|| format!("cannot listen on {addr}"))?;
        https.push(group[0].local_addr()?);
        for (w, s) in group.into_iter().enumerate() {
            sockets[w].tls.push(s);
        }
    }
    let mut http = Vec::new();
    for addr in &config.http {
        let group =
            listener::bind_group(*addr, n).with_context(|| format!("cannot listen on {addr}"))?;
        http.push(group[0].local_addr()?);
        for (w, s) in group.into_iter().enumerate() {
            sockets[w].plain.push(s);
        }
    }

    let stop = CancellationToken::new();
    let connections = Arc::new(Semaphore::new(config.limits.max_connections));
    let per_client = listener::PerClient::new(config.limits.max_connections_per_client);
    let handshakes = Arc::new(Semaphore::new(config.limits.max_handshakes));
    let mut workers = Vec::with_capacity(n);
    for (w, socks) in sockets.into_iter().enumerate() {
        let limits = Limits {
            connections: connections.clone(),
            per_client: per_client.clone(),
            handshakes: handshakes.clone(),
        };
        let (shared, config, stop, tls) =
            (shared.clone(), config.clone(), stop.clone(), tls.clone());
        let handle = std::thread::Builder::new()
            .name(format!("gatehouse-w{w}"))
            .spawn(move || worker(shared, config, socks, tls, limits, stop))
            .context("cannot start a worker thread")?;
        workers.push(handle);
    }

    let checked = shared.clone();
    tokio::spawn(crate::upstream::health::run_checks(
        move || checked.state.load_full(),
        stop.clone(),
    ));
    let draining = Arc::new(AtomicBool::new(false));
    let reload_status = Arc::new(ArcSwap::from_pointee(ReloadStatus {
        at: SystemTime::now(),
        error: None,
        generation: 1,
    }));
    let reload_counters = Arc::new(ReloadCounters::default());
    let mut stats_addr = None;
    if let Some(addr) = config.stats {
        let sock = listener::bind_group(addr, 1)
            .with_context(|| format!("cannot listen on {addr}"))?
            .remove(0);
        stats_addr = Some(sock.local_addr()?);
        let sock = tokio::net::TcpListener::from_std(sock)?;
        let admin = Arc::new(Admin {
            shared: shared.clone(),
            draining: draining.clone(),
            last_reload: reload_status.clone(),
            reloads: reload_counters.clone(),
            allow: config.stats_allow.clone(),
            auth: config.stats_auth.clone(),
            admin_token: config.stats_admin.then(admin::new_token),
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
        workers,
        draining,
        reload_status,
        reload_counters,
    })
}

/// One worker thread: its runtime, its accept loops, its upstream pool; drains on stop.
fn worker(
    shared: Arc<Shared>,
    config: Config,
    socks: WorkerSockets,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    stop: CancellationToken,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "worker cannot start its runtime");
            return;
        }
    };
    rt.block_on(async move {
        let graceful = Arc::new(GracefulShutdown::new());
        let l = Listening {
            conn: Arc::new(ConnCtx {
                shared,
                http: listener::http_builder(&config),
                handshake_timeout: config.timeouts.handshake,
                redirect_http: config.redirect_http,
                upstream: upstream::client(&config),
                per_client: limits.per_client,
                handshakes: limits.handshakes,
            }),
            connections: limits.connections,
            stop: stop.clone(),
            graceful: graceful.clone(),
        };
        let mut tasks = Vec::new();
        for s in socks.tls {
            match (tokio::net::TcpListener::from_std(s), &tls) {
                (Ok(s), Some(tls)) => {
                    tasks.push(tokio::spawn(listener::serve_tls(l.clone(), s, tls.clone())))
                }
                (Err(e), _) => tracing::error!(error = %e, "cannot register a listener"),
                _ => {}
            }
        }
        for s in socks.plain {
            match tokio::net::TcpListener::from_std(s) {
                Ok(s) => tasks.push(tokio::spawn(listener::serve_plain(l.clone(), s))),
                Err(e) => tracing::error!(error = %e, "cannot register a listener"),
            }
        }
        drop(l);
        stop.cancelled().await;
        for t in tasks {
            let _ = t.await;
        }
        match Arc::try_unwrap(graceful) {
            Ok(g) => {
                if tokio::time::timeout(config.timeouts.drain, g.shutdown())
                    .await
                    .is_err()
                {
                    tracing::warn!("drain deadline passed; closing the remaining connections");
                }
            }
            Err(_) => tracing::warn!("connections still referenced; not waiting"),
        }
    });
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

    /// Stops accepting and waits for the workers to drain (each up to the drain deadline).
    pub async fn shutdown(self) {
        self.draining.store(true, Ordering::Relaxed);
        self.stop.cancel();
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
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
