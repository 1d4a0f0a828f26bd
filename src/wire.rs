//! HTTP/1.1 wire facts both sides of the proxy need: the one `Content-Length` parser.
//!
//! Pure. The client side (`h1`) and the server side (`upstream::direct`) read lengths
//! the same strict way, so a value one accepts the other never reads differently.

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
    use super::content_length;

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
