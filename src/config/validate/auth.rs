//! Token verifiers (`auth`): algorithms, keys (read and parsed here, so `tether check` proves
//! the files), claims checked, where tokens come from and the identity they carry.

use std::time::Duration;

use http::HeaderName;
use jsonwebtoken::{Algorithm, AlgorithmFamily};

use super::{Checked, Validator};
use crate::config::file::{FileIdentity, FileJwt, FileVerifier, Ordered};
use crate::config::jwt;
use crate::config::{IdentityConfig, JwtConfig, JwtKeys, TokenSource, VerifierConfig};

/// Clock skew allowed for `exp` and `nbf` unless `leeway` says otherwise.
pub(crate) const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// The claim forwarded unless `identity.claim` says otherwise.
const DEFAULT_IDENTITY_CLAIM: &str = "sub";
/// The header the identity goes in unless `identity.header` says otherwise.
const DEFAULT_IDENTITY_HEADER: &str = "x-user-id";
/// Shortest HMAC secret accepted: HS256's security level needs 32 bytes.
pub(crate) const MIN_SECRET_BYTES: usize = 32;

/// Headers tether writes or that describe one hop: a verifier's identity cannot live in one.
const RESERVED_HEADERS: [&str; 17] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "cookie",
    "authorization",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
];

impl Validator<'_> {
    pub(super) fn verifiers(&mut self, auth: Option<&Ordered<FileVerifier>>) -> Checked<Vec<VerifierConfig>> {
        let Some(auth) = auth else { return Ok(Vec::new()) };
        let mut out = Ok(Vec::with_capacity(auth.0.len()));
        for (name, verifier) in &auth.0 {
            let checked = self.verifier(name, verifier);
            match (checked, &mut out) {
                (Ok(v), Ok(out)) => out.push(v),
                (Err(r), _) => out = Err(r),
                (Ok(_), Err(_)) => {}
            }
        }
        let verifiers = out?;
        for (i, a) in verifiers.iter().enumerate() {
            if let Some(b) = verifiers[..i]
                .iter()
                .find(|b| b.identity.header == a.identity.header && b.identity.claim != a.identity.claim)
            {
                self.warn(
                    &format!("auth.{}.identity.header", a.name),
                    format!(
                        "verifiers {} and {} write different claims into {}; a backend cannot tell which it got",
                        b.name, a.name, a.identity.header
                    ),
                );
            }
        }
        Ok(verifiers)
    }

    fn verifier(&mut self, name: &str, v: &FileVerifier) -> Checked<VerifierConfig> {
        let path = format!("auth.{name}");
        if !super::super::values::is_valid_name(name) {
            return Err(self.error(&path, super::super::values::invalid_name_message("verifier", name)));
        }
        let jwt = self.jwt(&format!("{path}.jwt"), &v.jwt);
        let token_from = match &v.token_from {
            None => Ok(vec![TokenSource::Header(http::header::AUTHORIZATION)]),
            Some(list) if list.is_empty() => {
                Err(self.error(&format!("{path}.token_from"), "at least one source is required"))
            }
            Some(list) => {
                let mut out = Ok(Vec::with_capacity(list.len()));
                for (i, text) in list.iter().enumerate() {
                    match (self.token_source(&format!("{path}.token_from[{i}]"), text), &mut out) {
                        (Ok(s), Ok(out)) => out.push(s),
                        (Err(r), _) => out = Err(r),
                        (Ok(_), Err(_)) => {}
                    }
                }
                out
            }
        };
        let identity = self.identity(&format!("{path}.identity"), v.identity.as_ref());
        Ok(VerifierConfig {
            name: name.to_owned(),
            jwt: jwt?,
            token_from: token_from?,
            identity: identity?,
            required: v.required.unwrap_or(true),
        })
    }

    fn identity(&mut self, path: &str, identity: Option<&FileIdentity>) -> Checked<IdentityConfig> {
        let claim = match identity.and_then(|i| i.claim.as_ref()) {
            None => Ok(DEFAULT_IDENTITY_CLAIM.to_owned()),
            Some(c) if c.as_str().is_empty() => Err(self.error(&format!("{path}.claim"), "claim must not be empty")),
            Some(c) => Ok(c.0.clone()),
        };
        let header = match identity.and_then(|i| i.header.as_ref()) {
            None => Ok(HeaderName::from_static(DEFAULT_IDENTITY_HEADER)),
            Some(h) => {
                let header_path = format!("{path}.header");
                self.header_name(&header_path, h.as_str()).and_then(|name| {
                    if RESERVED_HEADERS.contains(&name.as_str()) {
                        Err(self.error(
                            &header_path,
                            format!("{name} is written by tether or describes one hop; choose another header"),
                        ))
                    } else {
                        Ok(name)
                    }
                })
            }
        };
        Ok(IdentityConfig { claim: claim?, header: header? })
    }

    fn jwt(&mut self, path: &str, jwt: &FileJwt) -> Checked<JwtConfig> {
        let algorithms = self.algorithms(&format!("{path}.algorithms"), jwt.algorithms.as_deref());
        let keys = algorithms.as_ref().ok().map(|algorithms| self.jwt_keys(path, jwt, algorithms));
        let issuer = match &jwt.issuer {
            Some(i) if i.as_str().is_empty() => Err(self.error(&format!("{path}.issuer"), "issuer must not be empty")),
            other => Ok(other.as_ref().map(|i| i.0.clone())),
        };
        let audience =
            match &jwt.audience {
                None => Ok(Vec::new()),
                Some(list) if list.is_empty() || list.iter().any(|a| a.as_str().is_empty()) => Err(self
                    .error(&format!("{path}.audience"), "list one or more non-empty audiences, or leave audience out")),
                Some(list) => Ok(list.iter().map(|a| a.0.clone()).collect()),
            };
        let leeway = self.duration(&format!("{path}.leeway"), jwt.leeway.as_ref(), DEFAULT_LEEWAY);
        Ok(JwtConfig {
            algorithms: algorithms?,
            keys: keys.expect("keys are checked whenever the algorithms are valid")?,
            issuer: issuer?,
            audience: audience?,
            leeway: leeway?,
            require_exp: jwt.require_exp.unwrap_or(true),
        })
    }

    fn algorithms(&mut self, path: &str, list: Option<&[crate::config::file::Text]>) -> Checked<Vec<Algorithm>> {
        let Some(list) = list.filter(|l| !l.is_empty()) else {
            return Err(self.error(
                path,
                "list the accepted algorithms, e.g. [RS256, ES256] (RS256/384/512, PS256/384/512, ES256/384, EdDSA, HS256/384/512)",
            ));
        };
        let mut out = Ok(Vec::with_capacity(list.len()));
        for (i, text) in list.iter().enumerate() {
            let item = format!("{path}[{i}]");
            let parsed = match text.as_str() {
                none if none.eq_ignore_ascii_case("none") => {
                    Err(self.error(&item, "\"none\" is never accepted: an unsigned token proves nothing"))
                }
                name => name.parse::<Algorithm>().map_err(|_| {
                    self.error(
                        &item,
                        format!(
                            "unknown algorithm {name:?}; expected RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384 or HS512"
                        ),
                    )
                }),
            };
            match (parsed, &mut out) {
                (Ok(alg), Ok(out)) if !out.contains(&alg) => out.push(alg),
                (Ok(_), _) => {}
                (Err(r), _) => out = Err(r),
            }
        }
        out
    }

    fn jwt_keys(&mut self, path: &str, jwt: &FileJwt, algorithms: &[Algorithm]) -> Checked<JwtKeys> {
        let hmac = algorithms.iter().filter(|a| a.family() == AlgorithmFamily::Hmac).count();
        let sources: Vec<&str> = [
            jwt.jwks_file.as_ref().map(|_| "jwks_file"),
            jwt.key_file.as_ref().map(|_| "key_file"),
            jwt.secret_env.as_ref().map(|_| "secret_env"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if sources.len() != 1 {
            let found = if sources.is_empty() { "none".to_owned() } else { sources.join(" and ") };
            return Err(
                self.error(path, format!("set exactly one of jwks_file, key_file or secret_env (found {found})"))
            );
        }
        if let Some(var) = &jwt.secret_env {
            let var_path = format!("{path}.secret_env");
            if hmac != algorithms.len() {
                return Err(self.error(
                    &format!("{path}.algorithms"),
                    "secret_env verifies HS256/HS384/HS512 only: a shared secret must never verify a public-key algorithm",
                ));
            }
            let var = self.env_name(&var_path, var)?;
            match (self.env)(&var) {
                None => self.warn(
                    &var_path,
                    format!("environment variable {var} is not set; every token will be refused until it is"),
                ),
                Some(secret) if secret.len() < MIN_SECRET_BYTES => {
                    return Err(self.error(
                        &var_path,
                        format!(
                            "the secret in {var} is {} bytes long; HMAC needs at least {MIN_SECRET_BYTES}",
                            secret.len()
                        ),
                    ));
                }
                Some(_) => {}
            }
            return Ok(JwtKeys::SecretEnv(var));
        }
        if hmac > 0 {
            return Err(self.error(
                &format!("{path}.algorithms"),
                "HS256/HS384/HS512 need secret_env: public key files never verify HMAC tokens (that would let anyone holding the public key sign)",
            ));
        }
        if let Some(file) = &jwt.jwks_file {
            let resolved = self.base_dir.join(file.as_str());
            let file_path = format!("{path}.jwks_file");
            return match jwt::read_jwks(file.as_str(), &resolved, algorithms) {
                Ok((keys, skipped)) => {
                    for note in skipped {
                        self.warn(&file_path, note);
                    }
                    Ok(JwtKeys::Files { path: resolved, keys: keys.into() })
                }
                Err(e) => Err(self.error(&file_path, e.to_string())),
            };
        }
        let Some(file) = &jwt.key_file else {
            return Err(self.error(path, "set exactly one of jwks_file, key_file or secret_env"));
        };
        let file_path = format!("{path}.key_file");
        let family = algorithms[0].family();
        if algorithms.iter().any(|a| a.family() != family) {
            return Err(self.error(
                &format!("{path}.algorithms"),
                format!(
                    "key_file holds one key, so its algorithms must be of one family (RS*/PS*, ES* or EdDSA); got {}",
                    jwt::names(algorithms)
                ),
            ));
        }
        let resolved = self.base_dir.join(file.as_str());
        match jwt::read_key_file(file.as_str(), &resolved, family) {
            Ok(key) => Ok(JwtKeys::Files { path: resolved, keys: vec![key].into() }),
            Err(e) => Err(self.error(&file_path, e.to_string())),
        }
    }
}
