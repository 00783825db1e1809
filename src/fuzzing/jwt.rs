//! `jwt`: token verification ([`Verifier::verify`]) with the test keys of
//! `tests/fixtures/jwt` (read from the source tree, once), and JWKS parsing
//! ([`crate::config::jwt::parse_jwks`]).
//!
//! Input: a mode byte, then per mode
//! - 0: a token, verified as is by both verifiers;
//! - 1: a token built here and validly signed: algorithm and `kid` choices, a choice per claim
//!   (valid, absent, wrong value, wrong type), or raw header and payload JSON separated by
//!   0x00 when the flag byte says so;
//! - 2: a JWKS document, parsed.
//!
//! The verifiers are those of a config: one with the fixture JWKS (RSA, EC and Ed25519 keys,
//! each with a `kid`), which also lists HS256 among its algorithms so that signing with a
//! public key as an HMAC secret is tried; one with an HMAC secret. Both require `exp`, issuer
//! `https://id.test` and audience `chat`, with 30 s of leeway, and forward `sub`.
//!
//! Invariants:
//! - nothing is accepted that breaks the policy: the token's `alg` is one the verifier lists
//!   and of the family of the key it names (or of the only key of that family), `exp` is a
//!   number not past (with leeway), `nbf` if present a number not ahead, `iss` and `aud` name
//!   the configured ones, and the identity is `sub` as text;
//! - a token built with every choice valid is accepted, with `sub` as its identity;
//! - a JWKS that parses has at least one key, each of a family some configured algorithm
//!   uses, and never a symmetric one.

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use http::header::{AUTHORIZATION, HeaderName};
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey};
use serde_json::{Value, json};

use super::input::Input;
use crate::auth::{AuthError, Verified, Verifier};
use crate::config::jwt::parse_jwks;
use crate::config::{IdentityConfig, JwtConfig, JwtKey, JwtKeys, TokenSource, VerifierConfig};

/// Read at run time, not included: the Docker build context has `src/` but not `tests/`.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");
const SECRET: &str = "a fuzzing secret that is at least thirty-two bytes long";
const ISSUER: &str = "https://id.test";
const AUDIENCE: &str = "chat";
const LEEWAY_SECS: u64 = 30;
const PUBLIC_ALGORITHMS: [Algorithm; 5] =
    [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::EdDSA, Algorithm::HS256];
const HMAC_ALGORITHMS: [Algorithm; 2] = [Algorithm::HS256, Algorithm::HS384];

struct Fixture {
    rsa_public: Vec<u8>,
    public: Verifier,
    public_keys: Vec<JwtKey>,
    hmac: Verifier,
    ed: EncodingKey,
    ec: EncodingKey,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let read = |name: &str| {
            std::fs::read(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("fixture {FIXTURES}/{name}: {e}"))
        };
        let (public_keys, _) = parse_jwks("the fixture JWKS".into(), &read("jwks.json"), &PUBLIC_ALGORITHMS)
            .expect("the fixture JWKS parses");
        let config = |algorithms: &[Algorithm], keys: JwtKeys| VerifierConfig {
            name: "fuzz".into(),
            jwt: JwtConfig {
                algorithms: algorithms.to_vec(),
                keys,
                issuer: Some(ISSUER.into()),
                audience: vec![AUDIENCE.into()],
                leeway: Duration::from_secs(LEEWAY_SECS),
                require_exp: true,
            },
            token_from: vec![TokenSource::Header(AUTHORIZATION)],
            identity: IdentityConfig { claim: "sub".into(), header: HeaderName::from_static("x-user-id") },
            required: true,
        };
        let files = JwtKeys::Files { path: "jwks.json".into(), keys: public_keys.clone().into() };
        let secret = |name: &str| (name == "JWT_SECRET").then(|| SECRET.to_owned());
        Fixture {
            rsa_public: read("rsa.pub.pem"),
            public: Verifier::new(&config(&PUBLIC_ALGORITHMS, files), &|_| None),
            public_keys,
            hmac: Verifier::new(&config(&HMAC_ALGORITHMS, JwtKeys::SecretEnv("JWT_SECRET".into())), &secret),
            ed: EncodingKey::from_ed_pem(&read("ed.key")).expect("the fixture Ed25519 key"),
            ec: EncodingKey::from_ec_pem(&read("ec.key")).expect("the fixture EC key"),
        }
    })
}

/// See the module doc.
pub fn jwt(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 3 {
        0 => {
            let token = String::from_utf8_lossy(input.rest());
            let _ = verify(false, &token);
            let _ = verify(true, &token);
        }
        1 => signed(input),
        _ => jwks(input.rest()),
    }
}

fn verifier(hmac: bool) -> &'static Verifier {
    if hmac { &fixture().hmac } else { &fixture().public }
}

/// Verify `token`; anything accepted must satisfy the policy.
fn verify(hmac: bool, token: &str) -> Result<Verified, AuthError> {
    let before = jsonwebtoken::get_current_timestamp();
    let result = verifier(hmac).verify(token, TokenSource::Header(AUTHORIZATION));
    let after = jsonwebtoken::get_current_timestamp();
    if let Ok(verified) = &result {
        check_accepted(hmac, token.trim(), verified, before, after);
    }
    result
}

fn check_accepted(hmac: bool, token: &str, verified: &Verified, before: u64, after: u64) {
    let header = jsonwebtoken::decode_header(token).expect("an accepted token has a header");
    let alg = header.alg;
    if hmac {
        assert!(HMAC_ALGORITHMS.contains(&alg), "the HMAC verifier accepted {alg:?}");
    } else {
        assert!(PUBLIC_ALGORITHMS.contains(&alg), "the public-key verifier accepted {alg:?}");
        let keys = &fixture().public_keys;
        let fits = |k: &&JwtKey| k.key.family() == alg.family() && k.alg.is_none_or(|a| a == alg);
        match header.kid.as_deref() {
            Some(kid) => assert!(
                keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).any(|k| fits(&k)),
                "{alg:?} accepted with key {kid:?}, which is of another family or algorithm"
            ),
            None => assert_eq!(keys.iter().filter(fits).count(), 1, "{alg:?} accepted without a kid"),
        }
        assert_ne!(alg.family(), AlgorithmFamily::Hmac, "a public key was used as an HMAC secret");
    }
    let claims = &verified.claims;
    let exp = claims.get("exp").and_then(seconds).expect("an accepted token has a numeric exp");
    assert!(exp.saturating_add(LEEWAY_SECS) >= before, "accepted a token that expired at {exp} (now {before})");
    if let Some(nbf) = claims.get("nbf") {
        let nbf = seconds(nbf).expect("an accepted nbf is a number");
        assert!(nbf <= after + LEEWAY_SECS, "accepted a token valid only from {nbf} (now {after})");
    }
    let names = |claim: &str, wanted: &str| match claims.get(claim) {
        Some(Value::String(s)) => s == wanted,
        Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(wanted)),
        _ => false,
    };
    assert!(names("iss", ISSUER), "accepted issuer {:?}", claims.get("iss"));
    assert!(names("aud", AUDIENCE), "accepted audience {:?}", claims.get("aud"));
    let sub = match claims.get("sub") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        other => panic!("accepted identity claim {other:?}"),
    };
    assert_eq!(verified.identity.as_bytes(), sub.as_bytes(), "the identity is not sub");
}

/// A NumericDate (RFC 7519 section 2) as whole seconds: a non-negative integer, or a
/// non-integer rounded, as the crate reads `exp` and `nbf`.
fn seconds(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| value.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f.round() as u64))
}

/// How a token of mode 1 is signed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Signer {
    Hs256,
    Hs384,
    Ed,
    Ec,
    /// HS256 keyed with the RSA public key's PEM: the algorithm-confusion attack.
    Confused,
}

const SIGNERS: [Signer; 5] = [Signer::Hs256, Signer::Hs384, Signer::Ed, Signer::Ec, Signer::Confused];

fn signed(mut input: Input<'_>) {
    let signer = SIGNERS[usize::from(input.byte()) % SIGNERS.len()];
    let (alg, right_kid) = match signer {
        Signer::Hs256 | Signer::Confused => ("HS256", None),
        Signer::Hs384 => ("HS384", None),
        Signer::Ed => ("EdDSA", Some("ed-1")),
        Signer::Ec => ("ES256", Some("ec-1")),
    };
    let raw = input.byte() & 1 == 1;
    let (header, claims, all_valid) = if raw {
        let header = input.until(0).to_vec();
        (header, input.rest().to_vec(), false)
    } else {
        let kid_choice = input.byte() % 6;
        let kid = match kid_choice {
            0 => right_kid,
            1 => None,
            2 => Some("rsa-1"),
            3 => Some("ec-1"),
            4 => Some("ed-1"),
            _ => Some("other"),
        };
        let mut header = json!({ "alg": alg, "typ": "JWT" });
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        let (claims, claims_valid) = claims(&mut input);
        let header = serde_json::to_vec(&header).expect("JSON");
        let claims = serde_json::to_vec(&claims).expect("JSON");
        (header, claims, claims_valid && kid_choice == 0 && signer != Signer::Confused)
    };
    let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(&header), URL_SAFE_NO_PAD.encode(&claims));
    let signature = sign(signer, message.as_bytes());
    let token = format!("{message}.{signature}");
    let hmac = matches!(signer, Signer::Hs256 | Signer::Hs384);
    let result = verify(hmac, &token);
    if signer == Signer::Confused {
        assert!(result.is_err(), "a token signed with the RSA public key as an HMAC secret was accepted");
    }
    if all_valid {
        let verified = result.unwrap_or_else(|e| panic!("a valid token was refused: {e}"));
        assert_eq!(verified.identity, "alice");
    }
}

fn sign(signer: Signer, message: &[u8]) -> String {
    let hmac256 = |key: &[u8]| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key");
        mac.update(message);
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    };
    match signer {
        Signer::Hs256 => hmac256(SECRET.as_bytes()),
        Signer::Confused => hmac256(&fixture().rsa_public),
        Signer::Hs384 => {
            let mut mac = Hmac::<sha2::Sha384>::new_from_slice(SECRET.as_bytes()).expect("HMAC takes any key");
            mac.update(message);
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
        Signer::Ed => jsonwebtoken::crypto::sign(message, &fixture().ed, Algorithm::EdDSA).expect("Ed25519 signs"),
        Signer::Ec => jsonwebtoken::crypto::sign(message, &fixture().ec, Algorithm::ES256).expect("P-256 signs"),
    }
}

/// Claims from choice bytes: for each of `sub`, `iss`, `aud`, `exp` and `nbf`, 0 is valid, 1
/// absent, 2 a wrong value, 3 a wrong type, anything else a value from the input. Returns
/// whether every claim is valid (an absent `nbf` is).
fn claims(input: &mut Input<'_>) -> (Value, bool) {
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = serde_json::Map::new();
    let mut valid = true;
    let mut claim = |input: &mut Input<'_>, name: &str, good: Value, bad: Value, optional: bool| {
        let choice = input.byte() % 8;
        let value = match choice {
            0 => Some(good),
            1 => None,
            2 => Some(bad),
            3 => Some(json!([null, true])),
            _ => {
                let len = usize::from(input.byte() % 16);
                let text = String::from_utf8_lossy(input.bytes(len)).into_owned();
                Some(if choice.is_multiple_of(2) { json!(text) } else { json!(input.u64() >> (input.byte() % 64)) })
            }
        };
        valid &= choice == 0 || (choice == 1 && optional);
        if let Some(value) = value {
            claims.insert(name.to_owned(), value);
        }
    };
    claim(input, "sub", json!("alice"), json!(""), false);
    claim(input, "iss", json!(ISSUER), json!("https://evil.test"), false);
    claim(input, "aud", json!(AUDIENCE), json!(["other", "more"]), false);
    claim(input, "exp", json!(now + 600), json!(now - 3600), false);
    claim(input, "nbf", json!(now - 60), json!(now + 3600), true);
    (Value::Object(claims), valid)
}

fn jwks(text: &[u8]) {
    let algorithms = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
    let families = [AlgorithmFamily::Rsa, AlgorithmFamily::Ec, AlgorithmFamily::Ed];
    match parse_jwks("fuzzed JWKS".into(), text, &algorithms) {
        Ok((keys, skipped)) => {
            assert!(!keys.is_empty(), "a JWKS parsed to no key");
            for key in &keys {
                assert!(families.contains(&key.key.family()), "a key of an unconfigured family was kept");
                assert!(key.alg.is_none_or(|a| algorithms.contains(&a)), "a key for an unconfigured algorithm");
            }
            for note in skipped {
                assert!(!note.is_empty());
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
