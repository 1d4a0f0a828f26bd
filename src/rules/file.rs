//! The rules file as ops write it: a serde mirror whose doc comments are the manual.
//!
//! Unknown keys are refused everywhere (`deny_unknown_fields`) so a typo is an error
//! with a line and column, never a silently ignored setting. Values that later checks
//! need to point at are wrapped in `Spanned`.

use crate::units::Scalar;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

/// One rules file. A rules directory may hold several; their sections are merged.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// Named lists of CIDRs, e.g. `campus: [155.198.0.0/16, 2001:630:12::/48]`.
    #[serde(default)]
    pub networks: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
    /// Traffic classes: `static`, `app`, `files`, each with its own slots and queue.
    #[serde(default)]
    pub pools: BTreeMap<String, Spanned<PoolFile>>,
    /// Backend services with a blue and a green server list and which colour is live.
    #[serde(default)]
    pub services: BTreeMap<String, Spanned<ServiceFile>>,
    /// Sites chosen by Host, each with ordered routes.
    #[serde(default)]
    pub sites: Vec<Spanned<SiteFile>>,
    /// The site that serves hosts no site names (otherwise such requests get 404).
    #[serde(default)]
    pub default_site: Option<Spanned<String>>,
    /// Replacement HTML pages for the proxy's own error responses, by status code.
    #[serde(default)]
    pub error_pages: BTreeMap<u16, Spanned<String>>,
    /// TLS names passed through untouched to a `mode: tcp` service (the service keeps its
    /// own certificate): the HTTPS listeners peek at the ClientHello's SNI and, for these
    /// names, relay the bytes instead of terminating.
    #[serde(default)]
    pub passthrough: Vec<Spanned<PassthroughFile>>,
    /// Named lists read from plain files (one entry a line, `#` starts a comment), reloaded
    /// with the rules and whenever the list file itself changes.
    #[serde(default)]
    pub lists: BTreeMap<String, Spanned<ListFile>>,
    /// Requests refused on every site before routing, tried in order (first match answers).
    #[serde(default)]
    pub deny: Vec<Spanned<DenyFile>>,
    /// Named rate limits, attached to sites or routes with `limit: NAME`.
    #[serde(default)]
    pub limits: BTreeMap<String, Spanned<LimitFile>>,
}

/// A list kept in a file of its own. Exactly one of the keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListFile {
    /// Networks (CIDRs or single addresses), one a line: the list's name can be used
    /// wherever a network's can (`allow_from`, `per_client_in`, `from`).
    #[serde(default)]
    pub networks: Option<Spanned<String>>,
    /// User-agent patterns, one a line, matched as case-insensitive substrings
    /// (`agents:` in deny rules, `in_list:` in header conditions).
    #[serde(default)]
    pub agents: Option<Spanned<String>>,
}

/// A deny rule: requests meeting every condition get `status` and `page`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyFile {
    /// Name used in logs, stats and `explain`.
    pub name: Spanned<String>,
    /// The client is in one of these networks (or network lists).
    #[serde(default)]
    pub from: Option<Vec<Spanned<String>>>,
    /// The `User-Agent` contains an entry of this agents list.
    #[serde(default)]
    pub agents: Option<Spanned<String>>,
    /// Header conditions, by header name (see [`HeaderTestFile`]).
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<HeaderTestFile>>,
    /// The answer's status (default 403); 429 tells crawlers to slow down.
    #[serde(default)]
    pub status: Option<Spanned<u16>>,
    /// HTML page sent with it (default: the error page for the status).
    #[serde(default)]
    pub page: Option<Spanned<String>>,
}

/// One header condition. Exactly one of the keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderTestFile {
    /// `true`: the header is sent; `false`: it is not.
    #[serde(default)]
    pub present: Option<bool>,
    /// A value equals this (ASCII case ignored).
    #[serde(default)]
    pub equals: Option<String>,
    /// A value contains this (ASCII case ignored).
    #[serde(default)]
    pub contains: Option<String>,
    /// A value matches this regular expression (unanchored; `(?i)` ignores case).
    #[serde(default)]
    pub regex: Option<String>,
    /// A value contains an entry of this agents list.
    #[serde(default)]
    pub in_list: Option<String>,
}

/// A rate limit (GCRA: a steady rate with a burst, as nginx's `limit_req`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitFile {
    /// Requests per period: `20/s`, `60/min`, `2000/h`.
    pub rate: Spanned<String>,
    /// Requests allowed at once after a quiet spell (default: the rate's count).
    #[serde(default)]
    pub burst: Option<Spanned<u32>>,
    /// What is counted: `client` (the address; IPv6 by its /64), `client/24` (IPv4 /24,
    /// IPv6 /64), `client/24/48` (and IPv6 /48), or `header:NAME` (its value; requests
    /// without it by client).
    #[serde(default)]
    pub by: Option<Spanned<String>>,
    /// Distinct clients (keys) tracked at once, 16 bytes each (default 65536); when
    /// full, the quietest one is forgotten.
    #[serde(default)]
    pub tracked: Option<Spanned<u32>>,
}

/// Header edits for one direction.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEditsFile {
    /// Headers replaced (any earlier value removed).
    #[serde(default)]
    pub set: BTreeMap<String, Spanned<String>>,
    /// Headers appended.
    #[serde(default)]
    pub add: BTreeMap<String, Spanned<String>>,
    /// Headers removed (e.g. `X-Session-ID` from responses).
    #[serde(default)]
    pub remove: Vec<Spanned<String>>,
}

/// Header rules of a site or route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesFile {
    /// On requests, before they go to a server.
    #[serde(default)]
    pub request: Option<Spanned<HeaderEditsFile>>,
    /// On responses, before they go to the client.
    #[serde(default)]
    pub response: Option<Spanned<HeaderEditsFile>>,
}

/// A redirect answered by a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectFile {
    /// The target, with `{host}`, `{path}` and `{query}` (`?` and the query, or nothing).
    pub to: Spanned<String>,
    /// 301, 302, 307 or 308 (default 301).
    #[serde(default)]
    pub status: Option<Spanned<u16>>,
}

/// SNI names relayed without terminating TLS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughFile {
    /// Name used in logs and stats.
    pub name: Spanned<String>,
    /// SNI patterns: `pass.example.org`, `*.example.org` or `pass.*`.
    pub hosts: Vec<Spanned<String>>,
    /// The `mode: tcp` service whose servers terminate the TLS themselves.
    pub service: Spanned<String>,
    /// Only clients from these named networks; others' connections are closed.
    #[serde(default)]
    pub allow_from: Option<Vec<Spanned<String>>>,
}

/// What a service speaks.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// HTTP requests from routes (default).
    #[default]
    Http,
    /// Raw TCP connections from a TCP listener or a passthrough name.
    Tcp,
}

/// A traffic class: requests in flight at once, and how many may wait for a slot.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    /// Requests in flight at once across the pool's servers.
    pub slots: u32,
    /// How many requests may wait for a slot; beyond that, 503 at once.
    #[serde(default)]
    pub queue: u32,
    /// How long a request may wait in the queue before it gets 503 and Retry-After.
    #[serde(default)]
    pub queue_timeout: Option<Spanned<Scalar>>,
    /// Balancing for requests of this class (overrides the service's); the shipped
    /// `files` pool uses `leastconn`, so long downloads spread by load, not by turn.
    #[serde(default)]
    pub balance: Option<Balance>,
    /// Slots one client address may hold at once (default: a quarter of `slots`, at
    /// least 1); its excess waits for one of its own requests to end, then gets 429.
    #[serde(default)]
    pub per_client: Option<Spanned<u32>>,
    /// A larger (or smaller) share for clients in these networks (a campus NAT, an outer
    /// proxy: many users behind one address), by network name.
    #[serde(default)]
    pub per_client_in: BTreeMap<String, Spanned<u32>>,
}

/// How a server is chosen among the usable ones.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Weighted round robin (default).
    #[default]
    Roundrobin,
    /// Fewest requests in flight (ties by weight).
    Leastconn,
    /// Consistent hash of the client address: a client sticks to a server.
    HashSource,
    /// Consistent hash of the path: a URI sticks to a server (cache locality).
    HashUri,
}

/// Active health checks for a service's servers (like HAProxy's `check inter rise fall`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    /// HTTP path to GET; without it, a TCP connect is the check.
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    /// Port to check instead of the server's own (e.g. OpenSearch's HTTP port 9200 for
    /// `/_cluster/health`, RabbitMQ's management port 15672 for an AMQP node).
    #[serde(default)]
    pub port: Option<Spanned<u16>>,
    /// Status, or list of statuses, that count as healthy (default: any 2xx or 3xx).
    #[serde(default)]
    pub expect: Option<Spanned<Expect>>,
    /// `GET` (default), `HEAD` or `OPTIONS` (InvenioRDM's `HEAD /ping`).
    #[serde(default)]
    pub method: Option<Spanned<String>>,
    /// The `Host` header the check sends (default: the server's address), for servers
    /// that route by name.
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    /// `drain`: a check answering 404 drains the server (no new requests, in-flight ones
    /// finish) until a check passes again; HAProxy's `http-check disable-on-404`, for
    /// taking a server out from the server itself during a deploy.
    #[serde(default)]
    pub on_404: Option<Spanned<On404>>,
    /// Time between checks (default 2s; ±10 % jitter so checks never march in step).
    #[serde(default)]
    pub interval: Option<Spanned<Scalar>>,
    /// How long one check may take (default 1s).
    #[serde(default)]
    pub timeout: Option<Spanned<Scalar>>,
    /// Passing checks in a row that bring a DOWN server UP (default 2).
    #[serde(default)]
    pub rise: Option<u32>,
    /// Failing checks (or failed connects) in a row that take an UP server DOWN (default 3).
    #[serde(default)]
    pub fall: Option<u32>,
}

/// Healthy statuses: one, or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Expect {
    /// One status.
    One(u16),
    /// Any of these.
    Any(Vec<u16>),
}

/// What a 404 from a health check means.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum On404 {
    /// Drain the server.
    Drain,
}

/// The two colours of a blue/green deployment.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    /// The blue stack.
    Blue,
    /// The green stack.
    Green,
}

/// A backend service: the same application deployed twice, blue and green.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// Which colour serves the normal hosts; the other one serves the `-dev` hosts.
    /// May be left out when only one colour has servers (that one is live).
    #[serde(default)]
    pub live: Option<Spanned<Colour>>,
    /// `http` (default): reached from routes. `tcp`: reached from a TCP listener or a
    /// passthrough name; bytes are relayed, never parsed.
    #[serde(default)]
    pub mode: Option<Spanned<Mode>>,
    /// The blue servers.
    #[serde(default)]
    pub blue: Vec<Spanned<ServerFile>>,
    /// The green servers.
    #[serde(default)]
    pub green: Vec<Spanned<ServerFile>>,
    /// HTML page served with 503 when no server of the service can take the request.
    #[serde(default)]
    pub backup_page: Option<Spanned<String>>,
    /// Another service (e.g. a static maintenance site) that takes requests when no
    /// server of this one (backups included) is usable; tried before the backup page.
    #[serde(default)]
    pub backup_service: Option<Spanned<String>>,
    /// Active health checks (default: TCP connect every 2s, rise 2, fall 3).
    #[serde(default)]
    pub health: Option<HealthFile>,
    /// Balancing: `roundrobin` (default), `leastconn`, `hash-source`, `hash-uri`.
    #[serde(default)]
    pub balance: Option<Balance>,
    /// Send a PROXY protocol v2 header to the servers (`v2`), e.g. to an inner Gatehouse
    /// tier. Such connections carry one client each, so they are not pooled.
    #[serde(default)]
    pub send_proxy: Option<SendProxy>,
    /// TLS to the servers (re-encryption to the next tier): `{ ca: FILE }` to verify their
    /// certificates, or `{ verify: none }`; `sni` names them (default: the server's DNS
    /// name, else its address).
    #[serde(default)]
    pub tls: Option<Spanned<UpstreamTlsFile>>,
    /// For servers that cannot read chunked request bodies (uWSGI's `http-socket` reads
    /// them as empty): such a body is read whole, up to this size (beyond: 413), and sent
    /// with a `Content-Length`, as nginx's request buffering does. Bodies that come with
    /// a length stream as always. Default: chunked bodies are forwarded chunked.
    #[serde(default)]
    pub buffer_chunked: Option<Spanned<Scalar>>,
}

/// TLS to a service's servers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    /// PEM file of the CA certificates the servers' certificates must chain to, relative
    /// to the rules file.
    #[serde(default)]
    pub ca: Option<Spanned<String>>,
    /// `none`: the servers' certificates are not verified (`check` warns); `required`
    /// (the default) needs `ca`.
    #[serde(default)]
    pub verify: Option<Spanned<Verify>>,
    /// The name sent as SNI and verified in the certificate.
    #[serde(default)]
    pub sni: Option<Spanned<String>>,
}

/// Whether servers' certificates are verified.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    /// Against the service's `ca`.
    Required,
    /// Not at all.
    None,
}

/// PROXY protocol versions Gatehouse sends.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SendProxy {
    /// The binary v2 header.
    V2,
}

/// One backend server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Stable name used in logs and stats (e.g. `ui-blue-1`); unique across services.
    pub name: Spanned<String>,
    /// `ip:port` the proxy connects to.
    pub addr: Spanned<String>,
    /// Relative share of requests under weighted balancing (default 1; 0 = never chosen).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Requests in flight at once on this server; the rest wait (HAProxy `maxconn`).
    #[serde(default)]
    pub maxconn: Option<u32>,
    /// A backup server: used only when no primary server of its colour is usable.
    #[serde(default)]
    pub backup: bool,
}

/// Which colour of each service a site is served by.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ColourChoice {
    /// The colour the service names as `live` (the normal hosts).
    #[default]
    Live,
    /// The other colour (the `-dev` hosts, for testing the next release).
    Other,
}

/// A site: a set of host names and the routes that serve them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteFile {
    /// Name used in logs and stats.
    pub name: Spanned<String>,
    /// Host patterns: `data.example.org`, `*.example.org`, or `store.*` (first label).
    pub hosts: Vec<Spanned<String>>,
    /// `live` (default) or `other`: which colour of each service serves this site.
    #[serde(default)]
    pub colour: ColourChoice,
    /// Only clients from these named networks may use the site; others get 403.
    #[serde(default)]
    pub allow_from: Option<Vec<Spanned<String>>>,
    /// Largest request body for every route of the site (routes may set their own).
    #[serde(default)]
    pub max_body: Option<Spanned<Scalar>>,
    /// `Strict-Transport-Security` max-age for the site's HTTPS responses; `0` turns it off.
    #[serde(default)]
    pub hsts: Option<Spanned<Scalar>>,
    /// Routes tried in order; the first whose path matches serves the request.
    pub routes: Vec<Spanned<RouteFile>>,
    /// Requests refused on this site before routing (after the global `deny` rules).
    #[serde(default)]
    pub deny: Vec<Spanned<DenyFile>>,
    /// The rate limit for every route of the site (routes may name their own).
    #[serde(default)]
    pub limit: Option<Spanned<String>>,
    /// Header rules for every route of the site (a route's own come after these).
    #[serde(default)]
    pub headers: Option<Spanned<HeaderRulesFile>>,
}

/// How a route matches the (normalized) request path.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathFile {
    /// The path equals this exactly.
    Exact(Spanned<String>),
    /// The path is this or continues it at a `/` (`/api` matches `/api` and `/api/x`, not `/apix`).
    Prefix(Spanned<String>),
    /// The whole path matches this regular expression (anchored at both ends).
    Regex(Spanned<String>),
}

/// One route: a path match and what to do with matching requests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Name used in logs and stats (defaults to `<site>#<n>`).
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// Which paths the route takes; without it, every path.
    #[serde(default)]
    pub path: Option<PathFile>,
    /// Answer with this status instead of forwarding (e.g. `deny: 403`).
    #[serde(default)]
    pub deny: Option<Spanned<u16>>,
    /// The traffic class whose slots the request uses.
    #[serde(default)]
    pub pool: Option<Spanned<String>>,
    /// The service that serves the request.
    #[serde(default)]
    pub service: Option<Spanned<String>>,
    /// Only clients from these named networks; replaces the site's list for this route.
    #[serde(default)]
    pub allow_from: Option<Vec<Spanned<String>>>,
    /// Largest request body for this route (413 beyond it).
    #[serde(default)]
    pub max_body: Option<Spanned<Scalar>>,
    /// The methods the route takes (`GET` brings `HEAD`); without it, every method.
    /// Others get 405 with `Allow` (judged after `allow_from`: an outsider gets 403).
    #[serde(default)]
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    /// Header conditions: the route takes a request only when all hold (otherwise the
    /// next route is tried), by header name.
    #[serde(default)]
    pub match_headers: BTreeMap<String, Spanned<HeaderTestFile>>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default)]
    pub redirect: Option<Spanned<RedirectFile>>,
    /// The rate limit (replaces the site's).
    #[serde(default)]
    pub limit: Option<Spanned<String>>,
    /// Header rules (after the site's).
    #[serde(default)]
    pub headers: Option<Spanned<HeaderRulesFile>>,
}
