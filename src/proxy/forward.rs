//! Header rewriting between client and server: hop-by-hop headers out, forwarding headers in.
//!
//! The client address written into `X-Forwarded-For` and `Forwarded` comes from the
//! connection. What a client sent in those headers is believed only when the peer is a
//! configured trusted proxy; otherwise it is dropped before anything else reads it.

use crate::rules::matcher::AllowList;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::mem::ManuallyDrop;
use std::net::{IpAddr, SocketAddr};

/// Headers that describe one connection, never the message: removed in both directions.
/// (`ManuallyDrop`: each use of a constant is a temporary, and an array of names would
/// otherwise be dropped after every use; these names own nothing.)
const HOP_BY_HOP: ManuallyDrop<[HeaderName; 7]> = ManuallyDrop::new([
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
]);

/// Headers `Connection` may never remove (with `FORWARDING`): the host the request was
/// routed on, its framing, and the forwarding headers this proxy writes (a client naming `Host` in
/// `Connection` would otherwise reach the server without the authority it was judged on).
const PROTECTED: ManuallyDrop<[HeaderName; 3]> =
    ManuallyDrop::new([header::HOST, header::CONTENT_LENGTH, header::FORWARDED]);

/// Headers a client may send to claim another address, path or method than the one the
/// proxy judged; dropped from every request (the trusted proxy's channel is
/// `X-Forwarded-For`; a method override would turn a GET a route allows into a DELETE
/// it refuses, in frameworks that honour one).
const SPOOFED: ManuallyDrop<[HeaderName; 8]> = ManuallyDrop::new([
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
]);

/// Whether a request header is dropped as a spoofing vector: one of [`SPOOFED`], or any
/// name with an underscore (WSGI and CGI read `_` as `-`, so `X_Forwarded_For` would
/// reach the application as `X-Forwarded-For`; nginx drops such names by default too).
fn spoofable(name: &HeaderName) -> bool {
    name.as_str().as_bytes().contains(&b'_') || SPOOFED.iter().any(|n| n == name)
}

/// Removes every spoofable header (the rare path: only when one was seen).
fn remove_spoofable(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers.keys().filter(|k| spoofable(k)).cloned().collect();
    for n in names {
        headers.remove(n);
    }
}

/// Forwarding headers a client may forge; dropped unless the peer is trusted.
/// (`X-Request-ID` too: the request's own id, a trusted proxy's included, is written
/// in its place.)
const FORWARDING: ManuallyDrop<[HeaderName; 6]> = ManuallyDrop::new([
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-real-ip"),
    header::FORWARDED,
    super::request_id::X_REQUEST_ID,
]);

/// Where the client address used for decisions came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrSource {
    /// The TCP peer.
    Peer,
    /// `X-Forwarded-For` from a trusted proxy.
    TrustedForwardedFor,
    /// A PROXY protocol header from a trusted outer proxy.
    ProxyProtocol,
    /// A trusted proxy sent an `X-Forwarded-For` that does not parse: the request is
    /// refused (400) rather than judged on the proxy's own address.
    MalformedForwardedFor,
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
    let malformed = ClientAddr {
        source: AddrSource::MalformedForwardedFor,
        ..plain
    };
    let mut found = None;
    for v in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(s) = v.to_str() else { return malformed };
        for item in s.rsplit(',') {
            let Ok(ip) = item.trim().parse::<IpAddr>() else {
                return malformed;
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

/// Removes hop-by-hop headers, including any the `Connection` header names. Most
/// messages carry none or only `Connection: keep-alive`: one pass over the names finds
/// which are there, and only those are removed (a removal hashes the name).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let present = present(headers, &HOP_BY_HOP[..]);
    if present == 0 {
        return;
    }
    // Bit 0 is `Connection` (first in `HOP_BY_HOP`).
    if present & 1 != 0 {
        // Names the `Connection` header lists beyond the fixed set (rare: only those
        // are looked up, so `Connection: keep-alive` costs no allocation).
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| {
                !t.is_empty()
                    && !t.eq_ignore_ascii_case(b"close")
                    && !HOP_BY_HOP
                        .iter()
                        .chain(PROTECTED.iter())
                        .chain(FORWARDING.iter())
                        .any(|h| t.eq_ignore_ascii_case(h.as_str().as_bytes()))
            })
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    remove_present(headers, &HOP_BY_HOP[..], present);
}

/// A bit per entry of `names` that `headers` holds, found in one pass over its names.
/// Always inlined: the names are constants, and only then are their comparisons (and
/// the drop of the temporary array) resolved at compile time.
#[inline(always)]
fn present(headers: &HeaderMap, names: &[HeaderName]) -> u32 {
    headers.keys().fold(0, |bits, k| {
        names
            .iter()
            .position(|n| n == k)
            .map_or(bits, |i| bits | 1 << i)
    })
}

/// Whether `headers` holds each of three names, found in one pass.
#[inline(always)]
pub fn present_of(headers: &HeaderMap, names: &[HeaderName; 3]) -> (bool, bool, bool) {
    let bits = present(headers, names);
    (bits & 1 != 0, bits & 2 != 0, bits & 4 != 0)
}

#[inline(always)]
fn remove_present(headers: &mut HeaderMap, names: &[HeaderName], present: u32) {
    for (i, n) in names.iter().enumerate() {
        if present & 1 << i != 0 {
            headers.remove(n);
        }
    }
}

/// The forwarding headers one request is sent with, worked out once: written straight
/// into the request head on the direct path ([`Forwarding::write_head`], no header map
/// inserts or value allocations), or inserted into the map for hyper's client.
#[derive(Debug)]
pub struct Forwarding<'a> {
    /// What a trusted peer already sent in `X-Forwarded-For` and `Forwarded` (joined).
    prior_xff: Option<String>,
    prior_fwd: Option<String>,
    peer_ip: IpAddr,
    proto: &'static str,
    host: &'a str,
    request_id: Option<&'a HeaderValue>,
}

/// Cleans the request headers for the server (hop-by-hop out, forged forwarding headers
/// out unless the peer is trusted) and says which forwarding headers it gets.
pub fn prepare_request<'a>(
    headers: &mut HeaderMap,
    client: &ClientAddr,
    trusted_peer: bool,
    host: &'a str,
    tls: bool,
    request_id: Option<&'a HeaderValue>,
) -> Forwarding<'a> {
    strip_hop_by_hop(headers);
    // One pass finds the forwarding headers and any header that claims a client address
    // or another path behind our back (`X-Original-URL`, `True-Client-IP`, underscore
    // spellings such as `X_Forwarded_For`, which WSGI servers read as dashes).
    let (present, spoofed) = headers.keys().fold((0u32, false), |(bits, spoofed), k| {
        match FORWARDING.iter().position(|n| n == k) {
            Some(i) => (bits | 1 << i, spoofed),
            None => (bits, spoofed || spoofable(k)),
        }
    });
    if spoofed {
        remove_spoofable(headers);
    }
    let (prior_xff, prior_fwd) = if trusted_peer && present != 0 {
        (
            join_values(headers, "x-forwarded-for"),
            join_values(headers, "forwarded"),
        )
    } else {
        (None, None)
    };
    // A client's `X-Request-ID` is replaced only when ids are on (else it passes).
    let ours = if request_id.is_some() { !0 } else { !(1 << 5) };
    remove_present(headers, &FORWARDING[..], present & ours);
    Forwarding {
        prior_xff,
        prior_fwd,
        peer_ip: canonical(client.peer.ip()),
        proto: if tls { "https" } else { "http" },
        host,
        request_id,
    }
}

impl Forwarding<'_> {
    /// Appends `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded` as header lines. Every
    /// part is free of CR and LF: prior values and the host come from validated headers.
    pub fn write_head(&self, out: &mut Vec<u8>) {
        let (ip, len) = ip_text(self.peer_ip);
        let ip = &ip[..len];
        out.extend_from_slice(b"x-forwarded-for: ");
        self.xff(out, ip);
        out.extend_from_slice(b"\r\nx-forwarded-proto: ");
        out.extend_from_slice(self.proto.as_bytes());
        out.extend_from_slice(b"\r\nx-forwarded-host: ");
        out.extend_from_slice(self.host.as_bytes());
        out.extend_from_slice(b"\r\nforwarded: ");
        self.forwarded(out, ip);
        out.extend_from_slice(b"\r\n");
        if let Some(id) = self.request_id {
            out.extend_from_slice(b"x-request-id: ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Inserts the same headers into `headers` (the hyper client's path).
    pub fn insert(&self, headers: &mut HeaderMap) {
        let (ip, len) = ip_text(self.peer_ip);
        let ip = &ip[..len];
        let mut xff = Vec::with_capacity(self.prior_xff.as_ref().map_or(0, |p| p.len() + 2) + len);
        self.xff(&mut xff, ip);
        let mut fwd = Vec::with_capacity(
            self.prior_fwd.as_ref().map_or(0, |p| p.len() + 2) + self.host.len() + len + 32,
        );
        self.forwarded(&mut fwd, ip);
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(xff)) {
            headers.insert(FORWARDING[0].clone(), v);
        }
        headers.insert(FORWARDING[1].clone(), HeaderValue::from_static(self.proto));
        if let Ok(v) = HeaderValue::from_str(self.host) {
            headers.insert(FORWARDING[2].clone(), v);
        }
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(fwd)) {
            headers.insert(header::FORWARDED, v);
        }
        if let Some(id) = self.request_id {
            headers.insert(FORWARDING[5].clone(), id.clone());
        }
    }

    /// `X-Forwarded-For`'s value: what a trusted peer sent, then the peer.
    fn xff(&self, out: &mut Vec<u8>, ip: &[u8]) {
        if let Some(p) = &self.prior_xff {
            out.extend_from_slice(p.as_bytes());
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(ip);
    }

    /// `Forwarded`'s value (RFC 7239): what a trusted peer sent, then this hop's element.
    fn forwarded(&self, out: &mut Vec<u8>, ip: &[u8]) {
        if let Some(p) = &self.prior_fwd {
            out.extend_from_slice(p.as_bytes());
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(b"for=");
        if self.peer_ip.is_ipv6() {
            out.extend_from_slice(b"\"[");
            out.extend_from_slice(ip);
            out.extend_from_slice(b"]\"");
        } else {
            out.extend_from_slice(ip);
        }
        out.extend_from_slice(b";proto=");
        out.extend_from_slice(self.proto.as_bytes());
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(self.host.as_bytes());
        out.push(b'"');
    }
}

/// An address as text, formatted once on the stack (an IPv6 address is at most 45 bytes).
/// IPv4, every request's case, is written digit by digit: `fmt` machinery cost about a
/// thousand instructions per request here.
fn ip_text(ip: IpAddr) -> ([u8; 48], usize) {
    use std::io::Write as _;
    let mut buf = [0u8; 48];
    let len = match ip {
        IpAddr::V4(v4) => {
            let mut at = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[at] = b'.';
                    at += 1;
                }
                let (h, t, o) = (octet / 100, octet / 10 % 10, octet % 10);
                if h > 0 {
                    buf[at] = b'0' + h;
                    at += 1;
                }
                if h > 0 || t > 0 {
                    buf[at] = b'0' + t;
                    at += 1;
                }
                buf[at] = b'0' + o;
                at += 1;
            }
            at
        }
        IpAddr::V6(_) => {
            let mut at = &mut buf[..];
            let _ = write!(at, "{ip}");
            48 - at.len()
        }
    };
    (buf, len)
}

/// Cleans the request headers and inserts the forwarding headers: [`prepare_request`]
/// then [`Forwarding::insert`] (the unit tests' way in).
#[cfg(test)]
fn rewrite_request(
    headers: &mut HeaderMap,
    client: &ClientAddr,
    trusted_peer: bool,
    host: &str,
    tls: bool,
) {
    let id = HeaderValue::from_static("test-id");
    prepare_request(headers, client, trusted_peer, host, tls, Some(&id)).insert(headers);
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

    #[test]
    fn head_lines_say_what_the_map_says() {
        let cases = [
            ("192.0.2.7:1", false, "10.0.0.0/8"),
            ("[2001:db8::7]:1", true, "2001:db8::/32"),
        ];
        for (peer, trusted_peer, net) in cases {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
            h.insert("forwarded", HeaderValue::from_static("for=198.51.100.1"));
            h.insert("connection", HeaderValue::from_static("keep-alive, x-hop"));
            h.insert("x-hop", HeaderValue::from_static("1"));
            h.insert("accept", HeaderValue::from_static("*/*"));
            let peer: SocketAddr = peer.parse().unwrap();
            let trusted = AllowList::new(vec![], &[net.parse().unwrap()]);
            let c = client_addr(&h, peer, &trusted);
            h.insert("x-request-id", HeaderValue::from_static("client-says"));
            let id = HeaderValue::from_static("0123abcd");
            let fwd = prepare_request(&mut h, &c, trusted_peer, "x.example", true, Some(&id));
            let names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
            assert_eq!(names, ["accept"]);
            let mut wire = Vec::new();
            fwd.write_head(&mut wire);
            let mut map = HeaderMap::new();
            fwd.insert(&mut map);
            let mut expect = Vec::new();
            for (n, v) in &map {
                expect.extend_from_slice(n.as_str().as_bytes());
                expect.extend_from_slice(b": ");
                expect.extend_from_slice(v.as_bytes());
                expect.extend_from_slice(b"\r\n");
            }
            assert_eq!(
                String::from_utf8_lossy(&wire),
                String::from_utf8_lossy(&expect)
            );
            assert_eq!(map.len(), 5);
            // The request's own id replaces whatever the client sent, trusted or not
            // (a trusted proxy's id was already taken as the request's id).
            assert_eq!(map["x-request-id"], "0123abcd");
            let prior = if trusted_peer { "198.51.100.1, " } else { "" };
            assert_eq!(map["x-forwarded-for"], format!("{prior}{}", peer.ip()));
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "192.168.100.9",
            "255.255.255.255",
            "1.100.10.0",
            "::1",
            "2001:db8::7",
        ] {
            let addr: IpAddr = ip.parse().expect("address");
            let (buf, len) = ip_text(addr);
            assert_eq!(std::str::from_utf8(&buf[..len]), Ok(ip));
        }
    }
}
