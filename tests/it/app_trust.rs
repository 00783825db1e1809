//! What the reference backend believes: the identity header only from a `--trust-proxy`
//! peer, CONNECT tokens only when they verify (RS256 from a JWKS, HS256 from a secret; every
//! bad one is an ERROR and a close), `login` only with `--accept-login`, anonymous names
//! nobody can derive, and sessions only from pages of allowed origins (WebSocket and SockJS).

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tether::app::stomp::Command;

use crate::support::app::{TestApp, has_line};
use crate::support::app_process::AppProcess;
use crate::support::http_client;
use crate::support::jwt::{self, SECRET, claims, fixture, now, sign, token};
use crate::support::redis::TestRedis;
use crate::support::stomp_client::{ConnectOptions, StompClient, upgrade_status};
use crate::support::{WAIT, until};

/// A network that holds none of this machine's addresses.
const ELSEWHERE: &str = "192.0.2.0/24";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_header_counts_only_from_a_trusted_proxy() {
    // 127.0.0.1 is not a proxy of this instance: its header is ignored.
    let strict = TestApp::builder().trust_proxy(ELSEWHERE).spawn().await;
    let mut forged = StompClient::connect_with(&strict.ws_url(), ConnectOptions::default().user_header("alice")).await;
    assert_eq!(forged.connected.get("user-name"), None, "{:?}", forged.connected);
    let who = http_client::request(strict.addr, http::Method::GET, "/whoami", &[("x-user-id", "alice")], "").await;
    assert_eq!(who.json()["user"], serde_json::Value::Null);
    // alice's own queue stays hers: the forger listening on /user/queue/... hears nothing.
    forged.subscribe("/user/queue/inbox", "inbox").await;
    forged.subscribe("/topic/sync", "sync").await;
    assert_eq!(strict.publish("/user/alice/queue/inbox", "for alice").await.status, 202);
    assert_eq!(strict.publish("/topic/sync", "sync").await.status, 202);
    let m = forged.next_message().await;
    assert_eq!(m.get("subscription"), Some("sync"), "the forger got {m:?}");
    assert!(has_line(&strict.metrics().await, "tether_backend_untrusted_identity_headers_total 2"));

    // The same request from a trusted proxy (loopback, the default) names the user.
    let trusting = TestApp::builder().spawn().await;
    let alice = StompClient::connect_with(&trusting.ws_url(), ConnectOptions::default().user_header("alice")).await;
    assert_eq!(alice.connected.get("user-name"), Some("alice"));
    let who = http_client::request(trusting.addr, http::Method::GET, "/whoami", &[("x-user-id", "alice")], "").await;
    assert_eq!(who.json()["user"], "alice");
    assert!(has_line(&trusting.metrics().await, "tether_backend_untrusted_identity_headers_total 0"));
    strict.shutdown().await;
    trusting.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ignored_identity_header_is_logged_once_not_per_request() {
    let args = ["backend", "--listen", "127.0.0.1:0", "--id", "strict", "--trust-proxy", ELSEWHERE].map(String::from);
    let mut app = AppProcess::spawn(&args).await;
    for i in 0..5 {
        let user = format!("user-{i}");
        let who = http_client::request(app.addr, http::Method::GET, "/whoami", &[("x-user-id", &user)], "").await;
        assert_eq!(who.json()["user"], serde_json::Value::Null);
    }
    assert!(has_line(
        &http_client::get(app.addr, "/metrics").await.body,
        "tether_backend_untrusted_identity_headers_total 5"
    ));
    app.sigterm();
    assert!(app.wait_exit(WAIT).await.success());
    let stderr = app.stderr();
    let lines = stderr.lines().filter(|l| l.contains("\"untrusted_identity_header\"")).count();
    assert_eq!(lines, 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tokens_from_a_jwks_name_the_user_and_outrank_the_trusted_header() {
    let a = TestApp::builder().jwt_jwks(&fixture("jwks.json")).jwt_claims("https://id.test", "chat").spawn().await;
    let rs256 = ConnectOptions::default().bearer(&token("alice")).user_header("bob");
    let alice = StompClient::connect_with(&a.ws_url(), rs256).await;
    assert_eq!(alice.connected.get("user-name"), Some("alice"), "the verified token, not the header");
    let es256 = sign(Algorithm::ES256, Some("ec-1"), &claims("carol"));
    let carol = StompClient::connect_with(&a.ws_url(), ConnectOptions::default().passcode(&es256)).await;
    assert_eq!(carol.connected.get("user-name"), Some("carol"), "a token in passcode");
    // Without a token the trusted header still names the user, and nothing names nobody.
    let bob = StompClient::connect_with(&a.ws_url(), ConnectOptions::default().user_header("bob")).await;
    assert_eq!(bob.connected.get("user-name"), Some("bob"));
    let anonymous = StompClient::connect(&a.ws_url()).await;
    assert_eq!(anonymous.connected.get("user-name"), None);

    // The user is the verified one end to end: alice's SEND is signed "alice".
    let mut alice = alice;
    let mut carol = carol;
    carol.subscribe("/user/queue/inbox", "inbox").await;
    let r = alice.send_with_receipt("/user/carol/queue/inbox", "hi carol").await;
    assert_eq!(r.command, Command::Receipt);
    let m = carol.next_message().await;
    assert_eq!((m.get("tether-user"), &m.body[..]), (Some("alice"), &b"hi carol"[..]));
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_connect_token_is_an_error_and_a_close() {
    let a = TestApp::builder().jwt_jwks(&fixture("jwks.json")).jwt_claims("https://id.test", "chat").spawn().await;
    let rsa_public = std::fs::read(fixture("rsa.pub.pem")).expect("public key");
    let hs_with_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let key = EncodingKey::from_secret(&rsa_public).expect("key");
        jsonwebtoken::encode(&header, &claims("mallory"), &key).expect("sign")
    };
    let unsigned = {
        use base64::Engine as _;
        let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.", b64(&json!({ "alg": "none", "typ": "JWT" })), b64(&claims("mallory")))
    };
    let signed_by_another_key = {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa2.key")).expect("key")).expect("key");
        jsonwebtoken::encode(&header, &claims("mallory"), &key).expect("sign")
    };
    let with_claims = |claims: serde_json::Value| sign(Algorithm::RS256, Some("rsa-1"), &claims);
    let good = token("mallory");
    // (what, token, the reason it is counted under)
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            with_claims(json!({ "sub": "m", "iss": "https://id.test", "aud": "chat", "exp": now() - 3600 })),
            "expired",
        ),
        (
            "not yet valid",
            with_claims(
                json!({ "sub": "m", "iss": "https://id.test", "aud": "chat", "exp": now() + 7200, "nbf": now() + 3600 }),
            ),
            "not_yet_valid",
        ),
        (
            "wrong issuer",
            with_claims(json!({ "sub": "m", "iss": "https://evil.test", "aud": "chat", "exp": now() + 600 })),
            "issuer",
        ),
        (
            "wrong audience",
            with_claims(json!({ "sub": "m", "iss": "https://id.test", "aud": "other", "exp": now() + 600 })),
            "audience",
        ),
        ("no exp", with_claims(json!({ "sub": "m", "iss": "https://id.test", "aud": "chat" })), "missing_claim"),
        ("signed by another key under a known kid", signed_by_another_key, "signature"),
        ("an unknown kid", sign(Algorithm::RS256, Some("rsa-2"), &claims("m")), "unknown_key"),
        ("alg none", unsigned, "malformed"),
        ("HS256 with the RSA public key as secret", hs_with_public_key, "algorithm"),
        ("truncated", good[..good.len() - 10].to_owned(), "signature"),
        ("garbage", "not-a-token".to_owned(), "malformed"),
    ];
    for (what, bad, _) in &cases {
        let opts = ConnectOptions::default().bearer(bad).user_header("bob");
        let (error, close) = StompClient::connect_refused(&a.ws_url(), opts).await;
        assert_eq!(error.get("message"), Some("invalid token"), "{what}: {error:?}");
        assert_eq!(close, Some(1008), "{what}: never anonymous, never the header's bob");
    }
    let metrics = a.metrics().await;
    let mut counts = std::collections::BTreeMap::new();
    for (_, _, reason) in &cases {
        *counts.entry(*reason).or_insert(0) += 1;
    }
    for (reason, n) in counts {
        let line = format!("tether_backend_token_rejections_total{{reason=\"{reason}\"}} {n}");
        assert!(has_line(&metrics, &line), "no {line} in\n{metrics}");
    }
    // A token in passcode is held to the same rule.
    let (error, _) = StompClient::connect_refused(&a.ws_url(), ConnectOptions::default().passcode("guest")).await;
    assert_eq!(error.get("message"), Some("invalid token"));
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hs256_secret_verifies_connect_tokens() {
    let a = TestApp::builder().jwt_secret("APP_TOKEN_SECRET", SECRET).spawn().await;
    let hs = jwt::sign(Algorithm::HS256, None, &claims("dave"));
    let dave = StompClient::connect_with(&a.ws_url(), ConnectOptions::default().bearer(&hs)).await;
    assert_eq!(dave.connected.get("user-name"), Some("dave"));
    // An RS256 token means nothing to a secret.
    let (error, close) =
        StompClient::connect_refused(&a.ws_url(), ConnectOptions::default().bearer(&token("dave"))).await;
    assert_eq!((error.get("message"), close), (Some("invalid token"), Some(1008)));
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_is_no_identity_unless_accepted() {
    let strict = TestApp::builder().spawn().await;
    let mut eve = StompClient::connect_with(&strict.ws_url(), ConnectOptions::default().login("alice")).await;
    assert_eq!(eve.connected.get("user-name"), None, "login is ignored");
    eve.subscribe("/user/queue/inbox", "inbox").await;
    eve.subscribe("/topic/sync", "sync").await;
    assert_eq!(strict.publish("/user/alice/queue/inbox", "for alice").await.status, 202);
    assert_eq!(strict.publish("/topic/sync", "sync").await.status, 202);
    assert_eq!(eve.next_message().await.get("subscription"), Some("sync"));

    let dev = TestApp::builder().accept_login().spawn().await;
    let alice = StompClient::connect_with(&dev.ws_url(), ConnectOptions::default().login("alice")).await;
    assert_eq!(alice.connected.get("user-name"), Some("alice"));
    let (error, _) = StompClient::connect_refused(&dev.ws_url(), ConnectOptions::default().login("a/b")).await;
    assert_eq!(error.get("message"), Some("invalid login"));
    strict.shutdown().await;
    dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_names_are_random_and_unrelated_to_what_clients_see() {
    let redis = TestRedis::start().await;
    let a = TestApp::builder().redis(&redis.url()).spawn_with_redis_up().await;
    let mut victim = StompClient::connect(&a.ws_url()).await;
    let mut attacker = StompClient::connect(&a.ws_url()).await;
    victim.subscribe("/user/queue/inbox", "inbox").await;
    attacker.subscribe("/topic/sync", "sync").await;
    // The name exists only on the server side: Redis sees the channel it routes by.
    let channels = redis.pubsub_channels("tether:dest:/user/*").await;
    assert_eq!(channels.len(), 1, "{channels:?}");
    let name =
        channels[0].strip_prefix("tether:dest:/user/").and_then(|c| c.strip_suffix("/queue/inbox")).expect("name");
    let hex = name.strip_prefix("anon-").expect("anon- prefix");
    assert!(hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()), "{name}: 128 random bits");

    // What a client sees (session ids, message ids, instance) names nobody: sending there
    // reaches no one.
    let mut seen = vec![
        victim.connected.get("session").expect("session").to_owned(),
        attacker.connected.get("session").expect("session").to_owned(),
    ];
    attacker.send("/topic/sync", "probe").await;
    let probe = attacker.next_message().await;
    seen.push(probe.get("message-id").expect("message-id").to_owned());
    for s in &seen {
        let prefix = s.split('-').next().expect("prefix");
        assert!(!name.contains(prefix), "{name} shares {prefix} with {s}");
        let r = attacker.send_with_receipt(&format!("/user/{s}/queue/inbox"), "guessed").await;
        assert_eq!(r.command, Command::Receipt);
    }
    // The real name does reach the victim, and it is the first thing the victim got.
    assert_eq!(a.publish(&format!("/user/{name}/queue/inbox"), "for you").await.status, 202);
    assert_eq!(victim.next_body().await, "for you");

    // Another session's name has nothing in common with this one's.
    let mut other = StompClient::connect(&a.ws_url()).await;
    other.subscribe("/user/queue/inbox", "inbox").await;
    until("a second anonymous channel", async || redis.pubsub_channels("tether:dest:/user/*").await.len() == 2).await;
    let names: Vec<String> = redis.pubsub_channels("tether:dest:/user/*").await;
    assert!(names.iter().all(|c| c.contains("/anon-")), "{names:?}");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_open_only_from_allowed_page_origins() {
    let a = TestApp::builder().spawn().await;
    let own = format!("http://{}", a.addr);
    let url = a.ws_url();
    assert_eq!(upgrade_status(&url, &[]).await, 101, "no Origin: not a browser page");
    assert_eq!(upgrade_status(&url, &[("origin", &own)]).await, 101, "same origin");
    assert_eq!(upgrade_status(&url, &[("origin", "http://evil.test")]).await, 403);
    assert_eq!(upgrade_status(&format!("{url}/websocket"), &[("origin", "http://evil.test")]).await, 403);
    assert_eq!(upgrade_status(&format!("{url}/0/s1/websocket"), &[("origin", "http://evil.test")]).await, 403);
    // Behind a trusted proxy the page's origin is the one the client used.
    let proxied = [("origin", "https://shop.example"), ("host", "shop.example"), ("x-forwarded-proto", "https")];
    assert_eq!(upgrade_status(&url, &proxied).await, 101);

    // SockJS: /info and the transports refuse foreign pages, with no CORS headers.
    let evil = [("origin", "http://evil.test")];
    let info = http_client::request(a.addr, http::Method::GET, "/ws/info", &evil, "").await;
    assert_eq!(info.status, 403);
    assert!(!info.headers.contains_key("access-control-allow-origin"), "{:?}", info.headers);
    let xhr = http_client::request(a.addr, http::Method::POST, "/ws/0/s1/xhr", &evil, "").await;
    assert_eq!(xhr.status, 403);
    let preflight = http_client::request(a.addr, http::Method::OPTIONS, "/ws/0/s1/xhr_send", &evil, "").await;
    assert_eq!(preflight.status, 403);
    let info = http_client::request(a.addr, http::Method::GET, "/ws/info", &[("origin", &own)], "").await;
    assert_eq!(info.status, 200);
    assert_eq!(info.headers["access-control-allow-origin"].to_str().ok(), Some(own.as_str()));
    a.shutdown().await;

    // Listed origins (wildcards too) are allowed.
    let listed = TestApp::builder().allowed_origin("https://*.example.com").spawn().await;
    let url = listed.ws_url();
    assert_eq!(upgrade_status(&url, &[("origin", "https://app.example.com")]).await, 101);
    assert_eq!(upgrade_status(&url, &[("origin", "https://example.org")]).await, 403);
    let info =
        http_client::request(listed.addr, http::Method::GET, "/ws/info", &[("origin", "https://app.example.com")], "")
            .await;
    assert_eq!(info.headers["access-control-allow-origin"], "https://app.example.com");
    listed.shutdown().await;
}
