//! Rules files → an immutable [`RuleSet`], collecting every error with its place.
//!
//! Each check records a [`Diagnostic`] and carries on, so `gatehouse check` (and a
//! refused reload) shows all the mistakes of an edit at once.

use super::file::{
    Balance, HealthFile, Mode, PassthroughFile, PathFile, RouteFile, RulesFile, ServerFile,
    SiteFile, UpstreamTlsFile, Verify,
};
use super::matcher::{AllowList, HostPattern, PathPattern};
use super::methods::Methods;
use super::resolved::Resolved;
use super::upstream_tls::UpstreamTls;
use super::{
    Action, Colour, Group, HealthSpec, HostIndex, NetworkShare, Passthrough, PoolSpec, Route,
    RuleSet, Server, Service, Site,
};
use crate::diag::{Diagnostic, Diagnostics, Pos, parse_yaml, read_file};
use crate::units::{parse_duration, parse_size};
use bytes::Bytes;
use http::StatusCode;
use ipnet::IpNet;
use serde_saphyr::Spanned;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod policy;

/// Largest page the proxy keeps in memory for a backup or error page.
const MAX_PAGE_BYTES: u64 = 1 << 20;

/// Reads the rules at `path` (one file, or every `*.yaml` in a directory) and compiles them.
pub fn load(path: &Path) -> Result<RuleSet, Diagnostics> {
    load_resolved(path, &Resolved::default())
}

/// [`load`], with servers named by DNS given the addresses in `resolved` (a name not
/// in it stands for no server yet).
pub fn load_resolved(path: &Path, resolved: &Resolved) -> Result<RuleSet, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut files = Vec::new();
    for file in rule_files(path).map_err(Diagnostics::from)? {
        match read_file(&file, &file, Pos::default()) {
            Ok(text) => files.push((file, text)),
            Err(d) => diags.push(d),
        }
    }
    if !diags.is_empty() {
        return diags.finish(RuleSet::empty());
    }
    compile_resolved(&files, resolved)
}

/// The files a rules path stands for, in name order (dotfiles and non-YAML skipped).
pub fn rule_files(path: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let err = |e: std::io::Error| {
        Diagnostic::new(path, Pos::default(), format!("cannot read rules: {e}"))
    };
    if !path.is_dir() {
        std::fs::metadata(path).map_err(err)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Diagnostic::new(
            path,
            Pos::default(),
            "no *.yaml rules files in this directory",
        ));
    }
    Ok(files)
}

/// Compiles rules files given as (path, text); relative page paths are taken from each file's folder.
pub fn compile(files: &[(PathBuf, String)]) -> Result<RuleSet, Diagnostics> {
    compile_resolved(files, &Resolved::default())
}

/// [`compile`], with servers named by DNS given the addresses in `resolved`.
pub fn compile_resolved(
    files: &[(PathBuf, String)],
    resolved: &Resolved,
) -> Result<RuleSet, Diagnostics> {
    let mut c = Compiler {
        resolved: resolved.clone(),
        ..Compiler::default()
    };
    let mut parsed = Vec::new();
    for (path, text) in files {
        match parse_yaml::<RulesFile>(path, text) {
            Ok(f) => parsed.push((path.as_path(), f)),
            Err(d) => c.diags.push(d),
        }
    }
    for (path, f) in &parsed {
        c.networks(path, f);
        c.lists(path, f);
    }
    for (path, f) in &parsed {
        c.limits(path, f);
        let deny = c.deny_rules(path, &f.deny);
        c.set.deny.extend(deny);
    }
    for (path, f) in &parsed {
        c.pools(path, f);
        c.services(path, f);
    }
    for (path, f) in &parsed {
        c.backup_services(path, f);
    }
    for (path, f) in &parsed {
        for site in &f.sites {
            c.site(path, site);
        }
    }
    for (path, f) in &parsed {
        c.defaults(path, f);
        for p in &f.passthrough {
            c.passthrough(path, p);
        }
    }
    let Compiler { diags, mut set, .. } = c;
    set.dns_names.sort();
    set.dns_names.dedup();
    diags.finish(set)
}

impl RuleSet {
    /// A rule set with nothing in it (every host 404).
    pub fn empty() -> Self {
        RuleSet {
            sites: Vec::new(),
            services: Vec::new(),
            pools: Vec::new(),
            error_pages: HashMap::new(),
            passthrough: Vec::new(),
            deny: Vec::new(),
            deny_count: 0,
            limits: Vec::new(),
            list_files: Vec::new(),
            dns_names: Vec::new(),
            warnings: Vec::new(),
            passthrough_hosts: HostIndex::default(),
            hosts: HostIndex::default(),
            default_site: None,
        }
    }
}

/// What a site gives each of its routes unless the route says otherwise.
struct SiteDefaults {
    allow: Option<Arc<AllowList>>,
    max_body: Option<u64>,
    limit: Option<usize>,
    headers: Option<Arc<super::policy::HeaderRules>>,
}

#[derive(Default)]
struct Compiler {
    diags: Diagnostics,
    set: RuleSet,
    networks: HashMap<String, Vec<IpNet>>,
    pool_index: HashMap<String, usize>,
    service_index: HashMap<String, usize>,
    server_names: HashSet<String>,
    server_count: usize,
    site_names: HashSet<String>,
    agents: HashMap<String, Arc<super::policy::AgentList>>,
    deny_names: HashSet<String>,
    limit_index: HashMap<String, usize>,
    resolved: Resolved,
}

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet::empty()
    }
}

fn at<T>(s: &Spanned<T>) -> Pos {
    Pos::of(&s.referenced)
}

/// The last line of a regex error (the one that says what is wrong; the others draw it).
pub(super) fn regex_error(e: &regex::Error) -> String {
    e.to_string()
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Whether `name` can be a name in the rules: letters, digits, `-`, `_`, `.`, `:` (as
/// HAProxy's proxy and server names), so it is one CSV cell, one Prometheus label value
/// and one word in the access log, whatever renders it.
pub fn good_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

impl Compiler {
    /// Reports `name` (a `what`) unless it is a [`good_name`].
    fn name(&mut self, file: &Path, pos: Pos, what: &str, name: &str) {
        if !good_name(name) {
            self.err_hint(
                file,
                pos,
                format!("{what} name `{name}` has a character names cannot have"),
                "letters, digits, `-`, `_`, `.` and `:` only",
            );
        }
    }

    fn err(&mut self, file: &Path, pos: Pos, msg: impl Into<String>) {
        self.diags.push(Diagnostic::new(file, pos, msg));
    }

    fn err_hint(&mut self, file: &Path, pos: Pos, msg: impl Into<String>, hint: impl Into<String>) {
        self.diags.push(Diagnostic::new(file, pos, msg).hint(hint));
    }

    fn networks(&mut self, file: &Path, f: &RulesFile) {
        for (name, list) in &f.networks {
            let mut nets = Vec::new();
            for cidr in &list.value {
                let text = cidr.value.trim();
                let parsed = text
                    .parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
                match parsed {
                    Ok(n) => nets.push(n.trunc()),
                    Err(_) => self.err_hint(
                        file,
                        at(cidr),
                        format!("network `{name}`: `{text}` is not a CIDR"),
                        "an address or network such as 10.0.0.0/8 or 2001:db8::/32",
                    ),
                }
            }
            self.name(file, at(list), "network", name);
            if self.networks.insert(name.clone(), nets).is_some() {
                self.err(file, at(list), format!("network `{name}` is defined twice"));
            }
        }
    }

    fn pools(&mut self, file: &Path, f: &RulesFile) {
        for (name, pool) in &f.pools {
            let p = &pool.value;
            if p.slots == 0 {
                self.err(
                    file,
                    at(pool),
                    format!("pool `{name}`: slots must be at least 1"),
                );
            }
            let queue_timeout = match &p.queue_timeout {
                None => Duration::from_secs(10),
                Some(t) => parse_duration(&t.value.0).unwrap_or_else(|e| {
                    self.err(file, at(t), format!("pool `{name}`: queue_timeout: {e}"));
                    Duration::ZERO
                }),
            };
            self.name(file, at(pool), "pool", name);
            if self.pool_index.contains_key(name) {
                self.err(file, at(pool), format!("pool `{name}` is defined twice"));
                continue;
            }
            let per_client = match &p.per_client {
                Some(n) if n.value == 0 => {
                    self.err(
                        file,
                        at(n),
                        format!("pool `{name}`: per_client must be at least 1"),
                    );
                    1
                }
                Some(n) => n.value,
                None => PoolSpec::default_share(p.slots),
            };
            let per_client_in = self.network_shares(file, name, &p.per_client_in);
            self.pool_index.insert(name.clone(), self.set.pools.len());
            self.set.pools.push(PoolSpec {
                name: name.as_str().into(),
                slots: p.slots,
                queue: p.queue,
                queue_timeout,
                balance: p.balance,
                per_client,
                per_client_in,
            });
        }
    }

    /// A pool's `per_client_in`: each network named must exist; shares are at least 1.
    fn network_shares(
        &mut self,
        file: &Path,
        pool: &str,
        shares: &std::collections::BTreeMap<String, Spanned<u32>>,
    ) -> Vec<NetworkShare> {
        let mut out = Vec::new();
        for (network, share) in shares {
            if share.value == 0 {
                self.err(
                    file,
                    at(share),
                    format!("pool `{pool}`: per_client_in `{network}` must be at least 1"),
                );
            }
            let named = Spanned {
                value: network.clone(),
                referenced: share.referenced,
                defined: share.defined,
            };
            let list = self.allow_list(file, std::slice::from_ref(&named));
            out.push(NetworkShare {
                network: network.clone(),
                list,
                share: share.value.max(1),
            });
        }
        out
    }

    fn services(&mut self, file: &Path, f: &RulesFile) {
        for (name, svc) in &f.services {
            let s = &svc.value;
            let blue = self.servers(file, name, &s.blue);
            let green = self.servers(file, name, &s.green);
            // Counted as written: a name DNS has not answered yet still counts.
            let has = |list: &[Spanned<ServerFile>]| list.iter().any(|s| !s.value.backup);
            let live = match &s.live {
                Some(l) => {
                    let empty = match l.value {
                        Colour::Blue => !has(&s.blue),
                        Colour::Green => !has(&s.green),
                    };
                    if empty {
                        self.err_hint(
                            file,
                            at(l),
                            format!(
                                "service `{name}`: the live colour `{}` has no servers",
                                l.value.as_str()
                            ),
                            "at least one server in the live colour's list",
                        );
                    }
                    l.value
                }
                None => match (has(&s.blue), has(&s.green)) {
                    (true, false) => Colour::Blue,
                    (false, true) => Colour::Green,
                    (both, _) => {
                        self.err_hint(
                            file,
                            at(svc),
                            format!(
                                "service `{name}`: {}",
                                if both {
                                    "both colours have servers; say which one is `live:`"
                                } else {
                                    "no servers"
                                }
                            ),
                            "`live: blue` or `live: green`, and servers under that colour",
                        );
                        Colour::Blue
                    }
                },
            };
            let mode = s.mode.as_ref().map_or(Mode::Http, |m| m.value);
            let balance = s.balance.unwrap_or_default();
            if mode == Mode::Tcp {
                let pos = s.mode.as_ref().map_or(at(svc), at);
                if balance == Balance::HashUri {
                    self.err_hint(
                        file,
                        pos,
                        format!("service `{name}`: a TCP service has no URI to hash"),
                        "balance: roundrobin, leastconn or hash-source",
                    );
                }
                if s.backup_page.is_some() {
                    self.err_hint(
                        file,
                        pos,
                        format!("service `{name}`: a TCP service cannot answer with a page"),
                        "leave out backup_page (a TCP client is closed when no server is up)",
                    );
                }
            }
            let backup_page = s.backup_page.as_ref().and_then(|p| self.page(file, p));
            let mut health = self.health(file, name, s.health.as_ref());
            health.send_proxy = s.send_proxy.is_some() && health.port.is_none();
            let tls = s
                .tls
                .as_ref()
                .and_then(|t| self.upstream_tls(file, name, t, mode));
            if health.port.is_none() {
                health.tls = tls.clone();
            }
            let buffer_chunked = self.size(file, "buffer_chunked", &s.buffer_chunked);
            self.name(file, at(svc), "service", name);
            if self.service_index.contains_key(name) {
                self.err(file, at(svc), format!("service `{name}` is defined twice"));
                continue;
            }
            self.service_index
                .insert(name.clone(), self.set.services.len());
            self.set.services.push(Arc::new(Service {
                name: name.as_str().into(),
                live,
                blue: Group::new(blue),
                green: Group::new(green),
                backup_page,
                backup_service: None,
                health,
                balance,
                send_proxy: s.send_proxy.is_some(),
                tls,
                buffer_chunked,
                mode,
            }));
        }
    }

    fn servers(
        &mut self,
        file: &Path,
        service: &str,
        list: &[Spanned<ServerFile>],
    ) -> Vec<Arc<Server>> {
        let mut out = Vec::new();
        for s in list {
            let name = s.value.name.value.trim();
            let what = format!("service `{service}`: server");
            self.name(file, at(&s.value.name), &what, name);
            if !self.server_names.insert(name.to_string()) {
                self.err(
                    file,
                    at(&s.value.name),
                    format!("server name `{name}` is used twice"),
                );
            }
            let text = s.value.addr.value.trim();
            let addrs: Vec<(String, SocketAddr, Option<Arc<str>>)> =
                if let Ok(a) = text.parse::<SocketAddr>() {
                    vec![(name.to_string(), a, None)]
                } else if let Some((host, port)) = super::resolved::host_port(text) {
                    self.set.dns_names.push(host.clone());
                    let host: Arc<str> = host.into();
                    self.resolved
                        .slots(&host)
                        .iter()
                        .enumerate()
                        .filter_map(|(i, ip)| {
                            let a = SocketAddr::new((*ip)?, port);
                            Some((format!("{name}#{}", i + 1), a, Some(host.clone())))
                        })
                        .collect()
                } else {
                    self.err_hint(
                        file,
                        at(&s.value.addr),
                        format!("server `{name}`: `{text}` is not an address or host:port"),
                        "ip:port such as 10.0.1.11:5000 or [2001:db8::1]:5000, or a DNS name \
                         and port such as web-ui:5000",
                    );
                    continue;
                };
            for (name, addr, host) in addrs {
                let Ok(authority) = addr.to_string().parse::<http::uri::Authority>() else {
                    continue;
                };
                self.server_count += 1;
                out.push(Arc::new(Server {
                    id: self.server_count - 1,
                    name: name.into(),
                    addr,
                    authority,
                    host,
                    weight: s.value.weight.unwrap_or(1),
                    initial_weight: s.value.weight.unwrap_or(1),
                    maxconn: s.value.maxconn.filter(|m| *m > 0),
                    backup: s.value.backup,
                }));
            }
        }
        out
    }

    /// A service's TLS to its servers: verified against its CA file, or not at all.
    fn upstream_tls(
        &mut self,
        file: &Path,
        service: &str,
        t: &Spanned<UpstreamTlsFile>,
        mode: Mode,
    ) -> Option<Arc<UpstreamTls>> {
        if mode == Mode::Tcp {
            self.err_hint(
                file,
                at(t),
                format!("service `{service}`: a TCP service relays bytes as they are"),
                "no `tls` (a passthrough name or TCP listener keeps the client's TLS)",
            );
            return None;
        }
        let sni = t.value.sni.as_ref().map(|s| s.value.trim().to_string());
        if let Some(s) = &t.value.sni
            && pki_types::ServerName::try_from(s.value.trim()).is_err()
        {
            self.err(
                file,
                at(s),
                format!(
                    "service `{service}`: `{}` is not a name to send as SNI",
                    s.value
                ),
            );
            return None;
        }
        let none = t
            .value
            .verify
            .as_ref()
            .is_some_and(|v| v.value == Verify::None);
        let built = match (&t.value.ca, none) {
            (Some(ca), false) => {
                let path = file.parent().unwrap_or(Path::new(".")).join(&ca.value);
                UpstreamTls::with_ca(&path, sni).map_err(|e| (at(ca), e))
            }
            (None, true) => {
                let w = Diagnostic::new(
                    file,
                    at(t),
                    format!(
                        "warning: service `{service}`: `verify: none`: the servers' certificates \
                         are not checked, so whoever sits between the proxy and them can read \
                         and change the traffic"
                    ),
                );
                self.set.warnings.push(w.to_string());
                UpstreamTls::unverified(sni).map_err(|e| (at(t), e))
            }
            (Some(ca), true) => Err((at(ca), "`ca` is unused with `verify: none`".into())),
            (None, false) => Err((at(t), "TLS to servers needs `ca` or `verify: none`".into())),
        };
        match built {
            Ok(tls) => Some(Arc::new(tls)),
            Err((pos, e)) => {
                self.err_hint(
                    file,
                    pos,
                    format!("service `{service}`: {e}"),
                    "tls: { ca: certs/servers-ca.pem } or tls: { verify: none }",
                );
                None
            }
        }
    }

    fn health(&mut self, file: &Path, service: &str, h: Option<&HealthFile>) -> HealthSpec {
        let mut spec = HealthSpec {
            path: None,
            expect: None,
            method: "GET",
            host: None,
            on_404_drain: false,
            port: None,
            send_proxy: false,
            tls: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        };
        let Some(h) = h else { return spec };
        if let Some(p) = &h.path {
            if !p.value.starts_with('/') {
                self.err(
                    file,
                    at(p),
                    format!("service `{service}`: health path must start with /"),
                );
            }
            spec.path = Some(p.value.clone());
        }
        spec.expect = h.expect.as_ref().map(|e| match &e.value {
            super::file::Expect::One(code) => vec![*code],
            super::file::Expect::Any(codes) => codes.clone(),
        });
        if let Some(e) = &h.expect
            && spec
                .expect
                .as_ref()
                .is_some_and(|c| c.is_empty() || c.iter().any(|c| !(100..600).contains(c)))
        {
            self.err(
                file,
                at(e),
                format!("service `{service}`: health expect needs statuses from 100 to 599"),
            );
        }
        if let Some(m) = &h.method {
            match m.value.to_ascii_uppercase().as_str() {
                "GET" => spec.method = "GET",
                "HEAD" => spec.method = "HEAD",
                "OPTIONS" => spec.method = "OPTIONS",
                _ => self.err_hint(
                    file,
                    at(m),
                    format!("service `{service}`: health method `{}`", m.value),
                    "GET, HEAD or OPTIONS",
                ),
            }
        }
        if let Some(host) = &h.host {
            if HostPattern::parse(&host.value).is_ok_and(|p| matches!(p, HostPattern::Exact(_)))
                || host.value.parse::<SocketAddr>().is_ok()
            {
                spec.host = Some(host.value.clone());
            } else {
                self.err(
                    file,
                    at(host),
                    format!(
                        "service `{service}`: health host `{}` is not a host name",
                        host.value
                    ),
                );
            }
        }
        spec.on_404_drain = h.on_404.is_some();
        if let Some(o) = &h.on_404
            && spec.path.is_none()
        {
            self.err(
                file,
                at(o),
                format!("service `{service}`: on_404 needs an HTTP check (`path`)"),
            );
        }
        if let Some(p) = &h.port {
            if p.value == 0 {
                self.err(file, at(p), format!("service `{service}`: health port 0"));
            }
            spec.port = Some(p.value);
        }
        for (field, value, target) in [
            ("interval", &h.interval, &mut spec.interval),
            ("timeout", &h.timeout, &mut spec.timeout),
        ] {
            if let Some(v) = value {
                match parse_duration(&v.value.0) {
                    Ok(d) if d >= Duration::from_millis(10) => *target = d,
                    _ => self.err_hint(
                        file,
                        at(v),
                        format!("service `{service}`: health {field} is not a duration"),
                        "a duration of at least 10ms, such as 2s",
                    ),
                }
            }
        }
        spec.rise = h.rise.unwrap_or(2).max(1);
        spec.fall = h.fall.unwrap_or(3).max(1);
        spec
    }

    fn backup_services(&mut self, file: &Path, f: &RulesFile) {
        for (name, svc) in &f.services {
            let Some(b) = &svc.value.backup_service else {
                continue;
            };
            let (Some(&me), target) = (
                self.service_index.get(name),
                self.service_index.get(&b.value).copied(),
            ) else {
                continue;
            };
            match target {
                Some(t) if t != me && self.set.services[t].mode != self.set.services[me].mode => {
                    self.err_hint(
                        file,
                        at(b),
                        format!(
                            "service `{name}`: backup_service `{}` speaks another mode",
                            b.value
                        ),
                        "an HTTP service backs up an HTTP service",
                    )
                }
                Some(t) if t != me => {
                    if let Some(s) = Arc::get_mut(&mut self.set.services[me]) {
                        s.backup_service = Some(t);
                    }
                }
                _ => self.err_hint(
                    file,
                    at(b),
                    format!(
                        "service `{name}`: backup_service `{}` is not another service",
                        b.value
                    ),
                    "the name of another service",
                ),
            }
        }
    }

    fn page(&mut self, file: &Path, p: &Spanned<String>) -> Option<Bytes> {
        let path = file.parent().unwrap_or(Path::new(".")).join(&p.value);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() > MAX_PAGE_BYTES => {
                self.err(
                    file,
                    at(p),
                    format!("page {} is larger than 1 MiB", path.display()),
                );
                None
            }
            Ok(m) if m.len() == 0 => {
                self.err(file, at(p), format!("page {} is empty", path.display()));
                None
            }
            Ok(_) => match std::fs::read(&path) {
                Ok(b) => Some(Bytes::from(b)),
                Err(e) => {
                    self.err(
                        file,
                        at(p),
                        format!("cannot read page {}: {e}", path.display()),
                    );
                    None
                }
            },
            Err(e) => {
                self.err_hint(
                    file,
                    at(p),
                    format!("cannot read page {}: {e}", path.display()),
                    "a path relative to this rules file",
                );
                None
            }
        }
    }

    fn allow_list(&mut self, file: &Path, names: &[Spanned<String>]) -> Arc<AllowList> {
        let mut nets = Vec::new();
        let mut labels = Vec::new();
        for n in names {
            match self.networks.get(&n.value) {
                Some(list) => nets.extend_from_slice(list),
                None => {
                    let mut known: Vec<&str> = self.networks.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    self.err_hint(
                        file,
                        at(n),
                        format!("unknown network `{}`", n.value),
                        format!("one of the networks defined: {}", known.join(", ")),
                    );
                }
            }
            labels.push(n.value.clone());
        }
        Arc::new(AllowList::new(labels, &nets))
    }

    fn size(
        &mut self,
        file: &Path,
        what: &str,
        v: &Option<Spanned<crate::units::Scalar>>,
    ) -> Option<u64> {
        let v = v.as_ref()?;
        match parse_size(&v.value.0) {
            Ok(n) => Some(n),
            Err(e) => {
                self.err_hint(
                    file,
                    at(v),
                    format!("{what}: {e}"),
                    "a size such as 10MiB or 1048576",
                );
                None
            }
        }
    }

    fn site(&mut self, file: &Path, spanned: &Spanned<SiteFile>) {
        let s = &spanned.value;
        let name = s.name.value.clone();
        self.name(file, at(&s.name), "site", &name);
        if !self.site_names.insert(name.clone()) {
            self.err(file, at(&s.name), format!("site `{name}` is defined twice"));
        }
        let index = self.set.sites.len();
        let mut hosts = Vec::new();
        for h in &s.hosts {
            match HostPattern::parse(&h.value) {
                Ok(p) => {
                    if !self.set.hosts.claim(&p, index) {
                        self.err(
                            file,
                            at(h),
                            format!(
                                "site `{name}`: host `{}` is already claimed by another site",
                                h.value
                            ),
                        );
                    }
                    hosts.push(p);
                }
                Err(e) => self.err_hint(
                    file,
                    at(h),
                    format!("site `{name}`: {e}"),
                    "data.example.org, *.example.org or store.*",
                ),
            }
        }
        if s.hosts.is_empty() {
            self.err(file, at(spanned), format!("site `{name}` has no hosts"));
        }
        let defaults = SiteDefaults {
            allow: s.allow_from.as_ref().map(|l| self.allow_list(file, l)),
            max_body: self.size(file, &format!("site `{name}`: max_body"), &s.max_body),
            limit: s.limit.as_ref().and_then(|l| self.limit_ref(file, l)),
            headers: s
                .headers
                .as_ref()
                .map(|h| Arc::new(self.header_rules(file, &format!("site {name}"), h))),
        };
        let deny = self.deny_rules(file, &s.deny);
        let hsts = s.hosts_hsts(file, self);
        let mut routes: Vec<Route> = Vec::new();
        for (i, r) in s.routes.iter().enumerate() {
            if let Some(route) = self.route(file, &name, i, r, &defaults) {
                if let Some(earlier) = routes
                    .iter()
                    .find(|e| e.conditions.is_empty() && route.path.is_shadowed_by(&e.path))
                {
                    self.err_hint(
                        file,
                        at(r),
                        format!(
                            "site `{name}`: route `{}` can never match: route `{}` ({}) takes all its paths first",
                            route.name,
                            earlier.name,
                            earlier.path.describe()
                        ),
                        "more specific routes before broader ones",
                    );
                }
                routes.push(route);
            }
        }
        if s.routes.is_empty() {
            self.err(file, at(spanned), format!("site `{name}` has no routes"));
        }
        self.set.sites.push(Site {
            index,
            name: name.into(),
            hosts,
            colour: s.colour,
            hsts,
            routes,
            deny,
        });
    }

    fn route(
        &mut self,
        file: &Path,
        site: &str,
        i: usize,
        spanned: &Spanned<RouteFile>,
        defaults: &SiteDefaults,
    ) -> Option<Route> {
        let r = &spanned.value;
        let pos = at(spanned);
        let name: Arc<str> = match &r.name {
            Some(n) => {
                self.name(file, at(n), "route", &n.value);
                n.value.as_str().into()
            }
            None => format!("{site}#{}", i + 1).into(),
        };
        // Every part is checked even when an earlier one failed, so one edit's mistakes
        // are all reported together.
        let path = match &r.path {
            None => Some(PathPattern::Any),
            Some(PathFile::Exact(p)) | Some(PathFile::Prefix(p)) if !p.value.starts_with('/') => {
                self.err_hint(
                    file,
                    at(p),
                    format!("route `{name}`: path `{}` does not start with /", p.value),
                    "a path such as /api/",
                );
                None
            }
            Some(PathFile::Exact(p)) => Some(PathPattern::Exact(p.value.clone())),
            Some(PathFile::Prefix(p)) => Some(PathPattern::prefix(&p.value)),
            Some(PathFile::Regex(p)) => match regex::Regex::new(&format!("^(?:{})$", p.value)) {
                Ok(re) => Some(PathPattern::Regex(re)),
                Err(e) => {
                    self.err_hint(
                        file,
                        at(p),
                        format!("route `{name}`: bad regex: {}", regex_error(&e)),
                        "a regular expression (Rust regex syntax)",
                    );
                    None
                }
            },
        };
        let action = match (&r.deny, &r.service, &r.pool) {
            (None, None, None) if r.redirect.is_some() => {
                Action::Redirect(self.redirect(file, &name, r.redirect.as_ref()?)?)
            }
            _ if r.redirect.is_some() => {
                self.err_hint(
                    file,
                    pos,
                    format!("route `{name}` both redirects and denies or forwards"),
                    "one of `redirect:`, `deny:`, or `service:` with `pool:`",
                );
                return None;
            }
            (Some(status), None, None) => match StatusCode::from_u16(status.value) {
                Ok(s) if (400..600).contains(&status.value) => Action::Deny(s),
                _ => {
                    self.err_hint(
                        file,
                        at(status),
                        format!(
                            "route `{name}`: deny {} is not an error status",
                            status.value
                        ),
                        "a status from 400 to 599",
                    );
                    return None;
                }
            },
            (None, Some(service), Some(pool)) => {
                let s = self.service_index.get(&service.value).copied();
                let p = self.pool_index.get(&pool.value).copied();
                if s.is_none() {
                    let mut known: Vec<&str> = self
                        .service_index
                        .iter()
                        .filter(|(_, i)| self.set.services[**i].mode == Mode::Http)
                        .map(|(k, _)| k.as_str())
                        .collect();
                    known.sort_unstable();
                    self.err_hint(
                        file,
                        at(service),
                        format!("route `{name}`: unknown service `{}`", service.value),
                        format!("one of: {}", known.join(", ")),
                    );
                }
                if p.is_none() {
                    let mut known: Vec<&str> = self.pool_index.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    self.err_hint(
                        file,
                        at(pool),
                        format!("route `{name}`: unknown pool `{}`", pool.value),
                        format!("one of: {}", known.join(", ")),
                    );
                }
                if let Some(i) = s.filter(|i| self.set.services[*i].mode == Mode::Tcp) {
                    self.err_hint(
                        file,
                        at(service),
                        format!(
                            "route `{name}`: service `{}` is a TCP service",
                            self.set.services[i].name
                        ),
                        "routes forward HTTP; a TCP service is reached from a TCP listener or `passthrough`",
                    );
                    return None;
                }
                match (p, s) {
                    (Some(pool), Some(service)) => Action::Forward { pool, service },
                    _ => return None,
                }
            }
            _ => {
                self.err_hint(
                    file,
                    pos,
                    format!("route `{name}` must deny, redirect or forward"),
                    "`deny: <status>`, `redirect:`, or both `service:` and `pool:`",
                );
                return None;
            }
        };
        let allow = match &r.allow_from {
            Some(l) => Some(self.allow_list(file, l)),
            None => defaults.allow.clone(),
        };
        let max_body = self
            .size(file, &format!("route `{name}`: max_body"), &r.max_body)
            .or(defaults.max_body);
        let methods = r.methods.as_ref().map(|m| self.methods(file, &name, m));
        let conditions = self.header_conds(file, &format!("route {name}"), &r.match_headers);
        let limit = match &r.limit {
            Some(l) => self.limit_ref(file, l),
            None => defaults.limit,
        };
        let mut headers: Vec<_> = defaults.headers.iter().cloned().collect();
        if let Some(h) = &r.headers {
            headers.push(Arc::new(self.header_rules(
                file,
                &format!("route {name}"),
                h,
            )));
        }
        Some(Route {
            name,
            path: path?,
            action,
            allow,
            max_body,
            methods,
            conditions,
            limit,
            headers,
        })
    }

    fn methods(
        &mut self,
        file: &Path,
        route: &str,
        list: &Spanned<Vec<Spanned<String>>>,
    ) -> Methods {
        if list.value.is_empty() {
            self.err(
                file,
                at(list),
                format!("route `{route}`: `methods` is empty"),
            );
        }
        let mut set = Methods::default();
        for m in &list.value {
            match Methods::parse(m.value.trim()) {
                Some(one) => set = set.union(one),
                None => self.err_hint(
                    file,
                    at(m),
                    format!("route `{route}`: unknown method `{}`", m.value),
                    format!("one of {}", Methods::known()),
                ),
            }
        }
        set
    }

    fn passthrough(&mut self, file: &Path, spanned: &Spanned<PassthroughFile>) {
        let p = &spanned.value;
        let name = p.name.value.trim();
        let index = self.set.passthrough.len();
        let mut hosts = Vec::new();
        for h in &p.hosts {
            match HostPattern::parse(&h.value) {
                Ok(pat) => {
                    if !self.set.passthrough_hosts.claim(&pat, index) {
                        self.err(
                            file,
                            at(h),
                            format!(
                                "passthrough `{name}`: `{}` is already passed through",
                                h.value
                            ),
                        );
                    }
                    hosts.push(pat);
                }
                Err(e) => self.err_hint(
                    file,
                    at(h),
                    format!("passthrough `{name}`: {e}"),
                    "pass.example.org, *.example.org or pass.*",
                ),
            }
        }
        if p.hosts.is_empty() {
            self.err(
                file,
                at(spanned),
                format!("passthrough `{name}` has no hosts"),
            );
        }
        let service = match self.service_index.get(&p.service.value).copied() {
            Some(i) if self.set.services[i].mode == Mode::Tcp => i,
            Some(_) => {
                return self.err_hint(
                    file,
                    at(&p.service),
                    format!(
                        "passthrough `{name}`: service `{}` is an HTTP service",
                        p.service.value
                    ),
                    "passthrough relays TLS bytes to a service with `mode: tcp`",
                );
            }
            None => {
                return self.err_hint(
                    file,
                    at(&p.service),
                    format!(
                        "passthrough `{name}`: unknown service `{}`",
                        p.service.value
                    ),
                    "the name of a service with `mode: tcp`",
                );
            }
        };
        let allow = p.allow_from.as_ref().map(|l| self.allow_list(file, l));
        self.set.passthrough.push(Passthrough {
            name: name.into(),
            hosts,
            service,
            allow,
        });
    }

    fn defaults(&mut self, file: &Path, f: &RulesFile) {
        if let Some(d) = &f.default_site {
            match self.set.sites.iter().position(|s| *s.name == *d.value) {
                Some(i) => self.set.default_site = Some(i),
                None => self.err(
                    file,
                    at(d),
                    format!("default_site `{}` is not a site", d.value),
                ),
            }
        }
        for (code, page) in &f.error_pages {
            if !(400..600).contains(code) {
                self.err(
                    file,
                    at(page),
                    format!("error_pages: {code} is not an error status"),
                );
                continue;
            }
            if let Some(body) = self.page(file, page) {
                self.set.error_pages.insert(*code, body);
            }
        }
    }
}

impl SiteFile {
    fn hosts_hsts(&self, file: &Path, c: &mut Compiler) -> Option<http::HeaderValue> {
        let v = match &self.hsts {
            None => return http::HeaderValue::from_str("max-age=31536000").ok(),
            Some(v) => v,
        };
        match parse_duration(&v.value.0) {
            Ok(d) if d.is_zero() => None,
            Ok(d) => http::HeaderValue::from_str(&format!("max-age={}", d.as_secs())).ok(),
            Err(e) => {
                c.err_hint(
                    file,
                    at(v),
                    format!("site `{}`: hsts: {e}", self.name.value),
                    "a max-age such as 365d, or 0 to turn it off",
                );
                None
            }
        }
    }
}
