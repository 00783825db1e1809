//! Who a session is, decided once, at CONNECT. The first that applies wins:
//!
//! 1. a token in the CONNECT frame (`Authorization: Bearer`, or `passcode`) when `--jwt-*`
//!    configures a verifier: its verified claim. A token that does not verify is refused
//!    (ERROR, then close), never downgraded to anonymous;
//! 2. the identity header of the upgrade request, when it came from a `--trust-proxy` peer;
//! 3. CONNECT `login`, with `--accept-login` only;
//! 4. nobody: an anonymous session, named at random (128 bits from the OS) so that nothing a
//!    client sees (session ids, message ids) leads to another session's `/user/` name.
//!
//! A token outranks the header because it is the more specific statement, verified here, and
//! made on this very session (Spring does the same: a `Principal` set while handling CONNECT
//! replaces the handshake's).

use rand::TryRng as _;

use crate::app::hub::is_valid_user_id;
use crate::app::stomp::Frame;
use crate::app::trust::Trust;
use crate::auth::AuthError;
use crate::config::TokenSource;

/// Where a session's user came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Identity {
    /// The verified claim of the CONNECT token.
    Token(String),
    /// The identity header a trusted proxy set.
    Header(String),
    /// CONNECT `login` (`--accept-login`).
    Login(String),
    /// Nobody: the random name routes `/user/` destinations to this session only.
    Anonymous(String),
}

impl Identity {
    /// The user as others see it (`user-name`, `tether-user`); `None` when anonymous.
    pub(super) fn user(&self) -> Option<&str> {
        match self {
            Identity::Token(u) | Identity::Header(u) | Identity::Login(u) => Some(u),
            Identity::Anonymous(_) => None,
        }
    }

    /// The name `/user/...` destinations of this session are keyed by.
    pub(super) fn routing_name(&self) -> &str {
        match self {
            Identity::Token(u) | Identity::Header(u) | Identity::Login(u) | Identity::Anonymous(u) => u,
        }
    }
}

/// Why a CONNECT is refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refused {
    /// The token does not verify.
    #[error("{0}")]
    Token(AuthError),
    /// It verified, but its claim cannot name a user here.
    #[error("the token's identity claim is not a usable user id")]
    TokenIdentity,
    /// `--accept-login`, and a `login` that cannot name a user.
    #[error("invalid login")]
    Login,
    /// The OS gave no randomness for an anonymous name.
    #[error("cannot name an anonymous session")]
    NoEntropy,
}

impl Refused {
    /// The ERROR frame's `message`.
    pub(super) fn message(&self) -> &'static str {
        match self {
            Refused::Token(_) | Refused::TokenIdentity => "invalid token",
            Refused::Login => "invalid login",
            Refused::NoEntropy => "server error",
        }
    }
}

/// The identity of a session whose CONNECT is `frame` and whose upgrade request carried
/// `header_user` from a trusted proxy.
pub(super) fn decide(trust: &Trust, frame: &Frame, header_user: Option<&str>) -> Result<Identity, Refused> {
    if let Some(verifier) = &trust.verifier
        && let Some(token) = crate::app::jwt::connect_token(&frame.headers)
    {
        let verified =
            verifier.verify(token, TokenSource::Header(http::header::AUTHORIZATION)).map_err(Refused::Token)?;
        let user = verified.identity.to_str().ok().filter(|u| is_valid_user_id(u)).ok_or(Refused::TokenIdentity)?;
        return Ok(Identity::Token(user.to_owned()));
    }
    if let Some(user) = header_user {
        return Ok(Identity::Header(user.to_owned()));
    }
    if trust.accept_login
        && let Some(login) = frame.get("login")
    {
        return if is_valid_user_id(login) { Ok(Identity::Login(login.to_owned())) } else { Err(Refused::Login) };
    }
    anonymous_name().map(Identity::Anonymous)
}

/// `anon-` and 128 random bits from the OS, in hex.
fn anonymous_name() -> Result<String, Refused> {
    let mut bytes = [0u8; 16];
    rand::rngs::SysRng.try_fill_bytes(&mut bytes).map_err(|_| Refused::NoEntropy)?;
    Ok(format!("anon-{:032x}", u128::from_be_bytes(bytes)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::app::stomp::Command;
    use crate::app::trust::{Origins, TrustedProxies};
    use crate::config::{IdentityConfig, JwtConfig, JwtKeys, VerifierConfig};

    const SECRET: &str = "an identity test secret of thirty-two bytes";

    fn trust(verifier: bool, accept_login: bool) -> Trust {
        let verifier = verifier.then(|| {
            let config = VerifierConfig {
                name: "t".into(),
                jwt: JwtConfig {
                    algorithms: vec![jsonwebtoken::Algorithm::HS256],
                    keys: JwtKeys::SecretEnv("S".into()),
                    issuer: None,
                    audience: Vec::new(),
                    leeway: std::time::Duration::ZERO,
                    require_exp: true,
                },
                token_from: Vec::new(),
                identity: IdentityConfig { claim: "sub".into(), header: http::HeaderName::from_static("x-user-id") },
                required: false,
            };
            Arc::new(crate::auth::Verifier::new(&config, &|_| Some(SECRET.into())))
        });
        Trust {
            proxies: TrustedProxies::new(&[]),
            origins: Origins::default(),
            verifier,
            accept_login,
            demo_login: None,
        }
    }

    fn token(sub: &str) -> String {
        let claims = serde_json::json!({ "sub": sub, "exp": jsonwebtoken::get_current_timestamp() + 60 });
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).expect("key");
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("sign")
    }

    fn connect(headers: &[(&str, &str)]) -> Frame {
        headers.iter().fold(Frame::new(Command::Connect), |f, (k, v)| f.header(*k, *v))
    }

    #[test]
    fn a_verified_token_wins_over_the_trusted_header_and_the_login() {
        let t = trust(true, true);
        let bearer = format!("Bearer {}", token("alice"));
        let frame = connect(&[("Authorization", &bearer), ("login", "mallory")]);
        assert_eq!(decide(&t, &frame, Some("bob")).expect("ok"), Identity::Token("alice".into()));
        let frame = connect(&[("passcode", &token("carol"))]);
        assert_eq!(decide(&t, &frame, None).expect("ok"), Identity::Token("carol".into()));
    }

    #[test]
    fn a_bad_token_is_refused_never_anonymous() {
        let t = trust(true, false);
        for bad in ["Bearer not-a-token", "Bearer a.b.c"] {
            let refused = decide(&t, &connect(&[("Authorization", bad)]), Some("bob")).expect_err(bad);
            assert!(matches!(refused, Refused::Token(_)), "{refused:?}");
            assert_eq!(refused.message(), "invalid token");
        }
        let slash = format!("Bearer {}", token("a/b"));
        assert!(matches!(decide(&t, &connect(&[("Authorization", &slash)]), None), Err(Refused::TokenIdentity)));
    }

    #[test]
    fn the_header_then_the_login_only_when_accepted_then_anonymous() {
        let strict = trust(false, false);
        assert_eq!(
            decide(&strict, &connect(&[("login", "eve")]), Some("bob")).expect("ok"),
            Identity::Header("bob".into())
        );
        let anonymous = decide(&strict, &connect(&[("login", "eve")]), None).expect("ok");
        assert!(matches!(&anonymous, Identity::Anonymous(_)), "login is no identity by default: {anonymous:?}");
        assert_eq!(anonymous.user(), None);
        let dev = trust(false, true);
        assert_eq!(decide(&dev, &connect(&[("login", "eve")]), None).expect("ok"), Identity::Login("eve".into()));
        assert!(matches!(decide(&dev, &connect(&[("login", "a/b")]), None), Err(Refused::Login)));
        // Without a verifier a token is not looked at.
        let bearer = format!("Bearer {}", token("alice"));
        assert!(matches!(decide(&strict, &connect(&[("Authorization", &bearer)]), None), Ok(Identity::Anonymous(_))));
    }

    #[test]
    fn anonymous_names_are_random_and_long() {
        let names: std::collections::HashSet<String> = (0..1000).map(|_| anonymous_name().expect("entropy")).collect();
        assert_eq!(names.len(), 1000);
        for n in &names {
            assert!(n.starts_with("anon-") && n.len() == 37 && is_valid_user_id(n), "{n}");
        }
    }
}
