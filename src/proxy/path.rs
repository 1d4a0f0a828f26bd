//! Request-path normalization: the path that is routed and allow-listed is the path forwarded.
//!
//! Dot-segments are resolved, `//` merged and `%2e` decoded before routing, so
//! `/records/a/files/../../api/records` is judged (and forwarded) as `/api/records`.
//! Encodings whose meaning differs between servers (`%2f`, `%5c`, `%00`, raw `\`)
//! are refused outright rather than guessed at.

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
                    b'.' => needs_rewrite = true,
                    _ => {}
                }
                i += 3;
                continue;
            }
            b'/' => {
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

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The slow path: decode `%2e`, then rebuild from segments (RFC 3986 §5.2.4, with `//` merged).
fn rewrite(path: &str) -> String {
    let decoded = path.replace("%2e", ".").replace("%2E", ".");
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
    }
}
