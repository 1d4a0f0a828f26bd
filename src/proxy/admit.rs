//! The second phase: a slot in the route's pool, then a server (the live colour's
//! primaries, its backups, then the backup service), waiting at most the queue timeout.

use super::decide::Forward;
use super::error::{ProxyError, RateLimited};
use super::finish::Record;
use crate::generation::Generation;
use crate::health::ServerGuard;
use crate::limit;
use crate::rules::{Balance, Colour, RuleSet, Server, Service};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Where an admitted request goes: the server chosen and what a retry may choose from.
pub struct Admitted<'r> {
    /// The service serving it (the route's, or its backup service).
    pub service: &'r Service,
    /// That service's colour in use.
    pub colour: Colour,
    /// Balancing in force.
    pub balance: Balance,
    /// The chosen server (its guard rides in the record).
    pub server: Arc<Server>,
    /// When the wait for a slot or a server ends (the pool's queue timeout).
    pub deadline: Instant,
}

/// The service that takes a request when no server of `service` (backups included) can:
/// its `backup_service`, on that service's live colour and with its own balancing.
pub fn backup_of<'r>(rules: &'r RuleSet, service: &Service) -> Option<(usize, &'r Arc<Service>)> {
    let i = service.backup_service?;
    Some((i, rules.service(i)))
}

/// Takes a pool slot, then a server; both are kept in the record until the response ends.
pub async fn admit<'r>(
    g: &'r Generation,
    fwd: &Forward,
    store: Option<&crate::limit_store::Store>,
    rec: &mut Record,
) -> Result<Admitted<'r>, ProxyError> {
    if let Some((limit, key)) = fwd.limit {
        rate_limit(g, limit, key, store, rec).await?;
    }
    let service: &Service = g.rules.service(fwd.service);
    rec.set_service(fwd.service);
    rec.log(|n| n.service = Some(service.name.clone()));
    rec.colour = fwd.colour.as_str();
    rec.backup = service.backup_page.clone();
    let pool = &g.pools[fwd.pool];
    rec.log(|n| n.pool = Some(pool.name.clone()));
    // The queue is timed from the request's arrival (read once, in `Record::new`).
    let deadline = rec.start + g.rules.pool(fwd.pool).queue_timeout;
    // The share follows the address the request is attributed to (`Record::note` set it
    // from the decision: PROXY header or trusted X-Forwarded-For), not the TCP peer.
    let spec = g.rules.pool(fwd.pool);
    let share = spec.share_for(rec.client).map(|n| (rec.client, n));
    rec.permit = Some(pool.acquire(&g.services[fwd.service], share).await?);
    let (key, balance) = (fwd.key, fwd.balance);
    let first = choose_server(g, service, fwd.colour, balance, key, None, deadline).await;
    let (service, colour, balance, (server, guard)) = match first {
        Ok(x) => (service, fwd.colour, balance, x),
        Err(ProxyError::NoServer) if service.backup_service.is_some() => {
            // Every server (backups too) is out: the backup service takes the request.
            let Some((_, backup)) = backup_of(&g.rules, service) else {
                return Err(ProxyError::NoServer);
            };
            g.services[fwd.service]
                .no_server
                .fetch_add(1, Ordering::Relaxed);
            rec.log(|n| n.service = Some(backup.name.clone()));
            rec.colour = backup.live.as_str();
            let chosen =
                choose_server(g, backup, backup.live, backup.balance, key, None, deadline).await?;
            (&**backup, backup.live, backup.balance, chosen)
        }
        Err(e) => return Err(e),
    };
    rec.server_guard = Some(guard);
    Ok(Admitted {
        service,
        colour,
        balance,
        server,
        deadline,
    })
}

/// Counts the request against its route's rate limit; over it, the refusal and when to
/// come back. Judged before a pool slot is taken, so refused requests cost no slot.
async fn rate_limit(
    g: &Generation,
    limit: usize,
    key: u64,
    store: Option<&crate::limit_store::Store>,
    rec: &mut Record,
) -> Result<(), ProxyError> {
    let limiter = &g.limiters[limit];
    // Shared when a store is configured and answers; else this instance's own table.
    let shared = match store {
        Some(store) => store.check(&limiter.spec, key).await,
        None => None,
    };
    let verdict = match shared {
        Some(v) => limiter.count(v),
        None => limiter.check(key, rec.start),
    };
    match verdict {
        limit::Verdict::Pass { remaining } => {
            rec.rate = Some((limit as u32, remaining));
            Ok(())
        }
        limit::Verdict::Deny { retry_after } => Err(ProxyError::RateLimited(RateLimited {
            limit,
            quota: limiter.spec.rate,
            retry_after: retry_after.as_secs_f64().ceil().max(1.0) as u64,
            reset: limiter.reset_after(0).as_secs_f64().ceil() as u64,
        })),
    }
}

/// Picks a usable server of `service`'s `colour` (health UP, admin READY) with room below
/// its maxconn. When every usable one is full, waits for a slot on the balancer's choice
/// until `deadline` (HAProxy semantics: a server never exceeds maxconn; the rest queue).
/// Shared by HTTP requests and TCP sessions.
pub async fn choose_server(
    g: &Generation,
    service: &Service,
    colour: Colour,
    balance: Balance,
    key: u64,
    avoid: Option<&Server>,
    deadline: Instant,
) -> Result<(Arc<Server>, ServerGuard), ProxyError> {
    let group = service.group(colour);
    let load = |s: &Server| g.health[s.id].active.load(Ordering::Relaxed);
    for _ in 0..3 {
        let room = |s: &Server| g.health[s.id].usable() && g.health[s.id].has_room();
        let Some(s) = group.pick(balance, key, avoid, &room, &load) else {
            break;
        };
        if let Some(guard) = g.health[s.id].try_enter() {
            return Ok((s.clone(), guard));
        }
    }
    let usable = |s: &Server| g.health[s.id].usable();
    let s = group
        .pick(balance, key, avoid, &usable, &load)
        .ok_or(ProxyError::NoServer)?;
    // Boxed: waiting for a server at its maxconn is rare, and its timer would otherwise
    // take room in every request's future.
    match Box::pin(tokio::time::timeout_at(
        deadline.into(),
        g.health[s.id].enter(),
    ))
    .await
    {
        Ok(guard) => Ok((s.clone(), guard)),
        Err(_) => Err(ProxyError::QueueTimeout),
    }
}
