//! `gatehouse explain`: how a request would be answered and why, from the proxy's own
//! decision ([`crate::proxy::decide`]) and the running process's server states.
//!
//! Nothing is sent to a server. The request is built as a client would send it (HTTP/1.1,
//! origin-form, `Host` from the URL, SNI from the URL's host on HTTPS), the decision is
//! the one the proxy makes, and the admission (which service, colour and servers would
//! take it) is worked out with the balancer's own pick over the live states.

use super::stats_request;
use crate::config::Config;
use crate::proxy::admit::backup_of;
use crate::proxy::decide::{self, Decision, Facts, Forward, Settings, Verdict, Via};
use crate::proxy::error::ProxyError;
use crate::proxy::forward::AddrSource;
use crate::proxy::host::request_host;
use crate::rules::policy::LimitKey;
use crate::rules::{self, Colour, ColourChoice, RuleSet, Service};
use anyhow::{Context, anyhow};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};
use serde::Serialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// A request to explain, as the command line gives it.
#[derive(Debug, Clone)]
pub struct Ask {
    /// `http://…` or `https://…`.
    pub url: String,
    /// Request method.
    pub method: String,
    /// Extra headers, `Name: value` (a `Host` here replaces the URL's).
    pub headers: Vec<String>,
    /// The client address.
    pub from: IpAddr,
    /// The request arrives through this proxy, which sends `X-Forwarded-For: from`.
    pub via_proxy: Option<IpAddr>,
    /// The TLS server name, when it differs from the URL's host.
    pub sni: Option<String>,
}

/// The explanation: the same fields in the text and in `--json`.
#[derive(Debug, Serialize)]
pub struct Explanation {
    /// What the decision ended in: `forward`, `redirect` or `refuse`.
    pub decision: &'static str,
    /// The status the client would get.
    pub status: u16,
    /// Why, in words.
    pub reason: String,
    /// Method, URL, host and the normalized path.
    pub request: Shown,
    /// The client address decisions were made on.
    pub client: String,
    /// Where it came from: `peer`, `x-forwarded-for` or `proxy-protocol`.
    pub client_source: &'static str,
    /// The site that claimed the host.
    pub site: Option<String>,
    /// The route that took the path.
    pub route: Option<String>,
    /// `Location` of a redirect.
    pub location: Option<String>,
    /// Traffic class, when forwarded.
    pub pool: Option<String>,
    /// Balancing in force.
    pub balance: Option<&'static str>,
    /// The service that would serve it (the route's, or its backup service).
    pub service: Option<String>,
    /// That service's colour.
    pub colour: Option<&'static str>,
    /// The server the balancer would pick now (round robin moves on with each request).
    pub server: Option<String>,
    /// Servers of the route's service and colour, in the balancer's order of preference.
    pub servers: Vec<ServerShown>,
    /// Whether the live server states came from the running proxy.
    pub states_known: bool,
    /// The text lines, in order (what the plain output prints).
    #[serde(skip)]
    lines: Vec<(&'static str, String)>,
}

/// The request as explained.
#[derive(Debug, Serialize)]
pub struct Shown {
    /// Method.
    pub method: String,
    /// URL.
    pub url: String,
    /// Host routed on.
    pub host: Option<String>,
    /// Path routed on (normalized).
    pub path: Option<String>,
}

/// One server and its live state.
#[derive(Debug, Serialize)]
pub struct ServerShown {
    /// Name.
    pub name: String,
    /// Address.
    pub addr: String,
    /// A backup server.
    pub backup: bool,
    /// UP, DOWN, MAINT, DRAIN, or `unknown`.
    pub state: String,
}

/// `gatehouse explain`: the explanation of one request.
pub fn explain(config: &Config, ask: &Ask) -> anyhow::Result<Explanation> {
    let set = resolved_rules(config)?;
    let built = Built::new(config, ask)?;
    let settings = Settings {
        trusted: &config.trusted_proxies,
        max_uri_bytes: config.limits.max_uri_bytes,
    };
    let host = request_host(&built.uri, &built.headers);
    let host = host.as_ref().map(|h| h.as_str());
    let d = decide::decide(&set, settings, built.facts(host));
    let states = live_states(config);
    Ok(describe(config, &set, ask, &d, host.ok(), states.as_ref()))
}

/// The rules as `run` builds them: servers named by DNS resolved as it resolves them
/// (slot numbers are those of a fresh start; the running proxy's may differ after changes).
fn resolved_rules(config: &Config) -> anyhow::Result<RuleSet> {
    let set = rules::load(&config.rules).map_err(|d| anyhow!("{d}"))?;
    if set.dns_names.is_empty() {
        return Ok(set);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let resolver = crate::resolve::Resolver::new(&config.dns)?;
        resolver
            .load_rules(config)
            .await
            .map_err(|d| anyhow!("{d}"))
    })
}

/// The request as a client would send it.
struct Built {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    peer: SocketAddr,
    https: bool,
    redirect: bool,
    sni: Option<String>,
    body_len: u64,
}

impl Built {
    fn new(config: &Config, ask: &Ask) -> anyhow::Result<Built> {
        let url: Uri = ask.url.parse().context("not a URL")?;
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => anyhow::bail!("the URL must start with http:// or https://"),
        };
        let authority = url
            .authority()
            .ok_or_else(|| anyhow!("the URL has no host"))?
            .clone();
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::HOST,
            HeaderValue::from_str(authority.as_str())?,
        );
        for h in &ask.headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| anyhow!("a header is `Name: value`, not {h:?}"))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())?;
            let value = HeaderValue::from_str(value.trim())?;
            if name == http::header::HOST {
                headers.insert(name, value);
            } else {
                headers.append(name, value);
            }
        }
        let peer_ip = match ask.via_proxy {
            Some(proxy) => {
                headers.append(
                    "x-forwarded-for",
                    HeaderValue::from_str(&ask.from.to_string())?,
                );
                proxy
            }
            None => ask.from,
        };
        let body_len = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        // Clients send no SNI for an address literal.
        let host = authority.host().to_ascii_lowercase();
        let sni = ask
            .sni
            .clone()
            .or_else(|| host.parse::<IpAddr>().is_err().then_some(host))
            .filter(|_| https);
        Ok(Built {
            method: Method::from_bytes(ask.method.as_bytes())?,
            uri: url.path_and_query().map_or("/", |p| p.as_str()).parse()?,
            headers,
            peer: SocketAddr::new(peer_ip, 50000),
            https,
            redirect: !https && config.redirect_http,
            sni,
            body_len,
        })
    }

    fn facts<'a>(&'a self, host: Result<&'a str, &'a ProxyError>) -> Facts<'a> {
        Facts {
            via: Via {
                peer: self.peer,
                proxy_protocol: false,
                https: self.https,
                redirect_https: self.redirect,
                sni: self.sni.as_deref(),
            },
            method: &self.method,
            uri: &self.uri,
            host,
            headers: &self.headers,
            body_len: self.body_len,
        }
    }
}

fn describe(
    config: &Config,
    set: &RuleSet,
    ask: &Ask,
    d: &Decision<'_>,
    host: Option<&str>,
    states: Option<&HashMap<String, String>>,
) -> Explanation {
    let mut e = Explanation {
        decision: "refuse",
        status: d.status().as_u16(),
        reason: String::new(),
        request: Shown {
            method: ask.method.clone(),
            url: ask.url.clone(),
            host: host.map(str::to_string),
            path: d.path.as_ref().map(|p| p.path().to_string()),
        },
        client: d.client.ip.to_string(),
        client_source: match d.client.source {
            AddrSource::Peer => "peer",
            AddrSource::TrustedForwardedFor => "x-forwarded-for",
            AddrSource::ProxyProtocol => "proxy-protocol",
            AddrSource::MalformedForwardedFor => "malformed-x-forwarded-for",
        },
        site: d.site.map(|s| s.name.to_string()),
        route: d.route.map(|(_, r)| r.name.to_string()),
        location: None,
        pool: None,
        balance: None,
        service: None,
        colour: None,
        server: None,
        servers: Vec::new(),
        states_known: states.is_some(),
        lines: Vec::new(),
    };
    e.line(
        "request",
        format!(
            "{} {} (host {}, path {})",
            ask.method,
            ask.url,
            e.request.host.as_deref().unwrap_or("?"),
            e.request.path.as_deref().unwrap_or("?")
        ),
    );
    e.line("client", client_line(config, ask, d));
    deny_lines(set, d, &mut e);
    if let Some(site) = d.site {
        let colour = match site.colour {
            ColourChoice::Live => "live",
            ColourChoice::Other => "other",
        };
        e.line("site", format!("{} (colour: {colour})", site.name));
    }
    if let Some((_, route)) = d.route {
        e.line(
            "route",
            format!("{} ({})", route.name, route.path.describe()),
        );
        e.line("allow_from", allow_line(route, d.client.ip));
        if let Some(m) = route.methods {
            let method = http::Method::from_bytes(ask.method.as_bytes()).unwrap_or_default();
            let verdict = match m.contains(&method) {
                true => "taken",
                false => "405 Method Not Allowed",
            };
            e.line(
                "methods",
                format!("{} -> {} is {verdict}", m.allow(), ask.method),
            );
        }
    }
    match &d.verdict {
        Verdict::RedirectHttps => {
            let host = e.request.host.clone().unwrap_or_default();
            let uri: Uri = ask.url.parse().unwrap_or_default();
            let location = decide::https_location(&host, &uri, config.redirect_port);
            e.decision = "redirect";
            e.reason = "plain HTTP is redirected to HTTPS".into();
            e.line("decision", format!("308 Permanent Redirect to {location}"));
            e.location = Some(location);
        }
        Verdict::Redirect(status, location) => {
            e.decision = "redirect";
            e.reason = "the route redirects".into();
            e.line(
                "decision",
                format!(
                    "{} {} to {location}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                ),
            );
            e.location = Some(location.clone());
        }
        Verdict::Refuse(err) => {
            e.reason = err.to_string();
            let status = err.status();
            let why = match err {
                ProxyError::Denied(_) => "deny route".to_string(),
                ProxyError::DeniedBy(_, i) => format!(
                    "deny rule `{}`",
                    set.deny_rule(*i).map_or("?", |r| &*r.name)
                ),
                other => other.to_string(),
            };
            e.line(
                "decision",
                format!(
                    "{} {}: {why}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                ),
            );
        }
        Verdict::Forward(f) => admission(set, f, d, states, &mut e),
    }
    e
}

fn client_line(config: &Config, ask: &Ask, d: &Decision<'_>) -> String {
    match (ask.via_proxy, d.client.source) {
        (Some(p), AddrSource::TrustedForwardedFor) => {
            format!(
                "{} (from X-Forwarded-For: peer {p} is a trusted proxy)",
                d.client.ip
            )
        }
        (Some(p), _) if !config.trusted_proxies.contains(p) => format!(
            "{} (the peer; {p} is not in trusted_proxies, so its X-Forwarded-For is ignored)",
            d.client.ip
        ),
        _ => format!("{} (the TCP peer)", d.client.ip),
    }
}

fn allow_line(route: &rules::Route, client: IpAddr) -> String {
    let Some(a) = &route.allow else {
        return "everyone".into();
    };
    let verdict = if a.contains(client) {
        "inside: allowed"
    } else {
        "outside: 403 Forbidden"
    };
    format!("{} -> {client} is {verdict}", a.names.join(", "))
}

/// The admission a forwarded request would meet now: the route's service and colour, its
/// backups, then its backup service, then the backup page.
/// The deny rules in force for the request (global, then its site's), each with whether
/// it matched; and the route's header conditions.
fn deny_lines(set: &RuleSet, d: &Decision<'_>, e: &mut Explanation) {
    let site_rules = d.site.map(|s| s.deny.as_slice()).unwrap_or_default();
    for r in set.deny.iter().chain(site_rules) {
        let hit =
            matches!(&d.verdict, Verdict::Refuse(ProxyError::DeniedBy(_, i)) if *i == r.index);
        e.line(
            "deny",
            format!(
                "{} ({}) -> {}",
                r.name,
                r.when.describe(),
                if hit {
                    format!("matched: {}", r.status.as_u16())
                } else {
                    "no match".to_string()
                }
            ),
        );
    }
    if let Some((_, route)) = d.route
        && !route.conditions.is_empty()
    {
        let all: Vec<String> = route.conditions.iter().map(|c| c.describe()).collect();
        e.line(
            "match_headers",
            format!("{} -> all hold", all.join(" and ")),
        );
    }
}

fn admission(
    set: &RuleSet,
    f: &Forward,
    d: &Decision<'_>,
    states: Option<&HashMap<String, String>>,
    e: &mut Explanation,
) {
    let pool = set.pool(f.pool);
    let service = set.service(f.service);
    if let Some((_, route)) = d.route {
        e.line(
            "max_body",
            route
                .max_body
                .map_or("unlimited".into(), |b| format!("{b} bytes (413 beyond)")),
        );
    }
    if let Some((i, _)) = f.limit {
        let l = &set.limits[i];
        e.line(
            "limit",
            format!(
                "{} ({}, burst {}, by {}) -> 429 with Retry-After beyond it",
                l.name,
                l.text,
                l.burst,
                match &l.key {
                    LimitKey::Client { v4, v6 } => format!("client /{v4} /{v6}"),
                    LimitKey::Header(h) => format!("header {h}"),
                }
            ),
        );
    }
    e.line(
        "pool",
        format!(
            "{} (slots {}, queue {}, queue timeout {:?})",
            pool.name, pool.slots, pool.queue, pool.queue_timeout
        ),
    );
    e.pool = Some(pool.name.to_string());
    e.balance = Some(f.balance.as_str());
    e.line("balance", f.balance.as_str().to_string());
    e.line(
        "service",
        format!(
            "{} (live {}, this site uses {})",
            service.name,
            service.live.as_str(),
            f.colour.as_str()
        ),
    );
    let usable = |name: &str| states.is_none_or(|m| m.get(name).is_some_and(|s| s == "UP"));
    e.servers = shown(service, f.colour, states);
    let list: Vec<String> = e
        .servers
        .iter()
        .map(|s| {
            let b = if s.backup { " backup" } else { "" };
            format!("{} {}{b} [{}]", s.name, s.addr, s.state)
        })
        .collect();
    e.line("servers", list.join("; "));
    let mut candidates = vec![(&**service, f.colour, f.balance)];
    if let Some((_, b)) = backup_of(set, service) {
        e.line("backup service", format!("{} {}", b.name, b.live.as_str()));
        candidates.push((&**b, b.live, b.balance));
    }
    for (svc, colour, balance) in candidates {
        let pick = svc
            .group(colour)
            .pick(balance, f.key, None, &|s| usable(&s.name), &|_| 0);
        if let Some(server) = pick {
            e.decision = "forward";
            e.status = 200;
            e.reason = format!("forwarded to {} {}", svc.name, colour.as_str());
            e.service = Some(svc.name.to_string());
            e.colour = Some(colour.as_str());
            e.server = Some(server.name.to_string());
            e.line(
                "decision",
                format!(
                    "forward to {} {} (now: {})",
                    svc.name,
                    colour.as_str(),
                    server.name
                ),
            );
            return;
        }
    }
    e.status = 503;
    e.reason = "no server can take it".into();
    let page = if service.backup_page.is_some() {
        "the backup page"
    } else {
        "the built-in 503 page"
    };
    e.line("backup page", page.into());
    e.line(
        "decision",
        format!(
            "503 Service Unavailable: no server of {} can take it; {page}",
            service.name
        ),
    );
}

fn shown(
    service: &Service,
    colour: Colour,
    states: Option<&HashMap<String, String>>,
) -> Vec<ServerShown> {
    let mut servers: Vec<_> = service.servers(colour).iter().collect();
    servers.sort_by_key(|s| s.backup);
    servers
        .into_iter()
        .map(|s| ServerShown {
            name: s.name.to_string(),
            addr: s.addr.to_string(),
            backup: s.backup,
            state: states.map_or("state unknown (proxy not reachable)".into(), |m| {
                m.get(&*s.name).cloned().unwrap_or_else(|| "unknown".into())
            }),
        })
        .collect()
}

impl Explanation {
    fn line(&mut self, key: &'static str, value: String) {
        self.lines.push((key, value));
    }

    /// The plain-text form: one `key value` line each.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|(k, v)| format!("{k:<14} {v}\n"))
            .collect()
    }
}

/// Server states as the running proxy reports them, by name (`None`: not reachable).
fn live_states(config: &Config) -> Option<HashMap<String, String>> {
    let (_, body) = stats_request(config, "GET", "/stats?format=json").ok()?;
    let j: serde_json::Value = serde_json::from_str(&body).ok()?;
    let mut m = HashMap::new();
    for s in j["services"].as_array()? {
        for srv in s["servers"].as_array()? {
            m.insert(
                srv["name"].as_str()?.to_string(),
                srv["status"].as_str()?.to_string(),
            );
        }
    }
    Some(m)
}
