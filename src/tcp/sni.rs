//! TLS passthrough's first step: read the ClientHello record, find the SNI name, and hand
//! the bytes on untouched (to a relayed server, or back in front of rustls).
//!
//! The record is *read*, not peeked: peeking cannot wait for the rest of a ClientHello split
//! over segments without spinning. `rewind::Rewind` replays the bytes read to whoever takes
//! the stream next, so termination sees exactly what the client sent.

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest TLS record (2^14 bytes of plaintext plus the allowed expansion) and its header.
const MAX_RECORD: usize = 5 + 16384 + 2048;

/// Reads the first TLS record from `stream` (a ClientHello, if the client speaks TLS).
///
/// Returns the bytes read, never more than one record. A stream that does not start
/// with a handshake record returns what was read so far, and termination fails on it
/// as it would have without passthrough.
pub async fn read_client_hello<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    loop {
        let want = match buf.get(..5) {
            Some(h) if h[0] != 0x16 => return Ok(buf),
            Some(h) => 5 + usize::from(u16::from_be_bytes([h[3], h[4]])),
            None => 5,
        };
        if want > MAX_RECORD {
            return Ok(buf);
        }
        if buf.len() >= want {
            return Ok(buf);
        }
        let room = (want - buf.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The server name a ClientHello record asks for, lower-case; `None` when the record is
/// not a ClientHello, has no SNI, or is cut short.
pub fn server_name(record: &[u8]) -> Option<String> {
    let mut r = Reader(record);
    if r.u8()? != 0x16 {
        return None;
    }
    r.skip(2)?; // legacy record version
    let n = usize::from(r.u16()?);
    let mut rec = Reader(r.take(n)?);
    if rec.u8()? != 0x01 {
        return None; // not a ClientHello
    }
    let len = rec.u24()?;
    let mut hello = Reader(rec.take(len)?);
    hello.skip(2 + 32)?; // client version, random
    let n = usize::from(hello.u8()?);
    hello.skip(n)?; // session id
    let n = usize::from(hello.u16()?);
    hello.skip(n)?; // cipher suites
    let n = usize::from(hello.u8()?);
    hello.skip(n)?; // compression methods
    let n = usize::from(hello.u16()?);
    let mut exts = Reader(hello.take(n)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let n = usize::from(exts.u16()?);
        let mut body = Reader(exts.take(n)?);
        if kind != 0 {
            continue;
        }
        let n = usize::from(body.u16()?);
        let mut list = Reader(body.take(n)?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let n = usize::from(list.u16()?);
            let name = list.take(n)?;
            if name_type == 0 {
                let s = std::str::from_utf8(name).ok()?;
                return Some(s.trim_end_matches('.').to_ascii_lowercase());
            }
        }
        return None;
    }
    None
}

/// A bounds-checked cursor: every read is `None` past the end instead of a panic.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewind::Rewind;

    /// A real ClientHello from rustls, so the parser is tested against what clients send.
    fn hello(name: &str) -> Vec<u8> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let roots = rustls::RootCertStore::empty();
        let cfg = std::sync::Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let sn = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut c = rustls::ClientConnection::new(cfg, sn).unwrap();
        let mut out = Vec::new();
        c.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn finds_the_name() {
        assert_eq!(
            server_name(&hello("Pass.Example.org")).as_deref(),
            Some("pass.example.org")
        );
    }

    #[test]
    fn truncated_or_foreign_input_is_none() {
        let h = hello("pass.example.org");
        for cut in [0, 1, 5, 9, 40, h.len() - 1] {
            assert_eq!(server_name(&h[..cut]), None, "cut at {cut}");
        }
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n\r\n"), None);
        // An IP-address "name" is not sent as SNI by clients at all.
        assert_eq!(server_name(&hello("127.0.0.1")), None);
    }

    #[tokio::test]
    async fn reads_exactly_one_record_and_rewinds() {
        let h = hello("pass.example.org");
        let mut data = h.clone();
        data.extend_from_slice(b"after");
        let mut src: &[u8] = &data;
        let got = read_client_hello(&mut src).await.unwrap();
        assert_eq!(got, h);
        let mut r = Rewind::new(got, src);
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, data);
    }
}
