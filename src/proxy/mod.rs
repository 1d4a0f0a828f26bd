//! One request, end to end: route, decide, take a slot, forward, stream back.
//!
//! [`handle`] never fails: every [`ProxyError`] becomes a status and a page there, and the
//! access-log line and counters are written once, when the response body ends.
//! `handle_inner` is the `?` chain in data-flow order (see docs/architecture.md §3).

pub mod body;
pub mod error;
pub mod forward;
pub mod host;
pub mod path;
pub mod tunnel;

use crate::accesslog::{self, Entry};
use crate::config::{AccessLog, Timeouts};
use crate::fallback;
use crate::generation::Generation;
use crate::pool::PoolPermit;
use crate::rules::matcher::AllowList;
use crate::rules::select::stable_hash;
use crate::rules::{Action, Balance, Colour, RuleSet, Server, Service};
use crate::stats::{Histogram, Stats};
use crate::upstream::UpstreamClient;
use crate::upstream::health::{HealthTable, ServerGuard};
use arc_swap::ArcSwap;
use body::{BodyProgress, ClientBody, Hold, LimitedBody, ProxyBody};
use bytes::Bytes;
use error::ProxyError;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What every request handler shares: the live generation, the upstream client, settings.
#[derive(Debug)]
pub struct Shared {
    /// The live generation; swapped whole by the reloader, loaded once per request.
    pub state: ArcSwap<Generation>,
    /// Peers whose forwarding headers are believed.
    pub trusted: AllowList,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Access log format.
    pub access_log: AccessLog,
    /// Port written into HTTPS redirects (443 is left out).
    pub redirect_port: u16,
    /// Longest request URI accepted (414 beyond).
    pub max_uri_bytes: usize,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Server health and admin states, by name (survives reloads).
    pub health: HealthTable,
}

impl ConnInfo {
    /// Whether the client's request is HTTPS: TLS here, or at the outer proxy that says so.
    pub fn https(&self) -> bool {
        self.tls || self.forwarded_tls
    }
}

/// What is known about the client connection a request came on.
pub struct ConnInfo {
    /// TCP peer.
    pub peer: SocketAddr,
    /// TLS server name the client asked for, lower-case.
    pub sni: Option<Box<str>>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Whether an outer proxy says (PROXY v2 `PP2_TYPE_SSL`) the client reached it over TLS.
    pub forwarded_tls: bool,
    /// Whether a plain connection's requests are redirected to HTTPS.
    pub redirect_https: bool,
    /// TLS handshake time.
    pub tls_time: Duration,
    /// The worker's keep-alive client to the servers (one per worker runtime, so a
    /// request and its upstream connection always run on the same thread).
    pub upstream: UpstreamClient,
    /// The outer proxy when the client address came in a PROXY header (`peer` is then
    /// the conveyed client).
    pub outer_proxy: Option<SocketAddr>,
    /// Requests whose response has not ended: an HTTP/1.1 connection parks only at zero.
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// An HTTP/1.1 upgrade waiting for the socket: the listener fills it once hyper has
    /// written the 101 and handed the connection back.
    pub upgrade: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Box<dyn tunnel::ClientIo>>>>,
}

impl ConnInfo {
    /// What is known of a new connection.
    pub fn new(peer: SocketAddr, upstream: UpstreamClient) -> Self {
        ConnInfo {
            peer,
            sni: None,
            tls: false,
            forwarded_tls: false,
            redirect_https: false,
            tls_time: Duration::ZERO,
            upstream,
            outer_proxy: None,
            in_flight: Arc::default(),
            upgrade: std::sync::Mutex::new(None),
        }
    }

    /// The client side of an upgrade: the listener hands the socket over once hyper has
    /// written the 101 and let go of the connection.
    fn client_upgrade(&self) -> tokio::sync::oneshot::Receiver<Box<dyn tunnel::ClientIo>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self.upgrade.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// The upgrade waiting for this connection's socket, if any.
    pub fn take_upgrade(&self) -> Option<tokio::sync::oneshot::Sender<Box<dyn tunnel::ClientIo>>> {
        self.upgrade
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// Serves one request. Never fails: errors become pages here.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<ClientBody>,
) -> Result<Response<ProxyBody>, Infallible> {
    let generation = shared.state.load_full();
    // On the heap from the start: it rides in the response body to its end, and kept
    // here it would take room in the request's future and be copied out at the end.
    let mut rec = Box::new(Record::new(&shared, &conn, &req, generation.clone()));
    let body_pending = !req.body().is_end_stream();
    // hyper resolves Content-Length + Transfer-Encoding as HAProxy does (chunked wins, the
    // length is dropped) but would keep the connection open, and it hides which of the two
    // was sent. So every HTTP/1.1 chunked request closes its connection after the response:
    // nothing the client sent after it can be taken as a new request. Browsers never send
    // chunked uploads, so this costs keep-alive only to unusual clients.
    // (A chunked body is never at its end before it is read, so bodyless requests skip
    // the look-up.)
    let close_after = body_pending
        && req.version() == Version::HTTP_11
        && req.headers().contains_key(header::TRANSFER_ENCODING);
    let mut slot = Some(req);
    let resp = match handle_inner(&shared, &conn, &generation, &mut slot, &mut rec).await {
        Ok(resp) => resp,
        Err(e) => {
            if let Some(req) = slot.take()
                && body_pending
            {
                drain(req.into_body());
            }
            rec.termination = e.code();
            count_error(&generation, &rec, &e);
            error_response(&generation.rules, &e, rec.backup.as_ref(), body_pending)
        }
    };
    let mut resp = resp;
    if close_after {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    rec.status = resp.status().as_u16();
    Ok(resp.map(|b| b.hold(rec)))
}

fn count_error(g: &Generation, rec: &Record, e: &ProxyError) {
    let counters = match (rec.server_id, rec.service_index) {
        (Some(id), _) => g.servers.get(id),
        (None, Some(i)) => g.services.get(i),
        _ => None,
    };
    if let Some(c) = counters {
        match e {
            ProxyError::Connect(_) => c.connect_errors.fetch_add(1, Ordering::Relaxed),
            ProxyError::NoServer => c.no_server.fetch_add(1, Ordering::Relaxed),
            ProxyError::Timeout | ProxyError::Upstream(_) => {
                c.response_errors.fetch_add(1, Ordering::Relaxed)
            }
            _ => 0,
        };
    }
}

/// The request's way through the rules, in data-flow order.
async fn handle_inner(
    shared: &Shared,
    conn: &ConnInfo,
    g: &Generation,
    slot: &mut Option<Request<ClientBody>>,
    rec: &mut Record,
) -> Result<Response<ProxyBody>, ProxyError> {
    // The request stays in `slot` until it is forwarded, so an answer of our own can
    // still drain its body (see `drain`).
    let req = slot.as_ref().ok_or(ProxyError::BadRequest("no request"))?;
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len());
    if uri_len > shared.max_uri_bytes {
        return Err(ProxyError::UriTooLong);
    }
    let host_name = host::request_host(req)?;
    let host: &str = host_name.as_str();
    rec.log(|n| n.host = Some(host.into()));
    if conn.redirect_https && !req.uri().path().starts_with("/.well-known/acme-challenge/") {
        return Ok(redirect_to_https(req, host, shared.redirect_port));
    }
    if let Some(sni) = &conn.sni
        && **sni != *host
    {
        return Err(ProxyError::Misdirected);
    }
    let path_and_query = checked_path(req.uri())?;
    let path = path_and_query.path();
    let decision = g.rules.route(host, path).ok_or(ProxyError::NotFound)?;
    rec.log(|n| n.site = Some(decision.site.name.clone()));
    rec.site_index = Some(decision.site.index);
    rec.route_index = decision
        .site
        .routes
        .iter()
        .position(|r| std::ptr::eq(r, decision.route));
    rec.log(|n| n.route = Some(decision.route.name.clone()));
    let mut client = forward::client_addr(req.headers(), conn.peer, &shared.trusted);
    if conn.outer_proxy.is_some() && client.source == forward::AddrSource::Peer {
        client.source = forward::AddrSource::ProxyProtocol;
    }
    rec.client = client.ip;
    if !RuleSet::allows(decision.route, client.ip) {
        return Err(ProxyError::Forbidden);
    }
    let (pool_ix, service_ix) = match decision.route.action {
        Action::Deny(status) => return Err(ProxyError::Denied(status)),
        Action::Forward { pool, service } => (pool, service),
    };
    let limit = decision.route.max_body.unwrap_or(u64::MAX);
    if req.body().size_hint().lower() > limit {
        return Err(ProxyError::BodyTooLarge);
    }
    let service: &Service = g.rules.service(service_ix);
    let colour = service.colour_for(decision.site.colour);
    rec.service_index = Some(service_ix);
    rec.log(|n| n.service = Some(service.name.clone()));
    rec.colour = colour.as_str();
    rec.backup = service.backup_page.clone();
    let pool = &g.pools[pool_ix];
    rec.log(|n| n.pool = Some(pool.name.clone()));
    // The queue is timed from the request's arrival (read once, in `Record::new`).
    let wait_start = rec.start;
    rec.permit = Some(pool.acquire(&g.services[service_ix]).await?);
    let balance = g.rules.pool(pool_ix).balance.unwrap_or(service.balance);
    let key = match balance {
        Balance::HashSource => stable_hash(client.ip),
        Balance::HashUri => stable_hash(path),
        _ => 0,
    };
    let deadline = wait_start + g.rules.pool(pool_ix).queue_timeout;
    let (mut service, mut colour) = (service, colour);
    let (first, guard) = match choose_server(g, service, colour, balance, key, None, deadline).await
    {
        Ok(x) => x,
        Err(ProxyError::NoServer) if service.backup_service.is_some() => {
            // Every server (backups too) is out: the backup site takes the request.
            let backup = g
                .rules
                .service(service.backup_service.unwrap_or(service_ix));
            g.services[service_ix]
                .no_server
                .fetch_add(1, Ordering::Relaxed);
            service = backup;
            colour = backup.live;
            rec.log(|n| n.service = Some(backup.name.clone()));
            rec.colour = colour.as_str();
            choose_server(g, backup, colour, backup.balance, key, None, deadline).await?
        }
        Err(e) => return Err(e),
    };
    rec.server_guard = Some(guard);

    let upgrade = upgrade_protocol(req);
    let req = slot.take().ok_or(ProxyError::BadRequest("no request"))?;
    let client_upgrade = upgrade.as_ref().map(|_| conn.client_upgrade());
    let (mut parts, body) = req.into_parts();
    // Forwarding headers are kept (and appended to) only from a trusted peer.
    let trusted_peer = shared.trusted.contains(conn.peer.ip());
    let forwarding = forward::prepare_request(
        &mut parts.headers,
        &client,
        trusted_peer,
        host,
        conn.https(),
    );
    if let Some(proto) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, proto.clone());
    }
    // `Expect` is answered here (hyper), and the length is ours (below): both go; and a
    // request that names its host only in the URI (HTTP/2) gets a `Host`. One pass over
    // the names says which of these apply.
    let (expect, has_host, length) = forward::present_of(
        &parts.headers,
        [header::EXPECT, header::HOST, header::CONTENT_LENGTH],
    );
    if expect {
        parts.headers.remove(header::EXPECT);
    }
    if !has_host
        && let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    // One Content-Length, ours: the length hyper parsed (or none, and the body is chunked).
    if length {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    if let Some(n) = body.size_hint().exact()
        && (n > 0 || !body.is_end_stream())
    {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    parts.version = Version::HTTP_11;
    let bodyless = body.is_end_stream();
    let progress = Arc::new(BodyProgress::default());
    rec.progress = Some(progress.clone());
    let body = LimitedBody::new(body, limit, progress.clone());
    // No body, no upgrade, no PROXY header, and safe to send twice: exchanged in this task
    // (`upstream::direct`), without hyper's per-connection task and channels.
    let direct =
        bodyless && upgrade.is_none() && !service.send_proxy && parts.method.is_idempotent();
    // The direct path writes the forwarding headers into the head; hyper's takes them
    // from the map (so the copy kept for a redispatch carries them too).
    if !direct {
        forwarding.insert(&mut parts.headers);
    }
    // Kept only for requests without a body (those alone may be re-sent elsewhere), and
    // only when there is another server to re-send to: no header copy otherwise.
    let elsewhere = service.group(colour).servers.len() > 1;
    let retry = (bodyless && elsewhere).then(|| (parts.method.clone(), parts.headers.clone()));
    let mut server = first;
    let mut request = Request::from_parts(parts, body);
    let mut attempt = 0;
    loop {
        // Origin-form (`/path?q`): the server reads the host from `Host`.
        *request.uri_mut() = Uri::from(path_and_query.clone());
        rec.server_id = Some(server.id);
        rec.log(|n| n.server = Some(server.name.clone()));
        let sent = Instant::now();
        if attempt == 0 {
            rec.wait = sent.saturating_duration_since(wait_start);
        }
        // Coarse (per-worker sweep): the response timeout almost never fires, and
        // tokio's exact timer cost a lock and a wheel insert and remove per request.
        let respond_by = sent + shared.timeouts.response;
        let result = if direct {
            let exchange = conn
                .upstream
                .exchange(server.addr, &request, |out| forwarding.write_head(out));
            crate::deadline::within(respond_by, exchange)
                .await
                .map(|r| r.map(|resp| resp.map(ProxyBody::direct)))
        } else {
            // Boxed: bodies, upgrades and PROXY headers are the rare case, and hyper's
            // send future would otherwise take room in every request's future.
            let sending = Box::pin(async {
                if service.send_proxy {
                    conn.upstream
                        .send_with_proxy_header(server.addr, conn.peer, conn.https(), request)
                        .await
                } else {
                    conn.upstream.send(server.addr, request).await
                }
            });
            crate::deadline::within(respond_by, sending)
                .await
                .map(|r| r.map(|resp| resp.map(ProxyBody::upstream)))
        };
        rec.first_byte = sent.elapsed();
        match result {
            Ok(Ok(mut resp)) => {
                g.health[server.id].observe(true, &service.health, &server.name);
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    let (Some(client_upgrade), Some(proto)) = (client_upgrade, &upgrade) else {
                        return Err(ProxyError::Upstream(
                            "101 without an upgrade request".into(),
                        ));
                    };
                    let server_upgrade = hyper::upgrade::on(&mut resp);
                    let hold = (rec.permit.take(), rec.server_guard.take());
                    tokio::spawn(tunnel::run(
                        client_upgrade,
                        server_upgrade,
                        shared.timeouts.tunnel,
                        hold,
                    ));
                    forward::strip_hop_by_hop(resp.headers_mut());
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    resp.headers_mut().insert(header::UPGRADE, proto.clone());
                    return Ok(resp.map(|_| ProxyBody::empty()));
                }
                forward::strip_hop_by_hop(resp.headers_mut());
                if let Some(hsts) = &decision.site.hsts
                    && conn.https()
                {
                    resp.headers_mut()
                        .entry(header::STRICT_TRANSPORT_SECURITY)
                        .or_insert_with(|| hsts.clone());
                }
                return Ok(resp);
            }
            Ok(Err(e)) if progress.too_large.load(Ordering::Relaxed) => {
                tracing::debug!(error = %e, "request body passed its limit");
                return Err(ProxyError::BodyTooLarge);
            }
            Ok(Err(e)) if e.is_connect() => {
                // Passive health: a refused or timed-out connect counts as a failed check.
                count_connect_error(g, &server);
                g.health[server.id].observe(false, &service.health, &server.name);
                // Nothing reached the server: a request without a body may try another
                // one, once (redispatch). One whose body has started is never re-sent.
                let (Some((method, headers)), 0) = (&retry, attempt) else {
                    return Err(ProxyError::Connect(error_chain(&e)));
                };
                let Ok((next, guard)) =
                    choose_server(g, service, colour, balance, key, Some(&server), deadline).await
                else {
                    return Err(ProxyError::Connect(error_chain(&e)));
                };
                g.servers[next.id]
                    .redispatches
                    .fetch_add(1, Ordering::Relaxed);
                rec.server_guard = Some(guard);
                server = next;
                attempt += 1;
                let mut r = Request::new(LimitedBody::empty(progress.clone()));
                *r.method_mut() = method.clone();
                *r.headers_mut() = headers.clone();
                request = r;
            }
            Ok(Err(e)) => return Err(ProxyError::Upstream(error_chain(&e))),
            Err(_) => {
                g.health[server.id].observe(false, &service.health, &server.name);
                return Err(ProxyError::Timeout);
            }
        }
    }
}

/// Reads and discards the unread body of a request the proxy answered itself (lingering
/// close, as nginx does): a client still sending gets to finish and read the answer instead
/// of a reset. Bounded: 4 MiB or 5 s, then the body is dropped and the connection closes
/// (the answer carries `Connection: close`).
fn drain(mut body: ClientBody) {
    tokio::spawn(async move {
        let mut left: i64 = 4 << 20;
        let read = async {
            while left > 0 {
                match body.frame().await {
                    Some(Ok(f)) => left -= f.data_ref().map_or(0, |d| d.len() as i64),
                    _ => break,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    });
}

/// Chooses a usable server with room (health UP, admin READY, below maxconn). When every
/// usable one is at its maxconn, waits for a slot on the balancer's choice until the
/// pool's queue deadline (HAProxy semantics: a server never exceeds maxconn; the rest queue).
/// Picks a usable server of `service`'s `colour` with room (maxconn), else waits for one
/// until `deadline`. Shared by HTTP requests and TCP sessions.
pub(crate) async fn choose_server(
    g: &Generation,
    service: &Service,
    colour: Colour,
    balance: Balance,
    key: u64,
    avoid: Option<&Server>,
    deadline: Instant,
) -> Result<(Arc<Server>, ServerGuard), ProxyError> {
    let group = service.group(colour);
    let load = |s: &Server| g.health[s.id].active.load(Ordering::Relaxed);
    for _ in 0..3 {
        let room = |s: &Server| g.health[s.id].usable() && g.health[s.id].has_room();
        let Some(s) = group.pick(balance, key, avoid, &room, &load) else {
            break;
        };
        if let Some(guard) = g.health[s.id].try_enter() {
            return Ok((s.clone(), guard));
        }
    }
    let usable = |s: &Server| g.health[s.id].usable();
    let s = group
        .pick(balance, key, avoid, &usable, &load)
        .ok_or(ProxyError::NoServer)?;
    // Boxed: waiting for a server at its maxconn is rare, and its timer would otherwise
    // take room in every request's future.
    match Box::pin(tokio::time::timeout_at(
        deadline.into(),
        g.health[s.id].enter(),
    ))
    .await
    {
        Ok(guard) => Ok((s.clone(), guard)),
        Err(_) => Err(ProxyError::QueueTimeout),
    }
}

/// The protocol a request asks to upgrade to (HTTP/1.1 `Connection: upgrade` + `Upgrade`),
/// never `h2c` (a smuggling vector). The tunnel opens only after the server's 101.
fn upgrade_protocol(req: &Request<ClientBody>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    // `Upgrade` first: nearly every request has none, and then `Connection` is not read.
    let proto = req.headers().get(header::UPGRADE)?;
    let wants = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    (wants && !proto.as_bytes().eq_ignore_ascii_case(b"h2c")).then(|| proto.clone())
}

fn count_connect_error(g: &Generation, server: &Server) {
    g.servers[server.id]
        .connect_errors
        .fetch_add(1, Ordering::Relaxed);
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
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

fn redirect_to_https(req: &Request<ClientBody>, host: &str, port: u16) -> Response<ProxyBody> {
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{port}{pq}")
    };
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::try_from(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if !req.body().is_end_stream() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The page the proxy answers with for `e`. Closes the connection when the request body
/// was not read (so unread bytes can never be taken as the next request) or framing is suspect.
fn error_response(
    rules: &RuleSet,
    e: &ProxyError,
    backup: Option<&Bytes>,
    body_pending: bool,
) -> Response<ProxyBody> {
    let status = e.status();
    let page = fallback::page(rules, status, backup.filter(|_| e.wants_backup_page()));
    let mut resp = Response::new(ProxyBody::full(page));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
    }
    if body_pending || e.closes_connection() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// What is known about a request as it goes; logged and counted once when its body ends.
struct Record {
    shared_log: AccessLog,
    generation: Arc<Generation>,
    stats: Arc<Stats>,
    start: Instant,
    tls_time: Duration,
    client: std::net::IpAddr,
    method: http::Method,
    version: Version,
    /// Only while the access log is on: each name is a reference count to take and drop.
    names: Option<Box<Names>>,
    service_index: Option<usize>,
    colour: &'static str,
    server_id: Option<usize>,
    status: u16,
    wait: Duration,
    first_byte: Duration,
    termination: &'static str,
    backup: Option<Bytes>,
    progress: Option<Arc<BodyProgress>>,
    permit: Option<PoolPermit>,
    server_guard: Option<ServerGuard>,
    site_index: Option<usize>,
    route_index: Option<usize>,
    /// Keeps the connection from parking until the response has ended.
    _in_flight: crate::park::InFlight,
}

/// What the access log names a request by (`-` for what it never reached).
#[derive(Default)]
struct Names {
    path: Box<str>,
    host: Option<Arc<str>>,
    site: Option<Arc<str>>,
    route: Option<Arc<str>>,
    pool: Option<Arc<str>>,
    service: Option<Arc<str>>,
    server: Option<Arc<str>>,
}

fn or_dash(name: &Option<Arc<str>>) -> &str {
    name.as_deref().unwrap_or("-")
}

impl Record {
    fn new(
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
            progress: None,
            permit: None,
            server_guard: None,
            site_index: None,
            route_index: None,
            _in_flight: crate::park::InFlight::enter(&conn.in_flight),
        }
    }

    /// Notes a name for the access log; does nothing (takes no reference) while it is off.
    fn log(&mut self, note: impl FnOnce(&mut Names)) {
        if let Some(n) = self.names.as_deref_mut() {
            note(n);
        }
    }
}

impl Hold for Record {
    fn finish(&mut self, bytes_out: u64, complete: bool) {
        self.permit.take();
        self.server_guard.take();
        let total = self.start.elapsed();
        let micros = total.as_micros() as u64;
        let bytes_in = self
            .progress
            .as_ref()
            .map_or(0, |p| p.bytes.load(Ordering::Relaxed));
        if !complete && self.termination == "-" {
            self.termination = "client_aborted";
        }
        // Response time: to the server's response headers when forwarded, else the total.
        let response_us = if self.server_id.is_some() {
            (self.wait + self.first_byte).as_micros() as u64
        } else {
            micros
        };
        self.stats
            .frontend
            .leave(self.status, bytes_in, bytes_out, micros);
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
                client: self.client.to_string(),
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
            },
        );
    }
}
