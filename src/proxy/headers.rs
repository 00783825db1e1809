//! Header rules for forwarding, as pure functions over `http` types.
//!
//! Owns: hop-by-hop removal (RFC 9110 section 7.6.1), joining HTTP/2 cookie crumbs, WebSocket
//! upgrade detection, a route's header rules, and the request-shape checks that keep a backend
//! from ever seeing an ambiguous request. Must not: do I/O or decide where a request goes.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Version};

use crate::config::HeaderRules;

/// Headers that describe one hop and never travel further (RFC 9110 7.6.1), plus the de-facto
/// `Proxy-Connection` and `Keep-Alive`.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// True for an HTTP/1.1 `GET` asking to switch to WebSocket (RFC 6455 4.1). Only this upgrade
/// is ever tunnelled; any other `Upgrade` (such as `h2c`) is stripped as a hop-by-hop header.
pub(crate) fn wants_websocket<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.method() == Method::GET
        && connection_has_token(req.headers(), "upgrade")
        && req.headers().get_all(header::UPGRADE).iter().any(|v| list_has_token(v, "websocket"))
}

/// True if a `101 Switching Protocols` response confirms the WebSocket upgrade.
pub(crate) fn confirms_websocket(headers: &HeaderMap) -> bool {
    headers.get_all(header::UPGRADE).iter().any(|v| list_has_token(v, "websocket"))
}

fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| list_has_token(v, token))
}

fn list_has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))).unwrap_or(false)
}

/// Remove hop-by-hop headers, including every header named in `Connection`.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Collect the names listed in Connection first: removing Connection loses them.
    let mut listed: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        if let Ok(s) = value.to_str() {
            for token in s.split(',') {
                if let Ok(name) = HeaderName::from_bytes(token.trim().as_bytes()) {
                    listed.push(name);
                }
            }
        }
    }
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Put back the two headers a WebSocket upgrade needs on the next hop, after
/// [`remove_hop_by_hop`] took them out.
pub(crate) fn set_websocket_upgrade(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// A route's `request_headers` or `response_headers`: removals first, then every `set`
/// replaces the header's copies.
pub(crate) fn apply_rules(headers: &mut HeaderMap, rules: &HeaderRules) {
    for name in &rules.remove {
        headers.remove(name);
    }
    for (name, value) in &rules.set {
        headers.insert(name.clone(), value.clone());
    }
}

/// What the connection saw of a request head's framing on the wire, before hyper normalised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Clean,
    /// Both Content-Length and Transfer-Encoding (hyper keeps only the latter).
    LengthConflict,
}

/// Why a request is refused before it reaches any backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Malformed {
    #[error("conflicting Content-Length and Transfer-Encoding")]
    LengthConflict,
    #[error("invalid Content-Length")]
    BadContentLength,
    #[error("invalid Host header")]
    BadHost,
    #[error("several Host headers")]
    ManyHosts,
    #[error("an HTTP/1.1 request needs a Host header")]
    MissingHost,
    #[error("a WebSocket upgrade request has no body")]
    UpgradeWithBody,
    #[error("{0}")]
    Path(#[from] super::path::PathError),
}

/// Checks hyper does not make for us, and the host the request names (lowercase, without
/// port; None when it names none), which routing uses. hyper already rejects differing
/// Content-Lengths and a non-chunked Transfer-Encoding; it *accepts* Content-Length together
/// with Transfer-Encoding (dropping the former), which [`crate::server::conn`] detects on the
/// wire and reports here as `saw_length_conflict`.
pub(crate) fn check_request<B>(req: &Request<B>, framing: Framing) -> Result<Option<String>, Malformed> {
    if framing == Framing::LengthConflict {
        return Err(Malformed::LengthConflict);
    }
    let headers = req.headers();
    if headers.contains_key(header::TRANSFER_ENCODING) && headers.contains_key(header::CONTENT_LENGTH) {
        return Err(Malformed::LengthConflict);
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        let valid = |v: &HeaderValue| {
            let b = v.as_bytes();
            !b.is_empty() && b.len() <= 19 && b.iter().all(u8::is_ascii_digit)
        };
        if !valid(first) || lengths.any(|v| v != first) {
            return Err(Malformed::BadContentLength);
        }
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(Malformed::ManyHosts);
    }
    if host_header.is_none() && req.uri().authority().is_none() && req.version() == Version::HTTP_11 {
        // RFC 9112 3.2: a server must answer 400 to an HTTP/1.1 request without Host.
        return Err(Malformed::MissingHost);
    }
    if wants_websocket(req)
        && (headers.contains_key(header::TRANSFER_ENCODING)
            || headers.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0"))
    {
        // A body before the 101 would be read by the backend as the first WebSocket bytes.
        return Err(Malformed::UpgradeWithBody);
    }
    let named = host_header.map(|h| host_name(h.as_bytes()).ok_or(Malformed::BadHost)).transpose()?;
    // The URI authority (HTTP/2, absolute-form) takes precedence over the Host header.
    match req.uri().authority() {
        Some(authority) => host_name(authority.as_str().as_bytes()).map(Some).ok_or(Malformed::BadHost),
        None => Ok(named),
    }
}

/// The host part of a Host header or URI authority (`name`, `name:port`, `[v6]:port`),
/// lowercased and without a trailing dot (`example.com.` is `example.com`), or None if it is
/// not a plausible host.
pub(crate) fn host_name(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    if s.is_empty() {
        return None;
    }
    let host = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        &s[..end + 2]
    } else {
        match s.rsplit_once(':') {
            Some((h, port)) if is_port(port) => h,
            Some(_) => return None,
            None => s,
        }
    };
    // Brackets and colons belong to an IPv6 literal only: `::1` or `a:b:80` names no host.
    let bracketed = host.starts_with('[');
    let ok = !host.is_empty()
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'.' | b'_')
                || (bracketed && matches!(b, b'[' | b']' | b':'))
        });
    let host = host.strip_suffix('.').filter(|h| !h.is_empty() && !h.ends_with(']')).unwrap_or(host);
    // Only the root label's one dot goes: `example.com..` (an empty label) names no host.
    (ok && !host.ends_with('.')).then(|| host.to_ascii_lowercase())
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Headers a request must not carry to the backend beyond the hop-by-hop set: `Expect` was
/// already answered by this hop (hyper sends `100 Continue` when the body is first read).
pub(crate) fn remove_request_only(headers: &mut HeaderMap) {
    headers.remove(header::EXPECT);
}

/// Join several `Cookie` fields into one, separated by `"; "`. HTTP/2 clients may split cookies
/// into separate fields ("crumbs"), which must be joined before the request goes on over
/// HTTP/1.1 (RFC 9113 8.2.3): HTTP/1.1 allows one `Cookie` header (RFC 6265 5.4), and many
/// backends read only the first.
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.nth(1).is_none() {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if value.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    headers.remove(header::COOKIE);
    // Joined valid values with "; " form a valid value; if that ever failed, dropping the
    // cookies is safer than forwarding a header the backend might misparse.
    if let (false, Ok(value)) = (joined.is_empty(), HeaderValue::from_bytes(&joined)) {
        headers.insert(header::COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method("GET").uri("/").version(Version::HTTP_11);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn websocket_upgrade_is_recognised_with_token_lists_and_case() {
        assert!(wants_websocket(&req(&[("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")])));
        assert!(!wants_websocket(&req(&[("connection", "upgrade"), ("upgrade", "h2c")])));
        assert!(!wants_websocket(&req(&[("upgrade", "websocket")])));
        let mut post = req(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        *post.method_mut() = Method::POST;
        assert!(!wants_websocket(&post));
    }

    #[test]
    fn cookie_crumbs_are_joined_into_one_header_and_a_single_one_is_untouched() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static(""));
        h.append(header::COOKIE, HeaderValue::from_static("b=2; c=3"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        join_cookies(&mut h);
        let cookies: Vec<&HeaderValue> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
        assert_eq!(h["x-kept"], "yes");

        let mut one = HeaderMap::new();
        one.insert(header::COOKIE, HeaderValue::from_static("a=1;b=2"));
        join_cookies(&mut one);
        assert_eq!(one[header::COOKIE], "a=1;b=2");

        let mut empty = HeaderMap::new();
        empty.append(header::COOKIE, HeaderValue::from_static(""));
        empty.append(header::COOKIE, HeaderValue::from_static(""));
        join_cookies(&mut empty);
        assert!(empty.get(header::COOKIE).is_none());
    }

    #[test]
    fn hop_by_hop_headers_and_connection_listed_ones_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn ambiguous_framing_and_hosts_are_malformed() {
        assert_eq!(check_request(&req(&[]), Framing::LengthConflict), Err(Malformed::LengthConflict));
        assert_eq!(
            check_request(&req(&[("content-length", "5"), ("transfer-encoding", "chunked")]), Framing::Clean),
            Err(Malformed::LengthConflict)
        );
        assert_eq!(check_request(&req(&[("content-length", "+5")]), Framing::Clean), Err(Malformed::BadContentLength));
        assert_eq!(check_request(&req(&[("host", "a"), ("host", "b")]), Framing::Clean), Err(Malformed::ManyHosts));
        assert_eq!(check_request(&req(&[("host", "a b")]), Framing::Clean), Err(Malformed::BadHost));
        assert_eq!(check_request(&req(&[("host", "a:99x")]), Framing::Clean), Err(Malformed::BadHost));
        assert_eq!(
            check_request(&req(&[("host", "App.Test:8080"), ("content-length", "0")]), Framing::Clean),
            Ok(Some("app.test".into()))
        );
        assert_eq!(check_request(&req(&[]), Framing::Clean), Err(Malformed::MissingHost));
        let mut old = req(&[]);
        *old.version_mut() = Version::HTTP_10;
        assert_eq!(check_request(&old, Framing::Clean), Ok(None), "HTTP/1.0 may name no host");
        let upgrade = [("host", "a"), ("connection", "upgrade"), ("upgrade", "websocket")];
        assert_eq!(check_request(&req(&upgrade), Framing::Clean), Ok(Some("a".into())));
        for body in [("content-length", "5"), ("transfer-encoding", "chunked")] {
            let mut with_body = upgrade.to_vec();
            with_body.push(body);
            assert_eq!(check_request(&req(&with_body), Framing::Clean), Err(Malformed::UpgradeWithBody), "{body:?}");
        }
        let mut absolute = req(&[("host", "ignored.test")]);
        *absolute.uri_mut() = "http://Api.Test:8443/x".parse().unwrap();
        assert_eq!(check_request(&absolute, Framing::Clean), Ok(Some("api.test".into())));
    }

    #[test]
    fn host_names_are_normalised() {
        assert_eq!(host_name(b"Example.COM:443").as_deref(), Some("example.com"));
        assert_eq!(host_name(b"[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(host_name(b"localhost").as_deref(), Some("localhost"));
        assert_eq!(host_name(b"Example.com.:8080").as_deref(), Some("example.com"), "the root label's dot");
        assert_eq!(host_name(b"").as_deref(), None);
        assert_eq!(host_name(b"[::1]x").as_deref(), None);
        assert_eq!(host_name(b"example.com..").as_deref(), None, "an empty label");
        assert_eq!(host_name(b".").as_deref(), None);
        assert_eq!(host_name(b"::1").as_deref(), None, "an IPv6 literal needs brackets");
        assert_eq!(host_name(b"a:b:80").as_deref(), None);
        assert_eq!(host_name(b"a]b").as_deref(), None);
    }
}
