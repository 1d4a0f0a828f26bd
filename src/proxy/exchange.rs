//! The third phase: the request rewritten for the server (origin-form, our forwarding
//! headers, one length), sent (in this task for bodyless requests, through hyper's client
//! otherwise), retried once elsewhere when nothing reached the server, and the response
//! (or a tunnel after a 101) handed back.

use super::admit::{Admitted, choose_server};
use super::body::ProxyBody;
use super::conn::ConnInfo;
use super::error::ProxyError;
use super::finish::Record;
use super::forward::{self, ClientAddr};
use super::{Shared, tunnel};
use crate::body::{BodyProgress, ClientBody, LimitedBody};
use crate::config::Timeouts;
use crate::generation::Generation;
use crate::rules::policy::HeaderRules;
use crate::rules::{Server, Site};
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Request headers the exchange replaces or answers itself (see `prepare_head`).
/// (`ManuallyDrop`: a constant array of names is a temporary at each use, dropped after
/// it otherwise; these names own nothing.)
const HEAD_FIXES: std::mem::ManuallyDrop<[header::HeaderName; 3]> =
    std::mem::ManuallyDrop::new([header::EXPECT, header::HOST, header::CONTENT_LENGTH]);

/// What the decision fixed for the exchange.
pub struct Target<'a> {
    /// The site (for its HSTS header).
    pub site: &'a Site,
    /// The host routed on.
    pub host: &'a str,
    /// The normalized path and query: exactly what was routed.
    pub path: PathAndQuery,
    /// The client address, for the forwarding headers.
    pub client: ClientAddr,
    /// Largest request body.
    pub max_body: u64,
    /// The balancing key (hashing balances).
    pub key: u64,
    /// The route's header rules (the site's first).
    pub rules: &'a [Arc<HeaderRules>],
}

/// Sends the request to the admitted server and returns its response.
pub async fn exchange(
    shared: &Shared,
    conn: &ConnInfo,
    g: &Generation,
    t: &Target<'_>,
    a: &Admitted<'_>,
    slot: &mut Option<Request<ClientBody>>,
    rec: &mut Record,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (service, colour, key) = (a.service, a.colour, t.key);
    let req = slot.as_ref().ok_or(ProxyError::BadRequest("no request"))?;
    let upgrade = upgrade_protocol(req);
    let req = slot.take().ok_or(ProxyError::BadRequest("no request"))?;
    let client_upgrade = upgrade.as_ref().map(|_| conn.client_upgrade());
    let (mut parts, mut body) = req.into_parts();
    if let Some(cap) = service.buffer_chunked
        && body.size_hint().exact().is_none()
        && !body.is_end_stream()
    {
        // Boxed: rare, and inline its state would ride in every request's future.
        body = Box::pin(read_whole(
            body,
            cap.min(t.max_body),
            shared.timeouts.client,
        ))
        .await?;
        parts.headers.remove(header::TRANSFER_ENCODING);
    }
    // Forwarding headers are kept (and appended to) only from a trusted peer.
    let trusted_peer = shared.trusted.contains(conn.peer.ip());
    let request_id = rec.request_id.clone();
    let forwarding = forward::prepare_request(
        &mut parts.headers,
        &t.client,
        trusted_peer,
        t.host,
        conn.https(),
        request_id.as_ref(),
    );
    for r in t.rules {
        r.request.apply(&mut parts.headers);
    }
    prepare_head(&mut parts, &body, upgrade.as_ref());
    let bodyless = body.is_end_stream();
    let progress = Arc::new(BodyProgress::default());
    rec.progress = Some(progress.clone());
    let mut body = LimitedBody::new(body, t.max_body, progress.clone());
    if !bodyless {
        // What the server leaves unread when it answers early is read here, not reset.
        body = body.lingering(super::reply::drain);
    }
    // No body, no upgrade, no PROXY header, no TLS, and safe to send twice: exchanged in this task
    // (`upstream::direct`), without hyper's per-connection task and channels.
    let direct = bodyless
        && upgrade.is_none()
        && !service.send_proxy
        && service.tls.is_none()
        && parts.method.is_idempotent();
    // The direct path writes the forwarding headers into the head; hyper's takes them
    // from the map (so the copy kept for a redispatch carries them too).
    if !direct {
        forwarding.insert(&mut parts.headers);
    }
    // Kept only for requests without a body (those alone may be re-sent elsewhere), and
    // only when there is another server to re-send to: no header copy otherwise.
    let elsewhere = service.group(colour).servers.len() > 1;
    let retry = (bodyless && elsewhere).then(|| (parts.method.clone(), parts.headers.clone()));
    let mut server = a.server.clone();
    let mut request = Request::from_parts(parts, body);
    let mut attempt = 0;
    loop {
        // Origin-form (`/path?q`): the server reads the host from `Host`.
        *request.uri_mut() = Uri::from(t.path.clone());
        rec.set_server(server.id);
        rec.log(|n| n.server = Some(server.name.clone()));
        let sent = Instant::now();
        if attempt == 0 {
            rec.wait = sent.saturating_duration_since(rec.start);
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
                .map_err(|_| ProxyError::Timeout)
                .map(|r| r.map(|resp| resp.map(ProxyBody::direct)))
        } else {
            // Boxed: bodies, upgrades, PROXY headers and TLS are the rare case, and hyper's
            // send future would otherwise take room in every request's future.
            let sending = Box::pin(async {
                let tls = service.tls.as_deref().map(|spec| crate::upstream::Tls {
                    spec,
                    server: &server,
                });
                if service.send_proxy {
                    let (peer, https) = (conn.peer, conn.https());
                    conn.upstream
                        .send_with_proxy_header(server.addr, peer, https, tls, request)
                        .await
                } else {
                    conn.upstream.send(server.addr, tls, request).await
                }
            });
            await_head(sending, &progress, bodyless, sent, &shared.timeouts)
                .await
                .map(|r| r.map(|resp| resp.map(ProxyBody::upstream)))
        };
        rec.first_byte = sent.elapsed();
        match result {
            Ok(Ok(mut resp)) => {
                g.health[server.id].observe_traffic(true, &service.health, &server.name);
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    return open_tunnel(resp, shared, client_upgrade, upgrade, rec);
                }
                respond_headers(&mut resp, conn, t.site);
                for r in t.rules {
                    r.response.apply(resp.headers_mut());
                }
                return Ok(resp);
            }
            Ok(Err(e)) if progress.too_large.load(Ordering::Relaxed) => {
                tracing::debug!(error = %e, "request body passed its limit");
                return Err(ProxyError::BodyTooLarge);
            }
            Ok(Err(e)) if progress.client_error.load(Ordering::Relaxed) => {
                tracing::debug!(error = %e, "client's request body failed");
                return Err(ProxyError::ClientBody);
            }
            Ok(Err(e)) if e.is_connect() => {
                // Passive health: a refused or timed-out connect counts as a failed check.
                count_connect_error(g, &server);
                g.health[server.id].observe_traffic(false, &service.health, &server.name);
                // Nothing reached the server: a request without a body may try another
                // one, once (redispatch). One whose body has started is never re-sent.
                let (Some((method, headers)), 0) = (&retry, attempt) else {
                    return Err(ProxyError::Connect(error_chain(&e)));
                };
                let Ok((next, guard)) = choose_server(
                    g,
                    service,
                    colour,
                    a.balance,
                    key,
                    Some(&server),
                    a.deadline,
                )
                .await
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
            Err(ProxyError::Timeout) => {
                // No response head within the timeout after the request was sent whole.
                g.health[server.id].observe_traffic(false, &service.health, &server.name);
                return Err(ProxyError::Timeout);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The head as the server gets it: an upgrade spelled out, `Expect` answered here, a
/// `Host` for requests that named it only in the URI, one `Content-Length` (ours), HTTP/1.1.
#[inline]
/// Reads a chunked request body whole, up to `cap` bytes (413 beyond), for a service
/// whose servers cannot read chunked bodies; all of it within `within` (the client
/// timeout), so a slow client holds the pool slot no longer than a stalled one would.
async fn read_whole(
    body: ClientBody,
    cap: u64,
    within: std::time::Duration,
) -> Result<ClientBody, ProxyError> {
    let limited = http_body_util::Limited::new(body, usize::try_from(cap).unwrap_or(usize::MAX));
    let collected = tokio::time::timeout(within, http_body_util::BodyExt::collect(limited))
        .await
        .map_err(|_| ProxyError::ClientTimeout)?;
    match collected {
        Ok(c) => {
            let bytes = c.to_bytes();
            let n = bytes.len() as u64;
            Ok(ClientBody::Whole(Some(bytes), n))
        }
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ProxyError::BodyTooLarge),
        Err(_) => Err(ProxyError::ClientBody),
    }
}

fn prepare_head(parts: &mut Parts, body: &ClientBody, upgrade: Option<&HeaderValue>) {
    if let Some(proto) = upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, proto.clone());
    }
    // `Expect` is answered here (hyper), and the length is ours (below): both go; and a
    // request that names its host only in the URI (HTTP/2) gets a `Host`. One pass over
    // the names says which of these apply.
    let (expect, has_host, length) = forward::present_of(&parts.headers, &HEAD_FIXES);
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
}

/// A 101 from the server for the protocol asked: the tunnel opens (client socket from the listener, server's from
/// hyper), holding the pool slot and server until it closes; the 101 goes to the client.
fn open_tunnel(
    mut resp: Response<ProxyBody>,
    shared: &Shared,
    client_upgrade: Option<tokio::sync::oneshot::Receiver<Box<dyn tunnel::ClientIo>>>,
    upgrade: Option<HeaderValue>,
    rec: &mut Record,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (Some(client_upgrade), Some(proto)) = (client_upgrade, upgrade) else {
        return Err(ProxyError::BadUpgrade("101 without an upgrade request"));
    };
    // The server must switch to the protocol asked for; a 101 for another (`h2c`) would
    // open a tunnel the rules never see into. The server connection is dropped with it.
    if !resp
        .headers()
        .get(header::UPGRADE)
        .is_some_and(is_websocket)
    {
        return Err(ProxyError::BadUpgrade(
            "101 for another protocol than asked",
        ));
    }
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
    resp.headers_mut().insert(header::UPGRADE, proto);
    Ok(resp.map(|_| ProxyBody::empty()))
}

/// The server's response headers as the client gets them: hop-by-hop out, HSTS on HTTPS.
#[inline]
fn respond_headers(resp: &mut Response<ProxyBody>, conn: &ConnInfo, site: &Site) {
    forward::strip_hop_by_hop(resp.headers_mut());
    if let Some(hsts) = &site.hsts
        && conn.https()
    {
        resp.headers_mut()
            .entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert_with(|| hsts.clone());
    }
}

/// Waits for the response head of a request sent through hyper's client. The response
/// timeout counts from the end of the upload, so a steady upload may take hours. While
/// the body is on its way it must move: waiting on the client, every `timeouts.client`
/// (else the client stalled: 408, not the server's doing); waiting on the server to take
/// it, every `timeouts.server` (a server that stops reading the upload: 504). Once the
/// body has ended, the server has `timeouts.response` to answer (504).
async fn await_head<F: std::future::Future>(
    fut: F,
    progress: &BodyProgress,
    bodyless: bool,
    sent: Instant,
    t: &Timeouts,
) -> Result<F::Output, ProxyError> {
    let mut fut = std::pin::pin!(fut);
    if bodyless {
        let out = crate::deadline::within(sent + t.response, fut.as_mut()).await;
        return out.map_err(|_| ProxyError::Timeout);
    }
    // The window of whoever the upload waits on now.
    let window = || match progress.waiting_on_client.load(Ordering::Relaxed) {
        true => t.client,
        false => t.server,
    };
    let mut deadline = sent + window();
    let mut seen = progress.bytes.load(Ordering::Relaxed);
    loop {
        if let Ok(out) = crate::deadline::within(deadline, fut.as_mut()).await {
            return Ok(out);
        }
        if let Some(ended) = progress.ended() {
            match ended + t.response {
                by if by > deadline => deadline = by,
                _ => return Err(ProxyError::Timeout),
            }
            continue;
        }
        let now = progress.bytes.load(Ordering::Relaxed);
        if now == seen {
            // Nothing moved for a whole window: whoever the upload was waiting for.
            return Err(match progress.waiting_on_client.load(Ordering::Relaxed) {
                true => ProxyError::ClientTimeout,
                false => ProxyError::Timeout,
            });
        }
        seen = now;
        deadline += window();
    }
}

/// The protocol a request asks to upgrade to (HTTP/1.1 `Connection: upgrade` +
/// `Upgrade`): only a single `websocket` token. Anything else (`h2c`, a list such as
/// `h2c, websocket`, another protocol) is no upgrade: the `Upgrade` header, hop-by-hop,
/// is dropped and the request goes on as a plain one. The tunnel opens only after the
/// server's 101 for the same protocol ([`open_tunnel`]).
fn upgrade_protocol(req: &Request<ClientBody>) -> Option<HeaderValue> {
    // The own HTTP/1.1 path (an empty body) hands every request naming an upgrade to
    // hyper, so only hyper's requests can carry one.
    if req.version() != Version::HTTP_11 || matches!(req.body(), ClientBody::Empty) {
        return None;
    }
    // `Upgrade` first: nearly every request has none, and then `Connection` is not read.
    let mut protos = req.headers().get_all(header::UPGRADE).iter();
    let proto = protos.next()?;
    if protos.next().is_some() || !is_websocket(proto) {
        return None;
    }
    let wants = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    wants.then(|| HeaderValue::from_static("websocket"))
}

/// Whether an `Upgrade` value is exactly the one token `websocket`.
fn is_websocket(v: &HeaderValue) -> bool {
    v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket")
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
