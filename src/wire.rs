//! HTTP/1.1 wire facts both sides of the proxy need: the one `Content-Length` parser and
//! the header-name reader.
//!
//! Pure. The client side (`h1`) and the server side (`upstream::direct`) read lengths
//! the same strict way, so a value one accepts the other never reads differently.

use http::HeaderName;
use http::header::{self, InvalidHeaderName};

/// A common header name, as two little-endian words of its lowercase bytes (zero-padded
/// to 16) and a mask with 0x20 at each letter: a name read off the wire is that name iff
/// `word | mask == lower` in both words. Only a letter's case bit is ignored; a `-` must
/// be a `-` (0x0D | 0x20 would be one).
struct Known {
    lower: [u64; 2],
    fold: [u64; 2],
    name: HeaderName,
}

const fn known(text: &[u8], name: HeaderName) -> Known {
    let (mut lower, mut fold) = ([0u8; 16], [0u8; 16]);
    let mut i = 0;
    while i < text.len() {
        lower[i] = text[i];
        fold[i] = if text[i].is_ascii_lowercase() {
            0x20
        } else {
            0
        };
        i += 1;
    }
    Known {
        lower: words(lower),
        fold: words(fold),
        name,
    }
}

const fn words(b: [u8; 16]) -> [u64; 2] {
    let (mut lo, mut hi) = ([0u8; 8], [0u8; 8]);
    let mut i = 0;
    while i < 8 {
        lo[i] = b[i];
        hi[i] = b[i + 8];
        i += 1;
    }
    [u64::from_le_bytes(lo), u64::from_le_bytes(hi)]
}

/// Header names common on a repository's requests and responses, by length (statics:
/// a `HeaderName` may not sit behind a reference in a constant).
static BY_LEN: [&[Known]; 17] = [
    &NONE, &NONE, &NONE, &NONE, &LEN4, &NONE, &LEN6, &LEN7, &LEN8, &NONE, &LEN10, &NONE, &LEN12,
    &LEN13, &LEN14, &LEN15, &LEN16,
];

static NONE: [Known; 0] = [];
static LEN4: [Known; 4] = [
    known(b"date", header::DATE),
    known(b"etag", header::ETAG),
    known(b"host", header::HOST),
    known(b"vary", header::VARY),
];
static LEN6: [Known; 3] = [
    known(b"server", header::SERVER),
    known(b"accept", header::ACCEPT),
    known(b"cookie", header::COOKIE),
];
static LEN7: [Known; 2] = [
    known(b"expires", header::EXPIRES),
    known(b"referer", header::REFERER),
];
static LEN8: [Known; 1] = [known(b"location", header::LOCATION)];
static LEN10: [Known; 3] = [
    known(b"user-agent", header::USER_AGENT),
    known(b"set-cookie", header::SET_COOKIE),
    known(b"connection", header::CONNECTION),
];
static LEN12: [Known; 1] = [known(b"content-type", header::CONTENT_TYPE)];
static LEN13: [Known; 4] = [
    known(b"last-modified", header::LAST_MODIFIED),
    known(b"cache-control", header::CACHE_CONTROL),
    known(b"accept-ranges", header::ACCEPT_RANGES),
    known(b"authorization", header::AUTHORIZATION),
];
static LEN14: [Known; 1] = [known(b"content-length", header::CONTENT_LENGTH)];
static LEN15: [Known; 2] = [
    known(b"accept-encoding", header::ACCEPT_ENCODING),
    known(b"accept-language", header::ACCEPT_LANGUAGE),
];
static LEN16: [Known; 1] = [known(b"content-encoding", header::CONTENT_ENCODING)];

/// A header name as read from a head. The common names are two word compares (about
/// 30 instructions); `HeaderName::from_bytes` folds and classifies every byte (about
/// 145), and a response head carries eight or so names. Same answers either way.
#[inline]
pub fn header_name(b: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    if let Some(known) = BY_LEN.get(b.len()) {
        let mut padded = [0u8; 16];
        padded[..b.len()].copy_from_slice(b);
        let w = words(padded);
        for k in known.iter() {
            if w[0] | k.fold[0] == k.lower[0] && w[1] | k.fold[1] == k.lower[1] {
                return Ok(k.name.clone());
            }
        }
    }
    HeaderName::from_bytes(b)
}

/// A `Content-Length` value: digits only (no sign, no space inside, as RFC 9110 §8.6 says;
/// `"+5".parse::<u64>()` would succeed), at most 19 of them (no overflow). Surrounding
/// whitespace is the caller's to trim.
pub fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::{BY_LEN, content_length, header_name};
    use http::HeaderName;

    #[test]
    fn header_names_read_as_http_reads_them() {
        for (len, known) in BY_LEN.iter().enumerate() {
            for k in known.iter() {
                let text = k.name.as_str().as_bytes();
                assert_eq!(text.len(), len, "{} filed under the wrong length", k.name);
                assert_eq!(header_name(text).ok().as_ref(), Some(&k.name));
                assert_eq!(
                    header_name(&text.to_ascii_uppercase()).ok().as_ref(),
                    Some(&k.name)
                );
            }
        }
        for raw in [
            &b"Content-Length"[..],
            b"DATE",
            b"eTaG",
            b"X-Request-ID",
            b"x-content-length",
            b"content-lengtg",
            b"Content Length",
            b"",
            b"\xffate",
            b"content\rlength",
            b"content\x0dlength",
            b"Dat\x05",
            b"date\x00",
        ] {
            let ours = header_name(raw).ok();
            let http = HeaderName::from_bytes(raw).ok();
            assert_eq!(ours, http, "{raw:?}");
        }
    }

    #[test]
    fn digits_only() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"1048576"), Some(1 << 20));
        assert_eq!(
            content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"+5",
            b"-1",
            b"5 ",
            b"0x5",
            b"1,2",
            b"99999999999999999999",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
    }
}
