//! A live generation: one compiled rule set plus the runtime state it points into.
//!
//! Requests load one `Generation` and use it to the end. Pools and counters are looked up
//! here by index (no hashing per request) but are owned by name across generations, so
//! a reload keeps slots in use, queue contents and every counter.

use crate::health::{CheckTargets, HealthTable, ServerState};
use crate::limit::Limiter;
use crate::pool::Pool;
use crate::rules::RuleSet;
use crate::rules::{HealthSpec, Server};
use crate::stats::{Counters, Kind, Stats};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

/// One installed rule set and the state indexed by it.
#[derive(Debug)]
pub struct Generation {
    /// Increases by one for each successful reload.
    pub number: u64,
    /// When it was installed.
    pub installed: SystemTime,
    /// The rules.
    pub rules: RuleSet,
    /// Runtime pools, by pool index.
    pub pools: Vec<Arc<Pool>>,
    /// Site counters, by site index.
    pub sites: Vec<Arc<Counters>>,
    /// Route counters, by site index then route index (named `site/route`).
    pub routes: Vec<Vec<Arc<Counters>>>,
    /// Service counters, by service index.
    pub services: Vec<Arc<Counters>>,
    /// Server counters, by server id.
    pub servers: Vec<Arc<Counters>>,
    /// Server health and admin state, by server id (owned by name across generations).
    pub health: Vec<Arc<ServerState>>,
    /// Passthrough frontend counters, by passthrough index.
    pub passthrough: Vec<Arc<Counters>>,
    /// Rate limiters, by limit index (kept by name while the spec is unchanged).
    pub limiters: Vec<Arc<Limiter>>,
    /// Requests each deny rule refused, by deny index (kept by name).
    pub deny_hits: Vec<Arc<AtomicU64>>,
    /// Requests each rate limit refused, by limit index (kept by name).
    pub limit_hits: Vec<Arc<AtomicU64>>,
}

impl Generation {
    /// Builds the generation after `prev`, reusing its pools (resized) and the named counters.
    pub fn new(
        rules: RuleSet,
        prev: Option<&Generation>,
        stats: &Stats,
        health: &HealthTable,
    ) -> Generation {
        let old: HashMap<&str, &Arc<Pool>> = prev
            .map(|g| g.pools.iter().map(|p| (&*p.name, p)).collect())
            .unwrap_or_default();
        let pools = rules
            .pools
            .iter()
            .map(|spec| match old.get(&*spec.name) {
                Some(p) => {
                    p.resize(spec);
                    Arc::clone(p)
                }
                None => Pool::new(spec),
            })
            .collect();
        let sites = rules
            .sites
            .iter()
            .map(|s| stats.counters(Kind::Site, &s.name))
            .collect();
        let routes = rules
            .sites
            .iter()
            .map(|s| {
                s.routes
                    .iter()
                    .map(|r| stats.counters(Kind::Route, &format!("{}/{}", s.name, r.name).into()))
                    .collect()
            })
            .collect();
        let services = rules
            .services
            .iter()
            .map(|s| stats.counters(Kind::Service, &s.name))
            .collect();
        let mut servers: Vec<(usize, Arc<Counters>)> = rules
            .all_servers()
            .map(|(_, _, s)| (s.id, stats.counters(Kind::Server, &s.name)))
            .collect();
        servers.sort_by_key(|(id, _)| *id);
        let health = health.states_for(&rules);
        let rules = with_runtime_weights(rules, &health);
        let passthrough = rules
            .passthrough
            .iter()
            .map(|p| stats.counters(Kind::Listener, &p.name))
            .collect();
        let old: HashMap<&str, &Arc<Limiter>> = prev
            .map(|g| g.limiters.iter().map(|l| (&*l.spec.name, l)).collect())
            .unwrap_or_default();
        let limiters = rules
            .limits
            .iter()
            .map(|spec| match old.get(&*spec.name) {
                Some(l) if l.spec == *spec => Arc::clone(l),
                _ => Arc::new(Limiter::new(spec)),
            })
            .collect();
        let mut deny_hits = vec![Arc::default(); rules.deny_count];
        for rule in rules
            .deny
            .iter()
            .chain(rules.sites.iter().flat_map(|s| &s.deny))
        {
            deny_hits[rule.index] = stats.denial_counter("deny", &rule.name);
        }
        let limit_hits = rules
            .limits
            .iter()
            .map(|l| stats.denial_counter("limit", &l.name))
            .collect();
        Generation {
            limit_hits,
            limiters,
            deny_hits,
            passthrough,
            health,
            number: prev.map_or(1, |g| g.number + 1),
            installed: SystemTime::now(),
            rules,
            pools,
            sites,
            routes,
            services,
            servers: servers.into_iter().map(|(_, c)| c).collect(),
        }
    }
}

/// The rule set with the weights ops set at run time (`set weight`), when any differs.
fn with_runtime_weights(rules: RuleSet, health: &[Arc<ServerState>]) -> RuleSet {
    let differs = rules
        .all_servers()
        .any(|(_, _, s)| health[s.id].weight() != s.weight);
    if !differs {
        return rules;
    }
    rules.reweighted(&|s| health[s.id].weight())
}

impl CheckTargets for Generation {
    fn targets(&self) -> impl Iterator<Item = (&HealthSpec, &Arc<Server>, &Arc<ServerState>)> {
        self.rules
            .all_servers()
            .map(|(svc, _, s)| (&svc.health, s, &self.health[s.id]))
    }
}
