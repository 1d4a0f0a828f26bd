//! Process config: the serde mirror in `file`, validated here into [`Config`].
//!
//! Relative paths are taken from the config file's folder, so a config works the
//! same from whatever directory the proxy is started in.

pub mod file;

use crate::diag::{Diagnostic, Diagnostics, Pos, parse_yaml, read_file};
use crate::rules::matcher::AllowList;
use crate::units::{Scalar, parse_duration, parse_size};
use file::ConfigFile;
use ipnet::IpNet;
use serde_saphyr::Spanned;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The validated process config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file itself.
    pub path: PathBuf,
    /// The rules file or directory.
    pub rules: PathBuf,
    /// HTTPS listener addresses.
    pub https: Vec<SocketAddr>,
    /// Plain HTTP listener addresses.
    pub http: Vec<SocketAddr>,
    /// Port written into HTTPS redirects.
    pub redirect_port: u16,
    /// Whether plain HTTP is redirected to HTTPS (else proxied).
    pub redirect_http: bool,
    /// Peers that must send PROXY headers to the HTTPS listeners.
    pub proxy_protocol_https: Option<AllowList>,
    /// Peers that must send PROXY headers to the plain listeners.
    pub proxy_protocol_http: Option<AllowList>,
    /// TCP (layer 4) listeners.
    pub tcp: Vec<TcpListen>,
    /// Stats listener address.
    pub stats: Option<SocketAddr>,
    /// Who may read the stats listener; `None` = everyone.
    pub stats_allow: Option<AllowList>,
    /// Basic-auth credentials for the stats listener.
    pub stats_auth: Option<(String, String)>,
    /// Whether admin actions are enabled.
    pub stats_admin: bool,
    /// Certificates in order; the first is the default.
    pub certificates: Vec<CertPaths>,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: AllowList,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Limits.
    pub limits: Limits,
    /// Access log format.
    pub access_log: AccessLog,
    /// Where access log lines go.
    pub access_log_to: LogTarget,
    /// Whether requests get an `X-Request-ID`.
    pub request_id: bool,
    /// Worker threads.
    pub workers: usize,
    /// New connections during the drain delay.
    pub drain_delay_mode: DelayMode,
    /// Shared rate-limit store URL.
    pub limits_store: Option<String>,
    /// Where listening sockets are offered to a successor process.
    pub upgrade_socket: Option<PathBuf>,
    /// The DNS client for servers named by host.
    pub dns: DnsConfig,
    /// The runtime API socket, when configured.
    pub runtime_socket: Option<RuntimeSocket>,
    /// Where server states are kept across restarts, when configured.
    pub state_file: Option<PathBuf>,
    /// The audit log file (JSON lines), when configured.
    pub audit_log: Option<PathBuf>,
}

/// The runtime API socket: path, mode and owner.
#[derive(Debug, Clone)]
pub struct RuntimeSocket {
    /// Socket path.
    pub path: PathBuf,
    /// File mode.
    pub mode: u32,
    /// Owner (name or uid), when not the proxy's user.
    pub user: Option<String>,
    /// Group (name or gid), when not the proxy's group.
    pub group: Option<String>,
}

/// How servers named by DNS are resolved.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Name servers to ask (empty: the system's).
    pub nameservers: Vec<SocketAddr>,
    /// Longest time between two lookups of a name.
    pub interval: Duration,
    /// One lookup's timeout.
    pub timeout: Duration,
}

/// One TCP listener: where it binds and which service takes its connections.
#[derive(Debug, Clone)]
pub struct TcpListen {
    /// Name for logs and stats.
    pub name: std::sync::Arc<str>,
    /// Addresses to bind.
    pub bind: Vec<SocketAddr>,
    /// The rules' TCP service, by name.
    pub service: String,
    /// Where the config names the service (for errors when the rules lack it).
    pub service_pos: Pos,
    /// Connections open at once.
    pub max_connections: usize,
    /// Close after this long without a byte either way.
    pub idle: Duration,
    /// Peers that must send a PROXY header.
    pub proxy_protocol: Option<AllowList>,
    /// Clients relayed (`None`: everyone).
    pub allow: Option<AllowList>,
    /// Sessions at once from one client address (`None`: `limits`' per-client cap).
    pub max_per_client: Option<usize>,
}

/// Where one certificate and its key are, and where the config named them (for errors).
#[derive(Debug, Clone)]
pub struct CertPaths {
    /// PEM chain.
    pub cert: PathBuf,
    /// PEM key.
    pub key: PathBuf,
    /// Position of the entry in the config file.
    pub pos: Pos,
}

/// Every timeout the proxy applies.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TLS handshake.
    pub handshake: Duration,
    /// Client request headers.
    pub request_header: Duration,
    /// Idle client connection.
    pub idle: Duration,
    /// Connect to a server.
    pub connect: Duration,
    /// Server's first response byte.
    pub response: Duration,
    /// A client taking no byte written to it, or sending no byte of its upload.
    pub client: Duration,
    /// A server sending no byte of a response body, or taking no byte of an upload.
    pub server: Duration,
    /// Idle upstream keep-alive.
    pub upstream_idle: Duration,
    /// Shutdown drain deadline.
    pub drain: Duration,
    /// Upgraded-connection inactivity.
    pub tunnel: Duration,
    /// Shutdown grace before idle connections close.
    pub grace: Duration,
    /// On SIGTERM, time still accepting with `/healthz` at 503, before the drain.
    pub drain_delay: Duration,
}

/// Bounds on what one client or the whole process may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request header block bytes.
    pub max_header_bytes: usize,
    /// Request header count.
    pub max_headers: usize,
    /// Client connections at once.
    pub max_connections: usize,
    /// Idle keep-alives per server.
    pub upstream_idle_per_server: usize,
    /// Longest request URI.
    pub max_uri_bytes: usize,
    /// Connections at once per client address.
    pub max_connections_per_client: usize,
    /// TLS handshakes in progress at once.
    pub max_handshakes: usize,
    /// TLS handshakes in progress at once from one client address.
    pub max_handshakes_per_client: usize,
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard error (the journal under systemd, which adds the syslog prefix).
    Stderr,
    /// A file, appended to, reopened on SIGUSR1 (logrotate), lines prefixed as a syslog
    /// daemon writes them.
    File(PathBuf),
    /// A syslog socket (`/dev/log`, or the path given), one datagram per line.
    Syslog(PathBuf),
}

/// What the listeners do with new connections during `timeouts.drain_delay`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DelayMode {
    /// Serve them: what reaches this process until a balancer or DNS moves away is served.
    #[default]
    Accept,
    /// Drop their first packet without an answer (a socket filter), so the client's
    /// kernel sends it again a second later, by then to the instance that took the
    /// address over (keepalived). Connections already open are served.
    Hold,
}

/// Access log layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    /// One human-readable line per request.
    Text,
    /// One JSON object per request, alone on its line.
    Json,
    /// HAProxy's `httplog` line, for `halog` and the parsers written for HAProxy.
    Haproxy,
    /// No access log (benchmarks).
    Off,
}

impl Config {
    /// Reads and validates the config at `path`, reporting every problem found.
    pub fn load(path: &Path) -> Result<Config, Diagnostics> {
        let text = read_file(path, path, Pos::default())?;
        let raw: ConfigFile = parse_yaml(path, &text)?;
        validate(path, raw, &Dirs::from_env())
    }
}

/// Where relative paths of files the process writes are taken from. Under systemd these
/// are the directories the unit declares (`RuntimeDirectory=`, `StateDirectory=`, passed
/// as `$RUNTIME_DIRECTORY` and `$STATE_DIRECTORY`), since the config's own folder is
/// read-only there; elsewhere the config's folder.
#[derive(Debug, Default)]
pub struct Dirs {
    /// For sockets (`upgrade_socket`, `runtime_socket.path`).
    pub runtime: Option<PathBuf>,
    /// For `state_file`.
    pub state: Option<PathBuf>,
    /// For `audit_log` (`LogsDirectory=`, `$LOGS_DIRECTORY`).
    pub logs: Option<PathBuf>,
}

impl Dirs {
    /// Reads systemd's directory variables (the first path of each).
    pub fn from_env() -> Dirs {
        let var = |name: &str| {
            let v = std::env::var_os(name)?;
            let first = v.to_str()?.split(':').next()?.to_string();
            (!first.is_empty()).then(|| PathBuf::from(first))
        };
        Dirs {
            runtime: var("RUNTIME_DIRECTORY"),
            state: var("STATE_DIRECTORY"),
            logs: var("LOGS_DIRECTORY"),
        }
    }
}

fn validate(path: &Path, raw: ConfigFile, dirs: &Dirs) -> Result<Config, Diagnostics> {
    let mut c = Check {
        path,
        diags: Diagnostics::default(),
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &str| lexical(&base.join(p));
    let in_dir = |dir: &Option<PathBuf>, p: &str| lexical(&dir.as_deref().unwrap_or(base).join(p));
    let l = &raw.listeners;
    let https = c.addrs(l.https.iter().flat_map(|h| h.bind.iter()));
    let http = c.addrs(l.http.iter().flat_map(|h| h.bind.iter()));
    let stats = c.stats(raw.stats.as_ref());
    let certificates = c.certificates(raw.tls.as_ref(), &resolve, !https.is_empty());
    let proxy_protocol_https = c.cidrs(
        l.https.as_ref().map_or(&[][..], |h| &h.proxy_protocol_from),
        "proxy_protocol_from",
    );
    let proxy_protocol_http = c.cidrs(
        l.http.as_ref().map_or(&[][..], |h| &h.proxy_protocol_from),
        "proxy_protocol_from",
    );
    let trusted_proxies = c
        .cidrs(&raw.trusted_proxies, "trusted_proxies")
        .unwrap_or_default();
    let tcp = c.tcp_listeners(&l.tcp);
    let timeouts = c.timeouts(&raw.timeouts);
    let limits = c.limits(&raw.limits);
    let access_log = c.access_log(raw.access_log.as_ref());
    let access_log_to = match raw.access_log_to.as_deref() {
        None | Some("stderr") => LogTarget::Stderr,
        Some("syslog") => LogTarget::Syslog("/dev/log".into()),
        Some(p) => match p.strip_prefix("syslog:") {
            Some(sock) => LogTarget::Syslog(resolve(sock)),
            None => LogTarget::File(resolve(p)),
        },
    };
    let workers = raw
        .workers
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    let dns = c.dns(raw.dns.as_ref());
    let runtime_socket = raw.runtime_socket.as_ref().map(|r| RuntimeSocket {
        path: in_dir(&dirs.runtime, &r.value.path),
        mode: c.file_mode(r.value.mode.as_ref()),
        user: r.value.user.clone(),
        group: r.value.group.clone(),
    });
    c.diags.finish(Config {
        path: path.to_path_buf(),
        rules: resolve(&raw.rules.value),
        https,
        http,
        redirect_port: l.http.as_ref().and_then(|h| h.redirect_port).unwrap_or(443),
        proxy_protocol_https,
        proxy_protocol_http,
        redirect_http: l.http.as_ref().and_then(|h| h.redirect).unwrap_or(true),
        tcp,
        stats: stats.bind,
        stats_allow: stats.allow,
        stats_auth: stats.auth,
        stats_admin: stats.admin,
        certificates,
        trusted_proxies,
        timeouts,
        limits,
        access_log,
        access_log_to,
        request_id: raw.request_id,
        workers,
        drain_delay_mode: raw.drain_delay_mode,
        limits_store: raw.limits_store.clone(),
        upgrade_socket: raw
            .upgrade_socket
            .as_deref()
            .map(|p| in_dir(&dirs.runtime, p)),
        dns,
        runtime_socket,
        state_file: raw.state_file.as_deref().map(|p| in_dir(&dirs.state, p)),
        audit_log: raw.audit_log.as_deref().map(|p| in_dir(&dirs.logs, p)),
    })
}

/// One config file being validated: where it is, and every problem found so far (each
/// section adds its own and goes on, so `check` reports them all at once).
struct Check<'a> {
    path: &'a Path,
    diags: Diagnostics,
}

/// The validated `stats:` section.
struct StatsPart {
    bind: Option<SocketAddr>,
    allow: Option<AllowList>,
    auth: Option<(String, String)>,
    admin: bool,
}

impl Check<'_> {
    /// An octal file mode (`660`, `0660`); default `600`.
    fn file_mode(&mut self, raw: Option<&Spanned<String>>) -> u32 {
        let Some(m) = raw else { return 0o600 };
        match u32::from_str_radix(&m.value, 8) {
            Ok(v) if v <= 0o777 => v,
            _ => {
                self.error(
                    Pos::of(&m.referenced),
                    format!("`{}` is not an octal file mode", m.value),
                )
                .set_hint("e.g. mode: \"660\" (owner and group may use the socket)");
                0o600
            }
        }
    }

    /// Records a problem at `at`; the caller may add a hint to it.
    fn error(&mut self, at: Pos, message: impl Into<String>) -> &mut Diagnostic {
        let all = &mut self.diags.0;
        all.push(Diagnostic::new(self.path, at, message));
        let last = all.len() - 1;
        &mut all[last]
    }

    /// A listen address, or an error at its place.
    fn addr(&mut self, s: &Spanned<String>) -> Option<SocketAddr> {
        let parsed = s.value.trim().parse::<SocketAddr>().ok();
        if parsed.is_none() {
            let e = self.error(
                Pos::of(&s.referenced),
                format!("`{}` is not a listen address", s.value),
            );
            e.set_hint("ip:port such as 0.0.0.0:443 or [::]:443");
        }
        parsed
    }

    fn dns(&mut self, raw: Option<&file::DnsFile>) -> DnsConfig {
        let nameservers = raw
            .map_or(&[][..], |d| &d.nameservers)
            .iter()
            .filter_map(|s| {
                let v = s.value.trim();
                let parsed = v
                    .parse::<SocketAddr>()
                    .ok()
                    .or_else(|| v.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)));
                if parsed.is_none() {
                    self.error(
                        Pos::of(&s.referenced),
                        format!("`{v}` is not a name server address"),
                    )
                    .set_hint("ip or ip:port such as 10.0.0.2 or 127.0.0.1:5353");
                }
                parsed
            })
            .collect();
        let mut dur = |v: Option<&Spanned<Scalar>>, default: u64, name: &str| match v {
            None => Duration::from_secs(default),
            Some(s) => match parse_duration(&s.value.0) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) | Err(_) => {
                    self.error(
                        Pos::of(&s.referenced),
                        format!("dns.{name}: not a positive duration"),
                    )
                    .set_hint("a duration such as 500ms or 10s");
                    Duration::from_secs(default)
                }
            },
        };
        DnsConfig {
            nameservers,
            interval: dur(raw.and_then(|d| d.interval.as_ref()), 10, "interval"),
            timeout: dur(raw.and_then(|d| d.timeout.as_ref()), 2, "timeout"),
        }
    }

    fn addrs<'s>(&mut self, list: impl Iterator<Item = &'s Spanned<String>>) -> Vec<SocketAddr> {
        list.filter_map(|s| self.addr(s)).collect()
    }

    fn cidrs(&mut self, list: &[Spanned<String>], what: &str) -> Option<AllowList> {
        cidr_list(self.path, &mut self.diags, list, what)
    }

    fn stats(&mut self, raw: Option<&file::StatsFile>) -> StatsPart {
        let part = StatsPart {
            bind: raw.and_then(|s| self.addr(&s.bind)),
            allow: self.cidrs(raw.map_or(&[][..], |s| &s.allow_from), "stats.allow_from"),
            auth: raw
                .and_then(|s| s.auth.as_ref())
                .map(|a| (a.user.clone(), a.password.clone())),
            admin: raw.is_some_and(|s| s.admin),
        };
        if part.admin && part.auth.is_none() {
            let at = raw.map_or(Pos::default(), |s| Pos::of(&s.bind.referenced));
            self.error(at, "stats.admin needs stats.auth").set_hint(
                "auth: { user: ..., password: ... } so that only ops can change server states",
            );
        }
        part
    }

    fn certificates(
        &mut self,
        raw: Option<&file::TlsFile>,
        resolve: &dyn Fn(&str) -> PathBuf,
        needed: bool,
    ) -> Vec<CertPaths> {
        let certificates: Vec<CertPaths> = raw
            .iter()
            .flat_map(|t| t.certificates.iter())
            .map(|c| CertPaths {
                cert: resolve(&c.value.cert.value),
                key: resolve(&c.value.key.value),
                pos: Pos::of(&c.referenced),
            })
            .collect();
        if needed && certificates.is_empty() {
            self.error(
                Pos::default(),
                "HTTPS listeners need at least one certificate",
            )
            .set_hint("tls: { certificates: [ { cert: ..., key: ... } ] }");
        }
        certificates
    }

    fn tcp_listeners(&mut self, raw: &[Spanned<file::TcpFile>]) -> Vec<TcpListen> {
        let mut tcp: Vec<TcpListen> = Vec::new();
        for t in raw {
            let f = &t.value;
            let name = f.name.value.trim();
            if !name.is_empty() && !crate::rules::compile::good_name(name) {
                self.error(
                    Pos::of(&f.name.referenced),
                    format!(
                        "tcp listener name `{name}` has a character names cannot have \
                         (letters, digits, `-`, `_`, `.` and `:` only)"
                    ),
                );
            }
            if name.is_empty() || tcp.iter().any(|l| &*l.name == name) {
                self.error(
                    Pos::of(&f.name.referenced),
                    format!("tcp listener name `{name}` is empty or used twice"),
                );
            }
            if f.bind.is_empty() {
                self.error(
                    Pos::of(&t.referenced),
                    format!("tcp listener `{name}` binds nothing"),
                );
            }
            let idle = self.idle_timeout(f.idle_timeout.as_ref(), name);
            tcp.push(TcpListen {
                name: name.into(),
                bind: self.addrs(f.bind.iter()),
                service: f.service.value.trim().to_string(),
                service_pos: Pos::of(&f.service.referenced),
                max_connections: f.max_connections.unwrap_or(10_000).max(1),
                idle,
                proxy_protocol: self.cidrs(&f.proxy_protocol_from, "proxy_protocol_from"),
                allow: self.cidrs(&f.allow_from, "allow_from"),
                max_per_client: f.max_connections_per_client.map(|n| n.max(1)),
            });
        }
        tcp
    }

    /// A TCP listener's idle timeout: a non-zero duration, one hour when left out.
    fn idle_timeout(&mut self, v: Option<&Spanned<Scalar>>, name: &str) -> Duration {
        let hour = Duration::from_secs(3600);
        let Some(s) = v else { return hour };
        match parse_duration(&s.value.0) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                self.error(
                    Pos::of(&s.referenced),
                    format!("tcp listener `{name}`: idle_timeout is not a duration"),
                )
                .set_hint("a duration such as 30m");
                hour
            }
        }
    }

    fn timeouts(&mut self, t: &file::TimeoutsFile) -> Timeouts {
        let mut dur =
            |v: &Option<Spanned<Scalar>>, default, name: &str| self.timeout(v, default, name);
        Timeouts {
            handshake: dur(&t.handshake, 10, "handshake"),
            request_header: dur(&t.request_header, 10, "request_header"),
            idle: dur(&t.idle, 60, "idle"),
            connect: dur(&t.connect, 3, "connect"),
            response: dur(&t.response, 60, "response"),
            client: dur(&t.client, 60, "client"),
            server: dur(&t.server, 60, "server"),
            upstream_idle: dur(&t.upstream_idle, 60, "upstream_idle"),
            drain: dur(&t.drain, 30, "drain"),
            tunnel: dur(&t.tunnel, 3600, "tunnel"),
            grace: dur(&t.grace, 1, "grace"),
            drain_delay: dur(&t.drain_delay, 0, "drain_delay"),
        }
    }

    /// A `timeouts.*` value (zero allowed, as before), else `default` seconds.
    fn timeout(&mut self, v: &Option<Spanned<Scalar>>, default: u64, name: &str) -> Duration {
        let Some(s) = v else {
            return Duration::from_secs(default);
        };
        parse_duration(&s.value.0).unwrap_or_else(|e| {
            self.error(Pos::of(&s.referenced), format!("timeouts.{name}: {e}"))
                .set_hint("a duration such as 500ms or 10s");
            Duration::from_secs(default)
        })
    }

    /// A size limit from `low` (its text `low_text`) up to 1 MiB, else `default`.
    fn size(
        &mut self,
        v: &Option<Spanned<Scalar>>,
        default: usize,
        (low, low_text): (u64, &str),
        what: &str,
    ) -> usize {
        let Some(sv) = v else { return default };
        match parse_size(&sv.value.0) {
            Ok(n) if (low..=1 << 20).contains(&n) => n as usize,
            _ => {
                self.error(
                    Pos::of(&sv.referenced),
                    format!("limits.{what} is out of range"),
                )
                .set_hint(format!("a size from {low_text} to 1MiB"));
                default
            }
        }
    }

    fn limits(&mut self, l: &file::LimitsFile) -> Limits {
        let max_header_bytes = self.size(
            &l.max_header_bytes,
            16 * 1024,
            (1024, "1KiB"),
            "max_header_bytes",
        );
        let max_uri_bytes = self.size(&l.max_uri_bytes, 8 * 1024, (256, "256"), "max_uri_bytes");
        Limits {
            max_uri_bytes,
            max_connections_per_client: l.max_connections_per_client.unwrap_or(1000).max(1),
            max_handshakes: l.max_handshakes.unwrap_or(1024).max(1),
            max_handshakes_per_client: l.max_handshakes_per_client.unwrap_or(32).max(1),
            max_header_bytes,
            max_headers: l.max_headers.unwrap_or(100).clamp(8, 1000),
            max_connections: l.max_connections.unwrap_or(20_000).max(1),
            upstream_idle_per_server: l.upstream_idle_per_server.unwrap_or(1024),
        }
    }

    fn access_log(&mut self, raw: Option<&Spanned<String>>) -> AccessLog {
        match raw.map(|s| (s.value.as_str(), s)) {
            None | Some(("text", _)) => AccessLog::Text,
            Some(("json", _)) => AccessLog::Json,
            Some(("haproxy", _)) => AccessLog::Haproxy,
            Some(("off", _)) => AccessLog::Off,
            Some((other, s)) => {
                self.error(
                    Pos::of(&s.referenced),
                    format!("access_log: unknown format `{other}`"),
                )
                .set_hint("text, haproxy, json or off");
                AccessLog::Text
            }
        }
    }
}

impl Config {
    /// Loads and compiles the rules this config points at, with the cross-checks that
    /// need both (TCP listeners name TCP services).
    /// Servers named by DNS get the addresses in `resolved`.
    pub fn load_rules(
        &self,
        resolved: &crate::rules::Resolved,
    ) -> Result<crate::rules::RuleSet, Diagnostics> {
        let set = crate::rules::load_resolved(&self.rules, resolved)?;
        self.check_rules(&set)?;
        Ok(set)
    }

    /// Checks that every TCP listener's service exists in `rules` and speaks TCP. Run at
    /// start, by `check`, and on every reload (a rules edit that removes such a service
    /// is refused like any other bad edit).
    pub fn check_rules(&self, rules: &crate::rules::RuleSet) -> Result<(), Diagnostics> {
        let mut diags = Diagnostics::default();
        for l in &self.tcp {
            match rules.service_named(&l.service).map(|i| &rules.services[i]) {
                Some(s) if s.mode == crate::rules::Mode::Tcp => {}
                Some(_) => diags.push(
                    Diagnostic::new(
                        &self.path,
                        l.service_pos,
                        format!(
                            "tcp listener `{}`: service `{}` is an HTTP service",
                            l.name, l.service
                        ),
                    )
                    .hint("a service with `mode: tcp` in the rules"),
                ),
                None => diags.push(
                    Diagnostic::new(
                        &self.path,
                        l.service_pos,
                        format!(
                            "tcp listener `{}`: the rules have no service `{}`",
                            l.name, l.service
                        ),
                    )
                    .hint("a service with `mode: tcp` in the rules"),
                ),
            }
        }
        diags.finish(())
    }
}

/// A list of CIDRs (or bare addresses) as an allow-list; each bad entry is reported at its
/// place. `None` when the list is empty.
fn cidr_list(
    path: &Path,
    diags: &mut Diagnostics,
    list: &[Spanned<String>],
    what: &str,
) -> Option<AllowList> {
    let mut nets = Vec::new();
    for t in list {
        match t
            .value
            .parse::<IpNet>()
            .or_else(|_| t.value.parse::<IpAddr>().map(IpNet::from))
        {
            Ok(n) => nets.push(n),
            Err(_) => diags.push(
                Diagnostic::new(
                    path,
                    Pos::of(&t.referenced),
                    format!("{what}: `{}` is not a CIDR", t.value),
                )
                .hint("an address or network such as 10.0.0.0/8"),
            ),
        }
    }
    (!nets.is_empty()).then(|| AllowList::new(vec![what.into()], &nets))
}

/// Resolves `.` and `..` in a path without touching the disk, so errors name
/// `rules/repository.yaml`, not `config/../rules/repository.yaml`.
fn lexical(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}
