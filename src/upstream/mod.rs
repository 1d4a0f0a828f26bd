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
