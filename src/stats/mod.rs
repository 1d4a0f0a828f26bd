//! Counters: the single source for the stats page, the HAProxy CSV and Prometheus.
//!
//! A leaf module: plain atomics, no imports from the rest of the crate. Counters are
//! kept by stable names (server, service, route, site, pool) outside the rule set, so
//! a reload never resets them.

pub mod render;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Request counters shared by frontends (sites), backends (services) and servers.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Responses by class: 1xx, 2xx, 3xx, 4xx, 5xx, other.
    pub responses: [AtomicU64; 6],
    /// Request body bytes in.
    pub bytes_in: AtomicU64,
    /// Response body bytes out.
    pub bytes_out: AtomicU64,
    /// Requests in flight now.
    pub current: AtomicU64,
    /// Most in flight at once.
    pub max_current: AtomicU64,
    /// Connection errors to servers.
    pub connect_errors: AtomicU64,
    /// Bad or missing answers from servers.
    pub response_errors: AtomicU64,
    /// Requests retried on another server.
    pub redispatches: AtomicU64,
    /// Requests that found no usable server.
    pub no_server: AtomicU64,
    /// Requests waiting in a pool queue for this service now.
    pub queued: AtomicU64,
    /// Most waiting at once.
    pub max_queued: AtomicU64,
    /// Total time of finished requests, microseconds (for an average).
    pub total_time_us: AtomicU64,
}

impl Counters {
    /// Counts one request starting.
    pub fn enter(&self) {
        let now = self.current.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_current.fetch_max(now, Ordering::Relaxed);
    }

    /// Counts one request finishing with `status`.
    pub fn leave(&self, status: u16, bytes_in: u64, bytes_out: u64, micros: u64) {
        self.current.fetch_sub(1, Ordering::Relaxed);
        self.record(status, bytes_in, bytes_out, micros);
    }

    /// Counts a finished request that was never counted as entering.
    pub fn record(&self, status: u16, bytes_in: u64, bytes_out: u64, micros: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        self.total_time_us.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Counter sets by kind and stable name.
type Families = HashMap<(Kind, Arc<str>), Arc<Counters>>;

/// Process-wide figures and the named counter families.
#[derive(Debug)]
pub struct Stats {
    /// When the process started.
    pub started: Instant,
    /// Client connections open now.
    pub connections: AtomicU64,
    /// Client connections accepted.
    pub connections_total: AtomicU64,
    /// TLS handshakes completed.
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_failures: AtomicU64,
    /// All requests, as a frontend total.
    pub frontend: Counters,
    families: Mutex<Families>,
}

/// Which family a named counter set belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A site (HAProxy frontend).
    Site,
    /// A service (HAProxy backend).
    Service,
    /// A server.
    Server,
    /// A route.
    Route,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            connections: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            tls_handshakes: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
            frontend: Counters::default(),
            families: Mutex::new(HashMap::new()),
        }
    }
}

impl Stats {
    /// The counters for a named thing, created on first use. Called when rules are
    /// installed (not per request): the lock is never on the hot path.
    pub fn counters(&self, kind: Kind, name: &Arc<str>) -> Arc<Counters> {
        let mut map = self.families.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((kind, name.clone())).or_default().clone()
    }

    /// Every named counter set, sorted by kind and name (for rendering).
    pub fn snapshot(&self) -> Vec<(Kind, Arc<str>, Arc<Counters>)> {
        let map = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .map(|((k, n), c)| (*k, n.clone(), c.clone()))
            .collect();
        v.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        v
    }
}
