//! The PROXY protocol (v1 text, v2 binary): the real client address from a trusted outer
//! proxy, and the same sent on to servers that ask for it.
//!
//! Read before TLS and before HTTP, exactly the header's bytes (never more), under a short
//! timeout. Only peers in the listener's `proxy_protocol.from` may send one; anyone else
//! sending one is refused, and a trusted peer that sends none is refused too.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature.
const SIG: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Longest v1 header (the spec's bound).
const V1_MAX: usize = 107;

/// What the start of a connection looks like.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// A v1 or v2 PROXY header.
    Proxy,
    /// Anything else (a TLS ClientHello, an HTTP request line).
    Other,
}

/// What the first bytes of a connection are: the start of a PROXY header, something
/// else, or (`None`) too few bytes to tell yet.
pub fn classify(seen: &[u8]) -> Option<Start> {
    if seen.is_empty() {
        return None;
    }
    let v1 = b"PROXY ";
    let n = seen.len();
    let could_be_v1 = v1.starts_with(&seen[..n.min(6)]) || seen.starts_with(v1);
    let could_be_v2 = SIG.starts_with(seen);
    if seen.starts_with(v1) || (n >= 12 && seen == SIG) {
        return Some(Start::Proxy);
    }
    if !could_be_v1 && !could_be_v2 {
        return Some(Start::Other);
    }
    None
}

/// What a PROXY header conveys about the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conveyed {
    /// The client's address (`None` for `UNKNOWN` / `LOCAL`: the peer itself is the client).
    pub source: Option<SocketAddr>,
    /// Whether the client reached the outer proxy over TLS (v2 `PP2_TYPE_SSL`), so the
    /// request's scheme is `https` even though this hop is plain.
    pub tls: bool,
}

/// The v2 TLV type for TLS information, and its "client used TLS" flag.
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_CLIENT_SSL: u8 = 0x01;

/// Reads one PROXY header (v1 or v2) and returns what it conveys.
pub async fn read_header(tcp: &mut TcpStream) -> io::Result<Conveyed> {
    let bad =
        |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("bad PROXY header: {m}"));
    let mut peek = [0u8; V1_MAX];
    let n = tcp.peek(&mut peek).await?;
    if peek[..n].starts_with(b"PROXY ") {
        let end = peek[..n]
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("no CRLF in 107 bytes"))?;
        let mut line = vec![0u8; end + 2];
        tcp.read_exact(&mut line).await?;
        let source = parse_v1(&line[..end]).ok_or_else(|| bad("v1 fields"))?;
        return Ok(Conveyed { source, tls: false });
    }
    let mut head = [0u8; 16];
    tcp.read_exact(&mut head).await?;
    if head[..12] != SIG {
        return Err(bad("no signature"));
    }
    let (ver_cmd, fam) = (head[12], head[13]);
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    if ver_cmd >> 4 != 2 || len > 512 {
        return Err(bad("version or length"));
    }
    let mut rest = vec![0u8; len];
    tcp.read_exact(&mut rest).await?;
    if ver_cmd & 0x0F == 0 {
        return Ok(Conveyed::default()); // LOCAL: health checks from the outer proxy itself
    }
    let (source, addr_len) = match fam >> 4 {
        1 if len >= 12 => {
            let ip = Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
            let port = u16::from_be_bytes([rest[8], rest[9]]);
            (Some(SocketAddr::new(IpAddr::V4(ip), port)), 12)
        }
        2 if len >= 36 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&rest[..16]);
            let port = u16::from_be_bytes([rest[32], rest[33]]);
            (
                Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port)),
                36,
            )
        }
        _ => (None, len),
    };
    Ok(Conveyed {
        source,
        tls: client_used_tls(&rest[addr_len..]),
    })
}

/// Whether the TLVs after the addresses carry `PP2_TYPE_SSL` with the client-TLS flag.
fn client_used_tls(mut tlvs: &[u8]) -> bool {
    while tlvs.len() >= 3 {
        let (kind, n) = (tlvs[0], usize::from(u16::from_be_bytes([tlvs[1], tlvs[2]])));
        let Some(value) = tlvs.get(3..3 + n) else {
            return false;
        };
        if kind == PP2_TYPE_SSL {
            return value.first().is_some_and(|c| c & PP2_CLIENT_SSL != 0);
        }
        tlvs = &tlvs[3 + n..];
    }
    false
}

fn parse_v1(line: &[u8]) -> Option<Option<SocketAddr>> {
    let text = std::str::from_utf8(line).ok()?;
    let parts: Vec<&str> = text.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Some(None),
        ["PROXY", "TCP4" | "TCP6", src, _dst, sport, _dport] => {
            let ip: IpAddr = src.parse().ok()?;
            let port: u16 = sport.parse().ok()?;
            Some(Some(SocketAddr::new(ip, port)))
        }
        _ => None,
    }
}

/// A v2 `LOCAL` header: the connection is the proxy's own (a health check), so the
/// receiver takes the peer address as is. Lets a check reach a listener that insists on
/// PROXY headers from us.
pub fn v2_local() -> Vec<u8> {
    let mut out = SIG.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    out
}

/// A v2 PROXY header for a TCP connection from `src` to `dst`; with `tls`, a
/// `PP2_TYPE_SSL` TLV says the client reached us over TLS (HAProxy's `send-proxy-v2-ssl`),
/// so an inner tier behind a terminating outer one still sees `https`.
pub fn v2_header(src: SocketAddr, dst: SocketAddr, tls: bool) -> Vec<u8> {
    // type, length 5, client flags, verify result (no client certificate: 0)
    let tlv: &[u8] = if tls {
        &[PP2_TYPE_SSL, 0, 5, PP2_CLIENT_SSL, 0, 0, 0, 0]
    } else {
        &[]
    };
    let extra = tlv.len() as u16;
    let mut out = SIG.to_vec();
    out.push(0x21); // version 2, PROXY
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&(12 + extra).to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&(36 + extra).to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out.extend_from_slice(tlv);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_tlv_is_found_among_others() {
        assert!(!client_used_tls(&[]));
        assert!(client_used_tls(&[0x20, 0, 5, 1, 0, 0, 0, 0]));
        assert!(!client_used_tls(&[0x20, 0, 5, 0, 0, 0, 0, 0]));
        // An ALPN TLV first, then SSL; and a truncated TLV is ignored.
        assert!(client_used_tls(&[
            0x01, 0, 2, b'h', b'2', 0x20, 0, 5, 1, 0, 0, 0, 0
        ]));
        assert!(!client_used_tls(&[0x20, 0, 9, 1]));
    }

    #[test]
    fn v1_lines() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443"),
            Some(Some("192.0.2.1:56324".parse().unwrap()))
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN"), Some(None));
        assert_eq!(parse_v1(b"PROXY TCP4 x 198.51.100.1 1 2"), None);
        assert_eq!(
            parse_v1(b"PROXY TCP4 192.0.2.1 198.51.100.1 99999 443"),
            None
        );
    }

    #[tokio::test]
    async fn v2_round_trip() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let src: SocketAddr = "203.0.113.7:4000".parse().unwrap();
        let client = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&v2_header(src, addr, true)).await.unwrap();
            c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        });
        let (mut s, _) = l.accept().await.unwrap();
        client.await.unwrap();
        let mut first = [0u8; 12];
        let n = s.peek(&mut first).await.unwrap();
        assert_eq!(classify(&first[..n]), Some(Start::Proxy));
        let got = read_header(&mut s).await.unwrap();
        assert_eq!((got.source, got.tls), (Some(src), true));
        let mut rest = [0u8; 4];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"GET ", "exactly the header was consumed");
    }
}
