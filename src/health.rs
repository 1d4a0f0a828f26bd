//! Server health: UP/DOWN from active checks and passive failures, MAINT/DRAIN from ops.
//!
//! Kept by server name outside the rule set (a reload keeps every server's state,
//! counters of checks and admin state). Read on the hot path through atomics only:
//! a generation holds `Arc<ServerState>` by server id.

use crate::rules::{HealthSpec, RuleSet, Server};
use arc_swap::ArcSwapOption;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What ops set on a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AdminState {
    /// Takes requests when healthy.
    Ready = 0,
    /// Takes nothing (maintenance); health checks keep running.
    Maint = 1,
    /// Takes no new requests; in-flight ones finish.
    Drain = 2,
}

/// The ops' admin state in the admin byte's low bits.
const ADMIN_MASK: u8 = 3;
/// The admin byte's bit for a drain the health check asked for.
const CHECK_DRAIN: u8 = 0x10;

/// The runtime state of one server.
#[derive(Debug)]
pub struct ServerState {
    up: AtomicBool,
    admin: AtomicU8,
    ok_streak: AtomicU32,
    fail_streak: AtomicU32,
    /// Failures seen by traffic in a row (passive health).
    passive_fail_streak: AtomicU32,
    /// Unix ms of the last UP/DOWN change.
    pub last_change_ms: AtomicU64,
    /// Total ms spent DOWN before the current state.
    pub downtime_ms: AtomicU64,
    /// Checks that failed.
    pub checks_failed: AtomicU64,
    /// UP → DOWN transitions.
    pub went_down: AtomicU64,
    /// Last check: status code (0 = none / TCP), duration ms, passed.
    pub last_check_code: AtomicU32,
    /// Duration of the last check, ms.
    pub last_check_ms: AtomicU64,
    /// Whether the last check passed.
    pub last_check_ok: AtomicBool,
    /// Whether a check has run at all.
    pub checked: AtomicBool,
    /// Requests in flight to this server now (least-connections balancing).
    pub active: AtomicU32,
    /// Per-server `maxconn` and its permits; `None` = unlimited. Read by every request
    /// (a wait-free load, no lock), written only when a reload changes the limit.
    slots: ArcSwapOption<(u32, Arc<Semaphore>)>,
    next_check_ms: AtomicU64,
    /// The weight the rules give it (HAProxy's "initial" weight).
    initial_weight: AtomicU32,
    /// A weight set at run time (`set weight`), or [`NO_WEIGHT`]. Kept across reloads
    /// while the rules' weight stays what it was when it was set.
    runtime_weight: AtomicU32,
}

/// No weight set at run time.
const NO_WEIGHT: u32 = u32::MAX;
/// The highest weight (HAProxy's bound).
pub const MAX_WEIGHT: u32 = 256;

/// A request's hold on a server: counted in `active`, and a maxconn slot if limited.
#[derive(Debug)]
pub struct ServerGuard {
    state: Arc<ServerState>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Relaxed);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ServerState {
    fn new() -> Self {
        ServerState {
            up: AtomicBool::new(true),
            admin: AtomicU8::new(AdminState::Ready as u8),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
            passive_fail_streak: AtomicU32::new(0),
            last_change_ms: AtomicU64::new(now_ms()),
            downtime_ms: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            went_down: AtomicU64::new(0),
            last_check_code: AtomicU32::new(0),
            last_check_ms: AtomicU64::new(0),
            last_check_ok: AtomicBool::new(false),
            checked: AtomicBool::new(false),
            active: AtomicU32::new(0),
            slots: ArcSwapOption::empty(),
            next_check_ms: AtomicU64::new(0),
            initial_weight: AtomicU32::new(1),
            runtime_weight: AtomicU32::new(NO_WEIGHT),
        }
    }

    /// The weight the rules give this server.
    pub fn initial_weight(&self) -> u32 {
        self.initial_weight.load(Relaxed)
    }

    /// The weight in force: the one set at run time, else the rules'.
    pub fn weight(&self) -> u32 {
        match self.runtime_weight.load(Relaxed) {
            NO_WEIGHT => self.initial_weight(),
            w => w,
        }
    }

    /// The weight set at run time, if any.
    pub fn runtime_weight(&self) -> Option<u32> {
        Some(self.runtime_weight.load(Relaxed)).filter(|&w| w != NO_WEIGHT)
    }

    /// Sets the weight at run time (`None`: back to the rules'); bounded by [`MAX_WEIGHT`].
    pub fn set_weight(&self, w: Option<u32>) {
        let w = w.map_or(NO_WEIGHT, |w| w.min(MAX_WEIGHT));
        self.runtime_weight.store(w, Relaxed);
    }

    /// Records the rules' weight; a runtime weight set against another rules weight is
    /// dropped (the file changed since: the edit wins, as HAProxy's state file does).
    fn set_initial_weight(&self, w: u32) {
        if self.initial_weight.swap(w, Relaxed) != w {
            self.runtime_weight.store(NO_WEIGHT, Relaxed);
        }
    }

    /// Sets health as a state file saved it (at start): a server saved DOWN stays DOWN
    /// until `rise` checks pass, as HAProxy's `load-server-state-from-file` does.
    pub fn restore_health(&self, up: bool) {
        self.up.store(up, Relaxed);
    }

    /// Whether health says UP.
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// The admin state ops set.
    pub fn admin(&self) -> AdminState {
        match self.admin.load(Relaxed) & ADMIN_MASK {
            1 => AdminState::Maint,
            2 => AdminState::Drain,
            _ => AdminState::Ready,
        }
    }

    /// Sets the admin state (ops action); a drain the health check asked for stays.
    pub fn set_admin(&self, a: AdminState) {
        let _ = self
            .admin
            .fetch_update(Relaxed, Relaxed, |v| Some(v & CHECK_DRAIN | a as u8));
    }

    /// Drains (or stops draining) the server because its check said so (`on_404: drain`,
    /// HAProxy's `disable-on-404`): kept apart from the ops' state, which it never changes.
    pub fn set_check_drain(&self, drain: bool, name: &str) {
        let was = if drain {
            self.admin.fetch_or(CHECK_DRAIN, Relaxed)
        } else {
            self.admin.fetch_and(!CHECK_DRAIN, Relaxed)
        };
        if (was & CHECK_DRAIN != 0) != drain {
            match drain {
                true => tracing::warn!(server = name, "server is DRAIN: its check answers 404"),
                false => tracing::warn!(
                    server = name,
                    "server's check passes again: no longer drained"
                ),
            }
        }
    }

    /// Whether the server's check asked it to be drained.
    pub fn check_drained(&self) -> bool {
        self.admin.load(Relaxed) & CHECK_DRAIN != 0
    }

    /// Whether the server may take a new request: UP, READY and not drained by its check
    /// (one load of the admin byte covers both).
    pub fn usable(&self) -> bool {
        self.is_up() && self.admin.load(Relaxed) == 0
    }

    /// Status word for stats: UP, DOWN, MAINT, DRAIN (set by ops, or by a check answering
    /// 404 under `on_404: drain`).
    pub fn status(&self) -> &'static str {
        match (self.admin(), self.is_up()) {
            (AdminState::Maint, _) => "MAINT",
            (AdminState::Drain, _) => "DRAIN",
            (_, true) if self.check_drained() => "DRAIN",
            (_, true) => "UP",
            (_, false) => "DOWN",
        }
    }

    /// Seconds since the last UP/DOWN change.
    pub fn since_change_secs(&self) -> u64 {
        now_ms().saturating_sub(self.last_change_ms.load(Relaxed)) / 1000
    }

    /// Total seconds spent DOWN, including the current DOWN spell.
    pub fn downtime_secs(&self) -> u64 {
        let mut ms = self.downtime_ms.load(Relaxed);
        if !self.is_up() {
            ms += now_ms().saturating_sub(self.last_change_ms.load(Relaxed));
        }
        ms / 1000
    }

    /// Records an active check: `rise` passes bring it UP, `fall` failures take it DOWN.
    /// Active checks are the authority on health: traffic never resets their streaks
    /// (a server whose check fails goes DOWN even while it answers requests) and never
    /// brings a server UP.
    pub fn observe(&self, ok: bool, spec: &HealthSpec, name: &str) {
        if ok {
            if self.fail_streak.load(Relaxed) != 0 {
                self.fail_streak.store(0, Relaxed);
            }
            if self.is_up() {
                return;
            }
            let n = self.ok_streak.fetch_add(1, Relaxed) + 1;
            // Checked again: two checks may pass at the same moment.
            if !self.is_up() && n >= spec.rise {
                let now = now_ms();
                let since = self.last_change_ms.swap(now, Relaxed);
                self.downtime_ms
                    .fetch_add(now.saturating_sub(since), Relaxed);
                self.up.store(true, Relaxed);
                tracing::warn!(server = name, "server is UP");
            }
        } else {
            self.checks_failed.fetch_add(1, Relaxed);
            self.ok_streak.store(0, Relaxed);
            let n = self.fail_streak.fetch_add(1, Relaxed) + 1;
            if n >= spec.fall {
                self.mark_down(name);
            }
        }
    }

    /// Records what traffic showed of the server itself (passive health): `fall`
    /// failures in a row (refused or reset connections, no response head in time, a
    /// malformed response) take it DOWN; a success only ends such a streak. Only active
    /// checks bring it back UP.
    pub fn observe_traffic(&self, ok: bool, spec: &HealthSpec, name: &str) {
        if ok {
            // Every forwarded response passes here: no locked add while nothing failed.
            if self.passive_fail_streak.load(Relaxed) != 0 {
                self.passive_fail_streak.store(0, Relaxed);
            }
            return;
        }
        let n = self.passive_fail_streak.fetch_add(1, Relaxed) + 1;
        if n >= spec.fall {
            self.mark_down(name);
        }
    }

    fn mark_down(&self, name: &str) {
        if self.up.swap(false, Relaxed) {
            self.ok_streak.store(0, Relaxed);
            self.passive_fail_streak.store(0, Relaxed);
            self.last_change_ms.store(now_ms(), Relaxed);
            self.went_down.fetch_add(1, Relaxed);
            tracing::warn!(server = name, "server is DOWN");
        }
    }

    /// Takes a request slot on this server: at once when below maxconn (or unlimited);
    /// `None` when the server is full.
    pub fn try_enter(self: &Arc<Self>) -> Option<ServerGuard> {
        let slot = match self.slots.load().as_deref() {
            None => None,
            Some((_, sem)) => Some(sem.clone().try_acquire_owned().ok()?),
        };
        self.active.fetch_add(1, Relaxed);
        Some(ServerGuard {
            state: self.clone(),
            _slot: slot,
        })
    }

    /// Waits for a request slot on this server (used when every candidate is at maxconn).
    pub async fn enter(self: &Arc<Self>) -> ServerGuard {
        let sem = self.slots.load().as_deref().map(|(_, s)| s.clone());
        let slot = match sem {
            Some(sem) => sem.acquire_owned().await.ok(),
            None => None,
        };
        self.active.fetch_add(1, Relaxed);
        ServerGuard {
            state: self.clone(),
            _slot: slot,
        }
    }

    /// Whether a maxconn slot is free (or there is no limit).
    pub fn has_room(&self) -> bool {
        match self.slots.load().as_deref() {
            Some((_, sem)) => sem.available_permits() > 0,
            None => true,
        }
    }

    /// Called with the table's lock held ([`HealthTable::states_for`]): one writer at a
    /// time, so the load-then-store needs no lock of its own.
    fn set_maxconn(&self, maxconn: Option<u32>) {
        match (maxconn, self.slots.load().as_deref()) {
            (None, _) => self.slots.store(None),
            (Some(m), Some((old, _))) if *old == m => {}
            // A new limit applies to new requests; held slots of the old one drain away.
            (Some(m), _) => self
                .slots
                .store(Some(Arc::new((m, Arc::new(Semaphore::new(m as usize)))))),
        }
    }
}

/// Every server's state, by name; survives reloads. A server whose address changed
/// (a rules edit, or DNS moving `web-ui#1`) starts its health afresh: the old address's
/// checks say nothing of the new one. Its admin state (an operator's MAINT) stays.
#[derive(Debug, Default)]
pub struct HealthTable {
    servers: Mutex<HashMap<Arc<str>, Known>>,
}

/// A server's state and the address it describes.
type Known = (std::net::SocketAddr, Arc<ServerState>);

impl HealthTable {
    /// States for every server of `rules`, by server id (created on first sight).
    /// Called when a generation is built, never per request.
    pub fn states_for(&self, rules: &RuleSet) -> Vec<Arc<ServerState>> {
        let mut map = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(usize, Arc<ServerState>)> = rules
            .all_servers()
            .map(|(_, _, s)| {
                let entry = map
                    .entry(s.name.clone())
                    .or_insert_with(|| (s.addr, Arc::new(ServerState::new())));
                if entry.0 != s.addr {
                    let fresh = ServerState::new();
                    fresh.admin.store(entry.1.admin.load(Relaxed), Relaxed);
                    fresh
                        .initial_weight
                        .store(entry.1.initial_weight(), Relaxed);
                    fresh
                        .runtime_weight
                        .store(entry.1.runtime_weight.load(Relaxed), Relaxed);
                    *entry = (s.addr, Arc::new(fresh));
                }
                let st = entry.1.clone();
                st.set_maxconn(s.maxconn);
                st.set_initial_weight(s.initial_weight);
                (s.id, st)
            })
            .collect();
        out.sort_by_key(|(id, _)| *id);
        out.into_iter().map(|(_, s)| s).collect()
    }

    /// The state of a server by name.
    pub fn get(&self, name: &str) -> Option<Arc<ServerState>> {
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|e| e.1.clone())
    }
}

/// Runs one check against `server`.
pub async fn check(server: &Server, spec: &HealthSpec) -> (bool, u32) {
    let mut addr = server.addr;
    if let Some(port) = spec.port {
        addr.set_port(port);
    }
    let attempt = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        if spec.send_proxy {
            tcp.write_all(&crate::proxy_protocol::v2_local())
                .await
                .ok()?;
        }
        let Some(path) = &spec.path else {
            return Some((true, 0));
        };
        let host = spec.host.clone().unwrap_or_else(|| addr.to_string());
        let req = format!(
            "{} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gatehouse-health-check\r\nConnection: close\r\n\r\n",
            spec.method
        );
        let code = match &spec.tls {
            None => status_of(tcp, &req).await?,
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let stream = connector.connect(tls.server_name(server), tcp).await.ok()?;
                status_of(stream, &req).await?
            }
        };
        let ok = match &spec.expect {
            Some(e) => e.iter().any(|e| u32::from(*e) == code),
            None => (200..400).contains(&code),
        };
        Some((ok, code))
    };
    match tokio::time::timeout(spec.timeout, attempt).await {
        Ok(Some(r)) => r,
        _ => (false, 0),
    }
}

/// Sends `req` on `io` and reads the status code of the answer.
async fn status_of<T>(mut io: T, req: &str) -> Option<u32>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    io.write_all(req.as_bytes()).await.ok()?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let m = io.read(&mut buf[n..]).await.ok()?;
        if m == 0 {
            break;
        }
        n += m;
    }
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// What the checker walks: every server with its check spec and state. A generation
/// implements it; the checker needs nothing else of the runtime above it.
pub trait CheckTargets {
    /// Each server of the live rules, with its service's check and its state.
    fn targets(&self) -> impl Iterator<Item = (&HealthSpec, &Arc<Server>, &Arc<ServerState>)>;
}

/// Checks every server of the live rules when its (jittered) interval is due.
/// One loop for the whole process; each check runs as its own task.
pub async fn run_checks<G: CheckTargets>(
    load: impl Fn() -> Arc<G>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.cancelled() => return,
        }
        let g = load();
        let now = now_ms();
        for (spec, server, state) in g.targets() {
            if state.next_check_ms.load(Relaxed) > now {
                continue;
            }
            let spec = spec.clone();
            let interval = spec.interval.as_millis() as u64;
            let jitter = fastrand::u64(0..=interval / 5);
            state
                .next_check_ms
                .store(now + interval - interval / 10 + jitter, Relaxed);
            let (server, state) = (server.clone(), state.clone());
            tokio::spawn(async move {
                let start = std::time::Instant::now();
                let (mut ok, code) = check(&server, &spec).await;
                if spec.on_404_drain {
                    // 404: the server asks to be drained, and is healthy; a pass ends it.
                    if code == 404 {
                        ok = true;
                        state.set_check_drain(true, &server.name);
                    } else if ok {
                        state.set_check_drain(false, &server.name);
                    }
                }
                state.last_check_code.store(code, Relaxed);
                state
                    .last_check_ms
                    .store(start.elapsed().as_millis() as u64, Relaxed);
                state.last_check_ok.store(ok, Relaxed);
                state.checked.store(true, Relaxed);
                state.observe(ok, &spec, &server.name);
            });
        }
    }
}
