//! Counters: the single source for the stats page, the HAProxy CSV and Prometheus.
//!
//! A leaf module: plain atomics, no imports from the rest of the crate. Counters are
//! kept by stable names (server, service, route, site, pool) outside the rule set, so
//! a reload never resets them.

pub mod names;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Upper bounds (seconds) of the latency histogram buckets; the last bucket is +Inf.
pub const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A fixed-bucket latency histogram of atomics: lock-free to record, cumulative for
/// Prometheus, and diffable against an older snapshot for "recent" percentiles.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Count per bucket (`BUCKETS.len()` bounded buckets, then +Inf).
    pub buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of all observations, microseconds.
    pub sum_us: AtomicU64,
}

impl Histogram {
    /// The bucket an observation falls in (find it once, record it in several histograms).
    pub fn bucket(micros: u64) -> usize {
        let secs = micros as f64 / 1e6;
        BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len())
    }

    /// Records one observation whose bucket is known.
    pub fn observe_at(&self, bucket: usize, micros: u64) {
        self.buckets[bucket.min(BUCKETS.len())].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// The bucket counts now.
    pub fn snapshot(&self) -> [u64; BUCKETS.len() + 1] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }

    /// The `q` quantile (0..1) of the observations in `now - before`, as the upper bound of
    /// its bucket in milliseconds; `None` with no observations.
    pub fn quantile_ms(now: &[u64], before: &[u64], q: f64) -> Option<f64> {
        let diff: Vec<u64> = now
            .iter()
            .zip(before)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let total: u64 = diff.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, n) in diff.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(BUCKETS.get(i).copied().unwrap_or(60.0) * 1000.0);
            }
        }
        None
    }
}

/// Request counters shared by frontends (sites), backends (services) and servers.
#[derive(Debug, Default)]
pub struct Counters {
    /// Response time (to the response headers) of finished requests.
    pub latency: Histogram,
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
    /// Responses cut by the client (it closed, or stopped reading for `timeouts.client`).
    pub client_aborts: AtomicU64,
    /// Responses cut by the server (its body broke, or stopped for `timeouts.server`).
    pub server_aborts: AtomicU64,
    /// Requests that found no usable server.
    pub no_server: AtomicU64,
    /// Requests refused by policy: deny rules, rate limits, allow-lists (HAProxy `dreq`).
    pub denied: AtomicU64,
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
        // A read first: the maximum rarely moves, and a read is not a locked operation.
        if now > self.max_current.load(Ordering::Relaxed) {
            self.max_current.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Counts one request finishing with `status`.
    pub fn leave(&self, status: u16, bytes_in: u64, bytes_out: u64, micros: u64) {
        self.current.fetch_sub(1, Ordering::Relaxed);
        self.record(status, bytes_in, bytes_out, micros);
    }

    /// Responses of one class: 1 for 1xx … 5 for 5xx, 6 for anything else.
    pub fn class(&self, class: usize) -> u64 {
        self.responses[class.saturating_sub(1).min(5)].load(Ordering::Relaxed)
    }

    /// Counts one TCP session ending (a session has no status; bytes were counted live).
    pub fn leave_session(&self, micros: u64) {
        self.current.fetch_sub(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.total_time_us.fetch_add(micros, Ordering::Relaxed);
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
        // Most requests carry no body: a locked add of zero costs as much as any other.
        if bytes_in != 0 {
            self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        }
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        self.total_time_us.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Refusal counters by kind (`deny`, `limit`) and rule name.
type Denials = HashMap<(&'static str, Arc<str>), Arc<AtomicU64>>;

/// Counter sets by kind and stable name.
type Families = HashMap<(Kind, Arc<str>), Arc<Counters>>;

/// Process-wide figures and the named counter families.
#[derive(Debug)]
pub struct Stats {
    /// When the process started.
    pub started: Instant,
    /// When the process started, Unix seconds.
    pub started_unix: u64,
    /// Client connections open now.
    pub connections: AtomicU64,
    /// Client connections accepted.
    pub connections_total: AtomicU64,
    /// Idle HTTP/1.1 keep-alive connections parked now (their buffers given back).
    pub parked: AtomicU64,
    /// TLS handshakes completed.
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_failures: AtomicU64,
    /// All requests, as a frontend total.
    pub frontend: Counters,
    families: Mutex<Families>,
    /// Requests refused by policy (deny rules), by (kind, name).
    denials: Mutex<Denials>,
    fronts: Mutex<Vec<Front>>,
    /// Recent snapshots for rates and "recent" percentiles (see [`Stats::sample`]).
    samples: Mutex<Samples>,
}

/// A listener the process config declares (a TCP front), for the stats page.
#[derive(Debug, Clone)]
pub struct Front {
    /// Listener name.
    pub name: Arc<str>,
    /// `tcp`.
    pub mode: &'static str,
    /// Bound addresses.
    pub bind: Vec<std::net::SocketAddr>,
    /// The service it relays to.
    pub service: Arc<str>,
    /// Connections allowed at once.
    pub limit: u64,
    /// Its FRONTEND counters (shared with the listener's sessions).
    pub counters: Arc<Counters>,
}

/// One snapshot: when, total requests, latency buckets per named counter set.
type Sample = (
    Instant,
    u64,
    HashMap<(Kind, Arc<str>), [u64; BUCKETS.len() + 1]>,
);

/// Snapshots taken every few seconds; the oldest one within the window is the baseline.
#[derive(Debug, Default)]
struct Samples {
    /// (when, total requests, latency buckets per named counter set)
    ring: std::collections::VecDeque<Sample>,
    /// Per named counter set: (when, requests) at the last sample, and the request rate
    /// (per second) between the last two samples and its highest since start (HAProxy's
    /// `rate` and `rate_max`, over the sampling interval rather than one second).
    rates: HashMap<(Kind, Arc<str>), Rate>,
    /// Per site and service: one point per sample over the last [`TREND`], for the
    /// page's plots (bounded: `TREND / 5 s + 1` points per site or service).
    trend: HashMap<(Kind, Arc<str>), std::collections::VecDeque<Point>>,
}

/// How far back the page's plots reach.
pub const TREND: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// One sample of a counter set, for trends.
#[derive(Debug, Clone, Copy)]
struct Point {
    at: Instant,
    requests: u64,
    errors: u64,
    buckets: [u64; BUCKETS.len() + 1],
}

/// Between two samples: requests per second, 5xx per second, p99 (ms, when any).
pub type TrendPoint = (f64, f64, Option<f64>);

/// One counter set's request rate, from the sampler.
#[derive(Debug, Clone, Copy)]
struct Rate {
    at: Instant,
    requests: u64,
    now: f64,
    max: f64,
}

/// How far back "recent" reaches on the stats page.
pub const RECENT: std::time::Duration = std::time::Duration::from_secs(60);

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
    /// A TCP listener or a passthrough name (HAProxy frontend in TCP mode).
    Listener,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            connections: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            tls_handshakes: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
            frontend: Counters::default(),
            families: Mutex::new(HashMap::new()),
            denials: Mutex::new(HashMap::new()),
            fronts: Mutex::new(Vec::new()),
            samples: Mutex::new(Samples::default()),
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

    /// The refusal counter of a deny rule (`kind` "deny"), created on first use; kept by
    /// name across reloads. Called when rules are installed, never per request.
    pub fn denial_counter(&self, kind: &'static str, name: &Arc<str>) -> Arc<AtomicU64> {
        let mut map = self.denials.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((kind, name.clone())).or_default().clone()
    }

    /// Every refusal counter, sorted by kind and name.
    pub fn denials(&self) -> Vec<(&'static str, Arc<str>, u64)> {
        let map = self.denials.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .map(|((k, n), c)| (*k, n.clone(), c.load(Ordering::Relaxed)))
            .collect();
        v.sort();
        v
    }

    /// Records a listener for the stats page (once, at start).
    pub fn add_front(&self, f: Front) {
        self.fronts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(f);
    }

    /// The listeners recorded with [`Stats::add_front`].
    pub fn fronts(&self) -> Vec<Front> {
        self.fronts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes a snapshot for rates and recent percentiles; called every few seconds by the
    /// stats listener's sampler, never on the request path.
    pub fn sample(&self) {
        let sets = self.snapshot();
        let latency: HashMap<_, _> = sets
            .iter()
            .map(|(k, n, c)| ((*k, n.clone()), c.latency.snapshot()))
            .collect();
        let total = self.frontend.requests.load(Ordering::Relaxed);
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for (k, n, c) in &sets {
            let requests = c.requests.load(Ordering::Relaxed);
            let fresh = Rate {
                at: now,
                requests,
                now: 0.0,
                max: 0.0,
            };
            if matches!(k, Kind::Site | Kind::Service) {
                let ring = s.trend.entry((*k, n.clone())).or_default();
                ring.push_back(Point {
                    at: now,
                    requests,
                    errors: c.class(5),
                    buckets: c.latency.snapshot(),
                });
                while ring
                    .front()
                    .is_some_and(|p| now.duration_since(p.at) > TREND)
                {
                    ring.pop_front();
                }
            }
            let r = s.rates.entry((*k, n.clone())).or_insert(fresh);
            let secs = now.duration_since(r.at).as_secs_f64();
            if secs > 0.0 {
                r.now = requests.saturating_sub(r.requests) as f64 / secs;
                r.max = r.max.max(r.now);
                (r.at, r.requests) = (now, requests);
            }
        }
        s.ring.push_back((now, total, latency));
        while s.ring.len() > 2
            && s.ring
                .front()
                .is_some_and(|(t, _, _)| now.duration_since(*t) > RECENT)
        {
            s.ring.pop_front();
        }
    }

    /// Requests per second over the sampled window.
    pub fn request_rate(&self) -> f64 {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        match (s.ring.front(), s.ring.back()) {
            (Some((t0, n0, _)), Some((t1, n1, _))) if t1 > t0 => {
                n1.saturating_sub(*n0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// Requests per second of one counter set between the last two samples, and the
    /// highest such rate since start (rounded up, as HAProxy shows whole numbers).
    pub fn rate(&self, kind: Kind, name: &Arc<str>) -> (u64, u64) {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        s.rates
            .get(&(kind, name.clone()))
            .map_or((0, 0), |r| (r.now.ceil() as u64, r.max.ceil() as u64))
    }

    /// The trend of a site or service over the last [`TREND`], oldest first.
    pub fn trend(&self, kind: Kind, name: &Arc<str>) -> Vec<TrendPoint> {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ring) = s.trend.get(&(kind, name.clone())) else {
            return Vec::new();
        };
        ring.iter()
            .zip(ring.iter().skip(1))
            .map(|(a, b)| {
                let secs = b.at.duration_since(a.at).as_secs_f64().max(0.001);
                (
                    b.requests.saturating_sub(a.requests) as f64 / secs,
                    b.errors.saturating_sub(a.errors) as f64 / secs,
                    Histogram::quantile_ms(&b.buckets, &a.buckets, 0.99),
                )
            })
            .collect()
    }

    /// p50 and p99 response time (ms) of one counter set over the sampled window.
    pub fn recent_latency(
        &self,
        kind: Kind,
        name: &Arc<str>,
        c: &Counters,
    ) -> (Option<f64>, Option<f64>) {
        let now = c.latency.snapshot();
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let before = s
            .ring
            .front()
            .and_then(|(_, _, m)| m.get(&(kind, name.clone())).copied())
            .unwrap_or([0; BUCKETS.len() + 1]);
        (
            Histogram::quantile_ms(&now, &before, 0.5),
            Histogram::quantile_ms(&now, &before, 0.99),
        )
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
