//! Every Prometheus metric name, once. Labels come only from the rules (site, route, pool,
//! service, colour, server, status class), never from raw hosts or paths, so the number
//! of series is bounded by the rules file.

/// Requests answered by the whole process, by status class (one series per class).
pub const REQUESTS: &str = "gatehouse_requests_total";
/// The levels counters are kept at, as HAProxy's exporter splits `haproxy_frontend_*`,
/// `haproxy_backend_*` and `haproxy_server_*`: each family belongs to one level, so `sum()`
/// over a family counts every request once. `site` is HAProxy's frontend, `service` its
/// backend; `listener` is a TCP front (sessions, not requests).
pub const LEVELS: [&str; 5] = ["site", "route", "service", "server", "listener"];
/// Per-level family suffixes: `gatehouse_<level>_<suffix>`.
pub mod per_level {
    /// Requests answered (`listener`: sessions ended), by status class.
    pub const REQUESTS: &str = "requests_total";
    /// TCP sessions ended (listener level).
    pub const SESSIONS: &str = "sessions_total";
    /// Request body bytes received (TCP: bytes from clients).
    pub const BYTES_IN: &str = "bytes_in_total";
    /// Response body bytes sent.
    pub const BYTES_OUT: &str = "bytes_out_total";
    /// Requests (sessions) in flight now: HAProxy's `scur`.
    pub const IN_FLIGHT: &str = "in_flight";
    /// Most in flight at once since start: HAProxy's `smax`.
    pub const IN_FLIGHT_MAX: &str = "in_flight_max";
    /// Response-time histogram (to the response headers), seconds.
    pub const RESPONSE_SECONDS: &str = "response_seconds";
    /// Connection errors to servers.
    pub const CONNECT_ERRORS: &str = "connect_errors_total";
    /// Bad or missing answers from servers.
    pub const RESPONSE_ERRORS: &str = "response_errors_total";
    /// Requests retried on another server.
    pub const REDISPATCHES: &str = "redispatches_total";
    /// Responses cut by the client (HAProxy's `cli_abrt`).
    pub const CLIENT_ABORTS: &str = "client_aborts_total";
    /// Responses cut by the server (HAProxy's `srv_abrt`).
    pub const SERVER_ABORTS: &str = "server_aborts_total";
    /// Requests that found no usable server.
    pub const NO_SERVER: &str = "no_server_total";
    /// Requests refused by policy (deny rules, rate limits, allow-lists): HAProxy's `dreq`.
    pub const DENIED: &str = "denied_requests_total";
}

/// The name of a per-level family: `family("service", per_level::REQUESTS)` is
/// `gatehouse_service_requests_total`.
pub fn family(level: &str, suffix: &str) -> String {
    format!("gatehouse_{level}_{suffix}")
}

/// Requests refused, by deny rule or rate limit (`kind`, `rule`).
pub const POLICY_DENIED: &str = "gatehouse_policy_denied_total";
/// Server up (1) or not (0) by health and admin state.
pub const SERVER_UP: &str = "gatehouse_server_up";
/// Failed health checks.
pub const CHECK_FAILURES: &str = "gatehouse_check_failures_total";
/// Pool slots in use.
pub const POOL_IN_USE: &str = "gatehouse_pool_slots_in_use";
/// Pool slot limit.
pub const POOL_SLOTS: &str = "gatehouse_pool_slots";
/// Requests waiting in a pool queue.
pub const POOL_QUEUED: &str = "gatehouse_pool_queued";
/// Requests refused because the pool queue was full.
pub const POOL_QUEUE_FULL: &str = "gatehouse_pool_queue_full_total";
/// Requests that waited past the queue timeout.
pub const POOL_QUEUE_TIMEOUTS: &str = "gatehouse_pool_queue_timeouts_total";
/// Requests refused because their client held its share of the pool (429).
pub const POOL_OVER_SHARE: &str = "gatehouse_pool_over_share_total";
/// Client connections open.
pub const CONNECTIONS: &str = "gatehouse_connections";
/// Idle HTTP/1.1 keep-alive connections parked (holding no buffers).
pub const CONNECTIONS_PARKED: &str = "gatehouse_connections_parked";
/// Server connections retired for bytes after a response's end.
pub const UPSTREAM_STRAY: &str = "gatehouse_upstream_stray_retired_total";
/// Client connections accepted.
pub const CONNECTIONS_TOTAL: &str = "gatehouse_connections_total";
/// TLS handshakes completed.
pub const TLS_HANDSHAKES: &str = "gatehouse_tls_handshakes_total";
/// TLS handshakes failed.
pub const TLS_FAILURES: &str = "gatehouse_tls_handshake_failures_total";
/// Rules generation serving.
pub const GENERATION: &str = "gatehouse_rules_generation";
/// Reload attempts by result.
pub const RELOADS: &str = "gatehouse_reloads_total";
/// Live colour of a service (1 for the live colour's label).
pub const LIVE_COLOUR: &str = "gatehouse_service_live_colour";
/// Resident memory, bytes.
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
/// CPU seconds used.
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
/// Open file descriptors.
pub const PROCESS_FDS: &str = "process_open_fds";
/// Process start, Unix seconds.
pub const PROCESS_START: &str = "process_start_time_seconds";
/// Addresses a server's DNS name resolves to now, by name.
pub const DNS_ADDRESSES: &str = "gatehouse_dns_addresses";
/// 1 while the last lookup of a server's DNS name failed, by name.
pub const DNS_FAILING: &str = "gatehouse_dns_failing";
/// When each certificate expires, Unix seconds, by file and first name.
pub const CERT_NOT_AFTER: &str = "gatehouse_certificate_not_after_seconds";
