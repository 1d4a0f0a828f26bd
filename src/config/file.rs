//! The process config as ops write it (`config/*.yaml`): read once at start.
//!
//! Listeners, certificates, the stats listener, timeouts, limits and where the rules
//! live. Unknown keys are refused so a typo never silently falls back to a default.

use crate::units::Scalar;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// The whole config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The rules file or directory, relative to this file.
    pub rules: Spanned<String>,
    /// Where the proxy listens.
    pub listeners: ListenersFile,
    /// Certificates for the HTTPS listeners.
    #[serde(default)]
    pub tls: Option<TlsFile>,
    /// The stats listener (`/healthz`, `/stats`, `/metrics`).
    #[serde(default)]
    pub stats: Option<StatsFile>,
    /// Peers (other proxies) whose `X-Forwarded-For` is believed; nobody else's is.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Timeouts (all have safe defaults).
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    /// Size and count limits (all have safe defaults).
    #[serde(default)]
    pub limits: LimitsFile,
    /// The access log: `text` (default), `haproxy` (HAProxy's httplog, for halog),
    /// `json` (one object per line) or `off`.
    #[serde(default)]
    pub access_log: Option<Spanned<String>>,
    /// Where it goes: `stderr` (default; the journal under systemd), `syslog` (`/dev/log`),
    /// `syslog:PATH` (another syslog socket), or a file path (reopened on SIGUSR1).
    #[serde(default)]
    pub access_log_to: Option<String>,
    /// `X-Request-ID` on every request (made here unless a trusted proxy sent one), sent
    /// to the server, returned to the client and logged (default: false, as nginx and
    /// HAProxy add one only when told; the shipped config turns it on).
    #[serde(default)]
    pub request_id: bool,
    /// Worker threads (default: one per core).
    #[serde(default)]
    pub workers: Option<usize>,
    /// Rate limits shared with other instances: `redis://host:port` (Redis or Valkey).
    /// Without it, each instance counts alone.
    #[serde(default)]
    pub limits_store: Option<String>,
    /// What the listeners do with new connections during `timeouts.drain_delay`:
    /// `accept` (default) or `hold`.
    #[serde(default)]
    pub drain_delay_mode: super::DelayMode,
    /// Unix socket where this process offers its listening sockets to its successor
    /// (`gatehouse run --upgrade`), relative to this file. Without it, no handover.
    #[serde(default)]
    pub upgrade_socket: Option<String>,
    /// How servers named by DNS (`addr: web-ui:5000` in the rules) are resolved.
    #[serde(default)]
    pub dns: Option<DnsFile>,
    /// The runtime API (HAProxy's "stats socket"): a Unix socket for `socat`, hatop,
    /// Ansible's haproxy module and prometheus-haproxy-exporter.
    #[serde(default)]
    pub runtime_socket: Option<Spanned<RuntimeSocketFile>>,
    /// Where server states set by ops (MAINT, DRAIN, weights) and last health are kept,
    /// so a restart or an upgrade starts from them (HAProxy's `server-state-file`).
    #[serde(default)]
    pub state_file: Option<String>,
    /// Where every change (reloads with what changed, admin and socket actions, switches)
    /// is appended as one JSON line.
    #[serde(default)]
    pub audit_log: Option<String>,
}

/// The runtime socket: where, and who may use it (its file mode and owner are the access
/// control, as for HAProxy's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSocketFile {
    /// Socket path, relative to this file.
    pub path: String,
    /// File mode, octal (default `600`: the proxy's user only).
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    /// Owner, a user name or uid (default: the proxy's user).
    #[serde(default)]
    pub user: Option<String>,
    /// Group, a group name or gid (default: the proxy's group).
    #[serde(default)]
    pub group: Option<String>,
}

/// The DNS client for servers named by host.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsFile {
    /// Name servers to ask, `ip` or `ip:port` (default: the system's, from
    /// `/etc/resolv.conf`, with `/etc/hosts`).
    #[serde(default)]
    pub nameservers: Vec<Spanned<String>>,
    /// Longest time between two lookups of a name (default 10s); a shorter TTL asks
    /// sooner (at most once a second).
    #[serde(default)]
    pub interval: Option<Spanned<Scalar>>,
    /// One lookup's timeout (default 2s).
    #[serde(default)]
    pub timeout: Option<Spanned<Scalar>>,
}

/// HTTPS and plain-HTTP listeners.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenersFile {
    /// TLS-terminating listeners.
    #[serde(default)]
    pub https: Option<HttpsFile>,
    /// Plain HTTP listeners: redirect to HTTPS (ACME challenges excepted).
    #[serde(default)]
    pub http: Option<HttpFile>,
    /// TCP (layer 4) listeners, each relaying connections to one `mode: tcp` service of the
    /// rules (e.g. an OpenSearch or RabbitMQ cluster).
    #[serde(default)]
    pub tcp: Vec<Spanned<TcpFile>>,
}

/// One TCP listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpFile {
    /// Name used in logs and stats (a FRONTEND row).
    pub name: Spanned<String>,
    /// Addresses to bind, `ip:port`.
    pub bind: Vec<Spanned<String>>,
    /// The rules' `mode: tcp` service that takes the connections (looked up at each
    /// reload, so its servers and colour follow the rules).
    pub service: Spanned<String>,
    /// Connections open at once on this listener (default 10000); beyond it new ones
    /// wait in the kernel backlog.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// A connection with no byte either way for this long is closed (default 1h).
    #[serde(default)]
    pub idle_timeout: Option<Spanned<Scalar>>,
    /// Peers that must send a PROXY protocol header (see the HTTPS listener's).
    #[serde(default)]
    pub proxy_protocol_from: Vec<Spanned<String>>,
    /// Only clients in these networks (CIDRs) are relayed; the rest are closed at once
    /// (default: everyone). Judged on the client a PROXY header conveys, if one does.
    #[serde(default)]
    pub allow_from: Vec<Spanned<String>>,
    /// Sessions at once from one client address (default: `limits.
    /// max_connections_per_client`); beyond it the connection is closed at once.
    #[serde(default)]
    pub max_connections_per_client: Option<usize>,
}

/// TLS-terminating listeners.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsFile {
    /// Addresses to bind, `ip:port`.
    pub bind: Vec<Spanned<String>>,
    /// Peers that must send a PROXY protocol header (v1 or v2) carrying the real client
    /// address (an outer proxy). Anyone else sending one is refused.
    #[serde(default)]
    pub proxy_protocol_from: Vec<Spanned<String>>,
}

/// Plain HTTP listeners.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    /// Addresses to bind, `ip:port`.
    pub bind: Vec<Spanned<String>>,
    /// Port written in the `https://` redirect (default 443, which is left out of the URL).
    #[serde(default)]
    pub redirect_port: Option<u16>,
    /// `true` (default): answer 308 to HTTPS. `false`: proxy plain HTTP like HTTPS (for an
    /// inner tier behind another TLS terminator, or benchmarks).
    #[serde(default)]
    pub redirect: Option<bool>,
    /// Peers that must send a PROXY protocol header (see the HTTPS listener's).
    #[serde(default)]
    pub proxy_protocol_from: Vec<Spanned<String>>,
}

/// Certificates, chosen by SNI from the names in each certificate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// Certificate chains and keys (PEM); the first is the default for clients without SNI.
    pub certificates: Vec<Spanned<CertFile>>,
}

/// One certificate chain and its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    /// PEM chain, leaf first.
    pub cert: Spanned<String>,
    /// PEM private key.
    pub key: Spanned<String>,
}

/// The stats listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsFile {
    /// Address to bind, `ip:port`.
    pub bind: Spanned<String>,
    /// Networks allowed to read it (default: everyone who can reach the address).
    #[serde(default)]
    pub allow_from: Vec<Spanned<String>>,
    /// Basic-auth user and password for the stats listener (`/healthz` stays open).
    #[serde(default)]
    pub auth: Option<StatsAuthFile>,
    /// Allow admin actions (server MAINT/DRAIN/READY) from the page; needs `auth`.
    #[serde(default)]
    pub admin: bool,
}

/// Basic-auth credentials.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsAuthFile {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

/// Timeouts; each has a default a production edge can live with.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    /// TLS handshake (default 10s).
    pub handshake: Option<Spanned<Scalar>>,
    /// Client request headers, slowloris guard (default 10s).
    pub request_header: Option<Spanned<Scalar>>,
    /// Idle client keep-alive connection (default 60s).
    pub idle: Option<Spanned<Scalar>>,
    /// Connecting to a server (default 3s).
    pub connect: Option<Spanned<Scalar>>,
    /// Server's first response byte (default 60s).
    pub response: Option<Spanned<Scalar>>,
    /// A client that takes no byte of a response (or, on HTTP/2, of anything written to
    /// it) for this long loses the exchange: HAProxy's `timeout client` (default 60s).
    pub client: Option<Spanned<Scalar>>,
    /// A server that sends no byte of a response body for this long: the response is
    /// cut and counted against it, HAProxy's `timeout server` (default 60s).
    pub server: Option<Spanned<Scalar>>,
    /// Idle keep-alive connection to a server (default 60s).
    pub upstream_idle: Option<Spanned<Scalar>>,
    /// How long in-flight requests may finish at shutdown (default 30s).
    pub drain: Option<Spanned<Scalar>>,
    /// Inactivity on an upgraded (WebSocket) connection (default 1h).
    pub tunnel: Option<Spanned<Scalar>>,
    /// At shutdown, how long just-accepted connections may still send their first
    /// request before idle connections are closed (default 1s).
    pub grace: Option<Spanned<Scalar>>,
    /// On SIGTERM, how long `/healthz` answers 503 while the listeners still accept,
    /// before the drain starts: time for keepalived, a balancer's health check or DNS to
    /// move new traffic away (default 0s: drain at once).
    pub drain_delay: Option<Spanned<Scalar>>,
}

/// Limits that bound memory per connection and per process.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Largest request header block (default 16KiB; 431 beyond it).
    pub max_header_bytes: Option<Spanned<Scalar>>,
    /// Most request headers (default 100; 431 beyond it).
    pub max_headers: Option<usize>,
    /// Client connections open at once per process (default 20000).
    pub max_connections: Option<usize>,
    /// Idle keep-alive connections kept per server and worker (default 1024; each closes
    /// after `timeouts.upstream_idle`). HTTP/2 clients multiplex many requests, each needing
    /// its own HTTP/1.1 server connection: a small pool makes them reconnect per request.
    pub upstream_idle_per_server: Option<usize>,
    /// Longest request URI (default 8KiB; 414 beyond it).
    pub max_uri_bytes: Option<Spanned<Scalar>>,
    /// Client connections at once from one address (default 1000; beyond it the
    /// connection is closed at once).
    pub max_connections_per_client: Option<usize>,
    /// TLS handshakes in progress at once (default 1024): a handshake flood waits in
    /// the kernel backlog instead of taking every core.
    pub max_handshakes: Option<usize>,
    /// TLS handshakes in progress at once from one client address (default 32; beyond
    /// it a handshake waits for one of that address's own), so one address cannot hold
    /// every handshake slot.
    pub max_handshakes_per_client: Option<usize>,
}
