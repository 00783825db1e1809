//! `path`: request-path normalisation ([`crate::proxy::path::normalize`]) and route-prefix
//! matching ([`crate::proxy::path::prefix_matches`]).
//!
//! Input: `PATH` or `PATH\nPREFIX` (lossy UTF-8; a raw newline is refused by the normaliser
//! anyway, so it costs no path).
//!
//! Invariants, for a path starting with `/`:
//! - the result equals a reference written from the RFC 3986 text over bytes (decode the
//!   unreserved percent-encodings, upper-case the others, then the section 5.2.4 buffer
//!   algorithm), and it refuses exactly when that reference climbs above the root or meets a
//!   refused byte;
//! - the result starts with `/`, has no `.` or `..` segment, no encoded unreserved character
//!   and no lower-case percent-encoding, and an encoded slash is reported whenever the
//!   request had one (even in a segment a `..` removed);
//! - normalising it again gives it back unchanged (idempotent);
//! - a path `http` accepts as a request target stays one after normalising (the proxy rewrites
//!   the request URI with it);
//! - `prefix_matches` agrees with a whole-segment comparison.

use crate::proxy::path::{PathError, normalize, prefix_matches};

/// See the module doc.
pub fn path(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (path, prefix) = match text.split_once('\n') {
        Some((path, prefix)) => (path, Some(prefix)),
        None => (text.as_ref(), None),
    };
    let result = normalize(path);
    let Ok(normal) = &result else {
        if path.starts_with('/') {
            let expected = reference(path.as_bytes()).map(|_| ());
            assert_eq!(result.clone().map(|_| ()), expected, "refusal of {path:?} differs from the reference");
        }
        check_prefix(prefix.unwrap_or("/"), path);
        return;
    };
    let out: &str = &normal.path;
    if path.starts_with('/') {
        let expected = reference(path.as_bytes());
        assert_eq!(
            Ok((out.as_bytes(), normal.has_encoded_slash)),
            expected.as_ref().map(|(p, s)| (p.as_slice(), *s)),
            "normalising {path:?} differs from the reference"
        );
        assert!(out.starts_with('/'), "{path:?} normalised to {out:?}, which is not absolute");
        for segment in out.split('/') {
            assert!(segment != "." && segment != "..", "{path:?} normalised to {out:?} with a dot segment");
        }
        check_encodings(path, out);
        // Reported when the request had one, even in a segment a `..` removed: a backend that
        // decodes `%2F` before removing dot segments reads such a path differently.
        assert!(normal.has_encoded_slash || !out.contains("%2F"), "{path:?}: an encoded slash went unreported");
        let again = normalize(out).unwrap_or_else(|e| panic!("{path:?} normalised to {out:?}, which is refused: {e}"));
        assert_eq!(again.path, out, "normalising {path:?} is not idempotent");
        assert_eq!(again.has_encoded_slash, out.contains("%2F"));
        if !path.contains(['?', '#']) && http::uri::PathAndQuery::try_from(path).is_ok() {
            let parsed = http::uri::PathAndQuery::try_from(out)
                .unwrap_or_else(|e| panic!("{path:?} normalised to {out:?}, which is not a request target: {e}"));
            assert_eq!(parsed.path(), out);
        }
    }
    check_prefix(prefix.unwrap_or("/api"), out);
    check_prefix(out, out);
}

/// Every `%` starts an upper-case encoding of a character that must stay encoded.
fn check_encodings(path: &str, out: &str) {
    let bytes = out.as_bytes();
    for (i, _) in out.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3).unwrap_or_else(|| panic!("{path:?} -> {out:?}: a cut-off encoding"));
        assert!(
            hex.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
            "{path:?} -> {out:?}: encoding not in upper-case hex"
        );
        let value = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16)
            .unwrap_or_else(|_| panic!("{path:?} -> {out:?}: bad hex"));
        assert!(!is_unreserved(value), "{path:?} -> {out:?}: an unreserved character stayed encoded");
    }
}

/// `prefix_matches` against a statement of whole-segment matching: a prefix not ending in `/`
/// matches when its segments are the path's first segments; one ending in `/` matches paths
/// strictly below it.
fn check_prefix(prefix: &str, path: &str) {
    let path_segments: Vec<&str> = path.split('/').collect();
    let mut prefix_segments: Vec<&str> = prefix.split('/').collect();
    let expected = if prefix.ends_with('/') {
        prefix_segments.pop();
        path_segments.len() > prefix_segments.len() && path_segments.starts_with(&prefix_segments)
    } else {
        path_segments.starts_with(&prefix_segments)
    };
    assert_eq!(prefix_matches(prefix, path), expected, "prefix {prefix:?} against path {path:?}");
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The normal form of an absolute path by the letter of RFC 3986, over bytes: section 6.2.2.2
/// (decode unreserved characters; tether also writes the other encodings in upper case and
/// keeps `%2F` encoded but reports it), then the section 5.2.4 input/output buffer algorithm,
/// refusing a `..` that finds the output empty. Refused bytes are checked first, raw ones
/// before encoded ones, as the documented order of `PathError`s.
fn reference(path: &[u8]) -> Result<(Vec<u8>, bool), PathError> {
    for &b in path {
        match b {
            0 => return Err(PathError::Nul),
            b'\\' => return Err(PathError::Backslash),
            b if b < 0x20 || b == 0x7f => return Err(PathError::Control),
            _ => {}
        }
    }
    let mut decoded = Vec::with_capacity(path.len());
    let mut encoded_slash = false;
    let mut rest = path;
    while let Some((&b, tail)) = rest.split_first() {
        if b != b'%' {
            decoded.push(b);
            rest = tail;
            continue;
        }
        let hex = tail.get(..2).ok_or(PathError::BadEncoding)?;
        let text = std::str::from_utf8(hex).map_err(|_| PathError::BadEncoding)?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PathError::BadEncoding);
        }
        let value = u8::from_str_radix(text, 16).map_err(|_| PathError::BadEncoding)?;
        match value {
            0 => return Err(PathError::Nul),
            b'\\' => return Err(PathError::Backslash),
            b'/' => {
                encoded_slash = true;
                decoded.extend_from_slice(b"%2F");
            }
            v if is_unreserved(v) => decoded.push(v),
            v => decoded.extend_from_slice(format!("%{v:02X}").as_bytes()),
        }
        rest = &tail[2..];
    }
    Ok((remove_dot_segments(&decoded)?, encoded_slash))
}

/// RFC 3986 section 5.2.4, step by step as written.
fn remove_dot_segments(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut input = path.to_vec();
    let mut output: Vec<u8> = Vec::new();
    let pop = |output: &mut Vec<u8>| {
        if output.is_empty() {
            return Err(PathError::AboveRoot);
        }
        let cut = output.iter().rposition(|&b| b == b'/').unwrap_or(0);
        output.truncate(cut);
        Ok(())
    };
    while !input.is_empty() {
        if input.starts_with(b"../") {
            input.drain(..3);
        } else if input.starts_with(b"./") || input.starts_with(b"/./") {
            // Rule A drops a leading "./"; rule B turns "/./" into "/": both drop two bytes.
            input.drain(..2);
        } else if input == b"/." {
            input = b"/".to_vec();
        } else if input.starts_with(b"/../") {
            input.drain(..3);
            pop(&mut output)?;
        } else if input == b"/.." {
            input = b"/".to_vec();
            pop(&mut output)?;
        } else if input == b"." || input == b".." {
            input.clear();
        } else {
            let start = usize::from(input[0] == b'/');
            let end = input[start..].iter().position(|&b| b == b'/').map_or(input.len(), |i| start + i);
            output.extend(input.drain(..end));
        }
    }
    Ok(output)
}
