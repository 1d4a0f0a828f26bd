//! Connections to backend servers: one keep-alive client shared by every request.
//!
//! hyper-util's pooled client keeps idle connections per server (bounded per server
//! and by an idle timeout), so a steady load reuses connections instead of paying a
//! TCP handshake per request.

pub mod health;

use crate::config::Config;
use crate::proxy::body::LimitedBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The client every request uses to reach its server.
pub type UpstreamClient = Client<HttpConnector, LimitedBody>;

/// Builds the shared client from the config's timeouts and limits.
pub fn client(config: &Config) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.timeouts.connect));
    connector.enforce_http(true);
    connector.set_reuse_address(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(config.timeouts.upstream_idle)
        .pool_max_idle_per_host(config.limits.upstream_idle_per_server)
        // Bounded read buffer: a slow client must not make us hold more than this per download.
        .http1_max_buf_size(256 * 1024)
        .set_host(false)
        .build(connector)
}

/// A failed attempt to get a response from a server.
#[derive(Debug)]
pub struct SendError {
    /// Nothing reached the server (connect refused or timed out): safe to retry elsewhere.
    pub connect: bool,
    /// What happened.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl SendError {
    /// Whether the connection itself failed (nothing was sent).
    pub fn is_connect(&self) -> bool {
        self.connect
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.source)
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl From<hyper_util::client::legacy::Error> for SendError {
    fn from(e: hyper_util::client::legacy::Error) -> Self {
        SendError {
            connect: e.is_connect(),
            source: Box::new(e),
        }
    }
}

/// Sends one request on a fresh connection that starts with a PROXY v2 header carrying the
/// client's address. Not pooled: a PROXY header describes one client, so its connection
/// must never carry another client's requests.
pub async fn send_with_proxy_header(
    server: &crate::rules::Server,
    client: std::net::SocketAddr,
    connect_timeout: std::time::Duration,
    request: http::Request<LimitedBody>,
) -> Result<http::Response<hyper::body::Incoming>, SendError> {
    use tokio::io::AsyncWriteExt;
    let connect_err = |e: Box<dyn std::error::Error + Send + Sync>| SendError {
        connect: true,
        source: e,
    };
    let mut tcp =
        match tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(server.addr))
            .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(connect_err(Box::new(e))),
            Err(e) => return Err(connect_err(Box::new(e))),
        };
    let _ = tcp.set_nodelay(true);
    let header = crate::proxy_protocol::v2_header(client, server.addr);
    tcp.write_all(&header)
        .await
        .map_err(|e| connect_err(Box::new(e)))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| connect_err(Box::new(e)))?;
    tokio::spawn(conn.with_upgrades());
    // A bare connection sends the URI as given: make it origin-form (`/path?q`), as the
    // pooled client does, so the server reads the host from `Host`.
    let mut request = request;
    if let Some(pq) = request.uri().path_and_query().cloned() {
        *request.uri_mut() = http::Uri::from(pq);
    }
    send.send_request(request).await.map_err(|e| SendError {
        connect: false,
        source: Box::new(e),
    })
}
