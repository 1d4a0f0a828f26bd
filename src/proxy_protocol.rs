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

/// Peeks at the first bytes to tell whether a PROXY header starts the stream.
pub async fn peek_start(tcp: &TcpStream) -> io::Result<Start> {
    let mut buf = [0u8; 12];
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let seen = &buf[..n];
        let v1 = b"PROXY ";
        let could_be_v1 = v1.starts_with(&seen[..n.min(6)]) || seen.starts_with(v1);
        let could_be_v2 = SIG.starts_with(seen);
        if seen.starts_with(v1) || (n >= 12 && seen == SIG) {
            return Ok(Start::Proxy);
        }
        if !could_be_v1 && !could_be_v2 {
            return Ok(Start::Other);
        }
        // A prefix of a header so far: wait for more bytes.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Reads one PROXY header (v1 or v2) and returns the source address it conveys
/// (`None` for `UNKNOWN` / `LOCAL`, where the peer itself is the client).
pub async fn read_header(tcp: &mut TcpStream) -> io::Result<Option<SocketAddr>> {
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
        return parse_v1(&line[..end]).ok_or_else(|| bad("v1 fields"));
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
        return Ok(None); // LOCAL: health checks from the outer proxy itself
    }
    match fam >> 4 {
        1 if len >= 12 => {
            let ip = Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
            Ok(Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([rest[8], rest[9]]),
            )))
        }
        2 if len >= 36 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&rest[..16]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(a)),
                u16::from_be_bytes([rest[32], rest[33]]),
            )))
        }
        _ => Ok(None),
    }
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

/// A v2 PROXY header for a TCP connection from `src` to `dst`.
pub fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = SIG.to_vec();
    out.push(0x21); // version 2, PROXY
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
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
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
            c.write_all(&v2_header(src, addr)).await.unwrap();
            c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        });
        let (mut s, _) = l.accept().await.unwrap();
        client.await.unwrap();
        assert_eq!(peek_start(&s).await.unwrap(), Start::Proxy);
        assert_eq!(read_header(&mut s).await.unwrap(), Some(src));
        let mut rest = [0u8; 4];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"GET ", "exactly the header was consumed");
    }
}
