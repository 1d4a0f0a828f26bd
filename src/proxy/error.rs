//! Why a request did not get a server's answer, and the one place that turns that into a status.

use http::StatusCode;

/// Everything that can stop a request before or while it is forwarded.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProxyError {
    /// Malformed request (bad path, bad Host): 400 and the connection closed.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The URI is longer than the configured limit: 414.
    #[error("URI too long")]
    UriTooLong,
    /// Host differs from the TLS SNI name of the connection: 421.
    #[error("host does not match the TLS server name")]
    Misdirected,
    /// No site claims the host, or no route takes the path: 404.
    #[error("no site or route")]
    NotFound,
    /// The client address is not in the route's allow-list: 403.
    #[error("client not allowed")]
    Forbidden,
    /// Routes take the path but not the method: 405, with `Allow` naming what they take.
    #[error("method not allowed (Allow: {})", .0.allow())]
    MethodNotAllowed(crate::rules::methods::Methods),
    /// A deny route answered.
    #[error("denied by route")]
    Denied(StatusCode),
    /// A deny rule answered (its status, its index among the rule set's deny rules).
    #[error("denied by rule")]
    DeniedBy(StatusCode, usize),
    /// Over a rate limit: 429 with `Retry-After` and the `RateLimit-*` headers.
    #[error("over the rate limit")]
    RateLimited(RateLimited),
    /// The body is larger than the route allows: 413.
    #[error("request body too large")]
    BodyTooLarge,
    /// No server of the live colour can take the request: 503 and the backup page.
    #[error("no server available")]
    NoServer,
    /// The pool's queue is full: 503 at once.
    #[error("queue full")]
    QueueFull,
    /// The request waited in the queue too long: 503 with Retry-After.
    #[error("queue timeout")]
    QueueTimeout,
    /// The client holds its share of the pool and none of its own requests ended in
    /// time: 429 with Retry-After; the client's doing, never counted against a server.
    #[error("over the client's share of the pool")]
    OverShare,
    /// Could not connect to the server (or it reset before answering): 502.
    #[error("cannot reach server: {0}")]
    Connect(String),
    /// The server did not answer in time: 504.
    #[error("server timed out")]
    Timeout,
    /// The server answered with something unusable: 502.
    #[error("bad answer from server: {0}")]
    Upstream(String),
    /// Reading the client's request body failed (malformed chunked framing, a reset
    /// mid-upload): 400, the connection closes, and nothing counts against the server.
    #[error("bad request body from the client")]
    ClientBody,
    /// The client stopped sending its request body for a whole `timeouts.client`: 408,
    /// the connection closes, and nothing counts against the server.
    #[error("client stalled sending its request body")]
    ClientTimeout,
    /// The server switched protocols in a way the request did not ask for: 502, and the
    /// client connection closes.
    #[error("bad upgrade from server: {0}")]
    BadUpgrade(&'static str),
}

impl ProxyError {
    /// The status the client sees. Decided here and nowhere else.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::ClientBody => StatusCode::BAD_REQUEST,
            ProxyError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::NotFound => StatusCode::NOT_FOUND,
            ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Denied(s) | ProxyError::DeniedBy(s, _) => *s,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::OverShare => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::NoServer | ProxyError::QueueFull | ProxyError::QueueTimeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Connect(_) | ProxyError::Upstream(_) | ProxyError::BadUpgrade(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whether the client connection must close after the answer (framing can't be trusted).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::BodyTooLarge
                | ProxyError::UriTooLong
                | ProxyError::BadUpgrade(_)
                | ProxyError::ClientBody
                | ProxyError::ClientTimeout
        )
    }

    /// Whether the service's backup page (maintenance page) is the right answer.
    pub fn wants_backup_page(&self) -> bool {
        matches!(
            self,
            ProxyError::NoServer | ProxyError::QueueTimeout | ProxyError::QueueFull
        )
    }

    /// Short code for the access log termination field.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::UriTooLong => "uri_too_long",
            ProxyError::Misdirected => "misdirected",
            ProxyError::NotFound => "not_found",
            ProxyError::Forbidden => "forbidden",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::Denied(_) => "denied",
            ProxyError::DeniedBy(..) => "deny_rule",
            ProxyError::RateLimited(_) => "rate_limited",
            ProxyError::BodyTooLarge => "body_too_large",
            ProxyError::NoServer => "no_server",
            ProxyError::QueueFull => "queue_full",
            ProxyError::QueueTimeout => "queue_timeout",
            ProxyError::OverShare => "client_share",
            ProxyError::Connect(_) => "connect_error",
            ProxyError::Timeout => "server_timeout",
            ProxyError::Upstream(_) => "upstream_error",
            ProxyError::BadUpgrade(_) => "bad_upgrade",
            ProxyError::ClientBody => "client_body_error",
            ProxyError::ClientTimeout => "client_timeout",
        }
    }
}

/// A refusal by a rate limit, with what its headers tell the client.
#[derive(Clone, Copy, Debug)]
pub struct RateLimited {
    /// The limit's index in `RuleSet::limits`.
    pub limit: usize,
    /// Its requests per period (`RateLimit-Limit`).
    pub quota: u32,
    /// Seconds until a request would pass (`Retry-After`, at least 1).
    pub retry_after: u64,
    /// Seconds until the full burst is back (`RateLimit-Reset`).
    pub reset: u64,
}

impl From<crate::pool::Refused> for ProxyError {
    fn from(r: crate::pool::Refused) -> Self {
        match r {
            crate::pool::Refused::QueueFull => ProxyError::QueueFull,
            crate::pool::Refused::QueueTimeout => ProxyError::QueueTimeout,
            crate::pool::Refused::OverShare => ProxyError::OverShare,
        }
    }
}
