//! The access log: one line per request, written when its response body ends.
//!
//! Text (HAProxy `httplog`-like) by default, JSON on request; emitted through
//! `tracing` under the `access` target so it can be routed or silenced separately.

use crate::config::AccessLog;
use std::fmt::Write;

/// Everything one log line says about a request.
#[derive(Debug, Default)]
pub struct Entry<'a> {
    /// Client address used for decisions.
    pub client: String,
    /// Request method.
    pub method: &'a str,
    /// Host (lower-case, no port).
    pub host: &'a str,
    /// Path as received.
    pub path: &'a str,
    /// HTTP version as text.
    pub version: &'a str,
    /// Final status.
    pub status: u16,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Names from the rules (`-` when not reached).
    pub site: &'a str,
    /// Route name.
    pub route: &'a str,
    /// Pool name.
    pub pool: &'a str,
    /// Service name.
    pub service: &'a str,
    /// Colour served.
    pub colour: &'a str,
    /// Server name.
    pub server: &'a str,
    /// TLS handshake time of the connection, ms.
    pub tls_ms: u64,
    /// Time waiting for a pool slot, ms.
    pub wait_ms: u64,
    /// Time to the server's response headers, ms.
    pub first_byte_ms: u64,
    /// Total time to the last byte, ms.
    pub total_ms: u64,
    /// How the request ended (`-` for normal).
    pub termination: &'a str,
    /// `X-Request-ID` (ours, or a trusted proxy's).
    pub request_id: &'a str,
}

/// Writes one entry in the configured format.
pub fn write(format: AccessLog, e: &Entry<'_>) {
    match format {
        AccessLog::Off => {}
        AccessLog::Text => {
            let mut line = String::with_capacity(200);
            let _ = write!(
                line,
                "{} {}/{} {} {}/{}/{} {}/{}/{}/{} {} {} {} {} \"{} {}{} {}\" {}",
                e.client,
                e.site,
                e.route,
                e.pool,
                e.service,
                e.colour,
                e.server,
                e.tls_ms,
                e.wait_ms,
                e.first_byte_ms,
                e.total_ms,
                e.status,
                e.bytes_in,
                e.bytes_out,
                e.termination,
                e.method,
                e.host,
                e.path,
                e.version,
                e.request_id
            );
            tracing::info!(target: "access", "{line}");
        }
        AccessLog::Json => {
            let v = serde_json::json!({
                "time": httpdate::fmt_http_date(std::time::SystemTime::now()),
                "client": e.client, "method": e.method, "host": e.host, "path": e.path,
                "version": e.version, "status": e.status, "bytes_in": e.bytes_in,
                "bytes_out": e.bytes_out, "site": e.site, "route": e.route, "pool": e.pool,
                "service": e.service, "colour": e.colour, "server": e.server,
                "tls_ms": e.tls_ms, "wait_ms": e.wait_ms, "first_byte_ms": e.first_byte_ms,
                "total_ms": e.total_ms, "termination": e.termination,
                "request_id": e.request_id,
            });
            tracing::info!(target: "access", "{v}");
        }
    }
}
