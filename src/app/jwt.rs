//! `--jwt-*`: the verifier of the tokens clients present in their STOMP CONNECT frame, built
//! from the command line the way the proxy builds one from its config: an [`auth::Verifier`]
//! over keys read by `config::jwt`, so signatures and claims are checked by the same code (and
//! the same `jsonwebtoken` crate) at the edge and here. This module also knows where a CONNECT
//! frame carries its token.
//!
//! Algorithms are pinned. Without `--jwt-algorithms` they follow from the keys: a JWK's own
//! `alg`, else RS256 for an RSA key, ES256 or ES384 by the curve of an EC key, EdDSA for
//! Ed25519, HS256 for a secret. A secret never verifies a public-key algorithm, nor a public
//! key an HMAC one.
//!
//! [`auth::Verifier`]: crate::auth::Verifier

use std::path::Path;

use http::header::AUTHORIZATION;
use jsonwebtoken::{Algorithm, AlgorithmFamily};

use super::{AppArgs, AppError};
use crate::auth::Verifier;
use crate::config::jwt::{self, KeyFileError, names};
use crate::config::{
    DEFAULT_LEEWAY, Env, IdentityConfig, JwtConfig, JwtKey, JwtKeys, MIN_SECRET_BYTES, TokenSource, VerifierConfig,
};

/// Every public-key algorithm: what a JWKS is read for before its keys choose the defaults.
fn public_key_algorithms() -> Vec<Algorithm> {
    [AlgorithmFamily::Rsa, AlgorithmFamily::Ec, AlgorithmFamily::Ed]
        .iter()
        .flat_map(|f| f.algorithms())
        .copied()
        .collect()
}

/// A `--jwt-algorithms` item (`none` is not an algorithm here).
pub(crate) fn parse_algorithm(text: &str) -> Result<Algorithm, String> {
    text.trim().parse::<Algorithm>().map_err(|_| {
        format!("unknown algorithm {text:?}; expected RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384 or HS512")
    })
}

/// The verifier `args` ask for, or `None` without `--jwt-jwks`, `--jwt-key` or
/// `--jwt-secret-env`. Key files are read now; a secret is read from `env` now.
pub(crate) fn verifier(args: &AppArgs, env: &Env) -> Result<Option<Verifier>, AppError> {
    let sources = [args.jwt_jwks.is_some(), args.jwt_key.is_some(), args.jwt_secret_env.is_some()];
    match sources.iter().filter(|s| **s).count() {
        0 if args.jwt_issuer.is_some() || !args.jwt_audience.is_empty() || !args.jwt_algorithms.is_empty() => {
            return Err(AppError::JwtWithoutKey);
        }
        0 => return Ok(None),
        1 => {}
        _ => return Err(AppError::JwtKeySources),
    }
    let chosen = dedup(&args.jwt_algorithms);
    let (algorithms, keys) = if let Some(path) = &args.jwt_jwks {
        jwks(path, &chosen)?
    } else if let Some(path) = &args.jwt_key {
        key_file(path, &chosen)?
    } else {
        let var = args.jwt_secret_env.clone().unwrap_or_default();
        secret(&var, &chosen, env)?
    };
    if args.jwt_claim.is_empty() {
        return Err(AppError::Jwt("--jwt-claim must not be empty".into()));
    }
    let user_header = http::HeaderName::from_bytes(args.user_header.as_bytes())
        .map_err(|_| AppError::UserHeader(args.user_header.clone()))?;
    let config = VerifierConfig {
        name: "connect".into(),
        jwt: JwtConfig {
            algorithms: algorithms.clone(),
            keys,
            issuer: args.jwt_issuer.clone().filter(|i| !i.is_empty()),
            audience: args.jwt_audience.iter().filter(|a| !a.is_empty()).cloned().collect(),
            // As the proxy's verifiers allow by default.
            leeway: DEFAULT_LEEWAY,
            require_exp: true,
        },
        // Where the token is is the session's business (`connect_token`); this is only what
        // a verified token is reported as having come from.
        token_from: vec![TokenSource::Header(AUTHORIZATION)],
        identity: IdentityConfig { claim: args.jwt_claim.clone(), header: user_header },
        required: false,
    };
    tracing::info!(
        event = "connect_tokens_verified",
        algorithms = %names(&algorithms),
        issuer = config.jwt.issuer.as_deref(),
        audience = ?config.jwt.audience,
        claim = %args.jwt_claim,
        "CONNECT tokens (Authorization: Bearer, or passcode) are verified"
    );
    Ok(Some(Verifier::new(&config, &|name| env(name))))
}

fn jwks(path: &Path, chosen: &[Algorithm]) -> Result<(Vec<Algorithm>, JwtKeys), AppError> {
    let written = path.to_string_lossy();
    let no_hmac = |algorithms: &[Algorithm]| {
        if algorithms.iter().any(|a| a.family() == AlgorithmFamily::Hmac) {
            return Err(AppError::Jwt(
                "HS256/HS384/HS512 need --jwt-secret-env: a public key never verifies an HMAC token".into(),
            ));
        }
        Ok(())
    };
    no_hmac(chosen)?;
    let read_with = if chosen.is_empty() { public_key_algorithms() } else { chosen.to_vec() };
    let (keys, skipped) = jwt::read_jwks(&written, path, &read_with).map_err(|e| key_error("--jwt-jwks", &e))?;
    for note in skipped {
        tracing::warn!(file = %written, "{note}");
    }
    let algorithms = if chosen.is_empty() {
        let mut derived = Vec::new();
        for key in &keys {
            let alg = key.alg.or_else(|| default_algorithm(key)).ok_or_else(|| {
                AppError::Jwt(format!(
                    "--jwt-jwks {written}: key {} has no usable default algorithm; name it with --jwt-algorithms",
                    key.kid.as_deref().unwrap_or("without kid")
                ))
            })?;
            derived.push(alg);
        }
        dedup(&derived)
    } else {
        chosen.to_vec()
    };
    Ok((algorithms, JwtKeys::Files { path: path.to_owned(), keys: keys.into() }))
}

fn key_file(path: &Path, chosen: &[Algorithm]) -> Result<(Vec<Algorithm>, JwtKeys), AppError> {
    let written = path.to_string_lossy();
    let key = match chosen.first().map(|a| a.family()) {
        Some(AlgorithmFamily::Hmac) => {
            return Err(AppError::Jwt(
                "HS256/HS384/HS512 need --jwt-secret-env: a public key never verifies an HMAC token".into(),
            ));
        }
        Some(family) => {
            if chosen.iter().any(|a| a.family() != family) {
                return Err(AppError::Jwt(format!(
                    "--jwt-key holds one key, so --jwt-algorithms must be of one family (RS*/PS*, ES* or EdDSA); got {}",
                    names(chosen)
                )));
            }
            jwt::read_key_file(&written, path, family).map_err(|e| key_error("--jwt-key", &e))?
        }
        None => sniff_key(&written, path)?,
    };
    let algorithms = if chosen.is_empty() {
        vec![default_algorithm(&key).ok_or_else(|| {
            AppError::Jwt(format!("--jwt-key {written}: an EC key of a curve other than P-256 or P-384"))
        })?]
    } else {
        chosen.to_vec()
    };
    Ok((algorithms, JwtKeys::Files { path: path.to_owned(), keys: vec![key].into() }))
}

/// The key of a PEM file whose type the command line does not say: RSA, EC or Ed25519.
fn sniff_key(written: &str, path: &Path) -> Result<JwtKey, AppError> {
    for family in [AlgorithmFamily::Rsa, AlgorithmFamily::Ec, AlgorithmFamily::Ed] {
        match jwt::read_key_file(written, path, family) {
            Ok(key) => return Ok(key),
            Err(KeyFileError::Pem { .. }) => continue,
            Err(e) => return Err(key_error("--jwt-key", &e)),
        }
    }
    Err(AppError::Jwt(format!("--jwt-key {written}: not a PEM RSA, EC or Ed25519 public key")))
}

fn secret(var: &str, chosen: &[Algorithm], env: &Env) -> Result<(Vec<Algorithm>, JwtKeys), AppError> {
    if chosen.iter().any(|a| a.family() != AlgorithmFamily::Hmac) {
        return Err(AppError::Jwt(
            "--jwt-secret-env verifies HS256/HS384/HS512 only: a shared secret must never verify a public-key algorithm"
                .into(),
        ));
    }
    match env(var) {
        None => return Err(AppError::Jwt(format!("--jwt-secret-env {var}: the variable is not set"))),
        Some(s) if s.len() < MIN_SECRET_BYTES => {
            return Err(AppError::Jwt(format!(
                "--jwt-secret-env {var}: the secret is {} bytes long; HMAC needs at least {MIN_SECRET_BYTES}",
                s.len()
            )));
        }
        Some(_) => {}
    }
    let algorithms = if chosen.is_empty() { vec![Algorithm::HS256] } else { chosen.to_vec() };
    Ok((algorithms, JwtKeys::SecretEnv(var.to_owned())))
}

/// The algorithm a key verifies unless told otherwise. EC keys are told apart by the length
/// of their (uncompressed or compressed) point.
fn default_algorithm(key: &JwtKey) -> Option<Algorithm> {
    match key.key.family() {
        AlgorithmFamily::Rsa => Some(Algorithm::RS256),
        AlgorithmFamily::Ed => Some(Algorithm::EdDSA),
        AlgorithmFamily::Ec => match key.key.try_get_as_bytes().map(<[u8]>::len) {
            Ok(65 | 33) => Some(Algorithm::ES256),
            Ok(97 | 49) => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmFamily::Hmac => None,
    }
}

fn key_error(flag: &str, e: &KeyFileError) -> AppError {
    AppError::Jwt(format!("{flag}: {e}"))
}

fn dedup(algorithms: &[Algorithm]) -> Vec<Algorithm> {
    let mut out: Vec<Algorithm> = Vec::with_capacity(algorithms.len());
    for a in algorithms {
        if !out.contains(a) {
            out.push(*a);
        }
    }
    out
}

/// The token of a CONNECT frame: `Authorization: Bearer <token>` (header name and scheme in
/// any case; another scheme carries none), else `passcode` (the password field every STOMP
/// client can fill; a `Bearer ` prefix is allowed).
pub(crate) fn connect_token(headers: &[(String, String)]) -> Option<&str> {
    let named = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim());
    if let Some(token) = named("authorization").and_then(bearer).filter(|t| !t.is_empty()) {
        return Some(token);
    }
    named("passcode").map(|p| bearer(p).unwrap_or(p)).filter(|t| !t.is_empty())
}

/// The token of `Bearer <token>` (scheme in any case).
fn bearer(value: &str) -> Option<&str> {
    value.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer")).map(|(_, t)| t.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_token_is_the_bearer_authorization_else_the_passcode() {
        assert_eq!(connect_token(&headers(&[("Authorization", "Bearer abc")])), Some("abc"));
        assert_eq!(connect_token(&headers(&[("authorization", "bearer  abc ")])), Some("abc"));
        assert_eq!(connect_token(&headers(&[("passcode", "abc")])), Some("abc"));
        assert_eq!(connect_token(&headers(&[("passcode", "Bearer abc")])), Some("abc"));
        assert_eq!(
            connect_token(&headers(&[("passcode", "p"), ("Authorization", "Bearer a")])),
            Some("a"),
            "Authorization first"
        );
        assert_eq!(connect_token(&headers(&[("Authorization", "Basic dXNlcjpwdw=="), ("passcode", "p")])), Some("p"));
        assert_eq!(connect_token(&headers(&[("login", "alice"), ("passcode", "")])), None);
        assert_eq!(connect_token(&headers(&[])), None);
    }

    fn args() -> AppArgs {
        AppArgs::new("127.0.0.1:0".parse().expect("addr"))
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt").join(name)
    }

    fn no_env() -> Env {
        std::sync::Arc::new(|_| None)
    }

    #[test]
    fn without_key_options_there_is_no_verifier_and_stray_options_are_errors() {
        assert!(verifier(&args(), &no_env()).expect("ok").is_none());
        let mut a = args();
        a.jwt_issuer = Some("https://id.test".into());
        assert!(matches!(verifier(&a, &no_env()), Err(AppError::JwtWithoutKey)));
        let mut a = args();
        a.jwt_jwks = Some(fixture("jwks.json"));
        a.jwt_key = Some(fixture("rsa.pub.pem"));
        assert!(matches!(verifier(&a, &no_env()), Err(AppError::JwtKeySources)));
    }

    #[test]
    fn default_algorithms_follow_the_keys() {
        let (algs, _) = jwks(&fixture("jwks.json"), &[]).expect("jwks");
        assert!(algs.contains(&Algorithm::RS256) && algs.contains(&Algorithm::ES256), "{algs:?}");
        assert!(!algs.iter().any(|a| a.family() == AlgorithmFamily::Hmac));
        assert_eq!(key_file(&fixture("rsa.pub.pem"), &[]).expect("rsa").0, [Algorithm::RS256]);
        assert_eq!(key_file(&fixture("ec.pub.pem"), &[]).expect("ec").0, [Algorithm::ES256]);
        assert_eq!(key_file(&fixture("ed.pub.pem"), &[]).expect("ed").0, [Algorithm::EdDSA]);
        let env: Env = std::sync::Arc::new(|_| Some("x".repeat(MIN_SECRET_BYTES)));
        assert_eq!(secret("S", &[], &env).expect("secret").0, [Algorithm::HS256]);
    }

    #[test]
    fn keys_and_algorithms_of_different_kinds_never_mix() {
        assert!(jwks(&fixture("jwks.json"), &[Algorithm::HS256]).is_err(), "HMAC with a JWKS");
        assert!(key_file(&fixture("rsa.pub.pem"), &[Algorithm::HS256]).is_err(), "HMAC with a public key");
        assert!(key_file(&fixture("rsa.pub.pem"), &[Algorithm::RS256, Algorithm::ES256]).is_err(), "two families");
        assert!(key_file(&fixture("rsa.pub.pem"), &[Algorithm::ES256]).is_err(), "an RSA key is no EC key");
        let env: Env = std::sync::Arc::new(|_| Some("x".repeat(MIN_SECRET_BYTES)));
        assert!(secret("S", &[Algorithm::RS256], &env).is_err(), "a secret never verifies RS256");
        let short: Env = std::sync::Arc::new(|_| Some("short".into()));
        assert!(secret("S", &[], &short).is_err(), "a short secret");
        assert!(secret("S", &[], &no_env()).is_err(), "an unset variable");
        assert!(key_file(&fixture("missing.pem"), &[]).is_err());
        assert!(key_file(&fixture("jwks.json"), &[]).is_err(), "not PEM");
    }
}
