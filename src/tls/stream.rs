//! A TLS server connection whose buffers belong to us (rustls's unbuffered API).
//!
//! rustls's buffered connection keeps a receive buffer of at least 4 KiB for the whole
//! life of a connection, and queues every outgoing record in a `Vec` of its own before
//! the socket sees it. At the edge most connections are idle keep-alive clients: 10,000
//! of them cost 40 MiB of receive buffers that hold nothing. Here the ciphertext buffers
//! are ours: records are encrypted straight into the send buffer, decrypted from the
//! receive buffer, and both buffers are dropped while the connection waits for its next
//! request ([`Readiness::release_idle`]), so an idle TLS connection costs rustls's
//! session state and no buffer.
//!
//! The handshake ([`accept`]) and the traffic after it run the same loop (`TlsStream::drive`):
//! rustls says what it needs next (send these records, give me more input, you may
//! encrypt now), and the stream does it with the socket.

use crate::park::Readiness;
use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// First size of the receive buffer: a request of a few headers arrives whole in it.
const RECV_FIRST: usize = 4 * 1024;
/// Largest receive buffer: a whole TLS record (at most 16 KiB of plaintext plus
/// expansion) always fits, and an upload is read a record or two at a time.
const RECV_MAX: usize = 34 * 1024;
/// Plaintext taken per write: bounds the send buffer of a connection whose client reads
/// slowly (the rest of the caller's data waits for the next write). As large as a body
/// read (`upstream::direct`), so a read leaves in one send.
const WRITE_MAX: usize = 128 * 1024;
/// Room kept per record for the header, content type, nonce and tag.
const RECORD_OVERHEAD: usize = 64;
/// Largest plaintext record (RFC 8446 §5.1).
const RECORD_MAX: usize = 16 * 1024;

/// A terminated TLS connection over `S`.
pub struct TlsStream<S> {
    io: S,
    conn: UnbufferedServerConnection,
    /// Ciphertext received and not yet processed: `recv[..recv_len]`.
    recv: Vec<u8>,
    recv_len: usize,
    /// Plaintext decrypted and not yet read: `plain[plain_pos..]`.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Ciphertext not yet written to the socket: `send[send_pos..send_end]`.
    send: Vec<u8>,
    send_pos: usize,
    send_end: usize,
    /// Small vectored writes are gathered here to leave as one record.
    gather: Vec<u8>,
    /// The client's close_notify (or the socket's EOF) has been read.
    read_closed: bool,
    /// Our close_notify is queued.
    close_queued: bool,
    /// rustls queued a record of its own (handshake, key update, alert) that is not sent
    /// yet; application data waits for the next write or flush, these do not.
    control_queued: bool,
    /// The name the client asked for (SNI), lower-case.
    sni: Option<Box<str>>,
}

/// What [`TlsStream::drive`] should do once rustls allows writing.
enum Want<'a> {
    /// Nothing: process the input until more is needed.
    Nothing,
    /// Encrypt this application data.
    Write(&'a [u8]),
    /// Queue a close_notify alert.
    Close,
}

/// Completes the TLS handshake on `io`: the ClientHello read, the server's flight sent,
/// the client's Finished read; a TLS 1.3 session ticket is queued for the first write.
pub async fn accept<S>(io: S, config: Arc<ServerConfig>) -> io::Result<TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut s = TlsStream {
        io,
        conn,
        recv: Vec::new(),
        recv_len: 0,
        plain: Vec::new(),
        plain_pos: 0,
        send: Vec::new(),
        send_pos: 0,
        send_end: 0,
        gather: Vec::new(),
        read_closed: false,
        close_queued: false,
        control_queued: false,
        sni: None,
    };
    // A name left over from a handshake that ended in an error on this thread.
    let _ = super::take_seen_sni();
    loop {
        let stop = s.drive(Want::Nothing);
        // The certificate resolver saw this connection's ClientHello (if it was in
        // this input): its name is ours. Taken now, before any other connection's
        // handshake can run on this thread.
        if let Some(name) = super::take_seen_sni() {
            s.sni = Some(name);
        }
        match stop {
            Ok(_) if !s.conn.is_handshaking() => break,
            Ok(_) => {}
            Err(e) => {
                // The alert rustls queued for the client, sent if the socket takes it.
                let _ = s.drive(Want::Nothing);
                let _ = std::future::poll_fn(|cx| s.poll_send(cx)).await;
                return Err(e);
            }
        }
        std::future::poll_fn(|cx| s.poll_send(cx)).await?;
        if s.read_closed {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        std::future::poll_fn(|cx| s.poll_fill(cx)).await?;
    }
    if s.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
        // All that is left is the session ticket, which no client waits for: it leaves
        // with the first response, in one send and one wake-up of the client, not two.
        // Kept in a buffer of its own size while the connection waits for a request.
        s.control_queued = false;
        s.send.truncate(s.send_end);
        s.send.shrink_to_fit();
    } else {
        // TLS 1.2: the server's last flight (its Finished); the client waits for it.
        std::future::poll_fn(|cx| s.poll_send(cx)).await?;
    }
    Ok(s)
}

impl<S> TlsStream<S> {
    /// The name the client asked for, taken (the connection keeps one copy).
    pub fn take_server_name(&mut self) -> Option<Box<str>> {
        self.sni.take()
    }

    /// The application protocol agreed with ALPN.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Plaintext waiting to be read.
    fn plain_waiting(&self) -> bool {
        self.plain_pos < self.plain.len()
    }

    /// Runs rustls over the received ciphertext until it needs the socket (more input,
    /// or nothing more to do): handshake records and alerts are queued in `send`,
    /// application data is moved to `plain`, and `want` is done once rustls allows
    /// writing.
    fn drive(&mut self, want: Want<'_>) -> io::Result<()> {
        loop {
            let UnbufferedStatus { discard, state } = self
                .conn
                .process_tls_records(&mut self.recv[..self.recv_len]);
            let stop = match state {
                Err(e) => Some(Err(tls_error(e))),
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    if self.plain_pos == self.plain.len() {
                        self.plain.clear();
                        self.plain_pos = 0;
                    }
                    let mut stop = None;
                    while let Some(record) = r.next_record() {
                        match record {
                            Ok(rec) => self.plain.extend_from_slice(rec.payload),
                            Err(e) => {
                                stop = Some(Err(tls_error(e)));
                                break;
                            }
                        }
                    }
                    stop
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    self.control_queued = true;
                    append(&mut self.send, &mut self.send_end, |b| e.encode(b))
                        .err()
                        .map(Err)
                }
                // Queued in `send`, ahead of anything written later: as good as sent.
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    None
                }
                Ok(ConnectionState::BlockedHandshake) => Some(Ok(())),
                Ok(ConnectionState::PeerClosed) => {
                    self.read_closed = true;
                    None
                }
                Ok(ConnectionState::Closed) => {
                    self.read_closed = true;
                    Some(Ok(()))
                }
                Ok(ConnectionState::WriteTraffic(mut w)) => Some(match want {
                    Want::Nothing => Ok(()),
                    Want::Write(data) => {
                        let records = data.len().div_ceil(RECORD_MAX).max(1);
                        grow(
                            &mut self.send,
                            self.send_end + data.len() + records * RECORD_OVERHEAD,
                        );
                        append(&mut self.send, &mut self.send_end, |b| w.encrypt(data, b))
                    }
                    Want::Close => {
                        self.close_queued = true;
                        append(&mut self.send, &mut self.send_end, |b| {
                            w.queue_close_notify(b)
                        })
                    }
                }),
                Ok(ConnectionState::ReadEarlyData(_)) => Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS early data is not accepted",
                ))),
                Ok(other) => Some(Err(io::Error::other(format!(
                    "TLS connection in an unexpected state: {other:?}"
                )))),
            };
            if discard > 0 {
                self.recv.copy_within(discard..self.recv_len, 0);
                self.recv_len -= discard;
            }
            if let Some(stop) = stop {
                return stop;
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Writes the queued ciphertext to the socket; ready once all of it is written.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.send_pos < self.send_end {
            let n = ready!(
                Pin::new(&mut self.io).poll_write(cx, &self.send[self.send_pos..self.send_end])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.send_pos += n;
        }
        self.send_pos = 0;
        self.send_end = 0;
        self.control_queued = false;
        Poll::Ready(Ok(()))
    }

    /// Reads more ciphertext from the socket (EOF marks the read side closed).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.recv.len() - self.recv_len < RECV_FIRST / 2 {
            if self.recv.len() >= RECV_MAX {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS record larger than the receive buffer",
                )));
            }
            let len = (self.recv.len() * 2).clamp(RECV_FIRST, RECV_MAX);
            self.recv.resize(len, 0);
        }
        let mut buf = ReadBuf::new(&mut self.recv[self.recv_len..]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        if n == 0 {
            self.read_closed = true;
        }
        self.recv_len += n;
        Poll::Ready(Ok(()))
    }

    /// Encrypts up to [`WRITE_MAX`] bytes of `data`, then writes what the socket takes.
    fn poll_write_plain(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.close_queued {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // A client that does not read holds at most two writes' worth; one that reads
        // keeps the socket's queue fed without waiting for ours to empty.
        if self.send_end - self.send_pos >= WRITE_MAX {
            if let Poll::Ready(Err(e)) = self.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            if self.send_end - self.send_pos >= WRITE_MAX {
                return Poll::Pending;
            }
        }
        if self.send_pos > 0 {
            // Keep the unsent bytes at the front, so the buffer does not creep.
            self.send.copy_within(self.send_pos..self.send_end, 0);
            self.send_end -= self.send_pos;
            self.send_pos = 0;
        }
        let data = &data[..data.len().min(WRITE_MAX)];
        self.drive(Want::Write(data))?;
        // Written through once a full record's worth waits, as far as the socket takes
        // it; less waits for the next write or the flush (a body's tail leaves with the
        // next chunk, in one send).
        if self.send_end - self.send_pos >= RECORD_MAX
            && let Poll::Ready(Err(e)) = self.poll_send(cx)
        {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_waiting() {
                let n = (this.plain.len() - this.plain_pos).min(buf.remaining());
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            this.drive(Want::Nothing)?;
            // What rustls queued while reading (a key update's answer, an alert) goes out
            // now, not at the next write; a slow socket does not hold the read.
            if this.control_queued
                && let Poll::Ready(Err(e)) = this.poll_send(cx)
            {
                return Poll::Ready(Err(e));
            }
            if this.plain_waiting() || this.read_closed {
                continue;
            }
            ready!(this.poll_fill(cx))?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_plain(cx, data)
    }

    /// Small slices (a response head and its body, HTTP/2 frame headers and their
    /// payloads) are gathered into records of up to 16 KiB; a slice that fills a record
    /// by itself is encrypted where it is. (A write may end inside a slice.)
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut slices = bufs.iter().filter(|b| !b.is_empty());
        let Some(first) = slices.next() else {
            return Poll::Ready(Ok(0));
        };
        let Some(second) = slices.next() else {
            return this.poll_write_plain(cx, first);
        };
        if first.len() >= RECORD_MAX {
            return this.poll_write_plain(cx, first);
        }
        let mut gather = std::mem::take(&mut this.gather);
        gather.clear();
        for b in [first, second].into_iter().chain(slices) {
            let take = b.len().min(RECORD_MAX - gather.len());
            gather.extend_from_slice(&b[..take]);
            if gather.len() == RECORD_MAX {
                break;
            }
        }
        let r = this.poll_write_plain(cx, &gather);
        this.gather = gather;
        r
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// close_notify, then the socket's FIN.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            this.close_queued = true;
            // After a failure there is nothing to close cleanly; the FIN still goes.
            let _ = this.drive(Want::Close);
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<S: Readiness> Readiness for TlsStream<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Decrypted bytes may wait here while the socket shows nothing. Ciphertext in
        // `recv` is never a whole record once a read has returned (every whole record is
        // decrypted before the socket is read again): a record cut short waits for the
        // socket like anything else. (Counting it as ready would spin a reader that
        // waits for readiness, then finds nothing to read.)
        if self.plain_waiting() || self.read_closed {
            return Poll::Ready(Ok(()));
        }
        self.io.poll_read_ready(cx)
    }

    fn cork_until_close(&self) {
        self.io.cork_until_close()
    }

    fn release_idle(&mut self) {
        if self.recv_len == 0 {
            self.recv = Vec::new();
        }
        if !self.plain_waiting() {
            self.plain = Vec::new();
            self.plain_pos = 0;
        }
        if self.send_pos == self.send_end {
            self.send = Vec::new();
            self.send_pos = 0;
            self.send_end = 0;
        }
        self.gather = Vec::new();
        self.io.release_idle();
    }
}

/// Writes a record into `buf[*end..]` with `put`, growing the buffer as often as rustls
/// says the room is short.
fn append<E: Short>(
    buf: &mut Vec<u8>,
    end: &mut usize,
    mut put: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<()> {
    loop {
        match put(&mut buf[*end..]) {
            Ok(n) => {
                *end += n;
                return Ok(());
            }
            Err(e) => match e.room_needed() {
                Some(room) => grow(buf, *end + room),
                None => return Err(io::Error::other(e.to_string())),
            },
        }
    }
}

/// rustls's two "output buffer too small" errors, read alike.
trait Short: std::fmt::Display {
    /// The room the record needs, if that was the failure.
    fn room_needed(&self) -> Option<usize>;
}

impl Short for EncodeError {
    fn room_needed(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            _ => None,
        }
    }
}

impl Short for EncryptError {
    fn room_needed(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            _ => None,
        }
    }
}

/// Grows `buf` (zero-filled) to at least `len` bytes.
fn grow(buf: &mut Vec<u8>, len: usize) {
    if buf.len() < len {
        buf.resize(len.max(buf.len() * 2), 0);
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}
