//! Header rewriting between client and server: hop-by-hop headers out, forwarding headers in.
//!
//! The client address written into `X-Forwarded-For` and `Forwarded` comes from the
//! connection. What a client sent in those headers is believed only when the peer is a
//! configured trusted proxy; otherwise it is dropped before anything else reads it.

use crate::rules::matcher::AllowList;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::{IpAddr, SocketAddr};

/// Headers that describe one connection, never the message: removed in both directions.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Forwarding headers a client may forge; dropped unless the peer is trusted.
const FORWARDING: [HeaderName; 5] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-real-ip"),
    header::FORWARDED,
];

/// Where the client address used for decisions came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrSource {
    /// The TCP peer.
    Peer,
    /// `X-Forwarded-For` from a trusted proxy.
    TrustedForwardedFor,
    /// A PROXY protocol header from a trusted outer proxy.
    ProxyProtocol,
}

/// The client address for allow-lists and logs, and how we know it.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr {
    /// The address decisions are made on.
    pub ip: IpAddr,
    /// The TCP peer (may be a trusted proxy).
    pub peer: SocketAddr,
    /// Which of the two `ip` came from.
    pub source: AddrSource,
}

/// Works out the client address: the peer, unless the peer is a trusted proxy, in which
/// case the right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_addr(headers: &HeaderMap, peer: SocketAddr, trusted: &AllowList) -> ClientAddr {
    let peer_ip = canonical(peer.ip());
    let plain = ClientAddr {
        ip: peer_ip,
        peer,
        source: AddrSource::Peer,
    };
    if !trusted.contains(peer_ip) {
        return plain;
    }
    let mut found = None;
    for v in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(s) = v.to_str() else { return plain };
        for item in s.rsplit(',') {
            let Ok(ip) = item.trim().parse::<IpAddr>() else {
                return plain;
            };
            let ip = canonical(ip);
            found = Some(ip);
            if !trusted.contains(ip) {
                return ClientAddr {
                    ip,
                    peer,
                    source: AddrSource::TrustedForwardedFor,
                };
            }
        }
    }
    match found {
        Some(ip) => ClientAddr {
            ip,
            peer,
            source: AddrSource::TrustedForwardedFor,
        },
        None => plain,
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
}

/// Rewrites the request headers for the server: hop-by-hop out, forged forwarding
/// headers out (unless trusted), then `X-Forwarded-*` and `Forwarded` from the connection.
pub fn rewrite_request(
    headers: &mut HeaderMap,
    client: &ClientAddr,
    trusted_peer: bool,
    host: &str,
    tls: bool,
) {
    strip_hop_by_hop(headers);
    let peer_ip = canonical(client.peer.ip());
    let proto = if tls { "https" } else { "http" };
    let prior_xff = if trusted_peer {
        join_values(headers, "x-forwarded-for")
    } else {
        None
    };
    let prior_fwd = if trusted_peer {
        join_values(headers, "forwarded")
    } else {
        None
    };
    for h in &FORWARDING {
        headers.remove(h);
    }
    // Built with one formatting of the address and no intermediate strings: this runs
    // for every request.
    use std::fmt::Write as _;
    let mut xff = String::with_capacity(prior_xff.as_ref().map_or(0, |p| p.len() + 2) + 40);
    if let Some(p) = &prior_xff {
        xff.push_str(p);
        xff.push_str(", ");
    }
    let at = xff.len();
    let _ = write!(xff, "{peer_ip}");
    let ip = &xff[at..];
    let mut fwd = String::with_capacity(
        prior_fwd.as_ref().map_or(0, |p| p.len() + 2) + ip.len() + host.len() + 32,
    );
    if let Some(p) = &prior_fwd {
        fwd.push_str(p);
        fwd.push_str(", ");
    }
    fwd.push_str("for=");
    if peer_ip.is_ipv6() {
        fwd.push_str("\"[");
        fwd.push_str(ip);
        fwd.push_str("]\"");
    } else {
        fwd.push_str(ip);
    }
    fwd.push_str(";proto=");
    fwd.push_str(proto);
    fwd.push_str(";host=\"");
    fwd.push_str(host);
    fwd.push('"');
    if let Ok(v) = HeaderValue::try_from(xff) {
        headers.insert(FORWARDING[0].clone(), v);
    }
    headers.insert(FORWARDING[1].clone(), HeaderValue::from_static(proto));
    if let Ok(v) = HeaderValue::from_str(host) {
        headers.insert(FORWARDING[2].clone(), v);
    }
    if let Ok(v) = HeaderValue::try_from(fwd) {
        headers.insert(header::FORWARDED, v);
    }
}

fn join_values(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        let s = v.to_str().ok()?;
        match &mut out {
            Some(o) => {
                o.push_str(", ");
                o.push_str(s);
            }
            None => out = Some(s.to_string()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_forwarding_headers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("127.0.0.1"));
        h.insert("x-real-ip", HeaderValue::from_static("127.0.0.1"));
        h.insert("forwarded", HeaderValue::from_static("for=127.0.0.1"));
        let peer: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        let trusted = AllowList::default();
        let c = client_addr(&h, peer, &trusted);
        assert_eq!(c.ip, "192.0.2.7".parse::<IpAddr>().unwrap());
        rewrite_request(&mut h, &c, false, "data.localhost", true);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert!(h.get("x-real-ip").is_none());
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;proto=https;host=\"data.localhost\""
        );
    }

    #[test]
    fn trusted_proxy_chain_is_walked_from_the_right() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 198.51.100.9, 10.0.0.2"),
        );
        let peer: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let trusted = AllowList::new(vec![], &["10.0.0.0/8".parse().unwrap()]);
        let c = client_addr(&h, peer, &trusted);
        assert_eq!(c.ip, "198.51.100.9".parse::<IpAddr>().unwrap());
        assert_eq!(c.source, AddrSource::TrustedForwardedFor);
        rewrite_request(&mut h, &c, true, "x", true);
        assert_eq!(
            h["x-forwarded-for"],
            "1.1.1.1, 198.51.100.9, 10.0.0.2, 10.0.0.1"
        );
    }

    #[test]
    fn ipv6_peer_behind_a_trusted_chain_is_quoted_in_forwarded() {
        let mut h = HeaderMap::new();
        h.insert("forwarded", HeaderValue::from_static("for=192.0.2.1"));
        let peer: SocketAddr = "[2001:db8::7]:1".parse().unwrap();
        let trusted = AllowList::new(vec![], &["2001:db8::/32".parse().unwrap()]);
        let c = client_addr(&h, peer, &trusted);
        rewrite_request(&mut h, &c, true, "x", false);
        assert_eq!(h["x-forwarded-for"], "2001:db8::7");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.1, for=\"[2001:db8::7]\";proto=http;host=\"x\""
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "x");
    }

    #[test]
    fn connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("x-keep").is_some());
    }
}
