//! `/login?user=NAME` and `/logout` of `tether demo`: short-lived HS256 tokens for whatever
//! name is asked, in an `HttpOnly` cookie that the demo's proxy verifies on the WebSocket
//! upgrade (a browser cannot set headers on a WebSocket, but it sends its cookies). It stands
//! in for an identity provider so that the demo pins users by a *verified* claim.
//!
//! Anyone may log in as anyone here: that is what a demo login is. It is only ever switched on
//! by `tether demo`, with a key made for that run ([`super::Options::demo_login`]); no command
//! line flag of `tether backend` reaches it.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// The cookie the token rides in (the proxy's verifier reads `cookie:access_token`).
pub const COOKIE: &str = "access_token";
/// The `iss` of demo tokens.
pub const ISSUER: &str = "tether-demo";
/// How long a demo token is valid. The page logs in again before every (re)connect, so an
/// expired cookie costs nothing; a token is only checked when a WebSocket opens.
pub const TOKEN_TTL: Duration = Duration::from_secs(600);
/// The cookie is sent to the WebSocket endpoint only, nowhere else.
const COOKIE_PATH: &str = "/ws";

/// The key demo tokens are signed with.
#[derive(Clone)]
pub struct DemoLogin {
    secret: Arc<str>,
}

impl std::fmt::Debug for DemoLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DemoLogin { .. }")
    }
}

/// Why no token could be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign a demo token")]
pub struct MintError(#[source] jsonwebtoken::errors::Error);

impl DemoLogin {
    /// Tokens signed with `secret` (its UTF-8 bytes, as the proxy's `secret_env` reads it).
    pub fn new(secret: &str) -> Self {
        Self { secret: secret.into() }
    }

    /// A token for `user`, valid [`TOKEN_TTL`] from `now` (seconds since the epoch).
    pub fn mint(&self, user: &str, now: u64) -> Result<String, MintError> {
        let claims = serde_json::json!({
            "sub": user,
            "iss": ISSUER,
            "iat": now,
            "exp": now + TOKEN_TTL.as_secs(),
        });
        let key = EncodingKey::from_secret(self.secret.as_bytes()).map_err(MintError)?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).map_err(MintError)
    }
}

/// The `Set-Cookie` value that stores `token` (or, with `None`, removes it).
pub(crate) fn cookie(token: Option<&str>) -> String {
    match token {
        Some(token) => {
            format!("{COOKIE}={token}; Path={COOKIE_PATH}; Max-Age={}; HttpOnly; SameSite=Strict", TOKEN_TTL.as_secs())
        }
        None => format!("{COOKIE}=; Path={COOKIE_PATH}; Max-Age=0; HttpOnly; SameSite=Strict"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_verifies_with_the_same_secret_and_expires() {
        let secret = "a demo secret of at least thirty-two bytes";
        let login = DemoLogin::new(secret);
        let now = jsonwebtoken::get_current_timestamp();
        let token = login.mint("alice", now).expect("mint");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()).expect("key");
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).expect("verifies");
        assert_eq!(data.claims["sub"], "alice");
        assert_eq!(data.claims["exp"], now + TOKEN_TTL.as_secs());
        let other = jsonwebtoken::DecodingKey::from_secret(b"another secret of thirty-two bytes or more").expect("key");
        assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &other, &validation).is_err());
        assert!(format!("{login:?}").find(secret).is_none(), "the secret is never printed");
    }

    #[test]
    fn the_cookie_goes_to_the_websocket_only_and_scripts_never_see_it() {
        let set = cookie(Some("t0k"));
        assert!(set.starts_with("access_token=t0k; Path=/ws; "), "{set}");
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
        assert!(cookie(None).contains("Max-Age=0"));
    }
}
