//! HTTP/2 requests that RFC 9113 §8 calls malformed: refused with a stream reset before
//! anything is decided or forwarded (the HTTP/1.1 parser has its own rules).

use http::{Method, Request, header};

/// Whether an HTTP/2 request is malformed in a way the HTTP/2 library let through: a
/// field value with leading or trailing whitespace (§8.2.1), `CONNECT` without
/// `:authority` (§8.5), or a `host` that disagrees with `:authority` (§8.3.1).
pub fn h2_malformed<B>(req: &Request<B>) -> bool {
    let padded = |v: &[u8]| {
        matches!(v.first(), Some(b' ' | b'\t')) || matches!(v.last(), Some(b' ' | b'\t'))
    };
    if req.headers().values().any(|v| padded(v.as_bytes())) {
        return true;
    }
    let authority = req.uri().authority();
    if req.method() == Method::CONNECT && authority.is_none() {
        return true;
    }
    match (authority, req.headers().get(header::HOST)) {
        (Some(a), Some(h)) => !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn malformed_requests_are_found() {
        let ok = req("GET", "https://a.example/x", &[("accept", "*/*")]);
        assert!(!h2_malformed(&ok));
        assert!(h2_malformed(&req(
            "GET",
            "https://a.example/",
            &[("x", " v")]
        )));
        assert!(h2_malformed(&req(
            "GET",
            "https://a.example/",
            &[("x", "v\t")]
        )));
        assert!(h2_malformed(&req("CONNECT", "/", &[])));
        assert!(h2_malformed(&req(
            "GET",
            "https://a.example/",
            &[("host", "b.example")]
        )));
        let same = req("GET", "https://a.example/", &[("host", "A.example")]);
        assert!(!h2_malformed(&same));
    }
}
