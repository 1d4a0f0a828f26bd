//! Request-path normalization: the path that is routed and allow-listed is the path forwarded.
//!
//! Dot-segments are resolved, `//` merged and percent-escapes of unreserved characters
//! (`%61` is `a`, `%2e` is `.`) decoded before routing, so `/records/a/files/../../api/records`
//! and `/%61pi/records` are judged (and forwarded) as `/api/records`: a server that decodes
//! them can never see a path other than the one the rules judged. Encodings whose meaning
//! differs between servers (`%2f`, `%5c`, `%00`, raw `\`) and dot-segments carrying `;`
//! parameters (`..;`, which Java servers read as `..`) are refused rather than guessed at.

use std::borrow::Cow;

/// Why a request path was refused (always 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not an origin-form path (`/...`).
    NotAbsolute,
    /// `%2F`: an encoded slash that servers split differently.
    EncodedSlash,
    /// `\` raw or encoded: some servers treat it as `/`.
    Backslash,
    /// NUL raw or encoded.
    Nul,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// A dot-segment with `;` parameters (`..;x`, `.;x`).
    DotParams,
}

impl PathError {
    /// Short reason for logs and the 400 page.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "path must start with /",
            PathError::EncodedSlash => "encoded / in path",
            PathError::Backslash => "backslash in path",
            PathError::Nul => "NUL in path",
            PathError::BadEscape => "bad %-escape in path",
            PathError::DotParams => "parameters on a dot-segment in path",
        }
    }
}

/// Normalizes an origin-form path (no query). Borrows when nothing needs changing,
/// which is the common case and keeps the hot path allocation-free.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut needs_rewrite = false;
    // Where the current segment starts (just after its `/`).
    let mut segment = 1;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            b'%' => {
                let (Some(&h), Some(&l)) = (b.get(i + 1), b.get(i + 2)) else {
                    return Err(PathError::BadEscape);
                };
                let byte = hex(h)
                    .zip(hex(l))
                    .map(|(h, l)| h << 4 | l)
                    .ok_or(PathError::BadEscape)?;
                match byte {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    0 => return Err(PathError::Nul),
                    c if unreserved(c) => needs_rewrite = true,
                    _ => {}
                }
                i += 3;
                continue;
            }
            b';' if is_dots(&b[segment..i]) => return Err(PathError::DotParams),
            b'/' => {
                segment = i + 1;
                // `//`, `/.` at a segment start
                match b.get(i + 1) {
                    Some(b'/') => needs_rewrite = true,
                    Some(b'.') => {
                        let rest = &b[i + 1..];
                        let seg_end = rest.iter().position(|&c| c == b'/').unwrap_or(rest.len());
                        let seg = &rest[..seg_end];
                        if seg == b"." || seg == b".." {
                            needs_rewrite = true;
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        i += 1;
    }
    if !needs_rewrite {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(rewrite(path)))
}

/// RFC 3986 unreserved characters: an escape of one means the same as the character.
fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// Whether a segment (before any `;`) is `.` or `..`, raw or escaped.
fn is_dots(seg: &[u8]) -> bool {
    let mut dots = 0;
    let mut i = 0;
    while i < seg.len() {
        if seg[i] == b'.' {
            i += 1;
        } else if seg[i..].len() >= 3 && seg[i..i + 3].eq_ignore_ascii_case(b"%2e") {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The slow path: decode escapes of unreserved characters, then rebuild from segments
/// (RFC 3986 §5.2.4, with `//` merged).
fn rewrite(path: &str) -> String {
    let decoded = decode_unreserved(path);
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            "" => trailing_slash = n == last,
            "." => trailing_slash = n == last,
            ".." => {
                out.pop();
                trailing_slash = n == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if trailing_slash || result.is_empty() {
        result.push('/');
    }
    result
}

/// `path` with every escape of an unreserved character replaced by the character; other
/// escapes are kept as they are (checked well-formed by `normalize`).
fn decode_unreserved(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        let decoded = (b[i] == b'%')
            .then(|| Some(hex(*b.get(i + 1)?)? << 4 | hex(*b.get(i + 2)?)?))
            .flatten()
            .filter(|&c| unreserved(c));
        match decoded {
            Some(c) => {
                out.push(char::from(c));
                i += 3;
            }
            None => {
                let n = path[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&path[i..i + n]);
                i += n;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(|c| c.into_owned())
    }

    #[test]
    fn leaves_clean_paths_alone() {
        assert!(matches!(
            normalize("/records/a/files/1M.bin"),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(
            normalize("/a/.well-known/x"),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(normalize("/a/..b"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn resolves_dot_segments_and_slashes() {
        assert_eq!(
            n("/records/a/files/../../api/records").unwrap(),
            "/records/api/records"
        );
        assert_eq!(n("/records/a/../../../api").unwrap(), "/api");
        assert_eq!(n("/a//b").unwrap(), "/a/b");
        assert_eq!(n("/a/./b/").unwrap(), "/a/b/");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/..").unwrap(), "/");
        assert_eq!(n("/a/%2e%2E/api").unwrap(), "/api");
        assert_eq!(n("//").unwrap(), "/");
    }

    #[test]
    fn refuses_ambiguous_encodings() {
        assert_eq!(n("/a%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%5Cb"), Err(PathError::Backslash));
        assert_eq!(n("/a\\b"), Err(PathError::Backslash));
        assert_eq!(n("/a%00"), Err(PathError::Nul));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape));
        assert_eq!(n("a"), Err(PathError::NotAbsolute));
        assert_eq!(n("/a/..;/api"), Err(PathError::DotParams));
        assert_eq!(n("/a/.;x/b"), Err(PathError::DotParams));
        assert_eq!(n("/a/%2e%2E;/api"), Err(PathError::DotParams));
        assert_eq!(n("/..;"), Err(PathError::DotParams));
    }

    #[test]
    fn decodes_unreserved_escapes() {
        assert_eq!(n("/%61pi/records").unwrap(), "/api/records");
        assert_eq!(n("/a%2Db%5Fc%7E%30").unwrap(), "/a-b_c~0");
        assert_eq!(n("/a%20b/%C3%A9").unwrap(), "/a%20b/%C3%A9");
        assert_eq!(n("/%2e%2e/%61pi").unwrap(), "/api");
        // `;` elsewhere is an ordinary character.
        assert!(matches!(normalize("/a;b/c;d"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/...;/x"), Ok(Cow::Borrowed(_))));
    }
}
