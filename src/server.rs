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
use crate::reload::Reloader;
use crate::stats::{Front, Kind, Stats};
use crate::tcp::TcpFront;
use crate::tls::CertStore;
use crate::upstream;
use anyhow::Context;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// A started proxy: its bound addresses and the handles to reload and stop it.
pub struct Running {
    /// Whether the config has an `upgrade_socket` (SIGUSR2 can start a successor).
    upgradable: bool,
    /// Bound HTTPS addresses (ports resolved when the config said 0).
    pub https: Vec<SocketAddr>,
    /// Bound plain-HTTP addresses.
    pub http: Vec<SocketAddr>,
    /// Bound TCP listener addresses, by listener name.
    pub tcp: Vec<(Arc<str>, SocketAddr)>,
    /// Bound stats address.
    pub stats: Option<SocketAddr>,
    /// Request state.
    pub shared: Arc<Shared>,
    stop: CancellationToken,
    workers: Vec<std::thread::JoinHandle<()>>,
    draining: Arc<AtomicBool>,
    reloader: Arc<Reloader>,
    drain_requested: CancellationToken,
    offer: crate::handover::Offer,
    /// `timeouts.drain_delay`: on SIGTERM, time still serving before the drain.
    drain_delay: std::time::Duration,
    drain_delay_mode: crate::config::DelayMode,
}

/// Listening sockets being gathered: those taken over from the old process (on
/// `--upgrade`), and a duplicate of each kept to offer to the next process.
struct Binder {
    inherited: crate::handover::Sockets,
    offered: Vec<(String, std::net::TcpListener)>,
    /// Sockets per address: one per worker.
    n: usize,
}

impl Binder {
    /// The sockets for one listen address: taken over when the old process had them,
    /// else bound (SO_REUSEPORT, one per worker).
    fn sockets_for(
        &mut self,
        kind: &str,
        addr: SocketAddr,
        n: usize,
    ) -> anyhow::Result<Vec<std::net::TcpListener>> {
        let key = format!("{kind} {addr}");
        let mut group = self.inherited.remove(&key).unwrap_or_default();
        for s in &group {
            s.set_nonblocking(true)?;
        }
        if group.len() < n {
            let at = group.first().map_or(Ok(addr), |s| s.local_addr())?;
            group.extend(
                crate::accept::bind_group(at, n - group.len(), matches!(kind, "https" | "http"))
                    .with_context(|| format!("cannot listen on {addr}"))?,
            );
        }
        for s in &group {
            self.offered.push((key.clone(), s.try_clone()?));
        }
        Ok(group)
    }

    /// Binds one kind of HTTP listener for every worker; returns the bound addresses.
    fn http(
        &mut self,
        kind: &str,
        addrs: &[SocketAddr],
        sockets: &mut [WorkerSockets],
    ) -> anyhow::Result<Vec<SocketAddr>> {
        let mut bound = Vec::new();
        for addr in addrs {
            let group = self.sockets_for(kind, *addr, self.n)?;
            bound.push(group[0].local_addr()?);
            for (w, s) in group.into_iter().enumerate() {
                let worker = &mut sockets[w % self.n];
                match kind {
                    "https" => worker.tls.push(s),
                    _ => worker.plain.push(s),
                }
            }
        }
        Ok(bound)
    }

    /// Binds every TCP front for every worker; returns the bound addresses by name.
    fn tcp(
        &mut self,
        config: &Config,
        stats: &Stats,
        sockets: &mut [WorkerSockets],
    ) -> anyhow::Result<Vec<(Arc<str>, SocketAddr)>> {
        let mut tcp = Vec::new();
        for t in &config.tcp {
            let front = Arc::new(TcpFront {
                name: t.name.clone(),
                service: t.service.clone(),
                slots: Arc::new(Semaphore::new(t.max_connections)),
                idle: t.idle,
                proxy_protocol: t.proxy_protocol.clone(),
                allow: t.allow.clone(),
                per_client: crate::accept::PerClient::new(
                    t.max_per_client
                        .unwrap_or(config.limits.max_connections_per_client),
                ),
                counters: stats.counters(Kind::Listener, &t.name),
            });
            let mut bound = Vec::new();
            for addr in &t.bind {
                let group = self.sockets_for("tcp", *addr, self.n)?;
                bound.push(group[0].local_addr()?);
                tcp.push((t.name.clone(), group[0].local_addr()?));
                for (w, s) in group.into_iter().enumerate() {
                    sockets[w % self.n].tcp.push((front.clone(), s));
                }
            }
            stats.add_front(Front {
                name: t.name.clone(),
                mode: "tcp",
                bind: bound,
                service: t.service.clone().into(),
                limit: t.max_connections as u64,
                counters: front.counters.clone(),
            });
        }
        Ok(tcp)
    }
}

/// Process-wide limits every worker shares.
#[derive(Clone)]
struct Limits {
    connections: Arc<Semaphore>,
    per_client: Arc<crate::accept::PerClient>,
    handshakes: Arc<Semaphore>,
    handshakes_per_client: Arc<crate::accept::PerClient>,
}

/// The sockets one worker serves.
#[derive(Default)]
struct WorkerSockets {
    tls: Vec<std::net::TcpListener>,
    plain: Vec<std::net::TcpListener>,
    tcp: Vec<(Arc<TcpFront>, std::net::TcpListener)>,
}

/// With `--upgrade`: the running process's listening sockets and the connection to tell
/// it to drain once we serve.
fn take_over(
    config: &Config,
    upgrade: bool,
) -> anyhow::Result<(
    crate::handover::Sockets,
    Option<std::os::unix::net::UnixStream>,
)> {
    match (&config.upgrade_socket, upgrade) {
        (Some(path), true) => {
            let (s, conn) = crate::handover::take(path)
                .with_context(|| format!("cannot take over the listeners at {}", path.display()))?;
            tracing::info!(
                sockets = s.values().map(Vec::len).sum::<usize>(),
                "took over the running process's listeners"
            );
            Ok((s, Some(conn)))
        }
        (None, true) => anyhow::bail!("--upgrade needs upgrade_socket in the config"),
        _ => Ok((Default::default(), None)),
    }
}

/// The request path's shared state, with the first generation of the rules.
async fn shared_state(config: &Config) -> anyhow::Result<Arc<Shared>> {
    let resolver = Arc::new(crate::resolve::Resolver::new(&config.dns)?);
    let set = resolver
        .load_rules(config)
        .await
        .map_err(|d| anyhow::anyhow!("{d}"))?;
    for w in &set.warnings {
        tracing::warn!("{w}");
    }
    let stats = Arc::new(Stats::default());
    let health = crate::health::HealthTable::default();
    let generation = Generation::new(set, None, &stats, &health);
    Ok(Arc::new(Shared {
        health,
        state: ArcSwap::from_pointee(generation),
        trusted: config.trusted_proxies.clone(),
        timeouts: config.timeouts,
        access_log: config.access_log,
        request_id: config.request_id,
        redirect_port: config.redirect_port,
        max_uri_bytes: config.limits.max_uri_bytes,
        stats,
        resolver,
        limits_store: match &config.limits_store {
            Some(url) => Some(Arc::new(
                crate::limit_store::Store::new(url).map_err(|e| anyhow::anyhow!(e))?,
            )),
            None => None,
        },
    }))
}

/// The TLS server config and its swappable certificate store (none without HTTPS).
type Tls = (
    Option<Arc<rustls::ServerConfig>>,
    Option<Arc<ArcSwap<CertStore>>>,
);

fn tls_setup(config: &Config) -> anyhow::Result<Tls> {
    if config.https.is_empty() {
        return Ok((None, None));
    }
    let store =
        CertStore::load(&config.path, &config.certificates).map_err(|d| anyhow::anyhow!("{d}"))?;
    let certs = Arc::new(ArcSwap::from_pointee(store));
    let tls = crate::tls::server_config(certs.clone()).context("cannot build the TLS config")?;
    Ok((Some(tls), Some(certs)))
}

/// One thread per worker, each serving its own sockets.
fn spawn_workers(
    config: &Config,
    shared: &Arc<Shared>,
    sockets: Vec<WorkerSockets>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let limits = Limits {
        connections: Arc::new(Semaphore::new(config.limits.max_connections)),
        per_client: crate::accept::PerClient::new(config.limits.max_connections_per_client),
        handshakes: Arc::new(Semaphore::new(config.limits.max_handshakes)),
        handshakes_per_client: crate::accept::PerClient::new(
            config.limits.max_handshakes_per_client,
        ),
    };
    let mut workers = Vec::with_capacity(sockets.len());
    for (w, socks) in sockets.into_iter().enumerate() {
        let (shared, config, stop, tls, limits) = (
            shared.clone(),
            config.clone(),
            stop.clone(),
            tls.clone(),
            limits.clone(),
        );
        let handle = std::thread::Builder::new()
            .name(format!("gatehouse-w{w}"))
            .spawn(move || worker(shared, config, socks, tls, limits, stop))
            .context("cannot start a worker thread")?;
        workers.push(handle);
    }
    Ok(workers)
}

/// The stats listener, when the config has one; returns its bound address.
fn start_admin(
    config: &Config,
    binder: &mut Binder,
    admin: Admin,
    stop: &CancellationToken,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = config.stats else {
        return Ok(None);
    };
    let sock = binder.sockets_for("stats", addr, 1)?.remove(0);
    let bound = sock.local_addr()?;
    let sock = tokio::net::TcpListener::from_std(sock)?;
    tokio::spawn(admin::serve(Arc::new(admin), sock, stop.clone()));
    Ok(Some(bound))
}

/// The runtime API socket and the state file's writer, when the config asks for them.
fn start_runtime(
    config: &Config,
    upgrade: bool,
    shared: &Arc<Shared>,
    reloader: &Arc<Reloader>,
    draining: &Arc<AtomicBool>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    if let Some(path) = &config.state_file {
        tokio::spawn(crate::runtime_api::state::keep(
            shared.clone(),
            reloader.clone(),
            path.clone(),
            stop.clone(),
        ));
    }
    let Some(rs) = &config.runtime_socket else {
        return Ok(());
    };
    let listener = crate::runtime_api::bind(rs, upgrade)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let api = Arc::new(crate::runtime_api::Api {
        shared: shared.clone(),
        reloader: reloader.clone(),
        draining: draining.clone(),
    });
    tokio::spawn(crate::runtime_api::serve(
        api,
        listener,
        rs.path.clone(),
        stop.clone(),
    ));
    Ok(())
}

/// Loads the rules and certificates, binds every listener (or, with `upgrade`, takes them
/// over from the running process at `upgrade_socket`), starts the workers and the
/// background tasks (memory return, health checks, the reload watcher, the stats listener).
pub async fn start(config: Config, upgrade: bool) -> anyhow::Result<Running> {
    let sockets: Vec<&std::path::Path> = config
        .runtime_socket
        .iter()
        .map(|r| r.path.as_path())
        .chain(config.upgrade_socket.as_deref())
        .collect();
    crate::runtime_api::refuse_if_running(&sockets, upgrade)?;
    crate::audit::init(config.audit_log.clone());
    crate::accesslog::open(&config.access_log_to)
        .with_context(|| format!("cannot open the access log ({:?})", config.access_log_to))?;
    let (inherited, old) = take_over(&config, upgrade)?;
    let shared = shared_state(&config).await?;
    if let Some(path) = &config.state_file {
        crate::runtime_api::state::restore(&shared, path);
    }
    let (tls, certs) = tls_setup(&config)?;
    let n = config.workers.max(1);
    let mut binder = Binder {
        inherited,
        offered: Vec::new(),
        n,
    };
    let mut sockets: Vec<WorkerSockets> = (0..n).map(|_| WorkerSockets::default()).collect();
    let https = binder.http("https", &config.https, &mut sockets)?;
    let http = binder.http("http", &config.http, &mut sockets)?;
    let tcp = binder.tcp(&config, &shared.stats, &mut sockets)?;
    let stop = CancellationToken::new();
    let workers = spawn_workers(&config, &shared, sockets, tls, &stop)?;

    tokio::spawn(crate::memory::return_freed(stop.clone()));
    if let Some(store) = shared.limits_store.clone() {
        let stop = stop.clone();
        tokio::spawn(crate::fleet::share(
            shared.clone(),
            store.clone(),
            stop.clone(),
        ));
        tokio::spawn(async move { store.watch(stop).await });
    }
    let checked = shared.clone();
    tokio::spawn(crate::health::run_checks(
        move || checked.state.load_full(),
        stop.clone(),
    ));
    let draining = Arc::new(AtomicBool::new(false));
    let reloader = Reloader::new(shared.clone(), config.clone(), certs);
    tokio::spawn(reloader.clone().watch(stop.clone()));
    tokio::spawn(reloader.clone().follow_dns(stop.clone()));
    let admin = Admin {
        shared: shared.clone(),
        draining: draining.clone(),
        reloader: reloader.clone(),
        header_timeout: config.timeouts.request_header,
        allow: config.stats_allow.clone(),
        auth: config.stats_auth.clone(),
        admin_token: config.stats_admin.then(admin::new_token),
    };
    let stats_addr = start_admin(&config, &mut binder, admin, &stop)?;
    start_runtime(&config, upgrade, &shared, &reloader, &draining, &stop)?;
    let drain_requested = CancellationToken::new();
    let offer = match &config.upgrade_socket {
        Some(path) => {
            let drain = drain_requested.clone();
            crate::handover::offer(path, binder.offered, move || drain.cancel())
                .with_context(|| format!("cannot offer the listeners at {}", path.display()))?
        }
        None => crate::handover::Offer::new(binder.offered),
    };
    if let Some(mut old) = old {
        crate::handover::drain_old(&mut old).context("cannot tell the old process to drain")?;
    }
    Ok(Running {
        upgradable: config.upgrade_socket.is_some(),
        drain_delay: config.timeouts.drain_delay,
        drain_delay_mode: config.drain_delay_mode,
        offer,
        drain_requested,
        https,
        http,
        tcp,
        stats: stats_addr,
        shared,
        stop,
        workers,
        draining,
        reloader,
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
        // Watches the response deadlines of this worker's requests (see `deadline`).
        tokio::spawn(crate::deadline::sweeper());
        let drain = crate::accept::Drain::default();
        let l = Listening {
            conn: Arc::new(ConnCtx {
                shared,
                http: listener::http_builder(&config),
                http1: listener::http1_builder(&config),
                h1_limits: listener::h1_limits(&config),
                request_header_timeout: config.timeouts.request_header,
                idle_timeout: config.timeouts.idle,
                handshake_timeout: config.timeouts.handshake,
                redirect_http: config.redirect_http,
                upstream: upstream::client(&config),
                per_client: limits.per_client,
                handshakes: limits.handshakes,
                handshakes_per_client: limits.handshakes_per_client,
                proxy_protocol_tls: config.proxy_protocol_https.clone(),
                proxy_protocol_plain: config.proxy_protocol_http.clone(),
                stop: stop.clone(),
            }),
            connections: limits.connections,
            stop: stop.clone(),
            drain: drain.clone(),
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
        let sessions = tokio_util::task::TaskTracker::new();
        for (front, s) in socks.tcp {
            match tokio::net::TcpListener::from_std(s) {
                Ok(s) => tasks.push(tokio::spawn(crate::tcp::serve(
                    l.conn.shared.clone(),
                    front,
                    s,
                    stop.clone(),
                    sessions.clone(),
                ))),
                Err(e) => tracing::error!(error = %e, "cannot register a listener"),
            }
        }
        drop(l);
        stop.cancelled().await;
        for t in tasks {
            let _ = t.await;
        }
        sessions.close();
        // Grace: connections accepted just before the stop (some still in their TLS
        // handshake) get to send their first request before idle ones are closed.
        tokio::time::sleep(config.timeouts.grace.min(config.timeouts.drain)).await;
        if tokio::time::timeout(config.timeouts.drain, drain.finish())
            .await
            .is_err()
        {
            tracing::warn!("drain deadline passed; closing the remaining connections");
        }
        // TCP sessions end by themselves at the drain deadline (see `tcp::serve`).
        sessions.wait().await;
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
        let tcp = self
            .tcp
            .iter()
            .map(|(n, a)| format!("{n}@{a}"))
            .collect::<Vec<_>>()
            .join(",");
        format!(
            "gatehouse ready https={} http={} stats={} tcp={tcp}",
            list(&self.https),
            list(&self.http),
            self.stats.map(|a| a.to_string()).unwrap_or_default()
        )
    }

    /// Re-reads the rules (and certificates); on error the old rules keep serving.
    /// Returns whether new rules were applied.
    pub async fn reload(&self, why: &str) -> bool {
        self.reloader.reload(why).await
    }

    /// SIGUSR2: starts a successor of this program with `--upgrade` (see
    /// [`crate::handover::spawn_successor`]); this process drains once it has taken over.
    fn upgrade(&self) {
        if !self.upgradable {
            tracing::error!("SIGUSR2: no upgrade_socket in the config; nothing started");
            return;
        }
        match crate::handover::spawn_successor() {
            Ok(pid) => tracing::warn!(pid, "SIGUSR2: started a successor to take over"),
            Err(e) => tracing::error!(error = %e, "SIGUSR2: cannot start a successor"),
        }
    }

    /// Tells systemd and health checkers (`/healthz` 503, `show info` Stopping) that this
    /// process is going away, while it still serves.
    fn announce_stop(&self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Stops accepting and waits for the workers to drain (each up to the drain deadline).
    pub async fn shutdown(self) {
        self.announce_stop();
        self.offer.withdraw();
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
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let mut usr2 = signal(SignalKind::user_defined2())?;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        let by_signal = loop {
            tokio::select! {
                _ = hup.recv() => { self.reload("signal SIGHUP").await; }
                _ = usr1.recv() => crate::accesslog::reopen(),
                _ = usr2.recv() => self.upgrade(),
                _ = term.recv() => break true,
                _ = int.recv() => break true,
                _ = self.drain_requested.cancelled() => break false,
            }
        };
        // A successor has the listeners already: no delay then.
        if by_signal && !self.drain_delay.is_zero() {
            let delay = self.drain_delay;
            self.announce_stop();
            if self.drain_delay_mode == crate::config::DelayMode::Hold {
                self.offer.hold();
                tracing::info!(
                    ?delay,
                    "stopping: /healthz answers 503; new connections held (SYNs dropped unanswered, clients send them again) for timeouts.drain_delay"
                );
            } else {
                tracing::info!(
                    ?delay,
                    "stopping: /healthz answers 503; still accepting for timeouts.drain_delay"
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = term.recv() => { tracing::warn!("second signal: exiting now"); return Ok(()) }
                _ = int.recv() => { tracing::warn!("second signal: exiting now"); return Ok(()) }
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
