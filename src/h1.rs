//! Gatehouse's own HTTP/1.1 path for the request a proxy sees most: a `GET` or `HEAD`
//! with no body and no upgrade, whose whole head has already arrived.
//!
//! hyper's server is general, and every request pays for it: a dispatcher state machine,
//! a header timer, a response encoder written for any body. Here such a request is read
//! with httparse, handed to [`proxy::handle`] like any other, and its response is written
//! in one `write` when it is small. The handler, the rules and the upstream path are the
//! same; only the bytes around them change hands differently.
//!
//! The rule that keeps this safe: this path takes a strict *subset* of what hyper takes.
//! Anything else (a body, `Expect`, an upgrade, HTTP/1.0, an absolute-form target, more
//! headers or head bytes than the limits, anything httparse or `http` rejects, a head
//! not yet complete) goes to hyper with the bytes read so far ([`Outcome::Hyper`]), so
//! hyper's checks, error answers, limits and timeouts stay the only ones for those, and a
//! malformed request is answered exactly as before.

use crate::body::ClientBody;
use crate::park::{Readiness, Tick};
use crate::proxy::body::ProxyBody;
use crate::proxy::{self, ConnInfo, Shared};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use smallvec::SmallVec;
use std::io::{IoSlice, Write as _};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// Head bytes this path takes at most (hyper takes longer heads, up to its limit).
pub const MAX_REQUEST_HEAD: usize = 8192;

/// Headers this path takes at most (more go to hyper, under `limits.max_headers`).
const MAX_HEADERS: usize = 64;

/// The response headers this hop writes itself when the server's response lacks them.
/// (`ManuallyDrop`: a constant array of names is a temporary at each use, dropped after
/// it otherwise; these names own nothing.)
const OWN_HEADERS: std::mem::ManuallyDrop<[HeaderName; 3]> =
    std::mem::ManuallyDrop::new([header::TRANSFER_ENCODING, header::DATE, header::CONNECTION]);
/// A response body part this small is copied behind its head and sent in the same write.
const COALESCE: usize = 16 * 1024;

/// How a connection leaves this path.
#[derive(Debug)]
pub enum Outcome {
    /// Every complete request was answered and nothing is left unread: wait for the next.
    Idle,
    /// The connection is done (the client or the response asked to close, a write failed).
    Close,
    /// hyper takes the connection from here, these bytes first.
    Hyper(Bytes),
}

/// The limits the path checks against, from the config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Head bytes accepted (the smaller of hyper's buffer limit and [`MAX_REQUEST_HEAD`]).
    pub head: usize,
    /// Headers accepted (the smaller of `limits.max_headers` and 64).
    pub headers: usize,
}

impl Limits {
    /// The path's limits for a server whose hyper connection takes heads of up to
    /// `hyper_buf` bytes and `max_headers` headers.
    pub fn new(hyper_buf: usize, max_headers: usize) -> Limits {
        Limits {
            head: hyper_buf.min(MAX_REQUEST_HEAD),
            headers: max_headers.min(MAX_HEADERS),
        }
    }
}

/// Serves the requests sent on `io` (called once it is readable), and the ones that follow
/// while the client keeps sending within a park tick. Never waits for the rest of a head:
/// a head that has not fully arrived is hyper's to wait for, under its timeouts.
pub async fn serve<I>(
    shared: &Arc<Shared>,
    info: &Arc<ConnInfo>,
    limits: Limits,
    draining: &CancellationToken,
    io: &mut I,
) -> Outcome
where
    I: AsyncRead + AsyncWrite + Readiness + Unpin,
{
    let mut buf = BytesMut::new();
    let mut served = false;
    // A connection quiet for a whole tick leaves (and waits parked, holding nothing).
    let mut tick = Tick::default();
    loop {
        // What the buffer holds first: a whole request is served, half of one waits for
        // the read below, anything else is hyper's.
        let taken = if buf.is_empty() {
            None
        } else {
            match parse(&mut buf, limits) {
                Head::Request(req, close) => Some((req, close)),
                Head::Partial if buf.len() < limits.head => None,
                Head::Partial | Head::Other => return Outcome::Hyper(buf.freeze()),
            }
        };
        let Some((req, close)) = taken else {
            buf.reserve(4096);
            match read_now(io, &mut buf).await {
                Some(Ok(0)) => {
                    // The client closed: after a complete exchange that is the end; with
                    // half a head, hyper says what it says to a truncated request.
                    return if buf.is_empty() {
                        Outcome::Close
                    } else {
                        Outcome::Hyper(buf.freeze())
                    };
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) => return Outcome::Close,
                None if buf.is_empty() && served => {
                    if draining.is_cancelled() || !next_request(io, &mut tick).await {
                        return Outcome::Idle;
                    }
                    continue;
                }
                None => return Outcome::Hyper(buf.freeze()),
            }
        };
        served = true;
        tick.touch();
        let head_only = req.method() == Method::HEAD;
        let resp = match proxy::handle(shared.clone(), info.clone(), req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        let close = close || draining.is_cancelled() || proxy::closes(&resp);
        if close {
            io.cork_until_close();
        }
        // `Ok(true)`: complete, and neither side asked to close.
        let mut out = crate::park::Watched::new(&mut *io, shared.timeouts.client, &*info.in_flight);
        if !matches!(
            write_response(&mut out, resp, head_only, close).await,
            Ok(true)
        ) {
            return Outcome::Close;
        }
    }
}

/// Waits for the client's next bytes (true) or a quiet tick (false).
async fn next_request<I: Readiness>(io: &I, tick: &mut Tick) -> bool {
    std::future::poll_fn(|cx| {
        if io.poll_read_ready(cx).is_ready() {
            Poll::Ready(true)
        } else if tick.quiet(cx, || true) {
            Poll::Ready(false)
        } else {
            Poll::Pending
        }
    })
    .await
}

/// One read if the socket has bytes now; `None` if it has none.
async fn read_now<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
) -> Option<std::io::Result<usize>> {
    std::future::poll_fn(
        |cx| match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending => Poll::Ready(None),
        },
    )
    .await
}

/// What the head at the start of the buffer is.
// Returned by value and taken apart at once: boxing the request would cost an allocation
// per request for nothing.
#[allow(clippy::large_enum_variant)]
enum Head {
    /// A request for this path, and whether the client asked to close after it.
    Request(Request<ClientBody>, bool),
    /// Not all of it has arrived.
    Partial,
    /// Anything else: hyper's to take (see the module notes).
    Other,
}

/// Reads the head at the start of `buf`; a taken head leaves the buffer.
fn parse(buf: &mut BytesMut, limits: Limits) -> Head {
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers[..limits.headers]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Other,
    };
    if len > limits.head || req.version != Some(1) {
        return Head::Other;
    }
    let method = match req.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Head::Other,
    };
    let Some(path) = req.path.filter(|p| p.starts_with('/')) else {
        return Head::Other;
    };
    // Where each part sits in the head, so the request can share the head's bytes.
    let base = buf.as_ptr() as usize;
    // u32: a head is at most MAX_REQUEST_HEAD bytes.
    let at = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
    let path = at(path.as_bytes());
    let mut close = false;
    // Not a zeroed array: clearing 2 KiB per request cost ~80 instructions.
    let mut spans = SmallVec::<[((u32, u32), (u32, u32)); MAX_HEADERS]>::new();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Head::Other;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"upgrade") {
                    return Head::Other;
                }
                close |= token.eq_ignore_ascii_case(b"close");
            }
        }
        spans.push((at(name), at(h.value)));
    }
    let head = buf.split_to(len).freeze();
    let slice = |(start, len): (u32, u32)| head.slice(start as usize..(start + len) as usize);
    let Ok(uri) = Uri::from_maybe_shared(slice(path)) else {
        return give_back(buf, &head);
    };
    let mut request = Request::new(ClientBody::Empty);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    let map = request.headers_mut();
    map.reserve(spans.len());
    for &(name, value) in &spans {
        let (Ok(name), Ok(value)) = (
            crate::wire::header_name(&head[name.0 as usize..(name.0 + name.1) as usize]),
            HeaderValue::from_maybe_shared(slice(value)),
        ) else {
            // Not expected for what httparse accepted; hyper answers it if it happens.
            return give_back(buf, &head);
        };
        map.append(name, value);
    }
    Head::Request(request, close)
}

/// Puts a head taken from the buffer back in front of it, for hyper.
fn give_back(buf: &mut BytesMut, head: &Bytes) -> Head {
    let mut back = BytesMut::with_capacity(head.len() + buf.len());
    back.extend_from_slice(head);
    back.extend_from_slice(buf);
    *buf = back;
    Head::Other
}

/// How the response body is framed on the wire.
#[derive(Clone, Copy, PartialEq)]
enum OutFraming {
    /// No body bytes at all (HEAD, 1xx, 204, 304).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
}

/// Writes `resp`; `Ok(true)` when the connection may carry another request.
async fn write_response<I>(
    io: &mut I,
    resp: Response<ProxyBody>,
    head_only: bool,
    close: bool,
) -> std::io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let (mut parts, body) = resp.into_parts();
    let (out, framing) = response_head(&mut parts, &body, head_only, close);
    if framing == OutFraming::None {
        io.write_all(&out).await?;
        io.flush().await?;
        return Ok(!close);
    }
    write_body(io, std::pin::pin!(body), out, framing, close).await
}

/// The response head as bytes, and how its body is framed: the server's length kept (one
/// plain number), ours added when the body's size is known, else chunked; a `Date` when
/// missing; `Connection: close` when the connection ends after it.
fn response_head(
    parts: &mut http::response::Parts,
    body: &ProxyBody,
    head_only: bool,
    close: bool,
) -> (Vec<u8>, OutFraming) {
    let status = parts.status;
    let bodiless = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // Which of the headers this hop writes for itself are there, found in one pass over
    // the names (each look-up by name hashes it).
    let (coded, has_date, has_connection) =
        crate::proxy::forward::present_of(&parts.headers, &OWN_HEADERS);
    // Framing is this hop's business: a length the response carries is kept (the
    // upstream path checked it), any transfer coding is replaced by ours.
    if coded {
        parts.headers.remove(header::TRANSFER_ENCODING);
    }
    // Without a length of its own, a body of known size gets one: any body that is sent,
    // and a page of our own answering HEAD (the length GET would get).
    let sized = if head_only {
        !body.is_end_stream()
    } else {
        !bodiless
    };
    let length = match content_length(&mut parts.headers) {
        None if sized => body.size_hint().exact().inspect(|&n| {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }),
        length => length,
    };
    let framing = match length {
        _ if bodiless => OutFraming::None,
        Some(n) => OutFraming::Length(n),
        None => {
            parts.headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            OutFraming::Chunked
        }
    };
    if close && !has_connection {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        date::append(&mut out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (out, framing)
}

/// Streams the body after `out` (the head, not yet written), framed as `framing`;
/// `Ok(true)` when it ended exactly where its framing said and the connection may go on.
async fn write_body<I>(
    io: &mut I,
    mut body: Pin<&mut ProxyBody>,
    mut out: Vec<u8>,
    framing: OutFraming,
    close: bool,
) -> std::io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let mut left = match framing {
        OutFraming::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        // A part ready now joins the bytes waiting; otherwise those go out first.
        let polled = std::future::poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            Poll::Pending if !out.is_empty() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
        })
        .await;
        let frame = match polled {
            None => {
                io.write_all(&out).await?;
                io.flush().await?;
                out.clear();
                continue;
            }
            Some(frame) => frame,
        };
        let data = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: HTTP/1.1 clients did not ask for them here.
                Err(_) => continue,
            },
            Some(Err(_)) => {
                // The server's stream broke: what was sent stays short of its framing,
                // so the client sees a cut response, and the connection closes.
                let _ = io.write_all(&out).await;
                return Ok(false);
            }
            None => break,
        };
        if data.len() as u64 > left {
            // More than the length said: never sent past it.
            let _ = io.write_all(&out).await;
            return Ok(false);
        }
        if let OutFraming::Length(_) = framing {
            left -= data.len() as u64;
        }
        if data.is_empty() {
            continue;
        }
        if framing == OutFraming::Chunked {
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        if out.len() + data.len() <= COALESCE {
            out.extend_from_slice(&data);
        } else {
            write_two(io, &out, &data).await?;
            out.clear();
        }
        if framing == OutFraming::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    let complete = match framing {
        OutFraming::Chunked => {
            out.extend_from_slice(b"0\r\n\r\n");
            true
        }
        _ => left == 0,
    };
    io.write_all(&out).await?;
    io.flush().await?;
    Ok(complete && !close)
}

/// The response's length, left as one plain decimal `Content-Length` (or none): what the
/// client reads must be unambiguous even if a server sent a repeated or signed one.
fn content_length(headers: &mut http::HeaderMap) -> Option<u64> {
    let digits = |v: &HeaderValue| crate::wire::content_length(v.as_bytes());
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let length = digits(values.next()?);
    let (mut single, mut agree) = (true, true);
    for v in values {
        single = false;
        agree &= digits(v) == length;
    }
    if single && length.is_some() {
        return length;
    }
    headers.remove(header::CONTENT_LENGTH);
    let length = length.filter(|_| agree)?;
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    Some(length)
}

/// Writes `a` then `b`, in as few calls as the socket allows.
async fn write_two<I: AsyncWrite + Unpin>(io: &mut I, a: &[u8], b: &[u8]) -> std::io::Result<()> {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() {
        let n = std::future::poll_fn(|cx| {
            Pin::new(&mut *io).poll_write_vectored(cx, &[IoSlice::new(a), IoSlice::new(b)])
        })
        .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    io.write_all(b).await
}

/// The `Date` header's value, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static NOW: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }

    /// Appends the current date in IMF-fixdate form.
    pub fn append(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        NOW.with_borrow_mut(|(at, text)| {
            if *at != secs || text.is_empty() {
                *at = secs;
                *text = httpdate::fmt_http_date(now);
            }
            out.extend_from_slice(text.as_bytes());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        head: 8192,
        headers: 64,
    };

    fn kind(head: &str) -> &'static str {
        let mut buf = BytesMut::from(head.as_bytes());
        match parse(&mut buf, LIMITS) {
            Head::Request(..) => "ours",
            Head::Partial => "partial",
            Head::Other => "hyper",
        }
    }

    #[test]
    fn only_complete_bodyless_gets_and_heads_are_taken() {
        let host = "Host: a\r\n";
        assert_eq!(kind(&format!("GET /x HTTP/1.1\r\n{host}\r\n")), "ours");
        assert_eq!(kind(&format!("HEAD /x HTTP/1.1\r\n{host}\r\n")), "ours");
        assert_eq!(kind(&format!("GET /x HTTP/1.1\r\n{host}")), "partial");
        for other in [
            format!("POST /x HTTP/1.1\r\n{host}\r\n"),
            format!("GET /x HTTP/1.0\r\n{host}\r\n"),
            format!("GET http://a/x HTTP/1.1\r\n{host}\r\n"),
            format!("GET /x HTTP/1.1\r\n{host}Content-Length: 0\r\n\r\n"),
            format!("GET /x HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n"),
            format!("GET /x HTTP/1.1\r\n{host}Expect: 100-continue\r\n\r\n"),
            format!("GET /ws HTTP/1.1\r\n{host}Connection: keep-alive, Upgrade\r\n\r\n"),
            format!("GET /ws HTTP/1.1\r\n{host}Upgrade: websocket\r\n\r\n"),
            format!("GET /x HTTP/1.1\r\n{host}Bad Name: 1\r\n\r\n"),
            format!("GET /x HTTP/1.1\r\n{host} folded\r\n\r\n"),
            format!("GET /x HTTP/1.1\r\n{}\r\n", "X: 1\r\n".repeat(65)),
            format!("GET /{} HTTP/1.1\r\n{host}\r\n", "a".repeat(8200)),
        ] {
            assert_eq!(kind(&other), "hyper", "{other:?}");
        }
    }

    #[test]
    fn a_taken_head_leaves_the_next_request_in_the_buffer() {
        let mut buf = BytesMut::from(
            &b"GET /a?q=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX: 1\r\nX: 2\r\n\r\nGET /b"[..],
        );
        let Head::Request(req, close) = parse(&mut buf, LIMITS) else {
            panic!("not taken");
        };
        assert!(close);
        assert_eq!(req.uri().path_and_query().unwrap().as_str(), "/a?q=1");
        assert_eq!(req.headers().get_all("x").iter().count(), 2);
        assert_eq!(&buf[..], b"GET /b");
    }

    #[test]
    fn response_lengths_are_left_plain_and_single() {
        let len = |values: &[&'static str]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append(header::CONTENT_LENGTH, HeaderValue::from_static(v));
            }
            let n = content_length(&mut h);
            let left: Vec<_> = h.get_all(header::CONTENT_LENGTH).iter().cloned().collect();
            (n, left)
        };
        assert_eq!(len(&["12"]), (Some(12), vec![HeaderValue::from(12u64)]));
        assert_eq!(
            len(&["12", "12"]),
            (Some(12), vec![HeaderValue::from(12u64)])
        );
        assert_eq!(len(&["12", "13"]), (None, vec![]));
        assert_eq!(len(&["+12"]), (None, vec![]));
        assert_eq!(len(&[]), (None, vec![]));
    }
}
