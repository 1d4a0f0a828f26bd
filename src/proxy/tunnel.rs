//! Upgraded connections (WebSocket): bytes both ways after the server's 101, under an
//! inactivity timeout, holding the request's pool slot and server slot for their life.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Joins the client and server halves once both upgrades complete; ends when either
/// side closes or nothing moves for `idle`.
pub async fn run<H: Send + 'static>(client: OnUpgrade, server: OnUpgrade, idle: Duration, hold: H) {
    let (c, s) = match tokio::try_join!(client, server) {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let (cr, cw) = tokio::io::split(TokioIo::new(c));
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
