//! The proxy's own pages: built-in error pages, replaceable from the rules, and backup pages.
//!
//! Pages are loaded when rules compile and served from memory, so a maintenance page
//! still works when every server (and the disk) is gone.

use crate::rules::RuleSet;
use bytes::Bytes;
use http::StatusCode;

/// The built-in page for a status, small and self-contained.
pub fn builtin_page(status: StatusCode) -> Bytes {
    render(status, None)
}

/// The built-in page for a route the rules deny (`deny: 403` on a path): the address is
/// not served to anyone, so the page does not blame the client's network.
pub fn route_denied_page(status: StatusCode) -> Bytes {
    render(status, Some("This address is not served here."))
}

fn render(status: StatusCode, text: Option<&str>) -> Bytes {
    let (title, builtin) = match status.as_u16() {
        400 => ("Bad request", "The request could not be understood."),
        403 => (
            "Forbidden",
            "You are not allowed to reach this address from your network.",
        ),
        404 => ("Not found", "Nothing is served at this address."),
        413 => (
            "Request too large",
            "The request body is larger than this address accepts.",
        ),
        421 => (
            "Misdirected request",
            "This connection cannot serve that host. Please retry.",
        ),
        408 => (
            "Request timeout",
            "The request stopped arriving before it was complete.",
        ),
        429 => (
            "Too many requests",
            "Too many of your requests are in progress here at once. Please wait for one to finish.",
        ),
        431 => ("Headers too large", "The request headers are too large."),
        502 => (
            "Bad gateway",
            "The service could not be reached. Please try again shortly.",
        ),
        503 => (
            "Service unavailable",
            "The service is busy or under maintenance. Please try again shortly.",
        ),
        504 => (
            "Gateway timeout",
            "The service took too long to answer. Please try again shortly.",
        ),
        _ => ("Error", "The request could not be served."),
    };
    let text = text.unwrap_or(builtin);
    let code = status.as_u16();
    Bytes::from(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{code} {title}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;color:#222}}\
h1{{font-weight:600}}p{{color:#555}}</style></head>\
<body><h1>{code} {title}</h1><p>{text}</p></body></html>\n"
    ))
}

/// The page for `status`: the service's backup page when asked and present, then
/// the rules' error page for the status, then the built-in one.
pub fn page(rules: &RuleSet, status: StatusCode, backup: Option<&Bytes>) -> Bytes {
    if let Some(b) = backup {
        return b.clone();
    }
    match rules.error_pages.get(&status.as_u16()) {
        Some(p) => p.clone(),
        None => builtin_page(status),
    }
}
