//! TLS session resumption: a returning client skips the certificate and key exchange work,
//! and every connection, resumed ones too, leaves it a fresh ticket for the next.

use crate::harness::Stack;
use rustls::client::Tls13ClientSessionValue;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The client's session store, counting the TLS 1.3 tickets the server sends.
#[derive(Debug)]
struct Counting {
    inner: ClientSessionMemoryCache,
    tickets: AtomicUsize,
}

impl ClientSessionStore for Counting {
    fn set_kx_hint(&self, name: pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(&self, name: pki_types::ServerName<'static>, v: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(name, v)
    }
    fn tls12_session(&self, name: &pki_types::ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: pki_types::ServerName<'static>,
        v: Tls13ClientSessionValue,
    ) {
        self.tickets.fetch_add(1, Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, v)
    }
    fn take_tls13_ticket(
        &self,
        name: &pki_types::ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

/// Sends `GET /` for `host` with `Connection: close` and reads the answer to its end.
async fn closing_get<S>(tls: &mut S, host: &str) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer))
        .await
        .unwrap()
        .ok();
    answer
}

/// An HTTP/1.1 client config whose session store counts the tickets it is given.
fn counting_client(c: &crate::harness::Client) -> (Arc<Counting>, Arc<rustls::ClientConfig>) {
    let store = Arc::new(Counting {
        inner: ClientSessionMemoryCache::new(16),
        tickets: AtomicUsize::new(0),
    });
    let mut cfg = c.tls_config(&[b"http/1.1"]);
    cfg.resumption = rustls::client::Resumption::store(store.clone());
    (store, Arc::new(cfg))
}

/// A closing GET to data.localhost on `tls`, answered 200.
async fn answered_200<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(tls: &mut S) {
    let answer = closing_get(tls, "data.localhost").await;
    let text = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls13_sessions_resume_with_one_fresh_ticket_per_connection() {
    let s = Stack::start().await;
    let c = s.client();
    let (store, cfg) = counting_client(&c);
    for round in 0..3 {
        let mut tls = c.connect_with(cfg.clone(), "data.localhost").await.unwrap();
        let kind = tls.get_ref().1.handshake_kind();
        let expected = if round == 0 {
            rustls::HandshakeKind::Full
        } else {
            rustls::HandshakeKind::Resumed
        };
        assert_eq!(kind, Some(expected), "connection {round}");
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        // Tickets come after the handshake: a request's answer carries them in.
        answered_200(&mut tls).await;
        assert_eq!(
            store.tickets.load(Ordering::SeqCst),
            round + 1,
            "one ticket per connection"
        );
    }
    // A resumed session still has its name checked against the Host (421 if they differ):
    // the proxy knows the SNI of resumed handshakes too.
    let mut tls = c.connect_with(cfg.clone(), "data.localhost").await.unwrap();
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let answer = closing_get(&mut tls, "store.localhost").await;
    assert!(
        answer.starts_with(b"HTTP/1.1 421"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// TLS 1.3's session ticket leaves with the first answer, not on its own: after the
/// handshake the client is sent nothing (so it is not woken for a ticket alone) until it
/// asks; then the answer brings the ticket, and the ticket resumes.
#[tokio::test(flavor = "multi_thread")]
async fn tls13_ticket_leaves_with_the_first_answer() {
    let s = Stack::start().await;
    let c = s.client();
    let (store, cfg) = counting_client(&c);
    let mut tls = c.connect_with(cfg.clone(), "data.localhost").await.unwrap();
    let mut peek = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), tls.get_ref().0.peek(&mut peek));
    assert!(
        early.await.is_err(),
        "the server sent bytes before the first request (a ticket on its own)"
    );
    answered_200(&mut tls).await;
    assert_eq!(
        store.tickets.load(Ordering::SeqCst),
        1,
        "the answer brought the ticket"
    );
    let tls = c.connect_with(cfg, "data.localhost").await.unwrap();
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
}

/// TLS 1.2 clients: the server's last flight (its Finished) is sent at once, since the
/// client waits for it before it may send a request; the session resumes.
#[tokio::test(flavor = "multi_thread")]
async fn tls12_handshakes_finish_and_resume() {
    let s = Stack::start().await;
    let c = s.client();
    let cfg = Arc::new(c.tls_config_versions(&[b"http/1.1"], &[&rustls::version::TLS12]));
    for round in 0..2 {
        let connect = c.connect_with(cfg.clone(), "data.localhost");
        let mut tls = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .expect("TLS 1.2 handshake finished")
            .unwrap();
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        let expected = [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed][round];
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(expected),
            "connection {round}"
        );
        answered_200(&mut tls).await;
    }
}
