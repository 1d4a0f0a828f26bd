//! A stand-in repository server: what one UI or API server of the demo answers.
//!
//! Deterministic so tests can check every byte: `/records/<id>/files/<size>.bin`
//! streams `size` bytes where byte `i` is `i % 251` (with Range), `/static/*` serves
//! small assets, POST/PUT count the body they receive, `?delay=2s` waits first, and
//! every answer carries `X-Served-By: <server name>`.

use crate::units::{parse_duration, parse_size};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, stream};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

/// Bytes of a generated file are `i % PATTERN` so any range can be checked.
pub const PATTERN: usize = 251;
const CHUNK: usize = 64 * 1024;

type DemoBody = BoxBody<Bytes, std::io::Error>;

/// One running stand-in server.
pub struct StandIn {
    /// Its server name (`ui-blue-1`).
    pub name: Arc<str>,
    /// Requests in flight now.
    pub in_flight: AtomicU64,
    /// Most in flight at once.
    pub max_in_flight: AtomicU64,
    /// Requests served (health checks not counted: see `pings`).
    pub served: AtomicU64,
    /// Health checks (`/ping`) answered.
    pub pings: AtomicU64,
    /// The status `/ping` answers (200; 404 asks a checker with `on_404: drain` to drain it).
    pub ping_status: std::sync::atomic::AtomicU16,
    /// The last health check's method and `Host`.
    pub last_ping: std::sync::Mutex<(String, String)>,
    /// In flight across every stand-in of the same service (both colours).
    pub service: Arc<Concurrency>,
    /// While stopped: the port, bound but not listening, so connects are refused and no
    /// other socket (a listener's bind, an outgoing connection's source port) takes it
    /// before the restart.
    pub port_hold: std::sync::Mutex<Option<socket2::Socket>>,
    /// Set once a stop has taken effect: the listener is closed and every open
    /// connection has been told to drop (so nothing is answered as this stand-in again).
    pub stopped: std::sync::atomic::AtomicBool,
}

impl StandIn {
    /// Lets go of the held port (for the restart's listener).
    pub fn release_port(&self) {
        self.port_hold
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

/// A socket bound to `addr` (address reuse on, as the listener's) that never listens.
fn hold_port(addr: std::net::SocketAddr) -> std::io::Result<socket2::Socket> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    Ok(sock)
}

/// Requests in flight across a group of stand-ins, and the most ever at once.
#[derive(Debug, Default)]
pub struct Concurrency {
    /// In flight now.
    pub now: AtomicU64,
    /// Most at once.
    pub max: AtomicU64,
}

/// The byte at `offset` of every generated file.
pub fn byte_at(offset: u64) -> u8 {
    (offset % PATTERN as u64) as u8
}

fn pattern() -> &'static Bytes {
    static P: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        Bytes::from(
            (0..CHUNK + PATTERN)
                .map(|i| (i % PATTERN) as u8)
                .collect::<Vec<u8>>(),
        )
    })
}

/// What a stand-in speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaks {
    /// HTTP/1.1 and HTTP/2 (UI, API, OpenSearch-like nodes).
    Http,
    /// A line protocol (a RabbitMQ-like node behind a TCP listener): a greeting naming
    /// the node, then every line echoed back with the node's name in front.
    Lines,
}

/// Serves `listener` as the stand-in `name` until `stop` fires.
pub async fn serve(
    name: Arc<str>,
    listener: TcpListener,
    stop: CancellationToken,
    service: Arc<Concurrency>,
    speaks: Speaks,
) -> Arc<StandIn> {
    let me = Arc::new(StandIn {
        name,
        in_flight: 0.into(),
        max_in_flight: 0.into(),
        served: 0.into(),
        pings: 0.into(),
        ping_status: 200.into(),
        last_ping: Default::default(),
        service,
        port_hold: Default::default(),
        stopped: Default::default(),
    });
    let out = me.clone();
    tokio::spawn(async move {
        let http = Arc::new(auto::Builder::new(TokioExecutor::new()));
        let conns = CancellationToken::new();
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                _ = stop.cancelled() => break,
            };
            let me = me.clone();
            let http = http.clone();
            let conns = conns.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                if speaks == Speaks::Lines {
                    // Biased: once stopped, a connection never answers again.
                    tokio::select! {
                        biased;
                        _ = conns.cancelled() => {}
                        _ = lines(&me, tcp) => {}
                    }
                    return;
                }
                let svc = service_fn(move |req| answer(me.clone(), req));
                let conn = http.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                tokio::select! {
                    biased;
                    _ = conns.cancelled() => {}
                    _ = conn => {}
                }
            });
        }
        // A stopped stand-in drops its open connections too, like a killed process.
        conns.cancel();
        let addr = listener.local_addr();
        drop(listener);
        if let Ok(addr) = addr
            && let Ok(hold) = hold_port(addr)
        {
            *me.port_hold.lock().unwrap_or_else(|p| p.into_inner()) = Some(hold);
        }
        me.stopped.store(true, Ordering::Release);
    });
    out
}

/// The line protocol: greet, then echo each line (at most 4 KiB) with the node's name.
async fn lines(me: &StandIn, tcp: tokio::net::TcpStream) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let (r, mut w) = tcp.into_split();
    w.write_all(format!("{} ready: lines are echoed\r\n", me.name).as_bytes())
        .await?;
    let mut r = BufReader::new(r);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut r).take(4096).read_line(&mut line).await?;
        if n == 0 {
            return Ok(());
        }
        me.served.fetch_add(1, Ordering::Relaxed);
        w.write_all(format!("{}: {}\n", me.name, line.trim_end()).as_bytes())
            .await?;
    }
}

struct InFlight(Arc<StandIn>);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.service.now.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn answer(
    me: Arc<StandIn>,
    req: Request<Incoming>,
) -> Result<Response<DemoBody>, Infallible> {
    // Health checks are answered but not counted as requests or against concurrency
    // (HAProxy does not count them against maxconn either).
    if matches!(req.uri().path(), "/ping" | "/_cluster/health") {
        me.pings.fetch_add(1, Ordering::Relaxed);
        let host = req
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        *me.last_ping.lock().unwrap_or_else(|p| p.into_inner()) =
            (req.method().to_string(), host.to_string());
        let status =
            StatusCode::from_u16(me.ping_status.load(Ordering::Relaxed)).unwrap_or(StatusCode::OK);
        let mut r = if req.uri().path() == "/ping" {
            text(status, "text/plain", "pong\n".to_string())
        } else {
            let body = r#"{"cluster_name":"demo","status":"green","number_of_nodes":2}"#;
            text(StatusCode::OK, "application/json", format!("{body}\n"))
        };
        if let Ok(v) = HeaderValue::from_str(&me.name) {
            r.headers_mut().insert("x-served-by", v);
        }
        return Ok(r);
    }
    me.served.fetch_add(1, Ordering::Relaxed);
    let now = me.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    me.max_in_flight.fetch_max(now, Ordering::Relaxed);
    let all = me.service.now.fetch_add(1, Ordering::Relaxed) + 1;
    me.service.max.fetch_max(all, Ordering::Relaxed);
    let guard = InFlight(me.clone());
    let query = req.uri().query().unwrap_or("");
    if let Some(d) = query.split('&').find_map(|kv| kv.strip_prefix("delay="))
        && let Ok(d) = parse_duration(d)
    {
        tokio::time::sleep(d.min(std::time::Duration::from_secs(120))).await;
    }
    let path = req.uri().path().to_string();
    let request_id = req.headers().get("x-request-id").cloned();
    let mut resp = if path == "/ws" {
        websocket(req, &me)
    } else if req.method() == http::Method::POST || req.method() == http::Method::PUT {
        receive(req).await
    } else if let Some(asset) = path.strip_prefix("/static/") {
        let body = format!("/* static asset {asset} */\nbody {{ font-family: sans-serif; }}\n");
        text(StatusCode::OK, "text/css", body)
    } else if let Some(size) = file_size(&path) {
        file(&req, size, guard)
    } else {
        echo(&me, &req)
    };
    if let Ok(v) = HeaderValue::from_str(&me.name) {
        resp.headers_mut().insert("x-served-by", v);
    }
    // What InvenioRDM's UI and API send for the edge's logs (hidden from clients by the
    // shipped rules).
    resp.headers_mut()
        .insert("x-session-id", HeaderValue::from_static("demo-session"));
    resp.headers_mut()
        .insert("x-user-id", HeaderValue::from_static("0"));
    // What a real application does with the edge's id: answers with the one it got.
    if let Some(id) = request_id {
        resp.headers_mut().insert("x-request-id", id);
    }
    Ok(resp)
}

/// `/ws`: a WebSocket echo (each message comes back prefixed with the server's name).
fn websocket(mut req: Request<Incoming>, me: &Arc<StandIn>) -> Response<DemoBody> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()));
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let (Some(accept), true) = (key, upgrade) else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "websocket only\n".into(),
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let name = me.name.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(t) => Message::Text(format!("{name}: {t}").into()),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

/// `/records/<id>/files/<key>` where the key names its size: `10M.bin`, `1G.bin`, `512.bin`.
fn file_size(path: &str) -> Option<u64> {
    let mut parts = path.strip_prefix("/records/")?.split('/');
    let (_id, files, key) = (parts.next()?, parts.next()?, parts.next()?);
    if files != "files" || parts.next().is_some() {
        return None;
    }
    let stem = key.split('.').next()?;
    parse_size(stem).ok()
}

fn text(status: StatusCode, ctype: &'static str, body: String) -> Response<DemoBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn echo(me: &StandIn, req: &Request<Incoming>) -> Response<DemoBody> {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let body = serde_json::json!({
        "served_by": &*me.name,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "host": h("host"),
        "x_forwarded_for": h("x-forwarded-for"),
        "x_forwarded_proto": h("x-forwarded-proto"),
        "x_forwarded_host": h("x-forwarded-host"),
        "forwarded": h("forwarded"),
        "x_real_ip": h("x-real-ip"),
        // Every header as received, for tests of what reaches a server.
        "headers": req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect::<serde_json::Map<String, serde_json::Value>>(),
    });
    text(StatusCode::OK, "application/json", format!("{body}\n"))
}

async fn receive(req: Request<Incoming>) -> Response<DemoBody> {
    let mut body = req.into_body();
    let mut n: u64 = 0;
    let mut bad = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => {
                bad = true;
                break;
            }
        }
    }
    let status = if bad {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    text(
        status,
        "application/json",
        format!("{{\"received\":{n}}}\n"),
    )
}

fn file(req: &Request<Incoming>, size: u64, guard: InFlight) -> Response<DemoBody> {
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    let (start, end, partial) = match range.map(|r| parse_range(r, size)) {
        None => (0, size, false),
        Some(Some((s, e))) => (s, e, true),
        Some(None) => {
            let mut r = text(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "text/plain",
                String::new(),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let head = req.method() == http::Method::HEAD;
    let chunks = stream::unfold((start, guard), move |(pos, guard)| async move {
        if pos >= end || head {
            return None;
        }
        let n = (end - pos).min(CHUNK as u64) as usize;
        let off = (pos % PATTERN as u64) as usize;
        let data = pattern().slice(off..off + n);
        Some((
            Ok::<_, std::io::Error>(Frame::data(data)),
            (pos + n as u64, guard),
        ))
    });
    let body = StreamBody::new(chunks);
    let mut r = Response::new(BodyExt::boxed(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if partial {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{size}", start, end - 1)) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    r
}

/// One `bytes=` range as [start, end); `None` when unsatisfiable or malformed.
fn parse_range(r: &str, size: u64) -> Option<(u64, u64)> {
    let spec = r.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    match (a.trim(), b.trim()) {
        (a, "") if digits(a) => {
            let s: u64 = a.parse().ok()?;
            (s < size).then_some((s, size))
        }
        ("", n) if digits(n) => {
            let n: u64 = n.parse().ok()?;
            (n > 0 && size > 0).then(|| (size.saturating_sub(n), size))
        }
        (a, b) if digits(a) && digits(b) => {
            let (s, e): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
            (s <= e && s < size).then(|| (s, e.min(size - 1) + 1))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 100)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=+1-2", 100), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 100), None);
    }

    #[test]
    fn file_keys_name_their_size() {
        assert_eq!(file_size("/records/abc/files/1M.bin"), Some(1 << 20));
        assert_eq!(file_size("/records/abc/files/512.bin"), Some(512));
        assert_eq!(file_size("/records/abc/files/x.bin"), None);
        assert_eq!(file_size("/records/abc/other/1M.bin"), None);
    }
}
