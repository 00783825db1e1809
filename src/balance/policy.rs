//! The affinity policy of one upstream, prepared once from its config.
//!
//! Owns: the key sources, the bounded-load factor, the fallback, and the sticky cookie's name,
//! key, pre-rendered `Set-Cookie` attributes and the signed values it has issued (the value for
//! one backend is the same bytes until its expiry second changes, so it is signed once, not per
//! response). Must not: hold per-request state or read the environment. Cheap to share behind
//! an `Arc`; rebuilt only when the config changes, so a new key never meets an old value.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use http::header::{COOKIE, HeaderMap};

use super::cookie::{CookieKey, CookieTag};
use crate::config::{AffinityConfig, CookieConfig, Fallback, KeySource, SameSite, SecureMode};

/// A config value that cannot be rendered into a `Set-Cookie` header. Config validation should
/// reject these first; this keeps the decision total if it does not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The cookie name is not a token.
    #[error("cookie name {0:?} is not an RFC 6265 token")]
    CookieName(String),
    #[error("cookie {attribute} {value:?} contains ';' or a control character")]
    /// A `Path` or `Domain` that would break the header.
    CookieAttribute {
        /// Which attribute.
        attribute: &'static str,
        /// Its value.
        value: String,
    },
}

/// See the module doc.
#[derive(Debug)]
pub struct AffinityPolicy {
    pub(crate) keys: Vec<KeySource>,
    /// `Some(c)` with `c >= 1` when bounded loads are on.
    pub(crate) balance_factor: Option<f64>,
    pub(crate) fallback: Fallback,
    pub(crate) cookie: Option<StickyCookie>,
    pub(crate) cookie_key: CookieKey,
}

#[derive(Debug)]
pub(crate) struct StickyCookie {
    pub(crate) name: String,
    /// Whole seconds, rounded up; 0 = session cookie.
    ttl_secs: u64,
    /// Everything after the value, without and with `Secure`.
    attributes_plain: String,
    attributes_tls: String,
    /// `Set-Cookie` values issued, by backend tag and scheme (plain, TLS).
    issued: parking_lot::RwLock<HashMap<(CookieTag, bool), Issued>>,
}

/// One issued `Set-Cookie` value and the expiry (Unix seconds) it was signed with.
#[derive(Debug)]
struct Issued {
    expiry: Option<u64>,
    value: HeaderValue,
}

/// Past this many issued values (backends come and go through discovery), the cache starts
/// over rather than grow.
const ISSUED_MAX: usize = 1024;

impl AffinityPolicy {
    /// Prepare `config` for routing. `cookie_key` must be the key the
    /// [`BackendSet`](super::BackendSet)s are built with (take it from
    /// [`AffinityPolicy::cookie_key`]).
    ///
    /// A `balance_factor` of 0 (or negative, or NaN) turns bounded loads off; a factor between
    /// 0 and 1 is raised to 1, the smallest factor with which some backend is always under
    /// the bound.
    pub fn new(config: &AffinityConfig, cookie_key: CookieKey) -> Result<Self, PolicyError> {
        let factor = config.hash.balance_factor;
        let balance_factor = (factor > 0.0).then(|| factor.max(1.0));
        let cookie = config.cookie.as_ref().map(StickyCookie::new).transpose()?;
        Ok(Self { keys: config.keys.clone(), balance_factor, fallback: config.fallback, cookie, cookie_key })
    }

    /// The key the policy signs cookies with.
    pub fn cookie_key(&self) -> &CookieKey {
        &self.cookie_key
    }

    /// The sticky cookie's name, if one is configured.
    #[cfg(test)]
    pub(crate) fn cookie_name(&self) -> Option<&str> {
        self.cookie.as_ref().map(|c| c.name.as_str())
    }

    /// The effective bounded-load factor, `None` when bounded loads are off.
    pub(crate) fn balance_factor(&self) -> Option<f64> {
        self.balance_factor
    }

    /// Remove our sticky cookie from the request's `Cookie` header(s) before forwarding, so
    /// the backend never sees it. Other cookies are kept in order; headers without our cookie
    /// are left byte-for-byte untouched; a header left empty is dropped. Without a configured
    /// cookie this does nothing.
    pub(crate) fn strip_cookie(&self, headers: &mut HeaderMap) {
        let Some(cookie) = &self.cookie else { return };
        let name = cookie.name.as_str();
        // A header that is not UTF-8 cannot be parsed, so whether it carries our cookie is
        // unknown: it is dropped (our cookie must not leak).
        let carries = |v: &HeaderValue| match std::str::from_utf8(v.as_bytes()) {
            Ok(text) => cookie::Cookie::split_parse(text).filter_map(Result::ok).any(|c| c.name() == name),
            Err(_) => v.as_bytes().windows(name.len()).any(|w| w == name.as_bytes()),
        };
        if !headers.get_all(COOKIE).iter().any(carries) {
            return;
        }
        let values: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
        headers.remove(COOKIE);
        for value in values {
            if !carries(&value) {
                headers.append(COOKIE, value);
                continue;
            }
            let Ok(text) = std::str::from_utf8(value.as_bytes()) else { continue };
            let kept: Vec<String> = cookie::Cookie::split_parse(text)
                .filter_map(Result::ok)
                .filter(|c| c.name() != name)
                .map(|c| c.stripped().to_string())
                .collect();
            // The kept pairs all come from a valid header value, so this cannot fail; if it
            // did, dropping the remainder is the safe side.
            if let (false, Ok(rebuilt)) = (kept.is_empty(), HeaderValue::from_str(&kept.join("; "))) {
                headers.append(COOKIE, rebuilt);
            }
        }
    }
}

impl StickyCookie {
    fn new(config: &CookieConfig) -> Result<Self, PolicyError> {
        if config.name.is_empty() || !config.name.bytes().all(is_token_byte) {
            return Err(PolicyError::CookieName(config.name.clone()));
        }
        let check = |attribute: &'static str, value: &str| {
            if value.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b';') {
                Ok(())
            } else {
                Err(PolicyError::CookieAttribute { attribute, value: value.to_owned() })
            }
        };
        check("path", &config.path)?;
        if let Some(domain) = &config.domain {
            check("domain", domain)?;
        }
        let ttl_secs = whole_seconds_up(config.ttl);
        let (plain_secure, tls_secure) = match config.secure {
            SecureMode::Auto => (false, true),
            SecureMode::Always => (true, true),
            SecureMode::Never => (false, false),
        };
        // Everything after `name=value`, rendered once by the `cookie` crate: the value is the
        // only part that changes per response.
        let render = |secure: bool| {
            let mut builder = cookie::Cookie::build((config.name.as_str(), ""))
                .http_only(config.http_only)
                // Browsers drop `SameSite=None` without `Secure`; config validation rejects
                // `same_site: none` with `secure: never`.
                .same_site(match config.same_site {
                    SameSite::Lax => cookie::SameSite::Lax,
                    SameSite::Strict => cookie::SameSite::Strict,
                    SameSite::None => cookie::SameSite::None,
                })
                .secure(secure);
            if !config.path.is_empty() {
                builder = builder.path(config.path.as_str());
            }
            if let Some(domain) = &config.domain {
                builder = builder.domain(domain.as_str());
            }
            if ttl_secs > 0 {
                let max_age = i64::try_from(ttl_secs).unwrap_or(i64::MAX);
                builder = builder.max_age(cookie::time::Duration::seconds(max_age));
            }
            let rendered = builder.build().to_string();
            rendered[config.name.len() + 1..].to_owned()
        };
        Ok(Self {
            name: config.name.clone(),
            ttl_secs,
            attributes_plain: render(plain_secure),
            attributes_tls: render(tls_secure),
            issued: parking_lot::RwLock::default(),
        })
    }

    /// The full `Set-Cookie` value pinning to `tag`, issued at `now`.
    pub(crate) fn render(
        &self,
        key: &CookieKey,
        tag: &CookieTag,
        now: SystemTime,
        is_tls: bool,
    ) -> Option<HeaderValue> {
        let expiry = (self.ttl_secs > 0).then(|| unix_secs(now).saturating_add(self.ttl_secs));
        if let Some(issued) = self.issued.read().get(&(*tag, is_tls))
            && issued.expiry == expiry
        {
            return Some(issued.value.clone());
        }
        let value = self.sign(key, tag, expiry, is_tls)?;
        let mut issued = self.issued.write();
        if issued.len() >= ISSUED_MAX {
            issued.clear();
        }
        issued.insert((*tag, is_tls), Issued { expiry, value: value.clone() });
        Some(value)
    }

    fn sign(&self, key: &CookieKey, tag: &CookieTag, expiry: Option<u64>, is_tls: bool) -> Option<HeaderValue> {
        let value = key.encode(tag, expiry);
        let attributes = if is_tls { &self.attributes_tls } else { &self.attributes_plain };
        let mut header = String::with_capacity(self.name.len() + 1 + value.len() + attributes.len());
        header.push_str(&self.name);
        header.push('=');
        header.push_str(&value);
        header.push_str(attributes);
        // Every part was checked to be visible ASCII when the policy was built.
        HeaderValue::from_str(&header).ok()
    }
}

/// RFC 7230 `tchar` (the RFC 6265 cookie-name token).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn whole_seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Seconds since the Unix epoch; a clock before 1970 reads as 0.
pub(crate) fn unix_secs(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
