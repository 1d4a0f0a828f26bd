//! Rules: what ops edit while the proxy runs, compiled into an immutable [`RuleSet`].
//!
//! Pure: no tokio, no sockets. `file` is the serde mirror (the manual), `compile`
//! turns it into a `RuleSet` while collecting every error, `matcher` holds the
//! compiled host/path/network matchers. A `RuleSet` is never edited: a reload
//! compiles a new one and swaps it in whole.

pub mod compile;
pub mod diff;
pub mod fasthash;
pub mod file;
pub mod matcher;
pub mod methods;
pub mod policy;
pub mod resolved;
mod reweight;
pub mod select;
pub mod upstream_tls;

use bytes::Bytes;
use http::StatusCode;
use matcher::{AllowList, HostPattern, PathPattern};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub use compile::{compile, compile_resolved, load, load_resolved};
pub use file::{Balance, Colour, ColourChoice, Mode};
pub use resolved::Resolved;
pub use select::Group;

/// A compiled, immutable generation of the rules.
#[derive(Clone, Debug)]
pub struct RuleSet {
    /// Sites in file order.
    pub sites: Vec<Site>,
    /// Services by index (routes refer to them by index).
    pub services: Vec<Arc<Service>>,
    /// Traffic classes by index.
    pub pools: Vec<PoolSpec>,
    /// Replacement pages for the proxy's own error responses.
    pub error_pages: HashMap<u16, Bytes>,
    /// TLS names relayed without terminating, in file order.
    pub passthrough: Vec<Passthrough>,
    /// Deny rules of every site, tried before routing.
    pub deny: Vec<policy::DenyRule>,
    /// Deny rules in all (global and per site): the number of their counters.
    pub deny_count: usize,
    /// Named rate limits, by index.
    pub limits: Vec<policy::LimitSpec>,
    /// List files read, so an edit of one alone reloads the rules.
    pub list_files: Vec<std::path::PathBuf>,
    /// Host names servers are named by, resolved by DNS at run time (sorted, once each).
    pub dns_names: Vec<String>,
    /// What is allowed but unwise (`file:line:column: why`): printed by `check`, logged
    /// when the rules are installed.
    pub warnings: Vec<String>,
    hosts: HostIndex,
    passthrough_hosts: HostIndex,
    default_site: Option<usize>,
}

/// SNI names whose TLS is relayed to a TCP service instead of terminated here.
#[derive(Clone, Debug)]
pub struct Passthrough {
    /// Name for logs.
    pub name: Arc<str>,
    /// The SNI patterns it claims.
    pub hosts: Vec<HostPattern>,
    /// Index into `RuleSet::services` (a `mode: tcp` service).
    pub service: usize,
    /// The clients allowed (`None`: everyone).
    pub allow: Option<Arc<AllowList>>,
}

/// Host name → index, exact names first, then `first.*`, then `*.suffix` (longest first).
#[derive(Clone, Debug, Default)]
struct HostIndex {
    exact: HashMap<String, usize, fasthash::FastHash>,
    first_label: HashMap<String, usize, fasthash::FastHash>,
    suffix: HashMap<String, usize, fasthash::FastHash>,
}

impl HostIndex {
    /// The index claiming `host` (lower-case, no port), if any.
    fn lookup(&self, host: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        let (first, mut rest) = host.split_once('.')?;
        if let Some(&i) = self.first_label.get(first) {
            return Some(i);
        }
        // Longest suffix first: strip one label at a time.
        loop {
            if let Some(&i) = self.suffix.get(rest) {
                return Some(i);
            }
            rest = rest.split_once('.')?.1;
        }
    }

    /// Claims `pattern` for `index`; `false` when another index already holds it.
    fn claim(&mut self, pattern: &HostPattern, index: usize) -> bool {
        let (map, key) = match pattern {
            HostPattern::Exact(k) => (&mut self.exact, k),
            HostPattern::FirstLabel(k) => (&mut self.first_label, k),
            HostPattern::Suffix(k) => (&mut self.suffix, k),
        };
        map.insert(key.clone(), index).is_none()
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.first_label.is_empty() && self.suffix.is_empty()
    }
}

/// A site: host names and ordered routes.
#[derive(Clone, Debug)]
pub struct Site {
    /// Position in `RuleSet::sites` (counters are looked up by it).
    pub index: usize,
    /// Name for logs and stats.
    pub name: Arc<str>,
    /// The host patterns it claims.
    pub hosts: Vec<HostPattern>,
    /// Which colour of each service serves it.
    pub colour: ColourChoice,
    /// `Strict-Transport-Security` value for HTTPS responses, if any.
    pub hsts: Option<http::HeaderValue>,
    /// Routes in order.
    pub routes: Vec<Route>,
    /// Deny rules of this site, after the global ones.
    pub deny: Vec<policy::DenyRule>,
}

/// One route of a site.
#[derive(Clone, Debug)]
pub struct Route {
    /// Name for logs and stats.
    pub name: Arc<str>,
    /// Which paths it takes.
    pub path: PathPattern,
    /// Forward, or answer with a status.
    pub action: Action,
    /// Who may use it (site list unless the route sets its own); `None` = everyone.
    pub allow: Option<Arc<AllowList>>,
    /// Largest request body in bytes; `None` = unlimited.
    pub max_body: Option<u64>,
    /// The methods it takes; `None` = every method.
    pub methods: Option<methods::Methods>,
    /// Header conditions: the route takes only requests meeting all of them.
    pub conditions: Vec<policy::HeaderCond>,
    /// Index of its rate limit in `RuleSet::limits`.
    pub limit: Option<usize>,
    /// Header rules, the site's first.
    pub headers: Vec<Arc<policy::HeaderRules>>,
}

/// What a route does with a request.
#[derive(Clone, Debug)]
pub enum Action {
    /// Answer with this status (and its error page).
    Deny(StatusCode),
    /// Answer with a redirect.
    Redirect(policy::Redirect),
    /// Forward to a service through a traffic-class pool.
    Forward {
        /// Index into `RuleSet::pools`.
        pool: usize,
        /// Index into `RuleSet::services`.
        service: usize,
    },
}

/// A traffic class: its size and queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    /// `static`, `app`, `files`, ...
    pub name: Arc<str>,
    /// Requests in flight at once.
    pub slots: u32,
    /// Requests that may wait for a slot.
    pub queue: u32,
    /// How long one may wait.
    pub queue_timeout: Duration,
    /// Balancing for this class, overriding the service's.
    pub balance: Option<Balance>,
    /// Slots one client address may hold at once.
    pub per_client: u32,
    /// Other shares for clients in these networks (first match wins).
    pub per_client_in: Vec<NetworkShare>,
}

/// A pool's share for the clients of some networks.
#[derive(Clone, Debug)]
pub struct NetworkShare {
    /// The network's name in the rules.
    pub network: String,
    /// Its addresses.
    pub list: Arc<AllowList>,
    /// Slots one of its client addresses may hold.
    pub share: u32,
}

impl PartialEq for NetworkShare {
    fn eq(&self, other: &Self) -> bool {
        (&self.network, self.share) == (&other.network, other.share)
    }
}

impl Eq for NetworkShare {}

impl PoolSpec {
    /// The default share: a quarter of the slots, at least one.
    pub fn default_share(slots: u32) -> u32 {
        slots.div_ceil(4).max(1)
    }

    /// The slots `client` may hold, or `None` when its share is the whole pool (then
    /// nothing is counted for it).
    #[inline]
    pub fn share_for(&self, client: std::net::IpAddr) -> Option<u32> {
        let share = self
            .per_client_in
            .iter()
            .find(|n| n.list.contains(client))
            .map_or(self.per_client, |n| n.share);
        (share < self.slots).then_some(share)
    }
}

/// Active health checking of a service's servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSpec {
    /// HTTP path to GET, or `None` for a TCP connect check.
    pub path: Option<String>,
    /// Healthy statuses, or `None` for any 2xx/3xx.
    pub expect: Option<Vec<u16>>,
    /// `GET`, `HEAD` or `OPTIONS`.
    pub method: &'static str,
    /// The `Host` the check sends (default: the server's address).
    pub host: Option<String>,
    /// A 404 drains the server (healthy, but no new requests) until a check passes.
    pub on_404_drain: bool,
    /// Port to check instead of the server's own.
    pub port: Option<u16>,
    /// Whether a check on the server's own port starts with a PROXY v2 `LOCAL` header
    /// (the service has `send_proxy`, so its servers expect one on every connection).
    pub send_proxy: bool,
    /// TLS for HTTP checks on the server's own port (the service speaks TLS to it).
    pub tls: Option<Arc<upstream_tls::UpstreamTls>>,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Passes in a row to come UP.
    pub rise: u32,
    /// Failures in a row to go DOWN.
    pub fall: u32,
}

/// A backend service with its blue and green servers.
#[derive(Debug)]
pub struct Service {
    /// Name for logs and stats.
    pub name: Arc<str>,
    /// Which colour the normal hosts use.
    pub live: Colour,
    /// Blue servers.
    pub blue: Group,
    /// Green servers.
    pub green: Group,
    /// Page served with 503 when no server can take a request.
    pub backup_page: Option<Bytes>,
    /// Service that takes requests when none of this one's servers can.
    pub backup_service: Option<usize>,
    /// Health checks.
    pub health: HealthSpec,
    /// Balancing unless the pool says otherwise.
    pub balance: Balance,
    /// Whether connections to the servers start with a PROXY v2 header.
    pub send_proxy: bool,
    /// TLS to the servers.
    pub tls: Option<Arc<upstream_tls::UpstreamTls>>,
    /// Chunked request bodies are read whole up to this size and sent with a length.
    pub buffer_chunked: Option<u64>,
    /// HTTP (routes) or TCP (listeners, passthrough).
    pub mode: Mode,
}

/// One backend server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// Index among all servers of this rule set (stats slots are looked up by it).
    pub id: usize,
    /// Stable name (logs, stats, `X-Served-By` in the demo).
    pub name: Arc<str>,
    /// Where to connect.
    pub addr: SocketAddr,
    /// `ip:port` as a URI authority, built once.
    pub authority: http::uri::Authority,
    /// The DNS name the address came from (`None`: written as an address).
    pub host: Option<Arc<str>>,
    /// Share under weighted balancing: the rules' weight, or one set at run time.
    pub weight: u32,
    /// The weight the rules give (what `weight` returns to when a runtime one is cleared).
    pub initial_weight: u32,
    /// Most requests in flight at once on this server.
    pub maxconn: Option<u32>,
    /// Used only when no primary of its colour is usable.
    pub backup: bool,
}

/// The result of routing one request.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    /// The site that claimed the host.
    pub site: &'a Site,
    /// The first route whose path matched.
    pub route: &'a Route,
}

impl Colour {
    /// The other colour.
    pub fn other(self) -> Colour {
        match self {
            Colour::Blue => Colour::Green,
            Colour::Green => Colour::Blue,
        }
    }

    /// Lower-case name, as written in the rules.
    pub fn as_str(self) -> &'static str {
        match self {
            Colour::Blue => "blue",
            Colour::Green => "green",
        }
    }
}

impl Balance {
    /// The name as written in the rules (`roundrobin`, `hash-source`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::Roundrobin => "roundrobin",
            Balance::Leastconn => "leastconn",
            Balance::HashSource => "hash-source",
            Balance::HashUri => "hash-uri",
        }
    }
}

impl Service {
    /// The colour a site with `choice` is served by.
    pub fn colour_for(&self, choice: ColourChoice) -> Colour {
        match choice {
            ColourChoice::Live => self.live,
            ColourChoice::Other => self.live.other(),
        }
    }

    /// `http` or `tcp`, as HAProxy's CSV `mode` column says it.
    pub fn mode_str(&self) -> &'static str {
        match self.mode {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
        }
    }

    /// The servers of one colour, with their pick structures.
    pub fn group(&self, colour: Colour) -> &Group {
        match colour {
            Colour::Blue => &self.blue,
            Colour::Green => &self.green,
        }
    }

    /// The servers of one colour.
    pub fn servers(&self, colour: Colour) -> &[Arc<Server>] {
        &self.group(colour).servers
    }
}

impl RuleSet {
    /// Finds the site for `host` (lower-case, no port) and its first route matching `path`.
    ///
    /// `None` for an unknown host without a default site, or a path no route takes.
    pub fn route(&self, host: &str, path: &str) -> Option<Decision<'_>> {
        let site = self.site(host)?;
        let route = site.routes.iter().find(|r| r.path.matches(path))?;
        Some(Decision { site, route })
    }

    /// The site for `host` (lower-case, no port), or the default site.
    pub fn site(&self, host: &str) -> Option<&Site> {
        self.sites.get(self.site_index(host)?)
    }

    fn site_index(&self, host: &str) -> Option<usize> {
        self.hosts.lookup(host).or(self.default_site)
    }

    /// The passthrough entry (and its index) claiming the SNI name `sni` (lower-case).
    pub fn passthrough_for(&self, sni: &str) -> Option<(usize, &Passthrough)> {
        let i = self.passthrough_hosts.lookup(sni)?;
        Some((i, self.passthrough.get(i)?))
    }

    /// The deny rule numbered `index` (global or a site's).
    pub fn deny_rule(&self, index: usize) -> Option<&policy::DenyRule> {
        self.deny
            .iter()
            .chain(self.sites.iter().flat_map(|s| &s.deny))
            .find(|r| r.index == index)
    }

    /// Whether any name is passed through (the listeners only peek when one is).
    pub fn has_passthrough(&self) -> bool {
        !self.passthrough_hosts.is_empty()
    }

    /// The index of the service called `name`.
    pub fn service_named(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| &*s.name == name)
    }

    /// Whether `ip` may use `route` (no allow-list means everyone).
    pub fn allows(route: &Route, ip: IpAddr) -> bool {
        route.allow.as_ref().is_none_or(|a| a.contains(ip))
    }

    /// The pool spec a forward route uses.
    pub fn pool(&self, index: usize) -> &PoolSpec {
        &self.pools[index]
    }

    /// The service at `index`.
    pub fn service(&self, index: usize) -> &Arc<Service> {
        &self.services[index]
    }

    /// Every server of every service and colour, for health checks and stats.
    pub fn all_servers(&self) -> impl Iterator<Item = (&Service, Colour, &Arc<Server>)> {
        self.services.iter().flat_map(|svc| {
            svc.blue
                .servers
                .iter()
                .map(move |s| (&**svc, Colour::Blue, s))
                .chain(
                    svc.green
                        .servers
                        .iter()
                        .map(move |s| (&**svc, Colour::Green, s)),
                )
        })
    }
}
