//! Requests without a body, exchanged with the server in the request's own task.
//!
//! hyper's client runs each server connection as a task of its own: a request crosses to
//! it through a channel, and the response and each body chunk come back through two more,
//! every one a wake-up and an allocation. Requests that carry no body (GET, HEAD, the
//! bulk of a repository's traffic) skip all of that here: the request head is written
//! and the response head parsed (httparse) by the request's task, and the body is read
//! from the socket by whoever polls it. Uploads, upgrades and PROXY-header sends stay on
//! hyper (`Upstream::send`).
//!
//! Response framing follows RFC 9112 §6.3. Anything unusual is read to the close, and
//! its connection is never reused: Transfer-Encoding whose last coding is not `chunked`,
//! Transfer-Encoding beside Content-Length (the length is dropped), HTTP/1.0, `Connection:
//! close`, or bytes after the body. Differing Content-Lengths are refused (502).

use super::{SendError, Upstream, dial};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use smallvec::SmallVec;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Largest response head accepted (status line and headers).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Most response headers accepted.
const MAX_HEADERS: usize = 128;
/// First read of a response: most small responses arrive whole in it.
const FIRST_READ: usize = 8 * 1024;
/// Largest read of a body. 128 KiB reads (with the TLS stream's 128 KiB writes) take a
/// 1 MiB download in ~10 reads and ~10 sends instead of ~18 each: proxy CPU per download
/// −33 % against 64 KiB; 256 KiB saved only 1–2 % more (docs/performance.md).
const MAX_READ: usize = 128 * 1024;
/// Longest chunk-size line (with extensions) or trailer line of a chunked body.
const MAX_LINE: usize = 4 * 1024;

/// A server answered in a way that cannot be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// The response head is malformed, too large, or frames its body ambiguously.
    #[error("bad response from server: {0}")]
    Bad(&'static str),
    /// The server closed or reset before the response was complete.
    #[error("server connection: {0}")]
    Io(#[from] std::io::Error),
}

/// Where a header's name and value sit in the head: (offset, length) of each.
type Span = ((u32, u32), (u32, u32));

/// How the rest of a response body is delimited, as it is read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BodyLeft {
    /// This many bytes remain.
    Length(u64),
    /// Chunked transfer coding, at this point of a chunk.
    Chunked(Chunk),
    /// Until the server closes.
    Close,
    /// Complete.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

impl Upstream {
    /// Sends a request without a body to `addr` on a pooled connection (or a new one) and
    /// reads the response head. A pooled connection that fails before any byte of the
    /// response (the server had just closed it) is replaced by a new one, once: callers
    /// send only idempotent methods here.
    pub async fn exchange(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: &Request<impl Sized>,
        extra_headers: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Response<DirectBody>, SendError> {
        let mut wire = Vec::with_capacity(512 + req.headers().len() * 48);
        encode_head(&mut wire, req, extra_headers);
        let head_only = req.method() == Method::HEAD;
        let mut fresh = false;
        loop {
            let (mut tcp, reused) = match (!fresh).then(|| self.direct_checkout(addr)).flatten() {
                Some(t) => (t, true),
                None => {
                    // Boxed: a new connection is the rare case, and its connect and
                    // timer would otherwise take room in every request's future.
                    let tcp = Box::pin(dial(addr, self.connect_timeout))
                        .await
                        .map_err(|e| SendError {
                            connect: true,
                            source: Box::new(e),
                        })?;
                    (tcp, false)
                }
            };
            let mut buf = BytesMut::new();
            let outcome = match tcp.write_all(&wire).await {
                Ok(()) => read_head(&mut tcp, &mut buf, head_only).await,
                Err(e) => Err((DirectError::Io(e), false)),
            };
            match outcome {
                Ok((resp, framing, reusable)) => {
                    let mut body = DirectBody {
                        tcp: Some(tcp),
                        buf,
                        framing,
                        home: reusable.then(|| (self.clone(), addr)),
                    };
                    body.release_if_done();
                    return Ok(resp.map(|()| body));
                }
                // Nothing came back on a kept connection: it was stale. Once more, new.
                Err((_, false)) if reused => fresh = true,
                Err((e, _)) => {
                    return Err(SendError {
                        connect: false,
                        source: Box::new(e),
                    });
                }
            }
        }
    }
}

/// `METHOD /path HTTP/1.1`, the headers as they are (hyper has validated them: no CR or
/// LF can be in a name or value), the lines `extra_headers` writes (this hop's own,
/// written as bytes rather than inserted into the map), and the blank line.
fn encode_head<B>(out: &mut Vec<u8>, req: &Request<B>, extra_headers: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    extra_headers(out);
    out.extend_from_slice(b"\r\n");
}

/// Reads until a final (non-1xx) response head is complete. The error's flag says whether
/// any byte of a response had arrived (only a connection that sent nothing is retried).
async fn read_head(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
    head_only: bool,
) -> Result<(Response<()>, BodyLeft, bool), (DirectError, bool)> {
    use tokio::io::AsyncReadExt;
    let mut seen = false;
    loop {
        if !buf.is_empty() {
            match parse_head(buf, head_only) {
                Ok(Some(done)) => return Ok(done),
                Ok(None) => {}
                Err(e) => return Err((e, true)),
            }
            if buf.len() >= MAX_RESPONSE_HEAD {
                return Err((DirectError::Bad("response head too large"), true));
            }
        }
        buf.reserve(FIRST_READ);
        match tcp.read_buf(buf).await {
            Ok(0) if seen => {
                return Err((
                    DirectError::Io(std::io::ErrorKind::UnexpectedEof.into()),
                    true,
                ));
            }
            Ok(0) => {
                return Err((
                    DirectError::Io(std::io::ErrorKind::UnexpectedEof.into()),
                    false,
                ));
            }
            Ok(_) => seen = true,
            Err(e) => return Err((DirectError::Io(e), seen)),
        }
    }
}

/// Parses a response head at the start of `buf` and consumes it; `None` if incomplete.
/// Interim (1xx) responses are consumed and skipped; a 101 is refused (no upgrade was
/// asked for on this path).
fn parse_head(
    buf: &mut BytesMut,
    head_only: bool,
) -> Result<Option<(Response<()>, BodyLeft, bool)>, DirectError> {
    loop {
        // Uninitialised slots: filling 128 of them per response (4 KiB) was most of
        // the parse's cost.
        let mut slots =
            [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut r, buf, &mut slots);
        let used = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(DirectError::Bad("too many response headers"));
            }
            Err(_) => return Err(DirectError::Bad("malformed response head")),
        };
        let code = r.code.ok_or(DirectError::Bad("no status"))?;
        if code == 101 {
            return Err(DirectError::Bad("101 without an upgrade request"));
        }
        if (100..200).contains(&code) {
            buf.advance(used);
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| DirectError::Bad("bad status"))?;
        let mut close = r.version != Some(1);
        let mut length: Option<u64> = None;
        let mut coded = false;
        let mut chunked = false;
        // Where each name and value sits, so the map can share the head's bytes (one
        // reference count per value instead of an allocation and a copy).
        let base = buf.as_ptr() as usize;
        // u32: a head is at most MAX_RESPONSE_HEAD bytes.
        let at = |b: &[u8]| ((b.as_ptr() as usize - base) as u32, b.len() as u32);
        // Not a zeroed array: clearing 2 KiB per response cost ~130 instructions.
        let mut spans = SmallVec::<[Span; MAX_HEADERS]>::new();
        for h in r.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                for part in h.value.split(|b| *b == b',') {
                    let n = content_length(part)?;
                    if length.is_some_and(|m| m != n) {
                        return Err(DirectError::Bad("differing Content-Length"));
                    }
                    length = Some(n);
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                coded = true;
                // The last coding of the last header decides.
                chunked = h
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case(b"connection") {
                let mut names_others = false;
                for t in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !t.is_empty() && !t.eq_ignore_ascii_case(b"keep-alive") {
                        names_others = true;
                    }
                }
                // `Connection: keep-alive` or `close` is this hop's business only: left
                // out here rather than put in the map and stripped from it. One that
                // names other headers stays, for `strip_hop_by_hop` to remove those too.
                if !names_others {
                    continue;
                }
            }
            // httparse gave at most MAX_HEADERS: the vector never leaves the stack.
            spans.push((at(name), at(h.value)));
        }
        let head = buf.split_to(used).freeze();
        let mut headers = HeaderMap::with_capacity(spans.len());
        for &((name, name_len), (value, value_len)) in &spans {
            let (name, name_len) = (name as usize, name_len as usize);
            let (value, value_len) = (value as usize, value_len as usize);
            let name = crate::wire::header_name(&head[name..name + name_len])
                .map_err(|_| DirectError::Bad("bad header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(value..value + value_len))
                .map_err(|_| DirectError::Bad("bad header value"))?;
            headers.append(name, value);
        }
        let framing = if head_only
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            BodyLeft::Done
        } else if coded {
            // Transfer-Encoding wins over a length; such a response is the last one.
            headers.remove(header::CONTENT_LENGTH);
            if length.is_some() {
                close = true;
            }
            if chunked {
                BodyLeft::Chunked(Chunk::Size)
            } else {
                close = true;
                BodyLeft::Close
            }
        } else if let Some(n) = length {
            BodyLeft::Length(n)
        } else {
            close = true;
            BodyLeft::Close
        };
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        return Ok(Some((resp, framing, !close)));
    }
}

/// A Content-Length value (`wire::content_length`, after trimming).
fn content_length(v: &[u8]) -> Result<u64, DirectError> {
    crate::wire::content_length(v.trim_ascii()).ok_or(DirectError::Bad("bad Content-Length"))
}

/// A response body read straight from the server's socket. When it ends cleanly the
/// connection goes back to the pool; dropped before, the connection is closed.
pub struct DirectBody {
    tcp: Option<TcpStream>,
    buf: BytesMut,
    framing: BodyLeft,
    /// The pool to return the connection to, when it may be reused.
    home: Option<(Arc<Upstream>, SocketAddr)>,
}

impl std::fmt::Debug for DirectBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectBody")
            .field("framing", &self.framing)
            .finish()
    }
}

impl DirectBody {
    /// Hands the connection back once the body is complete (with no stray bytes after it).
    fn release_if_done(&mut self) {
        if self.framing == BodyLeft::Length(0) {
            self.framing = BodyLeft::Done;
        }
        if self.framing != BodyLeft::Done {
            return;
        }
        let tcp = self.tcp.take();
        if let (Some(tcp), Some((pool, addr))) = (tcp, self.home.take())
            && self.buf.is_empty()
        {
            pool.direct_checkin(addr, tcp);
        }
    }

    /// Where the buffered line ends (its CR), `None` until its CRLF has arrived; a line
    /// longer than [`MAX_LINE`] is refused as `too_long`.
    fn line(&self, too_long: &'static str) -> Result<Option<usize>, DirectError> {
        match self.buf.windows(2).position(|w| w == b"\r\n") {
            Some(end) => Ok(Some(end)),
            None if self.buf.len() > MAX_LINE => Err(DirectError::Bad(too_long)),
            None => Ok(None),
        }
    }

    /// Up to `left` buffered body bytes, as one frame's data.
    fn take(&mut self, left: u64) -> Bytes {
        let n = self
            .buf
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        self.buf.split_to(n).freeze()
    }

    /// Gives up on the connection (closed, never pooled) and yields `e`.
    fn fail(&mut self, e: DirectError) -> Poll<Option<Result<Frame<Bytes>, DirectError>>> {
        self.tcp = None;
        self.home = None;
        Poll::Ready(Some(Err(e)))
    }

    /// Reads more of the body into `buf`: `Ok(0)` when the server closed.
    fn fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<std::io::Result<usize>> {
        let Some(tcp) = self.tcp.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        self.buf.reserve(want.clamp(1, MAX_READ));
        tokio_util::io::poll_read_buf(Pin::new(tcp), cx, &mut self.buf)
    }

    /// One step of the chunked decoder over what is buffered: `Some(frame)` to yield,
    /// `None` to read more (or to look at the new state).
    fn chunked_step(&mut self, at: Chunk) -> Result<Option<Bytes>, DirectError> {
        match at {
            Chunk::Size => {
                let Some(end) = self.line("chunk size line too long")? else {
                    return Ok(None);
                };
                let line = &self.buf[..end];
                let digits = line
                    .split(|b| *b == b';')
                    .next()
                    .unwrap_or(line)
                    .trim_ascii();
                if digits.is_empty()
                    || digits.len() > 15
                    || !digits.iter().all(u8::is_ascii_hexdigit)
                {
                    return Err(DirectError::Bad("bad chunk size"));
                }
                let size = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .ok_or(DirectError::Bad("bad chunk size"))?;
                self.buf.advance(end + 2);
                self.framing = BodyLeft::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                Ok(None)
            }
            Chunk::Data(left) => {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let data = self.take(left);
                let left = left - data.len() as u64;
                self.framing = BodyLeft::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                Ok(Some(data))
            }
            Chunk::DataEnd => {
                if self.buf.len() < 2 {
                    return Ok(None);
                }
                if &self.buf[..2] != b"\r\n" {
                    return Err(DirectError::Bad("chunk not followed by CRLF"));
                }
                self.buf.advance(2);
                self.framing = BodyLeft::Chunked(Chunk::Size);
                Ok(None)
            }
            Chunk::Trailers => {
                // Trailers are not forwarded; each line is read and dropped.
                let Some(end) = self.line("trailer line too long")? else {
                    return Ok(None);
                };
                self.buf.advance(end + 2);
                if end == 0 {
                    self.framing = BodyLeft::Done;
                }
                Ok(None)
            }
        }
    }
}

impl Body for DirectBody {
    type Data = Bytes;
    type Error = DirectError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DirectError>>> {
        let this = self.get_mut();
        loop {
            let want = match this.framing {
                BodyLeft::Done => {
                    this.release_if_done();
                    return Poll::Ready(None);
                }
                BodyLeft::Length(0) => {
                    this.release_if_done();
                    continue;
                }
                BodyLeft::Length(left) => {
                    if !this.buf.is_empty() {
                        let data = this.take(left);
                        this.framing = BodyLeft::Length(left - data.len() as u64);
                        // Last bytes: back to the pool now, as hyper may never poll again.
                        this.release_if_done();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    usize::try_from(left).unwrap_or(MAX_READ)
                }
                BodyLeft::Close => {
                    if !this.buf.is_empty() {
                        let data = this.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    MAX_READ
                }
                BodyLeft::Chunked(at) => match this.chunked_step(at) {
                    Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(None) if this.framing != BodyLeft::Chunked(at) => continue,
                    Ok(None) => match at {
                        Chunk::Data(left) => usize::try_from(left).unwrap_or(MAX_READ),
                        _ => FIRST_READ,
                    },
                    Err(e) => return this.fail(e),
                },
            };
            match std::task::ready!(this.fill(cx, want)) {
                Ok(0) if this.framing == BodyLeft::Close => this.framing = BodyLeft::Done,
                Ok(0) => {
                    return this.fail(DirectError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(_) => {}
                Err(e) => return this.fail(DirectError::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, BodyLeft::Done | BodyLeft::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            BodyLeft::Length(n) => SizeHint::with_exact(n),
            BodyLeft::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        raw: &[u8],
        head: bool,
    ) -> Result<Option<(Response<()>, BodyLeft, bool)>, DirectError> {
        let mut b = BytesMut::from(raw);
        parse_head(&mut b, head)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let (_, f, reuse) = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((f, reuse), (BodyLeft::Length(3), true));
        let (r, f, reuse) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((f, reuse), (BodyLeft::Chunked(Chunk::Size), false));
        assert!(r.headers().get(header::CONTENT_LENGTH).is_none());
        let (_, f, reuse) = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((f, reuse), (BodyLeft::Close, false));
        let (_, f, reuse) = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((f, reuse), (BodyLeft::Length(1), false));
        let (_, f, _) = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(f, BodyLeft::Done);
        let (r, _, _) = parse(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert!(
            parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                false
            )
            .is_err()
        );
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n", false).is_err());
        assert!(parse(b"HTTP/1.1 101 Switching\r\n\r\n", false).is_err());
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Le", false)
                .unwrap()
                .is_none()
        );
    }
}
