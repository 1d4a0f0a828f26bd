//! The first phase of a request: what the rules say about it, as a value.
//!
//! [`decide`] is pure: it reads the compiled rules and the facts of one request (never a
//! socket, a clock or a lock) and returns a [`Decision`]. The proxy serves from it and
//! `gatehouse explain` prints it, so the two can never disagree about why a request got
//! its answer. What happens after (a pool slot, a server, the exchange) depends on the
//! moment and belongs to the later phases.

use super::error::ProxyError;
use super::forward::{self, AddrSource, ClientAddr};
use super::path;
use crate::rules::matcher::AllowList;
use crate::rules::policy::{DenyRule, LimitKey};
use crate::rules::select::stable_hash;
use crate::rules::{Action, Balance, Colour, Route, RuleSet, Site};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Uri};
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

/// Where ACME HTTP-01 challenges are served over plain HTTP (never redirected).
pub const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// What the listener knows of the connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct Via<'a> {
    /// TCP peer (or the client conveyed by a PROXY header).
    pub peer: SocketAddr,
    /// Whether the peer came in a PROXY header from a trusted outer proxy.
    pub proxy_protocol: bool,
    /// Whether the request is HTTPS (here, or at the outer proxy).
    pub https: bool,
    /// Whether this plain listener answers with a redirect to HTTPS.
    pub redirect_https: bool,
    /// The TLS server name the client asked for, lower-case.
    pub sni: Option<&'a str>,
}

/// Process settings the decision reads (from the config, not the rules).
#[derive(Clone, Copy, Debug)]
pub struct Settings<'a> {
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted: &'a AllowList,
    /// Longest request URI accepted (414 beyond).
    pub max_uri_bytes: usize,
}

/// The facts of one request that the rules may read.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// The connection.
    pub via: Via<'a>,
    /// Method.
    pub method: &'a Method,
    /// Request target as received (origin-form, or absolute-form / `:authority`).
    pub uri: &'a Uri,
    /// The host the request names ([`host::request_host`]: lower-case, no port), or why
    /// it has none. The caller keeps the name, which lives as long as the request.
    pub host: Result<&'a str, &'a ProxyError>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Body bytes announced (`Content-Length`), 0 when unknown or none.
    pub body_len: u64,
}

/// What the rules say about one request, and every reason for it.
#[derive(Debug)]
pub struct Decision<'r> {
    /// The normalized path and the query: what is routed is what is forwarded.
    pub path: Option<PathAndQuery>,
    /// The site that claimed the host.
    pub site: Option<&'r Site>,
    /// The route that took the path, with its position in the site.
    pub route: Option<(usize, &'r Route)>,
    /// The client address decisions were made on, and where it came from.
    pub client: ClientAddr,
    /// What to do.
    pub verdict: Verdict,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Verdict {
    /// Forward it.
    Forward(Forward),
    /// Answer 308 to the same URL on HTTPS.
    RedirectHttps,
    /// A route's redirect: this status and `Location`.
    Redirect(http::StatusCode, String),
    /// Answer with the error's status and page.
    Refuse(ProxyError),
}

/// Where a forwarded request goes and under which limits.
#[derive(Clone, Copy, Debug)]
pub struct Forward {
    /// Index of the traffic-class pool.
    pub pool: usize,
    /// Index of the service.
    pub service: usize,
    /// The colour of the service this site uses.
    pub colour: Colour,
    /// Balancing in force (the pool's, else the service's).
    pub balance: Balance,
    /// The key a hashing balance uses (0 otherwise).
    pub key: u64,
    /// Largest request body, bytes (`u64::MAX`: unlimited).
    pub max_body: u64,
    /// The route's rate limit (index into `RuleSet::limits`) and the key counted.
    pub limit: Option<(usize, u64)>,
}

impl Decision<'_> {
    /// The status the client gets when nothing later (queue, servers) intervenes.
    pub fn status(&self) -> http::StatusCode {
        match &self.verdict {
            Verdict::Forward(_) => http::StatusCode::OK,
            Verdict::RedirectHttps => http::StatusCode::PERMANENT_REDIRECT,
            Verdict::Redirect(s, _) => *s,
            Verdict::Refuse(e) => e.status(),
        }
    }
}

/// Decides what the rules say about a request. Pure; the order of the checks is the
/// order of the answers a client can get (414, 400, 308, 421, 400, deny rules, 404, 403,
/// 405, a route's deny or redirect, 413); a rate limit is judged later, in `admit`.
#[inline(always)]
pub fn decide<'r>(rules: &'r RuleSet, settings: Settings<'_>, facts: Facts<'_>) -> Decision<'r> {
    let mut d = Decision {
        path: None,
        site: None,
        route: None,
        client: client(settings, facts),
        verdict: Verdict::RedirectHttps,
    };
    d.verdict = match walk(rules, settings, facts, &mut d) {
        Ok(v) => v,
        Err(e) => Verdict::Refuse(e),
    };
    d
}

/// The checks in order; fills in `d` as far as it gets.
#[inline]
fn walk<'r>(
    rules: &'r RuleSet,
    settings: Settings<'_>,
    facts: Facts<'_>,
    d: &mut Decision<'r>,
) -> Result<Verdict, ProxyError> {
    let uri = facts.uri;
    let uri_len = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if uri_len > settings.max_uri_bytes {
        return Err(ProxyError::UriTooLong);
    }
    let host = facts.host.map_err(Clone::clone)?;
    if facts.via.redirect_https && !acme_challenge(uri) {
        return Ok(Verdict::RedirectHttps);
    }
    if facts.via.sni.is_some_and(|sni| sni != host) {
        return Err(ProxyError::Misdirected);
    }
    let path = d.path.insert(checked_path(uri)?);
    if d.client.source == AddrSource::MalformedForwardedFor {
        return Err(ProxyError::BadRequest(
            "malformed X-Forwarded-For from a trusted proxy",
        ));
    }
    let (ip, headers) = (d.client.ip, facts.headers);
    // The site first (a refusal is counted on the site it was sent to), then the rules
    // of every site, then the site's own.
    d.site = rules.site(host);
    deny(&rules.deny, ip, headers)?;
    let site = d.site.ok_or(ProxyError::NotFound)?;
    deny(&site.deny, ip, headers)?;
    let (index, route) = site
        .routes
        .iter()
        .enumerate()
        .find(|(_, r)| r.path.matches(path.path()) && r.conditions.iter().all(|c| c.holds(headers)))
        .ok_or(ProxyError::NotFound)?;
    d.route = Some((index, route));
    if !RuleSet::allows(route, ip) {
        return Err(ProxyError::Forbidden);
    }
    if let Some(m) = route.methods
        && !m.contains(facts.method)
    {
        return Err(ProxyError::MethodNotAllowed(m));
    }
    let (pool, service) = match &route.action {
        Action::Deny(status) => return Err(ProxyError::Denied(*status)),
        Action::Redirect(r) => {
            let location = r.location(host, path.path(), path.query());
            return Ok(Verdict::Redirect(r.status, location));
        }
        Action::Forward { pool, service } => (*pool, *service),
    };
    let max_body = route.max_body.unwrap_or(u64::MAX);
    if facts.body_len > max_body {
        return Err(ProxyError::BodyTooLarge);
    }
    let svc = rules.service(service);
    let balance = rules.pool(pool).balance.unwrap_or(svc.balance);
    let key = match balance {
        Balance::HashSource => stable_hash(d.client.ip),
        Balance::HashUri => stable_hash(path.path()),
        _ => 0,
    };
    Ok(Verdict::Forward(Forward {
        pool,
        service,
        colour: svc.colour_for(site.colour),
        balance,
        key,
        max_body,
        limit: route
            .limit
            .map(|i| (i, limit_key(&rules.limits[i].key, ip, headers))),
    }))
}

/// The first deny rule whose conditions the request meets, as its refusal.
#[inline]
fn deny(rules: &[DenyRule], ip: IpAddr, headers: &HeaderMap) -> Result<(), ProxyError> {
    match rules.iter().find(|r| r.when.hold(ip, headers)) {
        Some(r) => Err(ProxyError::DeniedBy(r.status, r.index)),
        None => Ok(()),
    }
}

/// What a rate limit counts this request as: a hash of the client's prefix, or of a
/// header's value (requests without it by client address).
fn limit_key(key: &LimitKey, ip: IpAddr, headers: &HeaderMap) -> u64 {
    let by_ip = |v4: u8, v6: u8| match ip {
        IpAddr::V4(a) => stable_hash((4u8, a.to_bits() & (u32::MAX << (32 - u32::from(v4))))),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(m) => stable_hash((4u8, m.to_bits() & (u32::MAX << (32 - u32::from(v4))))),
            None => stable_hash((
                6u8,
                a.to_bits() & (u128::MAX.checked_shl(128 - u32::from(v6)).unwrap_or(0)),
            )),
        },
    };
    match key {
        LimitKey::Client { v4, v6 } => by_ip(*v4, *v6),
        LimitKey::Header(name) => match headers.get(name) {
            Some(v) => stable_hash((1u8, v.as_bytes())),
            None => by_ip(32, 64),
        },
    }
}

/// Whether a plain-HTTP request is an ACME HTTP-01 challenge, judged on the normalized
/// path (`/.well-known/acme-challenge/../../api/x` is not one).
fn acme_challenge(uri: &Uri) -> bool {
    path::normalize(uri.path()).is_ok_and(|p| p.starts_with(ACME_PREFIX))
}

/// The client address: the peer, a trusted proxy's `X-Forwarded-For`, or the PROXY header's.
#[inline]
fn client(settings: Settings<'_>, facts: Facts<'_>) -> ClientAddr {
    let mut client = forward::client_addr(facts.headers, facts.via.peer, settings.trusted);
    if facts.via.proxy_protocol && client.source == AddrSource::Peer {
        client.source = AddrSource::ProxyProtocol;
    }
    client
}

/// The normalized path (and the query as received): what is routed is what is forwarded.
/// Clean paths (the common case) reuse the request's own bytes.
fn checked_path(uri: &Uri) -> Result<PathAndQuery, ProxyError> {
    let normalized = path::normalize(uri.path()).map_err(|e| ProxyError::BadRequest(e.reason()))?;
    match (normalized, uri.path_and_query()) {
        (Cow::Borrowed(_), Some(pq)) => Ok(pq.clone()),
        (n, _) => {
            let s = match uri.query() {
                Some(q) => format!("{n}?{q}"),
                None => n.into_owned(),
            };
            PathAndQuery::try_from(s).map_err(|_| ProxyError::BadRequest("bad path"))
        }
    }
}

/// Where a plain-HTTP request is redirected: the same host and target on HTTPS.
pub fn https_location(host: &str, uri: &Uri, port: u16) -> String {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    if port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{port}{pq}")
    }
}
