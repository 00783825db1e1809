//! Verified identity: checking the tokens clients present, with the `jsonwebtoken` crate.
//!
//! Owns: [`Verifier`] (one named `auth` entry: where its token is, which keys and algorithms
//! verify it, which claims are checked, and which claim is the identity), [`Verifiers`] (every
//! verifier of a config, and the headers only a verifier may write) and [`AuthError`] (why a
//! token was refused). Must not: do I/O (key files were read by `config`; an HMAC secret is
//! looked up once, when verifiers are built), or decide what a refusal looks like on the wire
//! (that is the proxy's, and the app's).
//!
//! The crate checks signatures and claims; this module picks the key and pins the algorithm:
//! a token's `alg` must be one the verifier accepts *and* of the family of the key its `kid`
//! selects (so an RSA public key can never be used as an HMAC secret), and a JWK that names
//! its own `alg` verifies only that one.

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::{JwtKey, JwtKeys, TokenSource, VerifierConfig};

/// Longest token read; a longer one is refused before any decoding.
pub(crate) const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest identity forwarded; a longer claim is refused rather than cut.
const MAX_IDENTITY_BYTES: usize = 1024;

/// The claims of a JWT.
pub type Claims = Map<String, Value>;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token where the verifier looks (refused only when the route requires one).
    #[error("no token")]
    Missing,
    /// Not a compact JWS, or not one this verifier can read.
    #[error("malformed token")]
    Malformed,
    /// Its `alg` is not accepted here, or does not fit its key.
    #[error("algorithm not accepted")]
    Algorithm,
    /// Its `kid` names no key (or it names none while several could apply).
    #[error("unknown key id")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// Past `exp` (plus leeway).
    #[error("token expired")]
    Expired,
    /// Before `nbf` (minus leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    Issuer,
    /// `aud` names none of the configured audiences.
    #[error("wrong audience")]
    Audience,
    /// A claim that must be present is not (`exp`, `iss`, `aud`).
    #[error("missing claim {0}")]
    MissingClaim(String),
    /// The identity claim is missing, empty, not a string or number, or not a header value.
    #[error("no usable identity claim {0}")]
    NoIdentity(String),
    /// The HMAC secret variable is not set: nothing can verify.
    #[error("verifier has no key")]
    NoKey,
}

impl AuthError {
    /// A short name for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Algorithm => "algorithm",
            AuthError::UnknownKey => "unknown_key",
            AuthError::Signature => "signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Issuer => "issuer",
            AuthError::Audience => "audience",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::NoIdentity(_) => "no_identity",
            AuthError::NoKey => "no_key",
        }
    }
}

/// A token that verified.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Every claim of the token.
    pub claims: Claims,
    /// The identity claim, as the value of the identity header.
    pub identity: HeaderValue,
    /// Where the token was found (a query parameter is removed before forwarding).
    pub from: TokenSource,
}

/// Keys as a verifier holds them at run time.
enum Keys {
    Public(Arc<[JwtKey]>),
    /// `None` when the secret variable is not set.
    Secret(Option<DecodingKey>),
}

/// One verifier of the config, ready to check tokens.
pub struct Verifier {
    name: Arc<str>,
    algorithms: Vec<Algorithm>,
    keys: Keys,
    /// Claims checks (issuer, audience, leeway, required claims); the algorithm is set per
    /// token once its key is chosen.
    validation: Validation,
    token_from: Vec<TokenSource>,
    identity_claim: String,
    identity_header: HeaderName,
    required: bool,
}

impl Verifier {
    /// Build from `config`; an HMAC secret is looked up with `env` now.
    pub fn new(config: &VerifierConfig, env: &dyn Fn(&str) -> Option<String>) -> Self {
        let jwt = &config.jwt;
        let keys = match &jwt.keys {
            JwtKeys::Files { keys, .. } => Keys::Public(keys.clone()),
            JwtKeys::SecretEnv(var) => match env(var).filter(|s| !s.is_empty()) {
                Some(secret) => Keys::Secret(DecodingKey::from_secret(secret.as_bytes()).ok()),
                None => {
                    tracing::warn!(verifier = %config.name, variable = %var, "the HMAC secret variable is not set: every token is refused");
                    Keys::Secret(None)
                }
            },
        };
        let mut validation = Validation::new(jwt.algorithms[0]);
        validation.leeway = jwt.leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_exp = true;
        let mut required: Vec<&str> = Vec::new();
        if jwt.require_exp {
            required.push("exp");
        }
        match &jwt.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        if jwt.audience.is_empty() {
            // Without configured audiences an `aud` claim is not ours to judge.
            validation.validate_aud = false;
        } else {
            validation.set_audience(&jwt.audience);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Self {
            name: config.name.as_str().into(),
            algorithms: jwt.algorithms.clone(),
            keys,
            validation,
            token_from: config.token_from.clone(),
            identity_claim: config.identity.claim.clone(),
            identity_header: config.identity.header.clone(),
            required: config.required,
        }
    }

    /// The verifier's name in the config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The header the identity goes in.
    pub fn identity_header(&self) -> &HeaderName {
        &self.identity_header
    }

    /// Whether a request without a token is refused.
    pub fn is_required(&self) -> bool {
        self.required
    }

    /// Check the token of a request: `Ok(None)` when there is none and the verifier does not
    /// require one. A token that is present but invalid is always an error, required or not.
    pub fn verify_request(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Option<Verified>, AuthError> {
        match find_token(&self.token_from, headers, query) {
            Some((token, from)) => self.verify(&token, from.clone()).map(Some),
            None if self.required => Err(AuthError::Missing),
            None => Ok(None),
        }
    }

    /// Check one token found at `from`.
    pub fn verify(&self, token: &str, from: TokenSource) -> Result<Verified, AuthError> {
        let token = token.trim();
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Algorithm);
        }
        let key = self.key_for(header.alg, header.kid.as_deref())?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| error_of(e.into_kind()))?;
        let identity = data
            .claims
            .get(&self.identity_claim)
            .and_then(identity_text)
            .filter(|s| !s.is_empty() && s.len() <= MAX_IDENTITY_BYTES)
            .and_then(|s| HeaderValue::from_str(&s).ok())
            .ok_or_else(|| AuthError::NoIdentity(self.identity_claim.clone()))?;
        Ok(Verified { claims: data.claims, identity, from })
    }

    /// The key that may verify a token signed with `alg` and naming `kid`.
    fn key_for(&self, alg: Algorithm, kid: Option<&str>) -> Result<&DecodingKey, AuthError> {
        let keys = match &self.keys {
            Keys::Secret(Some(key)) => return Ok(key),
            Keys::Secret(None) => return Err(AuthError::NoKey),
            Keys::Public(keys) => keys,
        };
        let fits = |k: &&JwtKey| k.key.family() == alg.family() && k.alg.is_none_or(|a| a == alg);
        let key = match kid {
            Some(kid) => {
                let key = keys.iter().find(|k| k.kid.as_deref() == Some(kid)).ok_or(AuthError::UnknownKey)?;
                Some(key).filter(fits).ok_or(AuthError::Algorithm)?
            }
            None => {
                let mut candidates = keys.iter().filter(fits);
                match (candidates.next(), candidates.next()) {
                    (Some(key), None) => key,
                    // Several keys could apply: a token must say which.
                    (Some(_), Some(_)) => return Err(AuthError::UnknownKey),
                    (None, _) => return Err(AuthError::Algorithm),
                }
            }
        };
        Ok(&key.key)
    }
}

/// What the crate's error means for the client.
fn error_of(kind: ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::Signature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::Issuer,
        ErrorKind::InvalidAudience => AuthError::Audience,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
            AuthError::Algorithm
        }
        _ => AuthError::Malformed,
    }
}

fn identity_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The first token found among `sources`, in order: `Authorization: Bearer <token>` (scheme
/// case-insensitive; another scheme holds no token), any other header's value, a cookie's
/// value, or a query parameter (its name matched case-insensitively).
pub fn find_token(sources: &[TokenSource], headers: &HeaderMap, query: Option<&str>) -> Option<(String, TokenSource)> {
    sources.iter().find_map(|source| {
        let token = match source {
            TokenSource::Header(name) => {
                let value = std::str::from_utf8(headers.get(name)?.as_bytes()).ok()?.trim();
                if *name == AUTHORIZATION {
                    let (scheme, token) = value.split_once(' ')?;
                    if !scheme.eq_ignore_ascii_case("bearer") {
                        return None;
                    }
                    Cow::Borrowed(token.trim())
                } else {
                    Cow::Borrowed(value)
                }
            }
            TokenSource::Cookie(name) => Cow::Borrowed(crate::balance::cookie_value(headers, name)?),
            TokenSource::Query(name) => {
                form_urlencoded::parse(query?.as_bytes()).find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)?
            }
        };
        (!token.is_empty()).then(|| (token.into_owned(), source.clone()))
    })
}

/// Every verifier of a config, by name.
#[derive(Default)]
pub struct Verifiers {
    list: Vec<Arc<Verifier>>,
    /// Every verifier's identity header, once each.
    identity_headers: Vec<HeaderName>,
}

impl Verifiers {
    /// Build every verifier of `configs`.
    pub fn new(configs: &[VerifierConfig], env: &dyn Fn(&str) -> Option<String>) -> Self {
        let list: Vec<Arc<Verifier>> = configs.iter().map(|c| Arc::new(Verifier::new(c, env))).collect();
        let mut identity_headers: Vec<HeaderName> = Vec::new();
        for verifier in &list {
            if !identity_headers.contains(&verifier.identity_header) {
                identity_headers.push(verifier.identity_header.clone());
            }
        }
        Self { list, identity_headers }
    }

    /// The verifier named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Verifier>> {
        self.list.iter().find(|v| &*v.name == name)
    }

    /// Headers only a verifier writes: removed from every client request, on every route.
    pub fn identity_headers(&self) -> &[HeaderName] {
        &self.identity_headers
    }

    /// Query parameters that carry tokens (never logged).
    pub fn token_query_names(&self) -> impl Iterator<Item = &str> {
        self.list.iter().flat_map(|v| v.token_from.iter()).filter_map(|s| match s {
            TokenSource::Query(name) => Some(name.as_str()),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests;
