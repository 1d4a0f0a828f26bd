//! Resolves the servers' DNS names, keeps the last good answer, and tells when a name fails.
//!
//! Names are asked at start and again at the record's TTL, at most `dns.interval` apart.
//! A failed lookup (timeout, SERVFAIL, NXDOMAIN, an empty answer) keeps the addresses
//! of the last good one: a DNS outage must not empty a pool that still works. The stats
//! page shows each name's addresses, when they were last resolved and the last error.
//! When an answer changes the addresses, the caller rebuilds the rules with them
//! ([`Resolver::snapshot`]); the servers whose address stayed keep their slot and state.

use crate::config::DnsConfig;
use crate::rules::Resolved;
use crate::rules::resolved::assign;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Shortest time between two lookups of one name, whatever the TTL says.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// What is known of one name.
#[derive(Clone, Debug)]
pub struct NameState {
    /// Its addresses, slot by slot (`None`: a freed slot).
    pub slots: Arc<[Option<IpAddr>]>,
    /// When a lookup last succeeded.
    pub resolved_at: Option<SystemTime>,
    /// Why the last lookup failed, while it keeps failing.
    pub error: Option<String>,
    /// Lookups that failed.
    pub failures: u64,
    next: Instant,
}

/// The DNS client and what each name resolved to.
pub struct Resolver {
    dns: TokioResolver,
    interval: Duration,
    timeout: Duration,
    names: Mutex<HashMap<String, NameState>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver asking `config.nameservers`, or the system's (`/etc/resolv.conf` and
    /// `/etc/hosts`) when there are none.
    pub fn new(config: &DnsConfig) -> anyhow::Result<Resolver> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if config.nameservers.is_empty() {
            TokioResolver::builder(provider)?
        } else {
            let servers = config.nameservers.iter().map(|a| {
                let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                for c in &mut ns.connections {
                    c.port = a.port();
                }
                ns
            });
            let mut b = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers.collect()),
                provider,
            );
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        };
        let opts = builder.options_mut();
        opts.timeout = config.timeout;
        opts.attempts = 1;
        // Our own schedule decides when to ask again; the cache only bounds it by TTL.
        opts.positive_max_ttl = Some(config.interval);
        opts.negative_max_ttl = Some(MIN_REFRESH);
        Ok(Resolver {
            dns: builder.build()?,
            interval: config.interval,
            timeout: config.timeout,
            names: Mutex::new(HashMap::new()),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, NameState>> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every name's addresses, for a compile.
    pub fn snapshot(&self) -> Resolved {
        let mut r = Resolved::default();
        for (name, st) in self.table().iter() {
            r.insert(name, st.slots.clone());
        }
        r
    }

    /// Every name and what is known of it, by name.
    pub fn status(&self) -> Vec<(String, NameState)> {
        let mut v: Vec<_> = self
            .table()
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Whether every one of `names` has been asked at least once.
    pub fn knows(&self, names: &[String]) -> bool {
        let t = self.table();
        names.iter().all(|n| t.contains_key(n))
    }

    /// Looks up those of `names` that are due (never asked, or their time came), forgets
    /// names no longer in use, and returns whether any name's addresses changed.
    pub async fn refresh(&self, names: &[String]) -> bool {
        let now = Instant::now();
        let due: Vec<&String> = {
            let mut t = self.table();
            t.retain(|n, _| names.contains(n));
            names
                .iter()
                .filter(|n| t.get(*n).is_none_or(|s| s.next <= now))
                .collect()
        };
        let answers = futures_util::future::join_all(due.iter().map(|n| self.lookup(n))).await;
        let mut changed = false;
        for (name, answer) in due.into_iter().zip(answers) {
            changed |= self.record(name, answer);
        }
        changed
    }

    /// One lookup, bounded by the timeout: the addresses (sorted) and their TTL.
    async fn lookup(&self, name: &str) -> Result<(Vec<IpAddr>, Duration), String> {
        // A fully qualified name: no search domains appended to a name of the rules.
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let lookup = tokio::time::timeout(self.timeout * 2, self.dns.lookup_ip(fqdn.as_str()))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let mut ips: Vec<IpAddr> = lookup.iter().collect();
        ips.sort();
        ips.dedup();
        if ips.is_empty() {
            return Err("no addresses in the answer".into());
        }
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(Instant::now());
        Ok((ips, ttl))
    }

    /// Records one lookup's result; returns whether the name's addresses changed.
    fn record(&self, name: &str, answer: Result<(Vec<IpAddr>, Duration), String>) -> bool {
        let mut t = self.table();
        let st = t.entry(name.to_string()).or_insert_with(|| NameState {
            slots: Arc::from(Vec::new()),
            resolved_at: None,
            error: None,
            failures: 0,
            next: Instant::now(),
        });
        match answer {
            Ok((ips, ttl)) => {
                if st.error.take().is_some() {
                    tracing::warn!(name, "DNS name resolves again");
                }
                st.resolved_at = Some(SystemTime::now());
                st.next = Instant::now() + ttl.clamp(MIN_REFRESH, self.interval);
                let slots = assign(&st.slots, &ips);
                let changed = *st.slots != *slots;
                if changed {
                    tracing::info!(name, addresses = ?ips, "DNS name's addresses changed");
                    st.slots = slots.into();
                }
                changed
            }
            Err(e) => {
                if st.error.is_none() {
                    tracing::warn!(
                        name,
                        error = %e,
                        kept = st.slots.iter().flatten().count(),
                        "DNS lookup failed; the last good addresses stay"
                    );
                }
                st.failures += 1;
                st.error = Some(e);
                st.next = Instant::now() + self.interval.min(2 * MIN_REFRESH);
                // A name never answered gets its entry (so it shows), with no server.
                false
            }
        }
    }
}

impl Resolver {
    /// Loads the rules of `config` with every DNS name resolved: names the rules name for
    /// the first time are asked before the rules are built, so a new service does not
    /// start without its servers.
    pub async fn load_rules(
        &self,
        config: &crate::config::Config,
    ) -> Result<crate::rules::RuleSet, crate::diag::Diagnostics> {
        let set = config.load_rules(&self.snapshot())?;
        if self.knows(&set.dns_names) {
            return Ok(set);
        }
        self.refresh(&set.dns_names).await;
        config.load_rules(&self.snapshot())
    }
}
