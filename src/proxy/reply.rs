//! Answers the proxy writes itself: error and backup pages, the redirect to HTTPS, and the
//! lingering read of a request body nobody will forward.

use super::body::ProxyBody;
use super::decide::https_location;
use super::error::ProxyError;
use crate::body::ClientBody;
use crate::fallback;
use crate::generation::Generation;
use crate::rules::policy::LimitSpec;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use std::time::Duration;

/// Reads and discards the unread body of a request the proxy answered itself (lingering
/// close, as nginx does): a client still sending gets to finish and read the answer instead
/// of a reset. Bounded: 4 MiB or 5 s, then the body is dropped and the connection closes
/// (the answer carries `Connection: close`).
pub(super) fn drain(mut body: ClientBody) {
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

/// A route's redirect. Closes the connection when a body was announced.
pub(super) fn redirect(
    req: &Request<ClientBody>,
    status: StatusCode,
    location: &str,
) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::try_from(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if !req.body().is_end_stream() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// 308 to the same URL on HTTPS. Closes the connection when a body was announced.
pub(super) fn redirect_to_https(
    req: &Request<ClientBody>,
    host: &str,
    port: u16,
) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::try_from(https_location(host, req.uri(), port)) {
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
pub(super) fn error_response(
    g: &Generation,
    e: &ProxyError,
    backup: Option<&Bytes>,
    body_pending: bool,
) -> Response<ProxyBody> {
    let status = e.status();
    let page = match e {
        ProxyError::DeniedBy(_, i) => g.rules.deny_rule(*i).and_then(|r| r.page.as_ref()),
        _ => backup.filter(|_| e.wants_backup_page()),
    };
    let page = match e {
        ProxyError::Denied(_)
            if page.is_none() && !g.rules.error_pages.contains_key(&status.as_u16()) =>
        {
            fallback::route_denied_page(status)
        }
        _ => fallback::page(&g.rules, status, page),
    };
    let mut resp = Response::new(ProxyBody::full(page));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let ProxyError::RateLimited(r) = e {
        rate_limit_headers(h, r.quota, 0, r.reset, &g.rules.limits[r.limit]);
        h.insert(header::RETRY_AFTER, HeaderValue::from(r.retry_after));
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    if let ProxyError::MethodNotAllowed(allow) = e
        && let Ok(v) = HeaderValue::from_str(&allow.allow())
    {
        h.insert(header::ALLOW, v);
    }
    if body_pending || e.closes_connection() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The rate-limit headers: the IETF draft's `RateLimit-Limit`/`-Remaining`/`-Reset` and
/// the `X-RateLimit-*` trio that InvenioRDM's (and GitHub's) API clients read; `Reset` is
/// in seconds from now in both (the draft's form).
pub(super) fn rate_limit_headers(
    h: &mut http::HeaderMap,
    quota: u32,
    remaining: u32,
    reset: u64,
    spec: &LimitSpec,
) {
    let policy = format!("{quota};w={}", spec.per.as_secs().max(1));
    for (limit, left, when) in [
        ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"),
        (
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ),
    ] {
        h.insert(limit, HeaderValue::from(quota));
        h.insert(left, HeaderValue::from(remaining));
        h.insert(when, HeaderValue::from(reset));
    }
    if let Ok(v) = HeaderValue::try_from(policy) {
        h.insert("ratelimit-policy", v);
    }
}
