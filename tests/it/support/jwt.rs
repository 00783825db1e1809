//! Signed tokens for tests, with the keys of `tests/fixtures/jwt` (public, test-only keys).

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

/// The HMAC secret tests configure through `secret_env`.
pub const SECRET: &str = "a test-only HMAC secret, thirty-two bytes or more";

/// `tests/fixtures/jwt/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt").join(name)
}

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims that verify against the verifiers tests configure: `sub`, issuer `https://id.test`,
/// audience `chat`, ten minutes to live.
pub fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "iss": "https://id.test", "aud": "chat", "exp": now() + 600 })
}

/// `claims` signed with `alg` by the fixture key that pairs with the JWKS `kid`, or the test
/// secret for HS256. `rsa-2` is the rotated key of `jwks-rotated.json`.
pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let pem = |name: &str| std::fs::read(fixture(name)).expect("fixture key");
    let key = match (alg, kid) {
        (Algorithm::HS256, _) => EncodingKey::from_secret(SECRET.as_bytes()),
        (Algorithm::ES256, _) => EncodingKey::from_ec_pem(&pem("ec.key")),
        (Algorithm::EdDSA, _) => EncodingKey::from_ed_pem(&pem("ed.key")),
        (_, Some("rsa-2")) => EncodingKey::from_rsa_pem(&pem("rsa2.key")),
        _ => EncodingKey::from_rsa_pem(&pem("rsa.key")),
    }
    .expect("signing key");
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).expect("sign")
}

/// A valid RS256 token for `sub` (kid `rsa-1`).
pub fn token(sub: &str) -> String {
    sign(Algorithm::RS256, Some("rsa-1"), &claims(sub))
}
