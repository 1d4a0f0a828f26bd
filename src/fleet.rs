//! Operator state shared by every instance using the same store (`limits_store:`): a
//! server put in MAINT or DRAIN, or given a weight, on one instance (runtime socket,
//! page) takes effect on the others within a second, and an instance that restarts
//! takes the fleet's state over its own state file.
//!
//! Kept in one Redis hash, `gatehouse:fleet`: field `service/server`, value
//! `<admin> <weight|-> <ms since epoch>`. Every half second each instance publishes what
//! its operators changed since the last round (newer time wins) and applies what others
//! published. Without a store, nothing here runs.

use crate::generation::Generation;
use crate::health::AdminState;
use crate::limit_store::Store;
use crate::proxy::Shared;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const HASH: &str = "gatehouse:fleet";

/// One server's operator state: admin state and the weight set at run time.
type OpState = (AdminState, Option<u32>);

/// Shares operator state through `store` until `stop`.
pub async fn share(
    shared: Arc<Shared>,
    store: Arc<Store>,
    stop: tokio_util::sync::CancellationToken,
) {
    // What this instance last saw of each server, and the time of the fleet entry it
    // applied or wrote; `None` until the first round read the store.
    let mut seen: Option<HashMap<String, OpState>> = None;
    let mut times: HashMap<String, u64> = HashMap::new();
    loop {
        if let Some(mut conn) = store.connection() {
            round(&shared, &mut conn, &mut seen, &mut times).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One round: read the fleet's entries, publish what operators changed here (on the
/// first round: what differs from the rules and the fleet has no entry for, e.g. a state
/// file's MAINT), then apply newer entries from the others.
async fn round(
    shared: &Shared,
    conn: &mut redis::aio::MultiplexedConnection,
    seen: &mut Option<HashMap<String, OpState>>,
    times: &mut HashMap<String, u64>,
) {
    let mut cmd = redis::cmd("HGETALL");
    cmd.arg(HASH);
    let all = cmd.query_async::<HashMap<String, String>>(conn);
    let Ok(Ok(all)) = tokio::time::timeout(Duration::from_secs(1), all).await else {
        return;
    };
    let local = local_states(&shared.state.load());
    let changed_here = |k: &String, st: &OpState| match seen.as_ref() {
        Some(last) => last.get(k) != Some(st),
        None => !all.contains_key(k) && *st != (AdminState::Ready, None),
    };
    let mine: Vec<(String, OpState)> = local
        .iter()
        .filter(|(k, st)| changed_here(k, st))
        .map(|(k, st)| (k.clone(), *st))
        .collect();
    for (key, st) in &mine {
        let now = now_ms();
        let value = format!("{} {} {now}", admin_word(st.0), weight_word(st.1));
        let mut cmd = redis::cmd("HSET");
        cmd.arg(HASH).arg(key).arg(value);
        let set = cmd.query_async::<i64>(conn);
        if tokio::time::timeout(Duration::from_secs(1), set)
            .await
            .is_ok_and(|r| r.is_ok())
        {
            times.insert(key.clone(), now);
        }
    }
    let mut applied = local.clone();
    let mut weights = false;
    for (key, value) in &all {
        let Some((st, at)) = parse(value) else {
            continue;
        };
        let stale = at <= times.get(key).copied().unwrap_or(0);
        if stale || local.get(key) == Some(&st) || mine.iter().any(|(k, _)| k == key) {
            continue;
        }
        if let Some(changed) = apply(shared, key, st) {
            weights |= changed;
            applied.insert(key.clone(), st);
            times.insert(key.clone(), at);
        }
    }
    if weights {
        let g = shared.state.load_full();
        let next = Generation::new(g.rules.clone(), Some(&g), &shared.stats, &shared.health);
        shared.state.store(Arc::new(next));
    }
    *seen = Some(applied);
}

/// Sets a server's operator state from the fleet; `Some(weight changed)` when the server
/// is known here.
fn apply(shared: &Shared, key: &str, (admin, weight): OpState) -> Option<bool> {
    let g = shared.state.load();
    let (svc, srv) = key.split_once('/')?;
    let (_, _, s) = g
        .rules
        .all_servers()
        .find(|(v, _, s)| &*v.name == svc && &*s.name == srv)?;
    let h = &g.health[s.id];
    h.set_admin(admin);
    let changed = h.runtime_weight() != weight;
    h.set_weight(weight);
    tracing::warn!(
        server = key,
        admin = admin_word(admin),
        weight = weight_word(weight),
        "fleet: operator state from another instance"
    );
    Some(changed)
}

/// Every server's operator state in `g`, by `service/server`.
fn local_states(g: &Generation) -> HashMap<String, OpState> {
    g.rules
        .all_servers()
        .map(|(svc, _, s)| {
            let h = &g.health[s.id];
            (
                format!("{}/{}", svc.name, s.name),
                (h.admin(), h.runtime_weight()),
            )
        })
        .collect()
}

fn parse(value: &str) -> Option<(OpState, u64)> {
    let mut w = value.split(' ');
    let admin = match w.next()? {
        "ready" => AdminState::Ready,
        "drain" => AdminState::Drain,
        "maint" => AdminState::Maint,
        _ => return None,
    };
    let weight = match w.next()? {
        "-" => None,
        n => Some(n.parse().ok()?),
    };
    Some(((admin, weight), w.next()?.parse().ok()?))
}

fn admin_word(a: AdminState) -> &'static str {
    match a {
        AdminState::Ready => "ready",
        AdminState::Drain => "drain",
        AdminState::Maint => "maint",
    }
}

fn weight_word(w: Option<u32>) -> String {
    w.map_or("-".into(), |w| w.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
