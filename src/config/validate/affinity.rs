//! Affinity: key sources, consistent hashing and the sticky cookie.

use std::time::Duration;

use crate::config::file::{FileAffinity, FileCookie, FileKeySource, Text};
use crate::config::values::is_dns_name;
use crate::config::{AffinityConfig, CookieConfig, Fallback, HashConfig, KeySource, SameSite, SecureMode, TokenSource};

use super::{Checked, Validator};

pub(super) const DEFAULT_VNODES: u32 = 1000;
/// Ring points per unit of weight beyond this buy no measurable evenness and cost memory.
pub(super) const MAX_VNODES: u32 = 10_000;
pub(super) const DEFAULT_COOKIE_NAME: &str = "TETHER_AFFINITY";
/// HMAC-SHA256 keys shorter than its output size weaken the cookie signature.
pub(super) const MIN_COOKIE_KEY_BYTES: usize = 32;

impl Validator<'_> {
    pub(super) fn affinity(&mut self, path: &str, affinity: Option<&FileAffinity>) -> Checked<AffinityConfig> {
        let Some(affinity) = affinity else {
            return Ok(AffinityConfig {
                keys: Vec::new(),
                hash: HashConfig { vnodes: DEFAULT_VNODES, balance_factor: 0.0 },
                cookie: None,
                fallback: Fallback::default(),
            });
        };
        let mut keys = Ok(Vec::new());
        for (i, key) in affinity.key.as_deref().unwrap_or_default().iter().enumerate() {
            let checked = self.key_source(&format!("{path}.key[{i}]"), key);
            match (checked, &mut keys) {
                (Ok(k), Ok(all)) => all.push(k),
                (Err(r), _) => keys = Err(r),
                (Ok(_), Err(_)) => {}
            }
        }
        let hash = affinity.hash.as_ref();
        let vnodes = match hash.and_then(|h| h.vnodes) {
            None => Ok(DEFAULT_VNODES),
            Some(v) if (1..=MAX_VNODES).contains(&v) => Ok(v),
            Some(v) => Err(self
                .error(&format!("{path}.hash.vnodes"), format!("vnodes must be between 1 and {MAX_VNODES}, got {v}"))),
        };
        let balance_factor = match hash.and_then(|h| h.balance_factor) {
            None => Ok(0.0),
            Some(f) if f == 0.0 || (f > 1.0 && f.is_finite()) => Ok(f),
            Some(f) => Err(self.error(
                &format!("{path}.hash.balance_factor"),
                format!("balance_factor must be 0 (off) or greater than 1.0 (e.g. 1.25), got {f}"),
            )),
        };
        let cookie = affinity.cookie.as_ref().map(|c| self.cookie(&format!("{path}.cookie"), c)).transpose();
        let fallback = match affinity.fallback.as_ref() {
            None => Ok(Fallback::default()),
            Some(f) => match f.as_str().to_ascii_lowercase().as_str() {
                "least_connections" => Ok(Fallback::LeastConnections),
                "round_robin" => Ok(Fallback::RoundRobin),
                "random_two_choices" => Ok(Fallback::RandomTwoChoices),
                _ => Err(self.error(
                    &format!("{path}.fallback"),
                    format!(
                        "unknown fallback {:?}; expected least_connections, round_robin or \
                         random_two_choices",
                        f.as_str()
                    ),
                )),
            },
        };
        Ok(AffinityConfig {
            keys: keys?,
            hash: HashConfig { vnodes: vnodes?, balance_factor: balance_factor? },
            cookie: cookie?,
            fallback: fallback?,
        })
    }

    pub(super) fn key_source(&mut self, path: &str, key: &FileKeySource) -> Checked<KeySource> {
        let set: Vec<&str> = [
            key.header.as_ref().map(|_| "header"),
            key.cookie.as_ref().map(|_| "cookie"),
            key.query.as_ref().map(|_| "query"),
            key.path_segment.as_ref().map(|_| "path_segment"),
            key.jwt_claim.as_ref().map(|_| "jwt_claim"),
            key.verified_claim.as_ref().map(|_| "verified_claim"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if set.len() != 1 {
            let found = if set.is_empty() { "none".to_owned() } else { set.join(" and ") };
            return Err(self.error(
                path,
                format!(
                    "set exactly one of header, cookie, query, path_segment, jwt_claim or verified_claim (found {found})"
                ),
            ));
        }
        if let Some(header) = &key.header {
            return self.header_name(&format!("{path}.header"), header.as_str()).map(KeySource::Header);
        }
        if let Some(cookie) = &key.cookie {
            return self.cookie_name(&format!("{path}.cookie"), cookie.as_str()).map(KeySource::Cookie);
        }
        if let Some(query) = &key.query {
            return self.query_name(&format!("{path}.query"), query.as_str()).map(KeySource::Query);
        }
        if let Some(segment) = key.path_segment {
            return Ok(KeySource::PathSegment(segment));
        }
        if let Some(claim) = &key.verified_claim {
            return if claim.as_str().is_empty() {
                Err(self.error(&format!("{path}.verified_claim"), "claim must not be empty"))
            } else {
                Ok(KeySource::VerifiedClaim(claim.0.clone()))
            };
        }
        let Some(jwt) = &key.jwt_claim else {
            // `set.len() == 1` and the other sources were handled above.
            return Err(
                self.error(path, "set exactly one of header, cookie, query, path_segment, jwt_claim or verified_claim")
            );
        };
        let from = self.token_source(&format!("{path}.jwt_claim.from"), &jwt.from);
        let claim = if jwt.claim.as_str().is_empty() {
            Err(self.error(&format!("{path}.jwt_claim.claim"), "claim must not be empty"))
        } else {
            Ok(jwt.claim.0.clone())
        };
        Ok(KeySource::JwtClaim { from: from?, claim: claim? })
    }

    /// `header:NAME`, `cookie:NAME` or `query:NAME`.
    pub(super) fn token_source(&mut self, path: &str, text: &Text) -> Checked<TokenSource> {
        match text.as_str().split_once(':') {
            Some(("header", name)) => self.header_name(path, name).map(TokenSource::Header),
            Some(("cookie", name)) => self.cookie_name(path, name).map(TokenSource::Cookie),
            Some(("query", name)) => self.query_name(path, name).map(TokenSource::Query),
            _ => Err(self.error(
                path,
                format!("invalid token source {:?}; expected header:NAME, cookie:NAME or query:NAME", text.as_str()),
            )),
        }
    }

    pub(super) fn cookie(&mut self, path: &str, cookie: &FileCookie) -> Checked<CookieConfig> {
        let name = match &cookie.name {
            None => Ok(DEFAULT_COOKIE_NAME.to_owned()),
            Some(name) => self.cookie_name(&format!("{path}.name"), name.as_str()),
        };
        let ttl = self.duration(&format!("{path}.ttl"), cookie.ttl.as_ref(), Duration::ZERO);
        let secure =
            match cookie.secure.as_ref().map(|s| s.as_str().to_ascii_lowercase()) {
                None => Ok(SecureMode::Auto),
                Some(s) if s == "auto" => Ok(SecureMode::Auto),
                Some(s) if s == "true" => Ok(SecureMode::Always),
                Some(s) if s == "false" => Ok(SecureMode::Never),
                Some(s) => Err(self
                    .error(&format!("{path}.secure"), format!("invalid secure {s:?}; expected auto, true or false"))),
            };
        let same_site = match cookie.same_site.as_ref().map(|s| s.as_str().to_ascii_lowercase()) {
            None => Ok(SameSite::Lax),
            Some(s) if s == "lax" => Ok(SameSite::Lax),
            Some(s) if s == "strict" => Ok(SameSite::Strict),
            Some(s) if s == "none" => Ok(SameSite::None),
            Some(s) => Err(self
                .error(&format!("{path}.same_site"), format!("invalid same_site {s:?}; expected lax, strict or none"))),
        };
        let same_site = match (same_site, secure) {
            (Ok(SameSite::None), Ok(SecureMode::Never)) => Err(self.error(
                &format!("{path}.same_site"),
                "same_site none requires secure auto or true (browsers reject SameSite=None \
                 cookies that are not Secure)",
            )),
            (same_site, _) => same_site,
        };
        let cookie_path = match &cookie.path {
            None => Ok("/".to_owned()),
            Some(p) => self
                .url_path(&format!("{path}.path"), p)
                .and_then(|p| self.cookie_attribute(&format!("{path}.path"), p)),
        };
        let domain = cookie
            .domain
            .as_ref()
            .map(|d| {
                let domain = d.as_str().to_ascii_lowercase();
                if is_dns_name(domain.strip_prefix('.').unwrap_or(&domain)) {
                    Ok(domain)
                } else {
                    Err(self.error(&format!("{path}.domain"), format!("invalid cookie domain {:?}", d.as_str())))
                }
            })
            .transpose();
        let key_path = format!("{path}.key_env");
        let key_env = cookie.key_env.as_ref().map(|name| self.env_name(&key_path, name)).transpose();
        let key_env = key_env.and_then(|name| {
            let Some(name) = name else { return Ok(None) };
            match (self.env)(&name) {
                None => {
                    self.warn(
                        &key_path,
                        format!(
                            "environment variable {name} is not set; replicas will not share \
                             sticky cookies; a random per-process key will be used"
                        ),
                    );
                    Ok(Some(name))
                }
                Some(key) if key.len() < MIN_COOKIE_KEY_BYTES => Err(self.error(
                    &key_path,
                    format!(
                        "environment variable {name} holds {} bytes; the cookie key must be at \
                         least {MIN_COOKIE_KEY_BYTES} bytes",
                        key.len()
                    ),
                )),
                Some(_) => Ok(Some(name)),
            }
        });
        Ok(CookieConfig {
            name: name?,
            ttl: ttl?,
            secure: secure?,
            http_only: cookie.http_only.unwrap_or(true),
            same_site: same_site?,
            path: cookie_path?,
            domain: domain?,
            key_env: key_env?,
        })
    }
}
