//! Upgraded connections (WebSocket): bytes both ways after the server's 101, under an
//! inactivity timeout, holding the request's pool slot and server slot for their life.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

/// A client socket handed over after its 101 (with any bytes the client sent after the
/// request replayed first).
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientIo for T {}

/// Joins the client and server halves once both upgrades complete; ends when either
/// side closes or nothing moves for `idle`. The client socket comes from the listener:
/// it drives HTTP/1.1 connections itself (parking idle ones), so it hands the socket over
/// once hyper has written the 101 and let go of it.
pub async fn run<H: Send + 'static>(
    client: oneshot::Receiver<Box<dyn ClientIo>>,
    server: OnUpgrade,
    idle: Duration,
    hold: H,
) {
    let client = async { client.await.map_err(|_| "connection closed".to_string()) };
    let server = async { server.await.map_err(|e| e.to_string()) };
    let (c, s) = match tokio::try_join!(client, server) {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let (cr, cw) = tokio::io::split(c);
    let (sr, sw) = tokio::io::split(TokioIo::new(s));
    tokio::select! {
        _ = pump(cr, sw, idle) => {}
        _ = pump(sr, cw, idle) => {}
    }
    drop(hold);
}

async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut r: R, mut w: W, idle: Duration) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(idle, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = w.shutdown().await;
}
