//! `X-Request-ID`: one id per request, sent to the server, returned to the client and
//! written in the access log, so one request can be followed through every tier.
//!
//! A trusted proxy's id is kept (the request is already being followed); anyone else's
//! is replaced (a client could otherwise pin its requests on another's id in the logs).
//! Ours are 32 lower-case hex digits, as nginx's `$request_id`: 128 bits from a
//! per-thread SplitMix64 seeded at random, no lock and no system call per id.

use http::{HeaderMap, HeaderValue};
use std::cell::Cell;
use std::hash::{BuildHasher, RandomState};

/// The header.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Longest id kept from a trusted proxy.
const MAX_KEPT: usize = 200;

thread_local! {
    static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0u8));
}

/// The id for a request: a trusted peer's (when it sent a usable one), else a new one.
#[inline]
pub fn for_request(headers: &HeaderMap, trusted_peer: bool) -> HeaderValue {
    if trusted_peer
        && let Some(v) = headers.get(&X_REQUEST_ID)
        && !v.is_empty()
        && v.len() <= MAX_KEPT
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        let mut v = v.clone();
        v.set_sensitive(true);
        return v;
    }
    fresh()
}

/// A new id.
pub fn fresh() -> HeaderValue {
    let (a, b) = STATE.with(|s| (next(s), next(s)));
    let mut text = [0u8; 32];
    hex(a, &mut text[..16]);
    hex(b, &mut text[16..]);
    // One allocation that clones by reference count (it goes to the server, the client
    // and the log). Hex digits are always a valid header value.
    let mut v = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        .unwrap_or(HeaderValue::from_static("-"));
    // Never indexed by HPACK: a value seen once would otherwise enter the connection's
    // table and push out the headers that repeat (measured: +6,000 instructions per
    // HTTP/2 request).
    v.set_sensitive(true);
    v
}

fn next(s: &Cell<u64>) -> u64 {
    let x = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
    s.set(x);
    let z = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hex(mut v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for o in out.iter_mut().rev() {
        *o = DIGITS[(v & 15) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_hex_and_distinct() {
        let a = fresh();
        let b = fresh();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
    }

    #[test]
    fn only_a_trusted_peers_id_is_kept() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("edge-1234"));
        assert_eq!(for_request(&h, true), "edge-1234");
        assert_ne!(for_request(&h, false), "edge-1234");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(for_request(&h, true), "has space");
    }
}
