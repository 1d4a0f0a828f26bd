//! One request, end to end, in four phases, each a module of its own:
//!
//! 1. [`decide`]: what the rules say (site, route, client address, allow-list, limits), a
//!    pure value that `gatehouse explain` prints too;
//! 2. [`admit`]: a slot in the route's pool, then a server (backups, backup service);
//! 3. [`exchange`]: the request rewritten and sent, retried once when safe, the response
//!    (or a tunnel) handed back;
//! 4. [`finish`]: when the response body ends, the slot and server are released and the
//!    request is counted and logged once.
//!
//! [`handle`] never fails: every [`ProxyError`] becomes a status and a page ([`reply`]).

pub mod admit;
pub mod body;
pub mod conn;
pub mod decide;
pub mod error;
pub mod exchange;
pub mod finish;
pub mod forward;
pub mod host;
pub mod malformed;
pub mod path;
pub mod reply;
pub mod request_id;
pub mod tunnel;

pub use admit::choose_server;
pub use conn::{Activity, ConnInfo, InFlight};

use crate::body::ClientBody;
use crate::config::{AccessLog, Timeouts};
use crate::generation::Generation;
use crate::health::HealthTable;
use crate::rules::matcher::AllowList;
use crate::stats::Stats;
use arc_swap::ArcSwap;
use body::{Hold, ProxyBody};
use decide::{Decision, Facts, Settings, Verdict, Via};
use error::ProxyError;
use finish::Record;
use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use http_body::Body as _;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

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
    /// Whether requests get an `X-Request-ID`.
    pub request_id: bool,
    /// Port written into HTTPS redirects (443 is left out).
    pub redirect_port: u16,
    /// Longest request URI accepted (414 beyond).
    pub max_uri_bytes: usize,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Server health and admin states, by name (survives reloads).
    pub health: HealthTable,
    /// Servers' DNS names and their addresses.
    pub resolver: Arc<crate::resolve::Resolver>,
    /// Where rate limits are shared with other instances (`limits_store:`), if anywhere.
    pub limits_store: Option<Arc<crate::limit_store::Store>>,
}

impl Shared {
    /// The settings the decision reads.
    pub fn settings(&self) -> Settings<'_> {
        Settings {
            trusted: &self.trusted,
            max_uri_bytes: self.max_uri_bytes,
        }
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
    let resp = match serve(&shared, &conn, &generation, &mut slot, &mut rec).await {
        Ok(resp) => resp,
        Err(e) => {
            if let Some(req) = slot.take()
                && body_pending
            {
                reply::drain(req.into_body());
            }
            rec.termination = e.code();
            finish::count_error(&generation, &rec, &e);
            reply::error_response(&generation, &e, rec.backup.as_ref(), body_pending)
        }
    };
    let mut resp = resp;
    if close_after {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if close_after || (rec.termination != "-" && closes(&resp)) {
        conn.in_flight.closing.store(true, Ordering::Relaxed);
    }
    if let Some(id) = &rec.request_id {
        resp.headers_mut()
            .insert(request_id::X_REQUEST_ID, id.clone());
    }
    if let Some((i, remaining)) = rec.rate {
        rate_headers(&generation, i as usize, remaining, resp.headers_mut());
    }
    rec.status = resp.status().as_u16();
    Ok(resp.map(|b| b.hold(rec)))
}

/// A passing request's rate-limit headers (API clients pace themselves by them).
#[cold]
fn rate_headers(g: &Generation, limit: usize, remaining: u32, h: &mut http::HeaderMap) {
    let spec = &g.rules.limits[limit];
    let reset = g.limiters[limit]
        .reset_after(remaining)
        .as_secs_f64()
        .ceil() as u64;
    reply::rate_limit_headers(h, spec.rate, remaining, reset, spec);
}

/// Whether a response says the connection closes after it.
pub fn closes(resp: &Response<ProxyBody>) -> bool {
    resp.headers()
        .get(header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
}

/// The four phases, in data-flow order.
async fn serve(
    shared: &Shared,
    conn: &ConnInfo,
    g: &Generation,
    slot: &mut Option<Request<ClientBody>>,
    rec: &mut Record,
) -> Result<Response<ProxyBody>, ProxyError> {
    // The request stays in `slot` until it is forwarded, so an answer of our own can
    // still drain its body (see `reply::drain`).
    let req = slot.as_ref().ok_or(ProxyError::BadRequest("no request"))?;
    let host = host::request_host(req.uri(), req.headers());
    let host = host.as_ref().map(|h| h.as_str());
    let d = decide::decide(&g.rules, shared.settings(), facts(conn, req, host));
    rec.note(&d, host.ok());
    let Decision {
        path,
        site,
        client,
        verdict,
        route,
    } = d;
    let fwd = match verdict {
        Verdict::Forward(f) => f,
        Verdict::RedirectHttps => {
            let host = host.unwrap_or_default();
            return Ok(reply::redirect_to_https(req, host, shared.redirect_port));
        }
        Verdict::Redirect(status, location) => {
            return Ok(reply::redirect(req, status, &location));
        }
        Verdict::Refuse(e) => return Err(e),
    };
    let (Ok(host), Some(path), Some(site)) = (host, path, site) else {
        return Err(ProxyError::BadRequest("no request"));
    };
    let store = shared.limits_store.as_deref();
    let admitted = admit::admit(g, &fwd, store, rec).await?;
    let target = exchange::Target {
        site,
        host,
        path,
        client,
        max_body: fwd.max_body,
        key: fwd.key,
        rules: route.map_or(&[], |(_, r)| &r.headers[..]),
    };
    exchange::exchange(shared, conn, g, &target, &admitted, slot, rec).await
}

/// What the decision may read of a request and its connection.
#[inline]
fn facts<'a>(
    conn: &'a ConnInfo,
    req: &'a Request<ClientBody>,
    host: Result<&'a str, &'a ProxyError>,
) -> Facts<'a> {
    Facts {
        via: Via {
            peer: conn.peer,
            proxy_protocol: conn.outer_proxy.is_some(),
            https: conn.https(),
            redirect_https: conn.redirect_https,
            sni: conn.sni.as_deref(),
        },
        method: req.method(),
        uri: req.uri(),
        host,
        headers: req.headers(),
        body_len: req.body().size_hint().lower(),
    }
}
