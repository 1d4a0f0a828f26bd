//! The stats listener: `/healthz` for outer load balancers, the stats page and the
//! machine-readable endpoints, and (when enabled) admin actions.
//!
//! Endpoints: `/healthz` (200 serving, 503 draining; always open), `/stats` (HTML;
//! `?refresh=N` auto-refreshes), `/stats;csv` and `/stats?format=csv` (HAProxy CSV),
//! `/stats?format=json`, `/metrics` (Prometheus text), `POST /stats/admin`
//! (`server=…&action=ready|drain|maint&token=…`, only with `admin: true` and auth).
//! Separate bind from the proxy listeners; network allow-list and basic auth optional.
//! Hardened for a port anyone on the host (or a browser page) may reach: at most
//! 256 connections, a header timeout (`timeouts.request_header`), two minutes per
//! connection, never framed (`X-Frame-Options`, CSP `frame-ancestors`), and no
//! state-changing request from another site (`Sec-Fetch-Site` / `Origin`).

pub mod csv;
pub mod html;
pub mod json;
pub mod prometheus;
pub mod view;

use crate::generation::Generation;
use crate::health::AdminState;
use crate::proxy::Shared;
use crate::proxy::body::ProxyBody;
use crate::reload::Reloader;
use crate::rules::matcher::AllowList;
use base64::Engine;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use view::View;

/// State the stats listener reads.
pub struct Admin {
    /// Request state (generation, counters).
    pub shared: Arc<Shared>,
    /// Set while the process drains: `/healthz` answers 503 so outer balancers move away.
    pub draining: Arc<AtomicBool>,
    /// Reloads rules on request and keeps the last outcome for the panel.
    pub reloader: Arc<Reloader>,
    /// How long a client may take to send a request head.
    pub header_timeout: Duration,
    /// Who may connect (`None` = everyone who reaches the address).
    pub allow: Option<AllowList>,
    /// Basic-auth `user:password`, when required.
    pub auth: Option<(String, String)>,
    /// CSRF token for admin forms, when admin actions are enabled.
    pub admin_token: Option<String>,
}

/// Runs `f` over a view of the serving generation (no page refresh, no admin token),
/// for renderings asked for elsewhere than the stats listener (the runtime socket).
pub fn with_view<R>(shared: &Shared, reloader: &Reloader, f: impl FnOnce(&View<'_>) -> R) -> R {
    let g = shared.state.load_full();
    let reload = reloader.status.load();
    let view = View {
        generation: &g,
        stats: &shared.stats,
        reload: &reload,
        reloads: (
            reloader.counters.ok.load(Ordering::Relaxed),
            reloader.counters.failed.load(Ordering::Relaxed),
        ),
        refresh: None,
        admin_token: None,
        dns: shared.resolver.status(),
        certs: certs(reloader),
        limits_store: shared.limits_store.as_deref(),
    };
    f(&view)
}

/// The certificates being served, with their expiry.
fn certs(reloader: &Reloader) -> Vec<crate::tls::CertInfo> {
    reloader
        .certs
        .as_ref()
        .map(|c| c.load().info.clone())
        .unwrap_or_default()
}

/// A token nobody can guess, for the admin forms (per process).
pub fn new_token() -> String {
    let mut buf = [0u8; 16];
    if crate::tls::provider().secure_random.fill(&mut buf).is_err() {
        buf = fastrand::u128(..).to_le_bytes();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves the stats listener until stopped; samples counters every 5s for rates.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener, stop: CancellationToken) {
    let sampler = admin.shared.clone();
    let sampler_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            sampler.stats.sample();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = sampler_stop.cancelled() => return,
            }
        }
    });
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(admin.header_timeout);
    http.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let http = Arc::new(http);
    // Bounds what anyone who can reach the port may hold: connections at once (the
    // excess is closed at accept) and each connection's life.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = stop.cancelled() => return,
        };
        if let Some(allow) = &admin.allow
            && !allow.contains(peer.ip())
        {
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let admin = admin.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(admin.clone(), peer, req));
            let conn = http.serve_connection(TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(CONNECTION_LIFE, conn).await;
            drop(slot);
        });
    }
}

/// Stats connections open at once; more are closed as they are accepted.
const MAX_CONNECTIONS: usize = 256;
/// The longest a stats connection lives (a scraper reconnects; an idle one goes).
const CONNECTION_LIFE: Duration = Duration::from_secs(120);

/// Whether a browser says this request comes from another site (a page elsewhere posting
/// to the stats port on the same host): `Sec-Fetch-Site`, else an `Origin` naming another
/// host than the request's. Command-line clients send neither.
fn cross_site(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = h.get(header::ORIGIN) else {
        return false;
    };
    let host = h
        .get(header::HOST)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let origin = origin.as_bytes();
    let authority = origin
        .strip_prefix(b"http://")
        .or_else(|| origin.strip_prefix(b"https://"))
        .unwrap_or(origin);
    !authority.eq_ignore_ascii_case(host)
}

async fn answer(
    admin: Arc<Admin>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return Ok(if admin.draining.load(Ordering::Relaxed) {
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "draining\n".into(),
            )
        } else {
            plain(StatusCode::OK, "text/plain", "ok\n".into())
        });
    }
    if !authorized(&admin, &req) {
        let mut r = plain(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "authentication required\n".into(),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"gatehouse stats\""),
        );
        return Ok(r);
    }
    if req.method() == Method::POST && cross_site(&req) {
        return Ok(plain(
            StatusCode::FORBIDDEN,
            "text/plain",
            "cross-site request refused\n".into(),
        ));
    }
    if req.method() == Method::POST && path == "/stats/admin" {
        return Ok(admin_action(&admin, peer, req).await);
    }
    if req.method() == Method::POST && path == "/reload" {
        // `gatehouse reload`: from this machine, or from anyone who passed the stats
        // listener's credentials (checked above).
        if !peer.ip().is_loopback() && admin.auth.is_none() {
            return Ok(plain(
                StatusCode::FORBIDDEN,
                "text/plain",
                "reload only from loopback\n".into(),
            ));
        }
        return Ok(
            match admin
                .reloader
                .reload_and_say(&who(&admin, peer, &req))
                .await
            {
                Ok(said) => plain(StatusCode::OK, "text/plain", said),
                Err(refused) => plain(StatusCode::UNPROCESSABLE_ENTITY, "text/plain", refused),
            },
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ));
    }
    let g: Arc<Generation> = admin.shared.state.load_full();
    let query = req.uri().query().unwrap_or("");
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
    };
    let reload = admin.reloader.status.load();
    let view = View {
        generation: &g,
        stats: &admin.shared.stats,
        reload: &reload,
        reloads: (
            admin.reloader.counters.ok.load(Ordering::Relaxed),
            admin.reloader.counters.failed.load(Ordering::Relaxed),
        ),
        refresh: param("refresh")
            .and_then(|r| r.parse().ok())
            .map(|r: u32| r.clamp(1, 3600)),
        admin_token: admin.admin_token.as_deref(),
        dns: admin.shared.resolver.status(),
        certs: certs(&admin.reloader),
        limits_store: admin.shared.limits_store.as_deref(),
    };
    let resp = match (path.as_str(), param("format").unwrap_or("")) {
        ("/stats;csv", _) | ("/stats", "csv") => {
            plain(StatusCode::OK, "text/csv; charset=utf-8", csv::csv(&view))
        }
        ("/stats", "json") => plain(StatusCode::OK, "application/json", json::json(&view)),
        ("/stats", _) | ("/", _) => plain(
            StatusCode::OK,
            "text/html; charset=utf-8",
            html::html(&view),
        ),
        ("/metrics", _) => plain(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            prometheus::prometheus(&view),
        ),
        _ => plain(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    Ok(resp)
}

fn authorized(admin: &Admin, req: &Request<Incoming>) -> bool {
    let Some((user, password)) = &admin.auth else {
        return true;
    };
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
    else {
        return false;
    };
    constant_time_eq(&given, format!("{user}:{password}").as_bytes())
}

/// Who sent an admin request, for the audit log: `http 10.0.0.5 user=ops` (the user named
/// in the credentials it passed; `authorized` checked them).
fn who(admin: &Admin, peer: SocketAddr, req: &Request<Incoming>) -> String {
    // Without configured credentials the header is unchecked: naming its user would let a
    // client blame someone else.
    let user = admin
        .auth
        .as_ref()
        .and(Some(req))
        .and_then(|req| req.headers().get(header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok()?.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(u, _)| u.to_string()));
    match user {
        Some(u) => format!("http {} user={u}", peer.ip()),
        None => format!("http {}", peer.ip()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Sets a server's admin state from the page's form; audited, kept across reloads.
async fn admin_action(
    admin: &Admin,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some(token) = &admin.admin_token else {
        return plain(
            StatusCode::FORBIDDEN,
            "text/plain",
            "admin actions are disabled (stats.admin)\n".into(),
        );
    };
    let who = who(admin, peer, &req);
    let body = match http_body_util::Limited::new(req.into_body(), 4096)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                "form too large\n".into(),
            );
        }
    };
    let form = String::from_utf8_lossy(&body);
    let field = |k: &str| {
        form.split('&')
            .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .map(|v| v.replace('+', " "))
    };
    if !field("token").is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes())) {
        return plain(
            StatusCode::FORBIDDEN,
            "text/plain",
            "bad or missing CSRF token\n".into(),
        );
    }
    let (Some(server), Some(action)) = (field("server"), field("action")) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "server and action are required\n".into(),
        );
    };
    let state = match action.as_str() {
        "ready" => AdminState::Ready,
        "drain" => AdminState::Drain,
        "maint" => AdminState::Maint,
        _ => {
            return plain(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "action: ready, drain or maint\n".into(),
            );
        }
    };
    let Some(s) = admin.shared.health.get(&server) else {
        return plain(
            StatusCode::NOT_FOUND,
            "text/plain",
            "no such server\n".into(),
        );
    };
    let before = s.status();
    s.set_admin(state);
    let detail = serde_json::json!({ "server": server, "from": before, "to": s.status() });
    crate::audit::record(&who, "server_state", detail);
    admin.reloader.state_changed();
    let mut r = plain(
        StatusCode::SEE_OTHER,
        "text/plain",
        format!("{server}: {}\n", s.status()),
    );
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/stats"));
    r
}

fn plain(status: StatusCode, ctype: &'static str, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The page is never framed (clickjacking of its admin buttons) nor sniffed.
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}
