//! Request paths: normalised once (RFC 3986 section 6), so the rule that routes a request is
//! the rule its backend sees, and matched against route prefixes segment by segment. Pure.
//!
//! Normalisation decodes percent-encoded unreserved characters (`%7E` -> `~`, `%2e` -> `.`),
//! writes the other percent-encodings in upper case, and removes `.` and `..` segments. Without
//! it `/api/../admin` or `/api/%2e%2e/admin` would be routed by `/api` while the backend serves
//! `/admin`. A path that climbs above `/`, or carries a backslash, a NUL or a raw control
//! character, is refused; an encoded slash (`%2F`), which backends decode into a separator, is
//! reported so that only routes allowing it accept it.

use std::borrow::Cow;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    #[error("the path climbs above /")]
    AboveRoot,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains a NUL")]
    Nul,
    #[error("the path contains a control character")]
    Control,
    #[error("the path has an invalid percent-encoding")]
    BadEncoding,
    #[error("the path contains an encoded slash")]
    EncodedSlash,
}

/// A normalised path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NormalPath<'a> {
    pub(crate) path: Cow<'a, str>,
    /// It contains `%2F`.
    pub(crate) has_encoded_slash: bool,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalise `path` (the path of an origin-form request target, without the query).
pub(crate) fn normalize(path: &str) -> Result<NormalPath<'_>, PathError> {
    let bytes = path.as_bytes();
    let mut needs_work = false;
    let mut previous = 0u8;
    for &b in bytes {
        match b {
            0 => return Err(PathError::Nul),
            b'\\' => return Err(PathError::Backslash),
            b if b < 0x20 || b == 0x7f => return Err(PathError::Control),
            b'%' => needs_work = true,
            b'.' if previous == b'/' => needs_work = true,
            _ => {}
        }
        previous = b;
    }
    if !needs_work {
        return Ok(NormalPath { path: Cow::Borrowed(path), has_encoded_slash: false });
    }
    // Percent-encodings first: `%2e%2e` must be seen as `..` by the dot-segment removal.
    let mut decoded = String::with_capacity(path.len());
    let mut has_encoded_slash = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            // Copied as text up to the next '%': a raw non-ASCII character stays as written
            // (`i` is always at a character boundary: '%' and hex digits are ASCII).
            let end = path[i..].find('%').map_or(path.len(), |n| i + n);
            decoded.push_str(&path[i..end]);
            i = end;
            continue;
        }
        let (Some(hi), Some(lo)) = (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
        else {
            return Err(PathError::BadEncoding);
        };
        match hi * 16 + lo {
            0 => return Err(PathError::Nul),
            b'\\' => return Err(PathError::Backslash),
            b'/' => {
                has_encoded_slash = true;
                decoded.push_str("%2F");
            }
            v if is_unreserved(v) => decoded.push(v as char),
            v => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                decoded.push('%');
                decoded.push(HEX[usize::from(v >> 4)] as char);
                decoded.push(HEX[usize::from(v & 15)] as char);
            }
        }
        i += 3;
    }
    let path = remove_dot_segments(&decoded)?;
    Ok(NormalPath { path: Cow::Owned(path), has_encoded_slash })
}

/// RFC 3986 section 5.2.4 over an absolute path, refusing a `..` that would climb above the
/// root (the RFC silently stops there; a request that tries is not one a client makes).
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = path.split('/').peekable();
    // An absolute path starts with "/": the first piece is empty.
    let leading = parts.next();
    if leading != Some("") {
        segments.push(leading.unwrap_or(""));
    }
    let mut trailing_slash = false;
    while let Some(part) = parts.next() {
        let last = parts.peek().is_none();
        match part {
            "." => trailing_slash = last,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = last;
            }
            other => {
                segments.push(other);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Whether route prefix `prefix` matches `path` by whole segments: `/api` matches `/api`,
/// `/api/` and `/api/x` but not `/apix`; a prefix ending in `/` matches what is below it.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(|n| n.path.into_owned())
    }

    #[test]
    fn clean_paths_are_borrowed_unchanged() {
        for p in ["/", "/api/x", "/a//b", "/ws?x"] {
            assert!(matches!(normalize(p).expect("clean").path, Cow::Borrowed(_)), "{p}");
        }
    }

    #[test]
    fn dot_segments_are_removed_and_a_climb_above_the_root_is_refused() {
        assert_eq!(norm("/api/../admin"), Ok("/admin".into()));
        assert_eq!(norm("/api/./x/"), Ok("/api/x/".into()));
        assert_eq!(norm("/api/x/.."), Ok("/api/".into()));
        assert_eq!(norm("/api/x/."), Ok("/api/x/".into()));
        assert_eq!(norm("/a/b/../../c"), Ok("/c".into()));
        assert_eq!(norm("/.."), Err(PathError::AboveRoot));
        assert_eq!(norm("/api/../../etc/passwd"), Err(PathError::AboveRoot));
        assert_eq!(norm("/..."), Ok("/...".into()), "three dots are a name");
        assert_eq!(norm("/a/..b"), Ok("/a/..b".into()));
    }

    #[test]
    fn encoded_unreserved_characters_are_decoded_first() {
        assert_eq!(norm("/api/%2e%2e/admin"), Ok("/admin".into()));
        assert_eq!(norm("/api/%2E%2E/admin"), Ok("/admin".into()));
        assert_eq!(norm("/%7Euser/%41"), Ok("/~user/A".into()));
        assert_eq!(norm("/a%20b/%c3%a9"), Ok("/a%20b/%C3%A9".into()), "others stay encoded, in upper case");
        assert_eq!(norm("/%2e%2e/x"), Err(PathError::AboveRoot));
    }

    #[test]
    fn raw_non_ascii_characters_are_kept_as_written() {
        assert_eq!(norm("/é/./x"), Ok("/é/x".into()));
        assert_eq!(norm("/日本/../%41"), Ok("/A".into()));
        assert_eq!(norm("/é%20/."), Ok("/é%20/".into()));
    }

    #[test]
    fn slashes_backslashes_nul_and_controls_are_reported() {
        let n = normalize("/files/a%2fb").expect("reported, not refused");
        assert_eq!((n.path.as_ref(), n.has_encoded_slash), ("/files/a%2Fb", true));
        assert_eq!(norm("/a\\b"), Err(PathError::Backslash));
        assert_eq!(norm("/a%5Cb"), Err(PathError::Backslash));
        assert_eq!(norm("/a%00b"), Err(PathError::Nul));
        assert_eq!(norm("/a\u{0}b"), Err(PathError::Nul));
        assert_eq!(norm("/a\tb"), Err(PathError::Control));
        assert_eq!(norm("/a%2"), Err(PathError::BadEncoding));
        assert_eq!(norm("/a%zz"), Err(PathError::BadEncoding));
        assert_eq!(norm("/a%0Ab"), Ok("/a%0Ab".into()), "an encoded newline is data, not framing");
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(!prefix_matches("/api", "/ap"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(!prefix_matches("/api/", "/api"));
        assert!(prefix_matches("/", "/anything"));
    }
}
