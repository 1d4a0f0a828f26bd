//! The host a request names, as routing sees it: lower-case, no port, no trailing dot.
//!
//! Read once per request, so it is kept inline when short (every real name is): no
//! allocation on the hot path, and the `Host` header is checked in place rather than
//! parsed into a `http::uri::Authority` (which copies it).

use super::error::ProxyError;
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Uri, header};

/// Host names up to this long are kept inline.
const INLINE: usize = 46;

/// A request's host, lower-case and without port: inline when short.
#[derive(Debug)]
pub enum HostName {
    /// The bytes (ASCII) and their length.
    Inline([u8; INLINE], u8),
    /// A longer name.
    Heap(Box<str>),
}

impl HostName {
    /// `h` lower-cased, a trailing dot dropped (`example.org.` is `example.org`).
    fn new(h: &str) -> HostName {
        let h = h.trim_end_matches('.');
        if h.len() <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..h.len()].copy_from_slice(h.as_bytes());
            buf[..h.len()].make_ascii_lowercase();
            HostName::Inline(buf, h.len() as u8)
        } else {
            HostName::Heap(h.to_ascii_lowercase().into())
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        match self {
            // Only ASCII is ever stored (`new` takes checked `&str`s and lower-cases ASCII).
            HostName::Inline(buf, len) => std::str::from_utf8(&buf[..*len as usize]).unwrap_or(""),
            HostName::Heap(s) => s,
        }
    }
}

/// The host a request names: the request target's authority (absolute-form, HTTP/2's
/// `:authority`), else `Host`. One authority per request: several `Host` headers, or a
/// `Host` that names another authority than the target, are refused (400), so the host
/// routed on is the host the server is told.
pub fn request_host(uri: &Uri, headers: &HeaderMap) -> Result<HostName, ProxyError> {
    let mut values = headers.get_all(header::HOST).iter();
    let host = values.next();
    if values.next().is_some() {
        return Err(ProxyError::BadRequest("several Host headers"));
    }
    if let Some(a) = uri.authority() {
        if host.is_some_and(|h| !same_authority(a, h)) {
            return Err(ProxyError::BadRequest(
                "Host names another authority than the request target",
            ));
        }
        return Ok(HostName::new(a.host()));
    }
    let v = host.ok_or(ProxyError::BadRequest("no Host header"))?;
    let s = v
        .to_str()
        .map_err(|_| ProxyError::BadRequest("bad Host header"))?;
    let host = host_of(s).ok_or(ProxyError::BadRequest("bad Host header"))?;
    Ok(HostName::new(host))
}

/// Whether a `Host` value names the same host and port as the target's authority.
fn same_authority(a: &Authority, host: &HeaderValue) -> bool {
    let Some(s) = host.to_str().ok() else {
        return false;
    };
    let Some(name) = host_of(s) else {
        return false;
    };
    let port = s[name.len()..].strip_prefix(':').filter(|p| !p.is_empty());
    let bare = |h: &str| h.trim_end_matches('.').to_ascii_lowercase();
    bare(name) == bare(a.host()) && port == a.port().as_ref().map(|p| p.as_str())
}

/// Bytes a registered name may hold (RFC 3986 `reg-name`: unreserved, sub-delims, `%`),
/// as a table: one load per byte.
const HOST_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
            );
        b += 1;
    }
    t
};

/// The host part of a `Host` value (`uri-host [ ":" port ]`, RFC 9110 §7.2), or `None`
/// when the value is not one: empty, user info, a bad port, characters a host cannot hold.
fn host_of(s: &str) -> Option<&str> {
    let (host, port) = if s.starts_with('[') {
        // An IP literal: kept with its brackets, as `Authority::host` gives it.
        let end = s.find(']')?;
        let inner = &s[1..end];
        let literal_ok = !inner.is_empty()
            && inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !literal_ok {
            return None;
        }
        let rest = &s[end + 1..];
        let port = match rest.strip_prefix(':') {
            Some(p) => Some(p),
            None if rest.is_empty() => None,
            None => return None,
        };
        (&s[..=end], port)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let name_ok =
        !host.is_empty() && (host.starts_with('[') || host.bytes().all(|b| HOST_BYTE[b as usize]));
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    (name_ok && port_ok).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values_give_their_host_or_nothing() {
        for (value, host) in [
            ("example.org", Some("example.org")),
            ("example.org:8443", Some("example.org")),
            ("example.org:", Some("example.org")),
            ("127.0.0.1:80", Some("127.0.0.1")),
            ("[::1]:443", Some("[::1]")),
            ("[::1]", Some("[::1]")),
            ("", None),
            (":80", None),
            ("user@example.org", None),
            ("example.org:80:80", None),
            ("example.org:http", None),
            ("exa mple.org", None),
            ("example.org/x", None),
            ("[::1", None),
            ("[::1]x", None),
            ("[zz]", None),
        ] {
            assert_eq!(host_of(value), host, "{value:?}");
        }
    }

    #[test]
    fn one_authority_per_request() {
        let uri = |u: &str| u.parse::<Uri>().unwrap();
        let hosts = |v: &[&str]| {
            let mut m = HeaderMap::new();
            for h in v {
                m.append(header::HOST, HeaderValue::from_str(h).unwrap());
            }
            m
        };
        let ok =
            |u: &str, h: &[&str]| request_host(&uri(u), &hosts(h)).map(|n| n.as_str().to_string());
        assert_eq!(ok("/x", &["Data.Example.org"]).unwrap(), "data.example.org");
        assert!(ok("/x", &["a.org", "a.org"]).is_err());
        assert!(ok("/x", &[]).is_err());
        assert_eq!(ok("https://a.org/x", &[]).unwrap(), "a.org");
        assert_eq!(
            ok("https://a.org:8443/x", &["A.org:8443"]).unwrap(),
            "a.org"
        );
        assert!(ok("https://a.org/x", &["b.org"]).is_err());
        assert!(ok("https://a.org:8443/x", &["a.org"]).is_err());
        assert!(ok("https://a.org/x", &["a.org:8443"]).is_err());
    }

    #[test]
    fn names_are_lower_case_without_a_trailing_dot_inline_or_not() {
        assert_eq!(
            HostName::new("Data.Example.ORG.").as_str(),
            "data.example.org"
        );
        let long = format!("{}.example.org", "A".repeat(60));
        let h = HostName::new(&long);
        assert!(matches!(h, HostName::Heap(_)));
        assert_eq!(h.as_str(), long.to_ascii_lowercase());
        assert!(matches!(HostName::new("a.b"), HostName::Inline(..)));
    }
}
