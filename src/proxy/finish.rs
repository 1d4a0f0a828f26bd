//! The last phase: when the response body ends (or is dropped), release the slot and the
//! server, count the request once and write its one access-log line.

use super::body::End;
use super::conn::{ConnInfo, InFlight, stream};
use super::decide::Decision;
use super::error::ProxyError;
use super::{Hold, Shared};
use crate::accesslog::{self, Entry};
use crate::body::{BodyProgress, ClientBody};
use crate::config::AccessLog;
use crate::deadline::Stall;
use crate::generation::Generation;
use crate::health::ServerGuard;
use crate::pool::PoolPermit;
use crate::stats::{Counters, Histogram, Stats};
use bytes::Bytes;
use http::{Request, Version};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

/// What is known about a request as it goes; logged and counted once when its body ends.
pub struct Record {
    pub(super) shared_log: AccessLog,
    pub(super) generation: Arc<Generation>,
    pub(super) stats: Arc<Stats>,
    pub(super) start: Instant,
    pub(super) tls_time: Duration,
    pub(super) client: std::net::IpAddr,
    /// The client connection's source port (the access log's `%cp`).
    pub(super) client_port: u16,
    /// Whether the client connection is TLS.
    pub(super) tls: bool,
    pub(super) method: http::Method,
    pub(super) version: Version,
    /// Only while the access log is on: each name is a reference count to take and drop.
    pub(super) names: Option<Box<Names>>,
    pub(super) service_index: Option<usize>,
    pub(super) colour: &'static str,
    pub(super) server_id: Option<usize>,
    pub(super) status: u16,
    pub(super) wait: Duration,
    pub(super) first_byte: Duration,
    pub(super) termination: &'static str,
    pub(super) backup: Option<Bytes>,
    pub(super) progress: Option<Arc<BodyProgress>>,
    pub(super) permit: Option<PoolPermit>,
    pub(super) server_guard: Option<ServerGuard>,
    pub(super) site_index: Option<usize>,
    pub(super) route_index: Option<usize>,
    /// Keeps the connection from parking until the response has ended.
    pub(super) _in_flight: InFlight,
    /// Watches the server's side of the body, made at its first wait (most never wait).
    pub(super) stall: Option<Box<Stall>>,
    /// HTTP/2: a frame went to the writer, which has not come back for the next.
    pub(super) owed: bool,
    /// A rate limit passed: its index and the requests left in its burst (for headers).
    pub(super) rate: Option<(u32, u32)>,
    /// `X-Request-ID` (when on): sent to the server, returned to the client, logged.
    pub(super) request_id: Option<http::HeaderValue>,
}

/// What the access log names a request by (`-` for what it never reached).
#[derive(Default)]
pub struct Names {
    pub(super) path: Box<str>,
    pub(super) host: Option<Arc<str>>,
    pub(super) site: Option<Arc<str>>,
    pub(super) route: Option<Arc<str>>,
    pub(super) pool: Option<Arc<str>>,
    pub(super) service: Option<Arc<str>>,
    pub(super) server: Option<Arc<str>>,
}

/// One more request in flight in a counter set (`scur`, and `smax` when it grows).
fn enter(c: Option<&Arc<Counters>>) {
    if let Some(c) = c {
        c.enter();
    }
}

/// One request fewer in flight in a counter set.
fn leave(c: Option<&Arc<Counters>>) {
    if let Some(c) = c {
        c.current.fetch_sub(1, Ordering::Relaxed);
    }
}

fn or_dash(name: &Option<Arc<str>>) -> &str {
    name.as_deref().unwrap_or("-")
}

impl Record {
    pub(super) fn new(
        shared: &Shared,
        conn: &ConnInfo,
        req: &Request<ClientBody>,
        generation: Arc<Generation>,
    ) -> Self {
        shared.stats.frontend.enter();
        Record {
            shared_log: shared.access_log,
            generation,
            stats: shared.stats.clone(),
            start: Instant::now(),
            tls_time: conn.tls_time,
            client: conn.peer.ip(),
            client_port: conn.peer.port(),
            tls: conn.tls,
            method: req.method().clone(),
            version: req.version(),
            names: (shared.access_log != AccessLog::Off).then(|| {
                Box::new(Names {
                    path: req.uri().path().into(),
                    ..Names::default()
                })
            }),
            service_index: None,
            colour: "-",
            server_id: None,
            status: 0,
            wait: Duration::ZERO,
            first_byte: Duration::ZERO,
            termination: "-",
            backup: None,
            rate: None,
            request_id: shared.request_id.then(|| {
                super::request_id::for_request(
                    req.headers(),
                    shared.trusted.contains(conn.peer.ip()),
                )
            }),
            progress: None,
            permit: None,
            server_guard: None,
            site_index: None,
            route_index: None,
            _in_flight: InFlight::enter(&conn.in_flight),
            stall: None,
            owed: false,
        }
    }

    /// Notes what the decision found: host, site and route (and the client address once a
    /// route applies, as before the decision was a value of its own).
    pub(super) fn note(&mut self, d: &Decision<'_>, host: Option<&str>) {
        if let Some(h) = host {
            self.log(|n| n.host = Some(h.into()));
        }
        let Some(site) = d.site else { return };
        self.log(|n| n.site = Some(site.name.clone()));
        self.site_index = Some(site.index);
        enter(self.generation.sites.get(site.index));
        if let Some((i, route)) = d.route {
            self.route_index = Some(i);
            enter(
                self.generation
                    .routes
                    .get(site.index)
                    .and_then(|r| r.get(i)),
            );
            self.log(|n| n.route = Some(route.name.clone()));
            self.client = d.client.ip;
        }
    }

    /// Notes the service this request is sent to: in flight there until it finishes.
    pub(super) fn set_service(&mut self, i: usize) {
        self.service_index = Some(i);
        enter(self.generation.services.get(i));
    }

    /// Notes the server this request is sent to (again on a retry): in flight on that
    /// server, and no longer on the one it left.
    pub(super) fn set_server(&mut self, id: usize) {
        if self.server_id == Some(id) {
            return;
        }
        leave(
            self.server_id
                .and_then(|old| self.generation.servers.get(old)),
        );
        self.server_id = Some(id);
        enter(self.generation.servers.get(id));
    }

    /// Ends this request's time in flight (HAProxy's `scur`) at every level it entered.
    fn leave_levels(&self) {
        let g = &self.generation;
        let site = self.site_index;
        leave(site.and_then(|s| g.sites.get(s)));
        leave(site.and_then(|s| g.routes.get(s)?.get(self.route_index?)));
        leave(self.service_index.and_then(|i| g.services.get(i)));
        leave(self.server_id.and_then(|i| g.servers.get(i)));
    }

    /// Notes a name for the access log; does nothing (takes no reference) while it is off.
    pub(super) fn log(&mut self, note: impl FnOnce(&mut Names)) {
        if let Some(n) = self.names.as_deref_mut() {
            note(n);
        }
    }
}

impl Hold for Record {
    #[inline]
    fn polled(&mut self) {
        if self.version == Version::HTTP_2 {
            self._in_flight.polled(std::mem::take(&mut self.owed));
            stream::note(stream::MOVED);
        }
    }

    #[inline]
    fn handed(&mut self) {
        if self.version == Version::HTTP_2 && !self.owed {
            self.owed = true;
            self._in_flight.handed();
            stream::note(stream::OWED);
        }
    }

    fn poll_server_stalled(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.server_id.is_none() {
            return Poll::Pending;
        }
        let window = self._in_flight.server_window();
        let stall = self
            .stall
            .get_or_insert_with(|| Box::new(Stall::new(window)));
        stall.poll_stalled(cx)
    }

    #[inline]
    fn server_moved(&mut self) {
        if let Some(s) = self.stall.as_deref_mut() {
            s.progress();
        }
    }

    fn finish(&mut self, bytes_out: u64, end: End) {
        if std::mem::take(&mut self.owed) {
            self._in_flight.polled(true);
        }
        self.permit.take();
        self.server_guard.take();
        if end != End::Complete {
            self.note_cut(end);
        }
        let total = self.start.elapsed();
        let micros = total.as_micros() as u64;
        let bytes_in = self
            .progress
            .as_ref()
            .map_or(0, |p| p.bytes.load(Ordering::Relaxed));
        // Response time: to the server's response headers when forwarded, else the total.
        let response_us = if self.server_id.is_some() {
            (self.wait + self.first_byte).as_micros() as u64
        } else {
            micros
        };
        self.stats
            .frontend
            .leave(self.status, bytes_in, bytes_out, micros);
        self.leave_levels();
        let g = &self.generation;
        let route = self
            .site_index
            .zip(self.route_index)
            .and_then(|(s, r)| g.routes.get(s).and_then(|v| v.get(r)));
        // Latency is kept where it is shown (site, service, server: the stats page and
        // Prometheus), with the bucket found once.
        let bucket = Histogram::bucket(response_us);
        let timed = [
            self.site_index.and_then(|i| g.sites.get(i)),
            self.service_index.and_then(|i| g.services.get(i)),
            self.server_id.and_then(|i| g.servers.get(i)),
        ];
        for c in timed.into_iter().flatten() {
            c.record(self.status, bytes_in, bytes_out, micros);
            c.latency.observe_at(bucket, response_us);
        }
        if let Some(c) = route {
            c.record(self.status, bytes_in, bytes_out, micros);
        }
        let Some(n) = self.names.as_deref() else {
            return;
        };
        let version = match self.version {
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        accesslog::write(
            self.shared_log,
            &Entry {
                client: self.client,
                client_port: self.client_port,
                tls: self.tls,
                connections: self.stats.connections.load(Ordering::Relaxed),
                method: self.method.as_str(),
                host: or_dash(&n.host),
                path: &n.path,
                version,
                status: self.status,
                bytes_in,
                bytes_out,
                site: or_dash(&n.site),
                route: or_dash(&n.route),
                pool: or_dash(&n.pool),
                service: or_dash(&n.service),
                colour: self.colour,
                server: or_dash(&n.server),
                tls_ms: self.tls_time.as_millis() as u64,
                wait_ms: self.wait.as_millis() as u64,
                first_byte_ms: self.first_byte.as_millis() as u64,
                total_ms: total.as_millis() as u64,
                termination: self.termination,
                request_id: self
                    .request_id
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-"),
            },
        );
    }
}

impl Record {
    /// Whether the client stalled: its connection, or (HTTP/2) this stream alone.
    fn client_stalled(&self) -> bool {
        self._in_flight.client_stalled() || (self.version == Version::HTTP_2 && stream::cutting())
    }

    /// A response cut short: who cut it goes to the log and to the abort counters of
    /// the service and server (HAProxy's `cli_abrt` / `srv_abrt`).
    fn note_cut(&mut self, end: End) {
        let by_client = end == End::Dropped;
        if self.termination == "-" {
            self.termination = match end {
                End::Dropped if self.client_stalled() => "client_timeout",
                End::Dropped => "client_aborted",
                End::ServerStalled => "server_timeout",
                _ => "server_aborted",
            };
        }
        let g = &self.generation;
        let counted = [
            self.service_index.and_then(|i| g.services.get(i)),
            self.server_id.and_then(|i| g.servers.get(i)),
        ];
        for c in counted.into_iter().flatten() {
            let n = if by_client {
                &c.client_aborts
            } else {
                c.response_errors.fetch_add(1, Ordering::Relaxed);
                &c.server_aborts
            };
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counts a request that ended in `e` against the server or service it reached.
pub(super) fn count_error(g: &Generation, rec: &Record, e: &ProxyError) {
    if matches!(
        e,
        ProxyError::Denied(_)
            | ProxyError::DeniedBy(..)
            | ProxyError::RateLimited(_)
            | ProxyError::Forbidden
    ) {
        count_denied(g, rec, e);
    }
    let counters = match (rec.server_id, rec.service_index) {
        (Some(id), _) => g.servers.get(id),
        (None, Some(i)) => g.services.get(i),
        _ => None,
    };
    if let Some(c) = counters {
        match e {
            ProxyError::Connect(_) => c.connect_errors.fetch_add(1, Ordering::Relaxed),
            ProxyError::NoServer => c.no_server.fetch_add(1, Ordering::Relaxed),
            ProxyError::Timeout | ProxyError::Upstream(_) | ProxyError::BadUpgrade(_) => {
                c.response_errors.fetch_add(1, Ordering::Relaxed)
            }
            _ => 0,
        };
    }
}

/// A request refused by policy (a deny route or rule, a limit, an allow-list; HAProxy's
/// `http-request deny`): the site's and route's `dreq`, and the rule's or limit's
/// own counter.
fn count_denied(g: &Generation, rec: &Record, e: &ProxyError) {
    let one = |c: Option<&Arc<Counters>>| {
        if let Some(c) = c {
            c.denied.fetch_add(1, Ordering::Relaxed);
        }
    };
    let site = rec.site_index;
    one(site.and_then(|s| g.sites.get(s)));
    one(site.and_then(|s| g.routes.get(s)?.get(rec.route_index?)));
    let hits = match e {
        ProxyError::DeniedBy(_, i) => g.deny_hits.get(*i),
        ProxyError::RateLimited(r) => g.limit_hits.get(r.limit),
        _ => None,
    };
    if let Some(h) = hits {
        h.fetch_add(1, Ordering::Relaxed);
    }
    rec.stats.frontend.denied.fetch_add(1, Ordering::Relaxed);
}
