//! The proxy's own TLS stream (src/tls/stream.rs) against a real rustls client: records
//! cut at every byte, a TLS 1.3 key update in the middle of a keep-alive connection, and
//! a clean close_notify at the end.

use crate::harness::Stack;
use pki_types::ServerName;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const WAIT: Duration = Duration::from_secs(10);

/// A socket that sends one byte per write: every TLS record, handshake ones included,
/// reaches the proxy in pieces. It can also stop for a while in the middle of a record.
struct Dribble {
    tcp: TcpStream,
    /// Off: writes go whole.
    dribble: bool,
    /// Bytes to send before the pause.
    pause_in: Option<usize>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for Dribble {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Dribble {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pause_in == Some(0) {
            self.pause_in = None;
            self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(300))));
        }
        if let Some(p) = self.pause.as_mut() {
            std::task::ready!(p.as_mut().poll(cx));
            self.pause = None;
        }
        let n = if self.dribble {
            data.len().min(1)
        } else {
            data.len()
        };
        let r = Pin::new(&mut self.tcp).poll_write(cx, &data[..n]);
        if let (Poll::Ready(Ok(n)), Some(left)) = (&r, self.pause_in.as_mut()) {
            *left -= n;
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Reads one response with a Content-Length body; returns its status.
async fn read_response<R: AsyncRead + Unpin>(r: &mut R) -> u16 {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, r.read(&mut byte))
            .await
            .expect("response head in time")
            .expect("read");
        assert_eq!(n, 1, "connection ended inside a response head: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let status: u16 = head[9..12].parse().expect("status");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .expect("a Content-Length")
        .trim()
        .parse()
        .expect("length");
    let mut body = vec![0u8; len];
    tokio::time::timeout(WAIT, r.read_exact(&mut body))
        .await
        .expect("body in time")
        .expect("body");
    status
}

#[tokio::test(flavor = "multi_thread")]
async fn records_cut_at_every_byte_are_reassembled() {
    let s = Stack::start().await;
    let c = s.client();
    let cfg = Arc::new(c.tls_config(&[b"http/1.1"]));
    let tcp = TcpStream::connect(c.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("data.localhost").unwrap();
    let mut tls = tokio::time::timeout(
        WAIT,
        TlsConnector::from(cfg).connect(
            name,
            Dribble {
                tcp,
                dribble: true,
                pause_in: None,
                pause: None,
            },
        ),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    // A request in one piece (served by the proxy's own HTTP/1.1 path).
    tls.get_mut().0.dribble = false;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: data.localhost\r\n\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    assert_eq!(read_response(&mut tls).await, 200);
    // The next one a byte per record, each record in pieces, and the first record stops
    // half-way for a while: the proxy, waiting for a request, waits for the rest.
    tls.get_mut().0.dribble = true;
    tls.get_mut().0.pause_in = Some(10);
    for b in b"GET / HTTP/1.1\r\nHost: data.localhost\r\n\r\n" {
        tls.write_all(&[*b]).await.unwrap();
        tls.flush().await.unwrap();
    }
    assert_eq!(read_response(&mut tls).await, 200);
    // And one record in pieces.
    tls.write_all(b"GET / HTTP/1.1\r\nHost: data.localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    assert_eq!(read_response(&mut tls).await, 200);
    // The proxy ends with close_notify: a clean end of stream, not a truncation error.
    let mut rest = Vec::new();
    let end = tokio::time::timeout(WAIT, tls.read_to_end(&mut rest))
        .await
        .expect("close in time");
    assert!(end.is_ok(), "no close_notify: {end:?}");
    assert!(rest.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_update_mid_connection_keeps_it_serving() {
    let s = Stack::start().await;
    let c = s.client();
    let cfg = Arc::new(c.tls_config(&[b"http/1.1"]));
    let mut tls = c.connect_with(cfg, "data.localhost").await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    tls.write_all(b"GET / HTTP/1.1\r\nHost: data.localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut tls).await, 200);
    for round in 0..3 {
        // New client keys, and a request that the proxy update its own (RFC 8446 §4.6.3).
        tls.get_mut().1.refresh_traffic_keys().unwrap();
        tls.write_all(b"GET /api/records HTTP/1.1\r\nHost: data.localhost\r\n\r\n")
            .await
            .unwrap();
        tls.flush().await.unwrap();
        assert_eq!(
            read_response(&mut tls).await,
            200,
            "after key update {round}"
        );
    }
}
