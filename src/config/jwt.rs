//! Key files named by `auth.*.jwt`: a JWKS document (`jwks_file`) or one PEM public key
//! (`key_file`), read and parsed into verification keys.
//!
//! Owns: reading the file, parsing it (with the `jsonwebtoken` crate), and refusing what must
//! never verify a token: symmetric keys published in a JWKS (HMAC secrets come only from
//! `secret_env`) and keys meant for encryption. Must not: verify tokens (that is `auth`).

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::JwtKey;
use super::tls::describe;

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyFileError {
    #[error("{what} does not exist")]
    Missing { what: String },
    #[error("cannot read {what}: {source}")]
    Read { what: String, source: std::io::Error },
    #[error("{what} is not a JWKS document (a JSON object with a \"keys\" array): {reason}")]
    NotJwks { what: String, reason: String },
    #[error(
        "{what}: key {kid} is a symmetric (\"oct\") key; HMAC secrets are never published in a \
         JWKS: use secret_env"
    )]
    Symmetric { what: String, kid: String },
    #[error("{what} holds no key usable for {algorithms}")]
    NoUsableKey { what: String, algorithms: String },
    #[error("{what} is not a PEM {kind} public key: {reason}")]
    Pem { what: String, kind: &'static str, reason: String },
}

/// Keys of the JWKS at `resolved` (written as `written` in the config), with a note for each
/// key that was skipped (unsupported type, meant for encryption, of a family none of
/// `algorithms` uses).
pub(crate) fn read_jwks(
    written: &str,
    resolved: &Path,
    algorithms: &[Algorithm],
) -> Result<(Vec<JwtKey>, Vec<String>), KeyFileError> {
    let what = format!("jwks_file {}", describe(written, resolved));
    let text = read(&what, resolved)?;
    parse_jwks(what, &text, algorithms)
}

/// The keys of the JWKS document `text` (described as `what` in errors); see [`read_jwks`].
pub(crate) fn parse_jwks(
    what: String,
    text: &[u8],
    algorithms: &[Algorithm],
) -> Result<(Vec<JwtKey>, Vec<String>), KeyFileError> {
    let document: serde_json::Value = serde_json::from_slice(text)
        .map_err(|e| KeyFileError::NotJwks { what: what.clone(), reason: e.to_string() })?;
    let Some(entries) = document.get("keys").and_then(|k| k.as_array()) else {
        return Err(KeyFileError::NotJwks { what, reason: "no \"keys\" array".into() });
    };
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let label =
            entry.get("kid").and_then(|k| k.as_str()).map_or_else(|| format!("#{}", i + 1), |k| format!("{k:?}"));
        if entry.get("kty").and_then(|k| k.as_str()) == Some("oct") {
            return Err(KeyFileError::Symmetric { what, kid: label });
        }
        let jwk: Jwk = match serde_json::from_value(entry.clone()) {
            Ok(jwk) => jwk,
            Err(e) => {
                skipped.push(format!("key {label} skipped: {e}"));
                continue;
            }
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            skipped.push(format!("key {label} skipped: it is for encryption (\"use\": \"enc\")"));
            continue;
        }
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            return Err(KeyFileError::Symmetric { what, kid: label });
        }
        let alg = match jwk.common.key_algorithm.map(|a| a.to_string().parse::<Algorithm>()) {
            None => None,
            Some(Ok(alg)) => Some(alg),
            Some(Err(_)) => {
                skipped.push(format!("key {label} skipped: its \"alg\" is not a signature algorithm"));
                continue;
            }
        };
        let key = match DecodingKey::from_jwk(&jwk) {
            Ok(key) => key,
            Err(e) => {
                skipped.push(format!("key {label} skipped: {e}"));
                continue;
            }
        };
        let usable = match alg {
            Some(alg) => algorithms.contains(&alg),
            None => algorithms.iter().any(|a| a.family() == key.family()),
        };
        if !usable {
            skipped.push(format!("key {label} skipped: none of the configured algorithms uses it"));
            continue;
        }
        keys.push(JwtKey { kid: jwk.common.key_id.clone(), alg, key });
    }
    if keys.is_empty() {
        return Err(KeyFileError::NoUsableKey { what, algorithms: names(algorithms) });
    }
    Ok((keys, skipped))
}

/// The one public key in the PEM file at `resolved`, of `family`.
pub(crate) fn read_key_file(written: &str, resolved: &Path, family: AlgorithmFamily) -> Result<JwtKey, KeyFileError> {
    let what = format!("key_file {}", describe(written, resolved));
    let pem = read(&what, resolved)?;
    let (kind, parsed) = match family {
        AlgorithmFamily::Rsa => ("RSA", DecodingKey::from_rsa_pem(&pem)),
        AlgorithmFamily::Ec => ("EC", DecodingKey::from_ec_pem(&pem)),
        AlgorithmFamily::Ed => ("Ed25519", DecodingKey::from_ed_pem(&pem)),
        AlgorithmFamily::Hmac => ("HMAC", Err(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat.into())),
    };
    let key = parsed.map_err(|e| KeyFileError::Pem { what, kind, reason: e.to_string() })?;
    Ok(JwtKey { kid: None, alg: None, key })
}

/// `RS256, ES256` for messages.
pub(crate) fn names(algorithms: &[Algorithm]) -> String {
    algorithms.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ")
}

fn read(what: &str, resolved: &Path) -> Result<Vec<u8>, KeyFileError> {
    std::fs::read(resolved).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => KeyFileError::Missing { what: what.to_owned() },
        _ => KeyFileError::Read { what: what.to_owned(), source },
    })
}
