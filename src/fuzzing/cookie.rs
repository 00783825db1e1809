//! `cookie`: the sticky cookie's codec ([`CookieKey`] `encode`/`decode`) and everything that
//! reads `Cookie` headers: [`crate::balance::cookie_value`], the cookie step of
//! [`crate::balance::route`], and [`AffinityPolicy::strip_cookie`].
//!
//! Input: a mode byte, then per mode
//! - 0: a cookie value, decoded as is;
//! - 1: a value signed here (a flag, an id or raw tag, an optional expiry) and a mutation of it
//!   (position, operation, character);
//! - 2: an optional signed cookie for one of the members (flag, member, position), then
//!   `Cookie` header values separated by LF.
//!
//! Invariants:
//! - a value that decodes is the one encoding of its tag and expiry (re-encoding gives the
//!   same text), so no second spelling of a cookie verifies;
//! - a signed value decodes to its tag until its expiry and not from then on; any other text
//!   (a changed, dropped or added character) does not decode;
//! - the pairs the readers see are those of a plain reading of RFC 6265 section 5.4 (split at
//!   `;`, name and value around the first `=`, trimmed, one pair of quotes dropped);
//! - routing: a non-empty key cookie routes by key; otherwise the first sticky cookie that
//!   decodes pins its member if that member takes sessions and re-pins if not; no valid
//!   sticky cookie means the fallback; a candidate always takes sessions, and the cookie a
//!   response would set decodes to the member that served it;
//! - stripping leaves no sticky cookie in any header, keeps headers without one byte for
//!   byte and in order, and keeps every other pair of the headers it rewrites.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{COOKIE, HeaderMap, HeaderName, HeaderValue};
use rand::SeedableRng as _;
use rand::rngs::StdRng;

use super::input::Input;
use crate::balance::{
    AffinityPolicy, Availability, BackendSet, CookieKey, Member, Reason, RequestFacts, cookie_value, route,
};
use crate::config::{AffinityConfig, CookieConfig, Fallback, HashConfig, KeySource, SameSite, SecureMode};

const COOKIE_NAME: &str = "TETHER_AFFINITY";
const KEY_COOKIE: &str = "user_id";
/// Members and whether each takes new sessions; the last id is in no set (a foreign pin).
const MEMBERS: [(&str, Availability); 3] =
    [("app-1", Availability::Active), ("app-2", Availability::Active), ("app-3", Availability::Down)];
const FOREIGN_ID: &str = "app-9";
const NOW_SECS: u64 = 1_700_000_000;

struct Fixture {
    policy: AffinityPolicy,
    set: BackendSet,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = CookieKey::from_bytes(&[0x5A; 32]).expect("32 bytes is a valid cookie key");
        let hash = HashConfig { vnodes: 16, balance_factor: 0.0 };
        let cookie = CookieConfig {
            name: COOKIE_NAME.into(),
            ttl: Duration::from_secs(3600),
            secure: SecureMode::Auto,
            http_only: true,
            same_site: SameSite::Lax,
            path: "/".into(),
            domain: None,
            key_env: None,
        };
        let config = AffinityConfig {
            keys: vec![KeySource::Cookie(KEY_COOKIE.into())],
            hash: hash.clone(),
            cookie: Some(cookie),
            fallback: Fallback::LeastConnections,
        };
        let policy = AffinityPolicy::new(&config, key).expect("a valid fixed policy");
        let members = MEMBERS.iter().map(|(id, state)| Member::new(*id, 1, *state)).collect();
        let set = BackendSet::new(members, &hash, policy.cookie_key());
        Fixture { policy, set }
    })
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

/// See the module doc.
pub fn cookie(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 3 {
        0 => check_decoded(input.rest(), NOW_SECS),
        1 => signed(input),
        _ => headers(input),
    }
}

/// If `value` decodes, it is the canonical encoding of what it decodes to.
fn check_decoded(value: &[u8], now_secs: u64) {
    let key = fixture().policy.cookie_key();
    let Some(tag) = key.decode(value, now_secs) else { return };
    let raw = URL_SAFE_NO_PAD.decode(value).expect("a value that decodes is base64url");
    // Kind 2 carries an expiry after the 12-byte tag.
    let expiry = (raw[0] == 2).then(|| u64::from_be_bytes(raw[13..21].try_into().expect("8 bytes")));
    assert_eq!(key.encode(&tag, expiry).as_bytes(), value, "a cookie value that is not the canonical encoding decodes");
}

fn signed(mut input: Input<'_>) {
    let key = fixture().policy.cookie_key();
    let flags = input.byte();
    let tag = if flags & 1 == 0 {
        let len = usize::from(input.byte() % 32);
        key.tag(&String::from_utf8_lossy(input.bytes(len)))
    } else {
        let mut tag = [0u8; 12];
        tag.iter_mut().for_each(|b| *b = input.byte());
        tag
    };
    let expiry = (flags & 2 != 0).then(|| input.u64());
    let value = key.encode(&tag, expiry);
    assert_eq!(value.len(), if expiry.is_some() { 50 } else { 39 });
    let valid_at = |now: u64| expiry.is_none_or(|at| now < at);
    for now in [0, NOW_SECS, expiry.unwrap_or(0).saturating_sub(1), expiry.unwrap_or(0), u64::MAX] {
        let expected = valid_at(now).then_some(tag);
        assert_eq!(key.decode(value.as_bytes(), now), expected, "a signed value at {now}");
    }
    check_decoded(value.as_bytes(), 0);

    let mut mutated = value.clone().into_bytes();
    let at = usize::from(input.u16()) % (mutated.len() + 1);
    let c = input.byte();
    match input.byte() % 4 {
        0 if at < mutated.len() => mutated[at] = c,
        1 if at < mutated.len() => {
            mutated.remove(at);
        }
        2 => mutated.insert(at, c),
        _ => mutated.truncate(at),
    }
    if mutated != value.as_bytes() {
        assert_eq!(
            key.decode(&mutated, 0),
            None,
            "{value:?} changed to {:?} still decodes",
            String::from_utf8_lossy(&mutated)
        );
    }
}

fn headers(mut input: Input<'_>) {
    let Fixture { policy, set } = fixture();
    let flags = input.byte();
    let member = usize::from(input.byte() % 4);
    let position = usize::from(input.byte());
    let mut values: Vec<HeaderValue> = Vec::new();
    for line in input.rest().split(|&b| b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            values.push(value);
        }
    }
    if flags & 1 == 1 {
        let id = MEMBERS.get(member).map_or(FOREIGN_ID, |m| m.0);
        let key = policy.cookie_key();
        let expiry = (flags & 2 != 0).then_some(NOW_SECS + 60);
        let pin = format!("{COOKIE_NAME}={}", key.encode(&key.tag(id), expiry));
        let value = HeaderValue::from_str(&pin).expect("a signed cookie is a header value");
        values.insert(position % (values.len() + 1), value);
    }
    let mut headers = HeaderMap::new();
    headers.append(HeaderName::from_static("x-other"), HeaderValue::from_static("kept"));
    for value in &values {
        headers.append(COOKIE, value.clone());
    }

    for name in [KEY_COOKIE, COOKIE_NAME, "a"] {
        let expected = reference_pairs(&headers).find(|(n, v)| n == name && !v.is_empty()).map(|(_, v)| v);
        assert_eq!(cookie_value(&headers, name).map(str::to_owned), expected, "cookie {name:?}");
    }
    check_route(policy, set, &headers, u64::from(flags));
    check_strip(policy, &headers);
}

/// `Cookie` pairs read by the letter of RFC 6265 section 5.4, leniently, as documented by
/// `cookie_pairs`.
fn reference_pairs(headers: &HeaderMap) -> impl Iterator<Item = (String, String)> + '_ {
    headers.get_all(COOKIE).iter().flat_map(|value| pairs_of(value.as_bytes()))
}

fn pairs_of(value: &[u8]) -> Vec<(String, String)> {
    let Ok(text) = std::str::from_utf8(value) else { return Vec::new() };
    text.split(';')
        .filter_map(|piece| {
            let (name, value) = piece.trim().split_once('=')?;
            let (name, value) = (name.trim(), value.trim());
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
            (!name.is_empty()).then(|| (name.to_owned(), value.to_owned()))
        })
        .collect()
}

fn check_route(policy: &AffinityPolicy, set: &BackendSet, headers: &HeaderMap, seed: u64) {
    let key = policy.cookie_key();
    let facts = RequestFacts { headers, query: None, path: "/", verified: None };
    let mut decision = route(&facts, policy, set, now(), &mut StdRng::seed_from_u64(seed));
    let user = reference_pairs(headers).find(|(n, v)| n == KEY_COOKIE && !v.is_empty()).map(|(_, v)| v);
    let pinned = reference_pairs(headers)
        .filter(|(n, _)| n == COOKIE_NAME)
        .find_map(|(_, v)| key.decode(v.as_bytes(), NOW_SECS))
        .map(|tag| MEMBERS.iter().position(|(id, _)| key.tag(id) == tag));
    let first = decision.next_candidate(set).map(|(i, _guard)| i);
    match (&user, pinned) {
        (Some(user), _) => {
            assert_eq!(decision.reason(), Reason::Key, "a request with a key cookie");
            let truncated = &user[..user.floor_char_boundary(256)];
            assert_eq!(decision.shared_key().as_deref(), Some(truncated), "the key routed by");
        }
        (None, Some(Some(member))) if MEMBERS[member].1 == Availability::Active => {
            assert_eq!(decision.reason(), Reason::Cookie, "a valid pin to a member taking sessions");
            assert_eq!(first, Some(member), "a pinned request goes to its member first");
        }
        (None, Some(_)) => assert_eq!(decision.reason(), Reason::Repin, "a valid pin to a member that cannot serve"),
        (None, None) => assert_eq!(decision.reason(), Reason::Fallback, "no key and no valid pin"),
    }
    let served = first.expect("two members take sessions, so there is a candidate");
    assert_eq!(MEMBERS[served].1, Availability::Active, "a candidate that does not take sessions");
    let set_cookie = decision.set_cookie(policy, set, served, now(), false);
    match decision.reason() {
        Reason::Key | Reason::Cookie => assert!(set_cookie.is_none(), "a pin rewritten that did not change"),
        Reason::Fallback | Reason::Repin => {
            let header = set_cookie.expect("a new pin is written");
            let text = header.to_str().expect("Set-Cookie is ASCII");
            let value = text
                .strip_prefix(&format!("{COOKIE_NAME}="))
                .and_then(|rest| rest.split(';').next())
                .expect("Set-Cookie starts with the cookie");
            assert_eq!(key.decode(value.as_bytes(), NOW_SECS), Some(key.tag(MEMBERS[served].0)), "{text}");
        }
    }
}

fn check_strip(policy: &AffinityPolicy, headers: &HeaderMap) {
    let mut stripped = headers.clone();
    policy.strip_cookie(&mut stripped);
    assert_eq!(stripped.get_all("x-other").iter().count(), 1, "a header other than Cookie was touched");
    let carries = |value: &HeaderValue| match std::str::from_utf8(value.as_bytes()) {
        Ok(_) => pairs_of(value.as_bytes()).iter().any(|(n, _)| n == COOKIE_NAME),
        Err(_) => value.as_bytes().windows(COOKIE_NAME.len()).any(|w| w == COOKIE_NAME.as_bytes()),
    };
    let after: Vec<&HeaderValue> = stripped.get_all(COOKIE).iter().collect();
    for value in &after {
        assert!(!carries(value), "the sticky cookie survived stripping in {value:?}");
    }
    if !headers.get_all(COOKIE).iter().any(carries) {
        assert_eq!(&stripped, headers, "headers without the sticky cookie were changed");
        return;
    }
    // Walk the originals: one without the cookie is kept as is, one with it is rewritten to
    // its other pairs (or dropped when there are none, or when it is not UTF-8).
    let mut after = after.into_iter();
    for original in headers.get_all(COOKIE) {
        if !carries(original) {
            assert_eq!(after.next(), Some(original), "a header without the sticky cookie changed");
            continue;
        }
        let kept: Vec<(String, String)> =
            pairs_of(original.as_bytes()).into_iter().filter(|(n, _)| n != COOKIE_NAME).collect();
        if kept.is_empty() {
            continue;
        }
        let rewritten = after.next().unwrap_or_else(|| panic!("{original:?} lost its other cookies {kept:?}"));
        assert_eq!(pairs_of(rewritten.as_bytes()), kept, "{original:?} rewritten to {rewritten:?}");
    }
    assert_eq!(after.next(), None, "stripping added a header");
}
