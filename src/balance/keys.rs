//! Affinity keys: reading the user's key from a request head.
//!
//! Owns the key sources (`header`, `cookie`, `query`, `path_segment`, `jwt_claim`) and the key
//! length cap.
//! Must not: verify tokens (JWT claims are read WITHOUT signature verification, for routing
//! only: a forged claim can only choose a backend, which any client can already do by sending
//! another key), or fail: anything unreadable simply yields no key from that source.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use http::header::HeaderName;

use super::cookie::cookie_pairs;
use crate::config::{KeySource, TokenSource};

/// Longest key used, in bytes. Longer keys are truncated (at a character boundary) rather than
/// ignored, so a user with a long id is still pinned consistently; the cost is that ids sharing
/// their first 256 bytes share a backend. The cap bounds hashing work and what a tunnel keeps
/// for rebalancing. [`truncate_key`] applies it everywhere a key is hashed.
pub(crate) const MAX_KEY_BYTES: usize = 256;

/// Longest bearer token decoded for a `jwt_claim` key; a longer one yields no key.
pub(crate) const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// `key` cut to at most [`MAX_KEY_BYTES`], at a UTF-8 character boundary.
pub(crate) fn truncate_key(key: &str) -> &str {
    &key[..key.floor_char_boundary(MAX_KEY_BYTES)]
}

/// What [`route`](super::route) reads from a request: where affinity keys come from.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The request's headers (keys, cookies).
    pub headers: &'a HeaderMap,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The request path, without the query (`path_segment` keys).
    pub path: &'a str,
    /// The claims of the token the route's verifier accepted, if any.
    pub verified: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// The first non-empty key among `sources`, in order (not yet truncated).
pub(crate) fn extract_key<'a>(facts: &RequestFacts<'a>, sources: &[KeySource]) -> Option<Cow<'a, str>> {
    let (headers, query, path) = (facts.headers, facts.query, facts.path);
    sources.iter().find_map(|source| match source {
        KeySource::Header(name) => header_value(headers, name).map(Cow::Borrowed),
        KeySource::Cookie(name) => cookie_value(headers, name).map(Cow::Borrowed),
        KeySource::Query(name) => query_value(query, name),
        KeySource::PathSegment(index) => path_segment(path, *index).map(Cow::Borrowed),
        KeySource::JwtClaim { from, claim } => {
            let token: Cow<'a, str> = match from {
                TokenSource::Header(name) => Cow::Borrowed(strip_bearer(header_value(headers, name)?)?),
                TokenSource::Cookie(name) => Cow::Borrowed(cookie_value(headers, name)?),
                TokenSource::Query(name) => query_value(query, name)?,
            };
            jwt_claim(&token, claim).map(Cow::Owned)
        }
        KeySource::VerifiedClaim(claim) => facts.verified.and_then(|claims| claim_value(claims.get(claim)?)),
    })
}

/// The first value of header `name`, if it is non-empty UTF-8.
fn header_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let value = std::str::from_utf8(headers.get(name)?.as_bytes()).ok()?;
    (!value.is_empty()).then_some(value)
}

/// The first non-empty, UTF-8 value of cookie `name` across all `Cookie` headers.
pub(crate) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookie_pairs(headers).find(|(n, v)| *n == name && !v.is_empty()).map(|(_, v)| v)
}

/// The first non-empty value of query parameter `name`, form-urlencoded decoded.
fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<Cow<'a, str>> {
    form_urlencoded::parse(query?.as_bytes()).find(|(n, v)| n == name && !v.is_empty()).map(|(_, v)| v)
}

/// Segment `index` (0-based) of `path`, non-empty: `/ws/a7/s1/xhr` has `ws`, `a7`, `s1`, `xhr`.
/// Empty segments (`//`, a trailing `/`) count, so the index means the same position whatever
/// the client's spelling of the rest; an empty one yields no key.
fn path_segment(path: &str, index: usize) -> Option<&str> {
    let segment = path.strip_prefix('/').unwrap_or(path).split('/').nth(index)?;
    (!segment.is_empty()).then_some(segment)
}

/// `Bearer <token>` -> `<token>` (scheme case-insensitive); a bare token is taken as is; a
/// value with another scheme (`Basic ...`) holds no token.
fn strip_bearer(value: &str) -> Option<&str> {
    const SCHEME: &str = "bearer ";
    match value.get(..SCHEME.len()) {
        Some(scheme) if scheme.eq_ignore_ascii_case(SCHEME) => Some(value[SCHEME.len()..].trim()),
        _ => (!value.trim().contains([' ', '\t'])).then_some(value),
    }
}

/// Claim `claim` of a compact JWS (`header.payload.signature`), decoded without verification:
/// a non-empty string claim, or a number rendered as its JSON text. Anything malformed (wrong
/// segment count, bad base64url, payload not a JSON object, claim missing or of another type)
/// yields `None`.
fn jwt_claim(token: &str, claim: &str) -> Option<String> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let mut segments = token.split('.');
    let (_header, payload, _signature) = (segments.next()?, segments.next()?, segments.next()?);
    if segments.next().is_some() || payload.is_empty() {
        return None;
    }
    // Tokens are specified unpadded; tolerate padding some encoders add anyway.
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes).ok()?;
    claim_value(claims.get(claim)?).map(Cow::into_owned)
}

/// A claim usable as a key: a non-empty string, or a number rendered as its JSON text.
fn claim_value(value: &serde_json::Value) -> Option<Cow<'_, str>> {
    match value {
        serde_json::Value::String(s) if !s.is_empty() => Some(Cow::Borrowed(s)),
        serde_json::Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http::header::{AUTHORIZATION, COOKIE};

    fn jwt(payload: &str) -> String {
        format!("{}.{}.c2ln", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), URL_SAFE_NO_PAD.encode(payload))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
                HeaderValue::from_str(value).expect("test header value"),
            );
        }
        map
    }

    fn all_sources() -> Vec<KeySource> {
        vec![
            KeySource::Header(HeaderName::from_static("x-user-id")),
            KeySource::Cookie("user_id".into()),
            KeySource::Query("user_id".into()),
            KeySource::JwtClaim { from: TokenSource::Header(AUTHORIZATION), claim: "sub".into() },
        ]
    }

    fn facts<'a>(headers: &'a HeaderMap, query: Option<&'a str>, path: &'a str) -> RequestFacts<'a> {
        RequestFacts { headers, query, path, verified: None }
    }

    fn key(h: &HeaderMap, q: Option<&str>) -> Option<String> {
        extract_key(&facts(h, q, "/"), &all_sources()).map(Cow::into_owned)
    }

    #[test]
    fn path_segments_are_counted_from_zero_after_the_leading_slash() {
        let server = [KeySource::PathSegment(1)];
        let key = |path: &str| extract_key(&facts(&HeaderMap::new(), None, path), &server).map(Cow::into_owned);
        assert_eq!(key("/ws/123/abc/xhr_streaming").as_deref(), Some("123"));
        assert_eq!(key("/ws/123/abc/xhr_send").as_deref(), Some("123"));
        assert_eq!(key("/ws/123").as_deref(), Some("123"));
        assert_eq!(key("ws/123").as_deref(), Some("123"));
        // Missing or empty segments yield no key, so the next source (or the fallback) decides.
        assert_eq!(key("/ws"), None);
        assert_eq!(key("/"), None);
        assert_eq!(key("/ws//abc/xhr"), None);
        assert_eq!(path_segment("/ws/123/abc/xhr", 0), Some("ws"));
        assert_eq!(path_segment("/ws/123/abc/xhr", 3), Some("xhr"));
        assert_eq!(path_segment("/ws/123/abc/xhr", 4), None);
        // A later source still answers when the segment is absent.
        let sources = [KeySource::PathSegment(1), KeySource::Query("user".into())];
        let k = extract_key(&facts(&HeaderMap::new(), Some("user=ann"), "/ws"), &sources).map(Cow::into_owned);
        assert_eq!(k.as_deref(), Some("ann"));
    }

    #[test]
    fn each_source_yields_its_value() {
        assert_eq!(key(&headers(&[("x-user-id", "alice")]), None).as_deref(), Some("alice"));
        assert_eq!(key(&headers(&[("cookie", "a=1; user_id=bob")]), None).as_deref(), Some("bob"));
        assert_eq!(key(&HeaderMap::new(), Some("x=1&user_id=carol%20d+e")).as_deref(), Some("carol d e"));
        let bearer = format!("Bearer {}", jwt(r#"{"sub":"dave"}"#));
        assert_eq!(key(&headers(&[("authorization", &bearer)]), None).as_deref(), Some("dave"));
        assert_eq!(key(&HeaderMap::new(), None), None);
    }

    #[test]
    fn sources_are_tried_in_order_and_empty_values_are_skipped() {
        let bearer = format!("Bearer {}", jwt(r#"{"sub":"dave"}"#));
        let all = headers(&[("x-user-id", "alice"), ("cookie", "user_id=bob"), ("authorization", &bearer)]);
        assert_eq!(key(&all, Some("user_id=carol")).as_deref(), Some("alice"));
        let no_header = headers(&[("x-user-id", ""), ("cookie", "user_id=bob")]);
        assert_eq!(key(&no_header, Some("user_id=carol")).as_deref(), Some("bob"));
        let empty_cookie = headers(&[("cookie", "user_id=; user_id=")]);
        assert_eq!(key(&empty_cookie, Some("user_id=&user_id=carol")).as_deref(), Some("carol"));
        let only_jwt = headers(&[("cookie", "user_id=\"\""), ("authorization", &bearer)]);
        assert_eq!(key(&only_jwt, Some("user_id=")).as_deref(), Some("dave"));
    }

    #[test]
    fn the_first_header_value_is_used() {
        let h = headers(&[("x-user-id", "first"), ("x-user-id", "second")]);
        assert_eq!(key(&h, None).as_deref(), Some("first"));
    }

    #[test]
    fn bearer_prefix_is_case_insensitive_and_optional() {
        let token = jwt(r#"{"sub":"erin"}"#);
        for value in [format!("Bearer {token}"), format!("bearer {token}"), format!("BEARER   {token}"), token.clone()]
        {
            let h = headers(&[("authorization", &value)]);
            assert_eq!(key(&h, None).as_deref(), Some("erin"), "{value}");
        }
        let other_scheme = headers(&[("authorization", &format!("Basic {token}"))]);
        assert_eq!(key(&other_scheme, None), None);
    }

    #[test]
    fn jwt_claims_can_come_from_cookies_and_queries() {
        let token = jwt(r#"{"uid":"frank"}"#);
        let from_cookie = [KeySource::JwtClaim { from: TokenSource::Cookie("session".into()), claim: "uid".into() }];
        let h = headers(&[("cookie", &format!("session={token}"))]);
        assert_eq!(extract_key(&facts(&h, None, "/"), &from_cookie).as_deref(), Some("frank"));
        let from_query = [KeySource::JwtClaim { from: TokenSource::Query("access_token".into()), claim: "uid".into() }];
        let q = format!("access_token={token}");
        assert_eq!(extract_key(&facts(&HeaderMap::new(), Some(&q), "/"), &from_query).as_deref(), Some("frank"));
    }

    #[test]
    fn numeric_claims_render_as_json_text_and_other_types_yield_nothing() {
        assert_eq!(jwt_claim(&jwt(r#"{"sub":42}"#), "sub").as_deref(), Some("42"));
        assert_eq!(jwt_claim(&jwt(r#"{"sub":-1.5}"#), "sub").as_deref(), Some("-1.5"));
        for payload in [r#"{"sub":true}"#, r#"{"sub":null}"#, r#"{"sub":["a"]}"#, r#"{"sub":{"a":1}}"#, r#"{"sub":""}"#]
        {
            assert_eq!(jwt_claim(&jwt(payload), "sub"), None, "{payload}");
        }
    }

    #[test]
    fn malformed_tokens_yield_no_key() {
        let good_payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"x"}"#);
        let not_object = URL_SAFE_NO_PAD.encode(b"[1,2]");
        let not_json = URL_SAFE_NO_PAD.encode(b"{sub:");
        let cases = [
            String::new(),
            "abc".into(),
            format!("h.{good_payload}"),
            format!("h.{good_payload}.s.extra"),
            "h..s".into(),
            "h.!!!notbase64!!!.s".into(),
            format!("h.{not_object}.s"),
            format!("h.{not_json}.s"),
            jwt(r#"{"other":"x"}"#),
            format!("h.{}.s", "A".repeat(MAX_TOKEN_BYTES)),
        ];
        for token in &cases {
            assert_eq!(jwt_claim(token, "sub"), None, "{token:.60}");
        }
        // Padding is tolerated.
        assert_eq!(jwt_claim(&format!("h.{good_payload}==.s"), "sub").as_deref(), Some("x"));
    }

    #[test]
    fn non_utf8_header_values_yield_no_key_from_that_source() {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", HeaderValue::from_bytes(b"\xff\xfe").expect("obs-text is allowed"));
        h.insert(COOKIE, HeaderValue::from_static("user_id=bob"));
        assert_eq!(key(&h, None).as_deref(), Some("bob"));
    }

    #[test]
    fn long_keys_are_truncated_at_a_character_boundary() {
        let ascii = "a".repeat(300);
        assert_eq!(truncate_key(&ascii).len(), MAX_KEY_BYTES);
        // 'é' is two bytes: 255 'a' + 'é' would end at 257, so the cut falls before it.
        let tricky = format!("{}é{}", "a".repeat(255), "b".repeat(10));
        assert_eq!(truncate_key(&tricky), "a".repeat(255));
        assert_eq!(truncate_key("short"), "short");
    }
}
