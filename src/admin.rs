//! The stats listener: `/healthz` for outer load balancers, and the stats endpoints.
//!
//! Endpoints: `/healthz` (200 serving, 503 draining), `/stats` (HTML page),
//! `/stats;csv` and `/stats?format=csv` (HAProxy CSV), `/stats?format=json`, `/metrics`
//! (Prometheus text). Separate bind from the proxy listeners; read-only.

use crate::generation::Generation;
use crate::proxy::Shared;
use crate::proxy::body::ProxyBody;
use crate::stats::render;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// State the stats listener reads.
pub struct Admin {
    /// Request state (generation, counters).
    pub shared: Arc<Shared>,
    /// Set while the process drains: `/healthz` answers 503 so outer balancers move away.
    pub draining: Arc<AtomicBool>,
    /// The last reload's outcome, shown on the panel.
    pub last_reload: Arc<arc_swap::ArcSwap<crate::reload::ReloadStatus>>,
}

/// Serves the stats listener until stopped.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener, stop: CancellationToken) {
    let http = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = stop.cancelled() => return,
        };
        let admin = admin.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(admin.clone(), req));
            let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

async fn answer(
    admin: Arc<Admin>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ));
    }
    let g: Arc<Generation> = admin.shared.state.load_full();
    let path = req.uri().path();
    let format = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("format=")))
        .unwrap_or("");
    let view = render::View {
        generation: &g,
        stats: &admin.shared.stats,
        reload: &admin.last_reload.load(),
    };
    let resp = match (path, format) {
        ("/healthz", _) => {
            if admin.draining.load(Ordering::Relaxed) {
                plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".into(),
                )
            } else {
                plain(StatusCode::OK, "text/plain", "ok\n".into())
            }
        }
        ("/stats;csv", _) | ("/stats", "csv") => plain(
            StatusCode::OK,
            "text/csv; charset=utf-8",
            render::csv(&view),
        ),
        ("/stats", "json") => plain(StatusCode::OK, "application/json", render::json(&view)),
        ("/stats", _) => plain(
            StatusCode::OK,
            "text/html; charset=utf-8",
            render::html(&view),
        ),
        ("/metrics", _) => plain(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render::prometheus(&view),
        ),
        _ => plain(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    Ok(resp)
}

fn plain(status: StatusCode, ctype: &'static str, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
