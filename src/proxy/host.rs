//! The host a request names, as routing sees it: lower-case, no port, no trailing dot.
//!
//! Read once per request, so it is kept inline when short (every real name is): no
//! allocation on the hot path, and the `Host` header is checked in place rather than
//! parsed into a `http::uri::Authority` (which copies it).

use super::error::ProxyError;
use http::{HeaderMap, Uri, header};

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

/// The host a request names (`:authority` or the URI's authority, else `Host`).
pub fn request_host(uri: &Uri, headers: &HeaderMap) -> Result<HostName, ProxyError> {
    if let Some(a) = uri.authority() {
        return Ok(HostName::new(a.host()));
    }
    let v = headers
        .get(header::HOST)
        .ok_or(ProxyError::BadRequest("no Host header"))?;
    let s = v
        .to_str()
        .map_err(|_| ProxyError::BadRequest("bad Host header"))?;
    let host = host_of(s).ok_or(ProxyError::BadRequest("bad Host header"))?;
    Ok(HostName::new(host))
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
