//! The sticky cookie's value: its key, its opaque signed encoding, and reading `Cookie` headers.
//!
//! Owns: [`CookieKey`], the value codec, and reading request cookies (parsed by the `cookie`
//! crate). Must not: choose backends, read clocks (time is passed in) or read environment
//! variables (the caller turns `key_env` into bytes).
//!
//! # Value format (version 1)
//! `base64url-no-pad(kind || tag || [expiry] || mac)`:
//! - `kind`: 1 byte, [`KIND_SESSION`] or [`KIND_EXPIRING`];
//! - `tag`: 12 bytes, `HMAC-SHA256(key, "tether/affinity/tag/v1\0" || id)[..12]`: a keyed
//!   digest of the backend id, looked up in the set's tag index, so neither the id nor the
//!   address can be read from the cookie, and every replica sharing the key computes the same;
//! - `expiry`: 8 bytes, big-endian Unix seconds, only for `KIND_EXPIRING` (`ttl > 0`);
//! - `mac`: 16 bytes, `HMAC-SHA256(key, "tether/affinity/mac/v1\0" || kind || tag || expiry)`
//!   truncated, compared in constant time.
//!
//! 39 characters for a session cookie, 50 with an expiry. A value that is too long, not
//! base64url, of the wrong kind or length, wrongly signed (tampered or foreign) or expired is
//! simply not a sticky cookie: the request is treated as carrying none.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use http::header::{COOKIE, HeaderMap};
use rand::Rng as _;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub(crate) const KIND_SESSION: u8 = 1;
pub(crate) const KIND_EXPIRING: u8 = 2;
pub(crate) const TAG_LEN: usize = 12;
const MAC_LEN: usize = 16;
const SESSION_LEN: usize = 1 + TAG_LEN + MAC_LEN;
const EXPIRING_LEN: usize = SESSION_LEN + 8;
/// base64url length of the longest valid value; anything longer is rejected before decoding,
/// so a huge cookie costs a length check.
const MAX_ENCODED_LEN: usize = (EXPIRING_LEN * 4).div_ceil(3);
const TAG_CONTEXT: &[u8] = b"tether/affinity/tag/v1\0";
const MAC_CONTEXT: &[u8] = b"tether/affinity/mac/v1\0";

/// A keyed digest of a backend id, as carried in the cookie.
pub(crate) type CookieTag = [u8; TAG_LEN];

/// The HMAC-SHA256 key that signs sticky cookies. Every proxy replica must use the same key to
/// honour each other's cookies; [`CookieKey::random`] is per process (cookies then survive
/// neither a restart nor a hop to another replica).
#[derive(Clone)]
pub struct CookieKey {
    /// Keyed HMAC state, cloned per use so the key schedule is computed once.
    mac: HmacSha256,
}

/// A cookie key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CookieKeyError {
    #[error(
        "the cookie key is {len} bytes long; at least {min} bytes of secret are required",
        min = CookieKey::MIN_LEN
    )]
    /// Fewer than [`CookieKey::MIN_LEN`] bytes.
    TooShort {
        /// The key's length, in bytes.
        len: usize,
    },
}

impl CookieKey {
    /// Minimum key length: the HMAC-SHA256 security level needs 32 bytes of secret.
    pub(crate) const MIN_LEN: usize = 32;

    /// A key from secret bytes (for example the value of the `key_env` variable).
    pub fn from_bytes(secret: &[u8]) -> Result<Self, CookieKeyError> {
        if secret.len() < Self::MIN_LEN {
            return Err(CookieKeyError::TooShort { len: secret.len() });
        }
        let mac = HmacSha256::new_from_slice(secret).map_err(|_| CookieKeyError::TooShort { len: secret.len() })?;
        Ok(Self { mac })
    }

    /// A fresh key from the operating system's CSPRNG (through `rand`'s thread generator).
    pub(crate) fn random() -> Self {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        Self { mac: HmacSha256::new_from_slice(&secret).expect("HMAC accepts keys of any length") }
    }

    pub(crate) fn tag(&self, id: &str) -> CookieTag {
        let mut mac = self.mac.clone();
        mac.update(TAG_CONTEXT);
        mac.update(id.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&digest[..TAG_LEN]);
        tag
    }

    fn signer(&self, body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(MAC_CONTEXT);
        mac.update(body);
        mac
    }

    /// The cookie value for `tag`, expiring at `expiry` (Unix seconds) if given.
    pub(crate) fn encode(&self, tag: &CookieTag, expiry: Option<u64>) -> String {
        let mut raw = [0u8; EXPIRING_LEN];
        let body_len = match expiry {
            None => {
                raw[0] = KIND_SESSION;
                raw[1..1 + TAG_LEN].copy_from_slice(tag);
                1 + TAG_LEN
            }
            Some(at) => {
                raw[0] = KIND_EXPIRING;
                raw[1..1 + TAG_LEN].copy_from_slice(tag);
                raw[1 + TAG_LEN..1 + TAG_LEN + 8].copy_from_slice(&at.to_be_bytes());
                1 + TAG_LEN + 8
            }
        };
        let digest = self.signer(&raw[..body_len]).finalize().into_bytes();
        raw[body_len..body_len + MAC_LEN].copy_from_slice(&digest[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(&raw[..body_len + MAC_LEN])
    }

    /// The tag of a valid, unexpired cookie value; `None` for anything else.
    pub(crate) fn decode(&self, value: &[u8], now_secs: u64) -> Option<CookieTag> {
        if value.len() > MAX_ENCODED_LEN {
            return None;
        }
        let mut raw = [0u8; EXPIRING_LEN + 3];
        let len = URL_SAFE_NO_PAD.decode_slice(value, &mut raw).ok()?;
        let raw = &raw[..len];
        let body_len = match (raw.first()?, len) {
            (&KIND_SESSION, SESSION_LEN) => 1 + TAG_LEN,
            (&KIND_EXPIRING, EXPIRING_LEN) => 1 + TAG_LEN + 8,
            _ => return None,
        };
        let (body, mac) = raw.split_at(body_len);
        // Constant time; `verify_slice` would demand all 32 bytes of the MAC.
        self.signer(body).verify_truncated_left(mac).ok()?;
        if body_len == 1 + TAG_LEN + 8 {
            let mut at = [0u8; 8];
            at.copy_from_slice(&body[1 + TAG_LEN..]);
            if now_secs >= u64::from_be_bytes(at) {
                return None;
            }
        }
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&body[1..1 + TAG_LEN]);
        Some(tag)
    }
}

impl fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CookieKey(..)")
    }
}

/// Every `name=value` pair of every `Cookie` header, in order, as the `cookie` crate parses
/// them (RFC 6265 section 5.4, read leniently: pairs without `=` are skipped, spaces around names
/// and values trimmed, one pair of surrounding double quotes removed from values). A header that
/// is not UTF-8 carries no cookie we could have issued.
pub(crate) fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| std::str::from_utf8(value.as_bytes()).ok())
        .flat_map(|header| cookie::Cookie::split_parse(header).filter_map(Result::ok))
        .filter_map(|c| Some((c.name_raw()?, trim_quotes(c.value_raw()?))))
}

fn trim_quotes(value: &str) -> &str {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner,
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> CookieKey {
        CookieKey::from_bytes(&[byte; 32]).expect("32 bytes")
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(CookieKey::from_bytes(&[7; 31]).err(), Some(CookieKeyError::TooShort { len: 31 }));
        assert!(CookieKey::from_bytes(&[7; 32]).is_ok());
    }

    #[test]
    fn session_and_expiring_values_round_trip() {
        let k = key(1);
        let tag = k.tag("app-1");
        let session = k.encode(&tag, None);
        assert_eq!(session.len(), 39);
        assert_eq!(k.decode(session.as_bytes(), u64::MAX), Some(tag));
        let expiring = k.encode(&tag, Some(1000));
        assert_eq!(expiring.len(), 50);
        assert_eq!(k.decode(expiring.as_bytes(), 999), Some(tag));
        assert_eq!(k.decode(expiring.as_bytes(), 1000), None);
    }

    #[test]
    fn random_keys_differ_and_do_not_accept_each_others_cookies() {
        let (a, b) = (CookieKey::random(), CookieKey::random());
        let value = a.encode(&a.tag("app-1"), None);
        assert_eq!(a.decode(value.as_bytes(), 0), Some(a.tag("app-1")));
        assert_eq!(b.decode(value.as_bytes(), 0), None);
        assert_ne!(a.tag("app-1"), b.tag("app-1"));
    }

    #[test]
    fn every_flipped_byte_or_character_is_rejected() {
        let k = key(2);
        let tag = k.tag("app-2");
        for expiry in [None, Some(5000)] {
            let value = k.encode(&tag, expiry);
            let raw = URL_SAFE_NO_PAD.decode(&value).expect("our own encoding");
            for i in 0..raw.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut bad = raw.clone();
                    bad[i] ^= flip;
                    let bad = URL_SAFE_NO_PAD.encode(&bad);
                    assert_eq!(k.decode(bad.as_bytes(), 0), None, "byte {i} ^ {flip:#x}");
                }
            }
            for i in 0..value.len() {
                let mut bad = value.clone().into_bytes();
                bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
                assert_eq!(k.decode(&bad, 0), None, "char {i}");
            }
        }
    }

    #[test]
    fn garbage_empty_huge_and_truncated_values_are_rejected() {
        let k = key(3);
        let good = k.encode(&k.tag("x"), None);
        let huge = "A".repeat(100_000);
        for bad in [
            "",
            "=",
            "not base64 !!",
            &huge,
            &good[..good.len() - 1],
            &good[1..],
            &format!("{good}A"),
            &format!("{good}AAAA"),
            "AQ",
        ] {
            assert_eq!(k.decode(bad.as_bytes(), 0), None, "{bad:.40}");
        }
    }

    #[test]
    fn cookie_pairs_reads_every_header_leniently() {
        use http::HeaderValue;
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; b = 2 ;c=\"3\""));
        headers.append(COOKIE, HeaderValue::from_static("noequals; d=; e=x=y"));
        let pairs: Vec<(&str, &str)> = cookie_pairs(&headers).collect();
        assert_eq!(pairs, vec![("a", "1"), ("b", "2"), ("c", "3"), ("d", ""), ("e", "x=y")]);
    }
}
