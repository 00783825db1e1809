//! Every way a token is accepted or refused, with real keys (tests/fixtures/jwt) and tokens
//! signed by the same crate.

use std::time::Duration;

use http::header::{AUTHORIZATION, COOKIE, HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

use super::*;
use crate::config::{IdentityConfig, JwtConfig};

const SECRET: &str = "a test secret that is at least thirty-two bytes long";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn key(kid: Option<&str>, alg: Option<Algorithm>, key: DecodingKey) -> JwtKey {
    JwtKey { kid: kid.map(str::to_owned), alg, key }
}

fn rsa() -> DecodingKey {
    DecodingKey::from_rsa_pem(&fixture("rsa.pub.pem")).expect("rsa public key")
}

fn config(algorithms: &[Algorithm], keys: JwtKeys) -> VerifierConfig {
    VerifierConfig {
        name: "users".into(),
        jwt: JwtConfig {
            algorithms: algorithms.to_vec(),
            keys,
            issuer: Some("https://id.test".into()),
            audience: vec!["chat".into()],
            leeway: Duration::from_secs(30),
            require_exp: true,
        },
        token_from: vec![
            TokenSource::Header(AUTHORIZATION),
            TokenSource::Cookie("access_token".into()),
            TokenSource::Query("access_token".into()),
        ],
        identity: IdentityConfig { claim: "sub".into(), header: HeaderName::from_static("x-user-id") },
        required: true,
    }
}

fn files(keys: Vec<JwtKey>) -> JwtKeys {
    JwtKeys::Files { path: "test".into(), keys: keys.into() }
}

fn public_verifier() -> Verifier {
    let ec = DecodingKey::from_ec_pem(&fixture("ec.pub.pem")).expect("ec public key");
    let ed = DecodingKey::from_ed_pem(&fixture("ed.pub.pem")).expect("ed public key");
    let keys = files(vec![
        key(Some("rsa-1"), None, rsa()),
        key(Some("ec-1"), Some(Algorithm::ES256), ec),
        key(Some("ed-1"), None, ed),
    ]);
    Verifier::new(&config(&[Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::EdDSA], keys), &|_| None)
}

fn hmac_verifier() -> Verifier {
    let secret = |name: &str| (name == "JWT_SECRET").then(|| SECRET.to_owned());
    Verifier::new(&config(&[Algorithm::HS256], JwtKeys::SecretEnv("JWT_SECRET".into())), &secret)
}

fn good_claims() -> serde_json::Value {
    json!({ "sub": "alice", "iss": "https://id.test", "aud": "chat", "exp": now() + 600 })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value) -> String {
    let key = match alg {
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(&fixture("rsa.key")),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture("ec.key")),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&fixture("ed.key")),
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        other => panic!("no test key for {other:?}"),
    }
    .expect("signing key");
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).expect("sign")
}

fn verify(v: &Verifier, token: &str) -> Result<String, AuthError> {
    v.verify(token, TokenSource::Header(AUTHORIZATION)).map(|ok| ok.identity.to_str().expect("ASCII").to_owned())
}

#[test]
fn tokens_signed_with_every_public_key_algorithm_verify_and_yield_the_identity() {
    let v = public_verifier();
    for (alg, kid) in [
        (Algorithm::RS256, "rsa-1"),
        (Algorithm::PS256, "rsa-1"),
        (Algorithm::ES256, "ec-1"),
        (Algorithm::EdDSA, "ed-1"),
    ] {
        assert_eq!(verify(&v, &sign(alg, Some(kid), &good_claims())), Ok("alice".into()), "{alg:?}");
    }
    assert_eq!(verify(&hmac_verifier(), &sign(Algorithm::HS256, None, &good_claims())), Ok("alice".into()));
}

#[test]
fn claims_are_checked() {
    let v = public_verifier();
    let t = |claims: serde_json::Value| verify(&v, &sign(Algorithm::RS256, Some("rsa-1"), &claims));
    let mut c = good_claims();
    c["exp"] = json!(now() - 3600);
    assert_eq!(t(c), Err(AuthError::Expired));
    let mut c = good_claims();
    c["exp"] = json!(now() - 10);
    assert_eq!(t(c), Ok("alice".into()), "within the 30 s leeway");
    let mut c = good_claims();
    c["nbf"] = json!(now() + 3600);
    assert_eq!(t(c), Err(AuthError::NotYetValid));
    let mut c = good_claims();
    c["iss"] = json!("https://evil.test");
    assert_eq!(t(c), Err(AuthError::Issuer));
    let mut c = good_claims();
    c["aud"] = json!(["other", "another"]);
    assert_eq!(t(c), Err(AuthError::Audience));
    let mut c = good_claims();
    c["aud"] = json!(["other", "chat"]);
    assert_eq!(t(c), Ok("alice".into()), "one audience matching is enough");
    for claim in ["exp", "iss", "aud"] {
        let mut c = good_claims();
        c.as_object_mut().expect("object").remove(claim);
        assert_eq!(t(c), Err(AuthError::MissingClaim(claim.into())), "{claim}");
    }
    let mut c = good_claims();
    c.as_object_mut().expect("object").remove("sub");
    assert_eq!(t(c), Err(AuthError::NoIdentity("sub".into())));
    let mut c = good_claims();
    c["sub"] = json!(42);
    assert_eq!(t(c), Ok("42".into()), "a numeric identity is rendered as its JSON text");
    for bad in [json!(""), json!("ali\nce")] {
        let mut c = good_claims();
        c["sub"] = bad.clone();
        assert_eq!(t(c), Err(AuthError::NoIdentity("sub".into())), "{bad}");
    }
    let mut c = good_claims();
    c["sub"] = json!(["alice"]);
    assert_eq!(t(c), Err(AuthError::Malformed), "sub must be a string (RFC 7519 4.1.2)");
}

#[test]
fn exp_is_optional_only_when_configured() {
    let mut c = config(&[Algorithm::RS256], files(vec![key(None, None, rsa())]));
    c.jwt.require_exp = false;
    let v = Verifier::new(&c, &|_| None);
    let mut claims = good_claims();
    claims.as_object_mut().expect("object").remove("exp");
    assert_eq!(verify(&v, &sign(Algorithm::RS256, None, &claims)), Ok("alice".into()));
}

#[test]
fn unsigned_forged_and_confused_tokens_are_refused() {
    let v = public_verifier();
    let good = sign(Algorithm::RS256, Some("rsa-1"), &good_claims());
    // alg "none": the header does not even parse as a signature algorithm.
    let none_header = URL_SAFE.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = good.split('.').nth(1).expect("payload");
    assert_eq!(verify(&v, &format!("{none_header}.{payload}.")), Err(AuthError::Malformed));
    // The payload changed, the signature kept.
    let parts: Vec<&str> = good.split('.').collect();
    let forged = URL_SAFE.encode(
        serde_json::to_vec(&json!({ "sub": "mallory", "iss": "https://id.test", "aud": "chat", "exp": now() + 600 }))
            .expect("json"),
    );
    assert_eq!(verify(&v, &format!("{}.{forged}.{}", parts[0], parts[2])), Err(AuthError::Signature));
    // Signed with another RSA key under our kid.
    let other = EncodingKey::from_rsa_pem(&fixture("rsa2.key")).expect("key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    assert_eq!(verify(&v, &encode(&header, &good_claims(), &other).expect("sign")), Err(AuthError::Signature));
    // HS256 with the RSA public key as the secret: refused before any MAC is computed.
    let confused = EncodingKey::from_secret(&fixture("rsa.pub.pem")).expect("key");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    assert_eq!(verify(&v, &encode(&header, &good_claims(), &confused).expect("sign")), Err(AuthError::Algorithm));
    // An algorithm the verifier accepts, but not with the key its kid names.
    assert_eq!(verify(&v, &sign(Algorithm::RS256, Some("ec-1"), &good_claims())), Err(AuthError::Algorithm));
    // A JWK with its own alg verifies only that one.
    let ec_only = Verifier::new(
        &config(
            &[Algorithm::ES256, Algorithm::ES384],
            files(vec![key(
                Some("ec-1"),
                Some(Algorithm::ES384),
                DecodingKey::from_ec_pem(&fixture("ec.pub.pem")).expect("key"),
            )]),
        ),
        &|_| None,
    );
    assert_eq!(verify(&ec_only, &sign(Algorithm::ES256, Some("ec-1"), &good_claims())), Err(AuthError::Algorithm));
    // Unknown kid; no kid while several keys could apply.
    assert_eq!(verify(&v, &sign(Algorithm::RS256, Some("rsa-9"), &good_claims())), Err(AuthError::UnknownKey));
    let two_rsa = Verifier::new(
        &config(
            &[Algorithm::RS256],
            files(vec![
                key(Some("a"), None, rsa()),
                key(Some("b"), None, DecodingKey::from_rsa_pem(&fixture("rsa2.pub.pem")).expect("key")),
            ]),
        ),
        &|_| None,
    );
    assert_eq!(verify(&two_rsa, &sign(Algorithm::RS256, None, &good_claims())), Err(AuthError::UnknownKey));
    // An accepted kind of token, but of an algorithm this verifier does not list.
    assert_eq!(verify(&hmac_verifier(), &good), Err(AuthError::Algorithm));
    // Truncated, empty, garbage, oversized.
    for bad in [
        &good[..good.len() - 5],
        &good[..good.rfind('.').expect("dot")],
        "",
        "a.b",
        "not a token",
        &"x".repeat(MAX_TOKEN_BYTES + 1),
    ] {
        let got = verify(&v, bad);
        assert!(matches!(got, Err(AuthError::Malformed | AuthError::Signature)), "{:.40}: {got:?}", bad);
    }
}

#[test]
fn an_unset_secret_refuses_everything() {
    let v = Verifier::new(&config(&[Algorithm::HS256], JwtKeys::SecretEnv("UNSET".into())), &|_| None);
    assert_eq!(verify(&v, &sign(Algorithm::HS256, None, &good_claims())), Err(AuthError::NoKey));
}

#[test]
fn tokens_are_found_in_order_and_bearer_is_case_insensitive() {
    let h = |pairs: &[(&str, &str)]| {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(HeaderName::from_bytes(n.as_bytes()).expect("name"), HeaderValue::from_str(v).expect("value"));
        }
        map
    };
    let sources = config(&[Algorithm::RS256], files(vec![])).token_from;
    let found = |headers: &HeaderMap, query: Option<&str>| find_token(&sources, headers, query);
    assert_eq!(
        found(&h(&[("authorization", "bearer abc")]), None),
        Some(("abc".into(), TokenSource::Header(AUTHORIZATION)))
    );
    assert_eq!(found(&h(&[("authorization", "BEARER  abc ")]), None).map(|f| f.0), Some("abc".into()));
    assert_eq!(found(&h(&[("authorization", "Basic abc")]), None), None, "another scheme holds no token");
    assert_eq!(
        found(&h(&[(COOKIE.as_str(), "a=1; access_token=ck")]), Some("access_token=q")).map(|f| f.0),
        Some("ck".into()),
        "cookie before query, as listed"
    );
    assert_eq!(
        found(&HeaderMap::new(), Some("x=1&Access_Token=q%2B1")),
        Some(("q+1".into(), TokenSource::Query("access_token".into()))),
        "query names match whatever their case"
    );
    assert_eq!(found(&h(&[("authorization", "Bearer ")]), Some("access_token=")), None, "empty tokens are absent");
}

#[test]
fn a_request_without_a_token_passes_only_where_none_is_required() {
    let required = public_verifier();
    assert_eq!(required.verify_request(&HeaderMap::new(), None).err(), Some(AuthError::Missing));
    let mut c = config(&[Algorithm::RS256], files(vec![key(None, None, rsa())]));
    c.required = false;
    let optional = Verifier::new(&c, &|_| None);
    assert!(matches!(optional.verify_request(&HeaderMap::new(), None), Ok(None)));
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer garbage"));
    assert_eq!(
        optional.verify_request(&headers, None).err(),
        Some(AuthError::Malformed),
        "present but invalid is never anonymous"
    );
}

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as URL_SAFE;
