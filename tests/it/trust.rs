//! Trust at the edge, through the real proxy: identity comes only from tokens tether verified,
//! forwarding headers only from tether or a trusted proxy, WebSockets only from allowed
//! origins, and the admin listener answers only its own host and origin.

use std::net::SocketAddr;

use http::{Method, StatusCode};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::config::Yaml;
use crate::support::echo::EchoBackend;
use crate::support::http::{self as client, Reply};
use crate::support::jwt::{self, SECRET, claims, sign, token};
use crate::support::proxy::TestProxy;
use crate::support::within;

/// A verifier `users` over the fixture JWKS (RS256, ES256, EdDSA) and one `hmac` over the test
/// secret; `/ws` and `/private` require a `users` token, `/mixed` reads one if present, `/hs`
/// requires an `hmac` token, everything else is open.
fn yaml(backends: &[(&str, SocketAddr)]) -> Yaml {
    let jwks = jwt::fixture("jwks.json");
    let mut y = Yaml::new()
        .listener("public")
        .admin()
        .route_when("path_prefix: /ws, auth: users", "app")
        .route_when("path_prefix: /private, auth: users", "app")
        .route_when("path_prefix: /mixed, auth: optional", "app")
        .route_when("path_prefix: /hs, auth: hmac", "app")
        .route("app");
    y = y.upstream("app", |mut u| {
        for (id, addr) in backends {
            u = u.backend(id, *addr);
        }
        u.affinity("{ key: [ { verified_claim: sub } ], fallback: round_robin }")
    });
    y.raw(&format!(
        "auth:\n  users:\n    jwt: {{ algorithms: [RS256, ES256, EdDSA], jwks_file: {jwks}, issuer: https://id.test, audience: [chat] }}\n    \
         token_from: [\"header:Authorization\", \"cookie:access_token\", \"query:access_token\"]\n    \
         identity: {{ claim: sub, header: X-User-Id }}\n  \
         optional:\n    jwt: {{ algorithms: [RS256], jwks_file: {jwks}, issuer: https://id.test, audience: [chat] }}\n    \
         identity: {{ claim: sub, header: X-User-Id }}\n    required: false\n  \
         hmac:\n    jwt: {{ algorithms: [HS256], secret_env: TRUST_TEST_SECRET, issuer: https://id.test, audience: [chat] }}\n    \
         identity: {{ claim: sub, header: X-User-Id }}\n",
        jwks = jwks.display()
    ))
}

async fn start(backends: &[(&str, SocketAddr)]) -> TestProxy {
    TestProxy::builder().yaml(yaml(backends)).env("TRUST_TEST_SECRET", SECRET).spawn().await
}

/// What the echo backend saw, as `(name, value)` pairs.
fn seen(reply: &Reply) -> Vec<(String, String)> {
    serde_json::from_value(reply.json()["headers"].clone()).expect("headers")
}

fn values(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).collect()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_identity_header_never_reaches_a_backend() {
    let backend = EchoBackend::start("b1").await;
    let proxy = start(&[("b1", backend.addr)]).await;
    let addr = proxy.addr("public");
    let forged = [("X-User-Id", "alice"), ("x-user-id", "bob"), ("X-USER-ID", "carol")];
    // On a route without auth: stripped, every copy, whatever the case.
    let reply = client::get(addr, "/headers", &forged).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(values(&seen(&reply), "x-user-id"), Vec::<String>::new());
    // On a route with auth: only the verified claim.
    let auth = bearer(&token("dave"));
    let mut headers = forged.to_vec();
    headers.push(("authorization", &auth));
    let reply = client::get(addr, "/private/headers", &headers).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(values(&seen(&reply), "x-user-id"), vec!["dave".to_owned()]);
    // On an optional route without a token: anonymous, still nothing forged.
    let reply = client::get(addr, "/mixed/headers", &forged).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(values(&seen(&reply), "x-user-id"), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_tokens_forward_their_claim_from_a_header_a_cookie_or_the_query() {
    let backend = EchoBackend::start("b1").await;
    let proxy = start(&[("b1", backend.addr)]).await;
    let addr = proxy.addr("public");
    let cases = [
        (
            "RS256 header",
            "/private/headers".to_owned(),
            vec![("authorization".to_owned(), bearer(&sign(Algorithm::RS256, Some("rsa-1"), &claims("u-rs"))))],
            "u-rs",
        ),
        (
            "ES256 header",
            "/private/headers".to_owned(),
            vec![("authorization".to_owned(), bearer(&sign(Algorithm::ES256, Some("ec-1"), &claims("u-es"))))],
            "u-es",
        ),
        (
            "EdDSA cookie",
            "/private/headers".to_owned(),
            vec![(
                "cookie".to_owned(),
                format!("a=1; access_token={}", sign(Algorithm::EdDSA, Some("ed-1"), &claims("u-ed"))),
            )],
            "u-ed",
        ),
        ("RS256 query", format!("/private/headers?access_token={}", token("u-q")), vec![], "u-q"),
        (
            "HS256 header",
            "/hs/headers".to_owned(),
            vec![("authorization".to_owned(), bearer(&sign(Algorithm::HS256, None, &claims("u-hs"))))],
            "u-hs",
        ),
    ];
    for (what, path, headers, sub) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let reply = client::get(addr, &path, &headers).await;
        assert_eq!(reply.status, StatusCode::OK, "{what}: {}", reply.text());
        assert_eq!(values(&seen(&reply), "x-user-id"), vec![sub.to_owned()], "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_naming_the_reason_and_never_reach_the_backend() {
    let backend = EchoBackend::start("b1").await;
    let proxy = start(&[("b1", backend.addr)]).await;
    let addr = proxy.addr("public");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("mallory");
        f(&mut c);
        c
    };
    let rsa_public = std::fs::read(jwt::fixture("rsa.pub.pem")).expect("public key");
    let confused = {
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let key = jsonwebtoken::EncodingKey::from_secret(&rsa_public).expect("key");
        jsonwebtoken::encode(&header, &claims("mallory"), &key).expect("sign")
    };
    let good = token("mallory");
    let none = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.", b64.encode(br#"{"alg":"none","typ":"JWT"}"#), good.split('.').nth(1).expect("payload"))
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            sign(Algorithm::RS256, Some("rsa-1"), &with(&|c| c["exp"] = json!(jwt::now() - 3600))),
            "token expired",
        ),
        (
            "not yet valid",
            sign(Algorithm::RS256, Some("rsa-1"), &with(&|c| c["nbf"] = json!(jwt::now() + 3600))),
            "token not yet valid",
        ),
        (
            "wrong issuer",
            sign(Algorithm::RS256, Some("rsa-1"), &with(&|c| c["iss"] = json!("https://evil.test"))),
            "wrong issuer",
        ),
        (
            "wrong audience",
            sign(Algorithm::RS256, Some("rsa-1"), &with(&|c| c["aud"] = json!("billing"))),
            "wrong audience",
        ),
        ("alg none", none, "malformed token"),
        ("HS256 signed with the RSA public key", confused, "algorithm not accepted"),
        ("unknown kid", sign(Algorithm::RS256, Some("rsa-9"), &claims("mallory")), "unknown key id"),
        ("truncated", good[..good.len() - 10].to_owned(), "bad signature"),
        ("another key", sign(Algorithm::RS256, Some("rsa-2"), &claims("mallory")), "unknown key id"),
    ];
    for (what, token, reason) in cases {
        let auth = bearer(&token);
        for path in ["/private/headers", "/mixed/headers"] {
            let reply = client::get(addr, path, &[("authorization", &auth)]).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what} on {path}: {}", reply.text());
            assert_eq!(reply.json(), json!({ "error": "invalid_token", "reason": reason }), "{what}");
            assert_eq!(
                reply.header("www-authenticate"),
                Some(format!("Bearer error=\"invalid_token\", error_description=\"{reason}\"").as_str()),
                "{what}"
            );
        }
    }
    // No token at all: 401 without an error attribute where required, anonymous where not.
    let reply = client::get(addr, "/private/headers", &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    assert_eq!(reply.json(), json!({ "error": "missing_token", "reason": "no token" }));
    assert_eq!(client::get(addr, "/mixed/headers", &[]).await.status, StatusCode::OK);
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the anonymous request got through"
    );
    let scrape = proxy.running().proxy().metrics_text();
    assert!(scrape.contains("tether_auth_rejected_total{verifier=\"users\",reason=\"expired\"} 1"), "{scrape}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_without_a_valid_token_gets_401_instead_of_101() {
    let backend = EchoBackend::start("b1").await;
    let proxy = start(&[("b1", backend.addr)]).await;
    let addr = proxy.addr("public");
    for auth in [None, Some(bearer(&sign(Algorithm::RS256, Some("rsa-9"), &claims("x"))))] {
        let mut request = format!("ws://{addr}/ws").into_client_request().expect("request");
        if let Some(auth) = &auth {
            request.headers_mut().insert("authorization", auth.parse().expect("value"));
        }
        match within("the refused handshake", tokio_tungstenite::connect_async(request)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED)
            }
            other => panic!("expected a 401, got {other:?}"),
        }
    }
    // A browser cannot set headers on a WebSocket: the query carries the token, and the
    // backend gets the identity but not the token.
    let mut request = format!("ws://{addr}/ws/headers?room=1&access_token={}", token("wendy"))
        .into_client_request()
        .expect("request");
    request.headers_mut().insert("x-user-id", "eve".parse().expect("value"));
    let (mut ws, resp) = within("the handshake", tokio_tungstenite::connect_async(request)).await.expect("101");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let greeting = match within("the greeting", futures_util::StreamExt::next(&mut ws)).await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
            serde_json::from_str::<Value>(&text).expect("json")
        }
        other => panic!("expected the headers greeting, got {other:?}"),
    };
    let headers: Vec<(String, String)> = serde_json::from_value(greeting["headers"].clone()).expect("headers");
    assert_eq!(values(&headers, "x-user-id"), vec!["wendy".to_owned()]);
    assert_eq!(greeting["uri"], "/ws/headers?room=1", "the token stays at the edge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_token_is_removed_before_forwarding_and_never_logged_whatever_its_case() {
    let backend = EchoBackend::start("b1").await;
    let yaml = yaml(&[("b1", backend.addr)]).set("access_log", "{ format: json }");
    let proxy = TestProxy::builder().yaml(yaml).env("TRUST_TEST_SECRET", SECRET).spawn_process().await;
    let addr = proxy.addr("public");
    let secret_token = token("quentin");
    for name in ["access_token", "Access_Token", "ACCESS_TOKEN"] {
        let reply = client::get(addr, &format!("/private/headers?x=1&{name}={secret_token}&y=2"), &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{name}: {}", reply.text());
        assert_eq!(reply.json()["uri"], "/private/headers?x=1&y=2", "{name}");
    }
    // A route without auth forwards its query as is, but the log still hides the token.
    let reply = client::get(addr, &format!("/headers?Access_Token={secret_token}"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    proxy.wait_for_stderr_line("the last access log line", "\"path\":\"/headers?Access_Token=REDACTED\"").await;
    let log = proxy.stderr();
    assert!(log.matches("\"path\":\"/private/headers?x=1&y=2\"").count() == 3, "{log}");
    assert!(!log.contains(&secret_token), "a token reached the log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_files_are_read_again_on_reload_so_keys_rotate_without_a_restart() {
    let backend = EchoBackend::start("b1").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = dir.path().join("jwks.json");
    std::fs::copy(jwt::fixture("jwks.json"), &jwks).expect("copy");
    let yaml = Yaml::app(|u| u.backend("b1", backend.addr))
        .raw("auth:\n  users:\n    jwt: { algorithms: [RS256], jwks_file: jwks.json }\n");
    let yaml = yaml.build().replace("  - upstream: app\n", "  - { upstream: app, auth: users }\n");
    let proxy = TestProxy::builder().dir(dir).yaml(yaml).spawn().await;
    let addr = proxy.addr("public");
    let old = bearer(&sign(Algorithm::RS256, Some("rsa-1"), &json!({ "sub": "u", "exp": jwt::now() + 600 })));
    let new = bearer(&sign(Algorithm::RS256, Some("rsa-2"), &json!({ "sub": "u", "exp": jwt::now() + 600 })));
    assert_eq!(client::get(addr, "/", &[("authorization", &old)]).await.status, StatusCode::OK);
    assert_eq!(client::get(addr, "/", &[("authorization", &new)]).await.status, StatusCode::UNAUTHORIZED);
    // The identity provider rotated its key: the watcher sees the JWKS change and reloads.
    proxy.watch_config();
    std::fs::copy(jwt::fixture("jwks-rotated.json"), proxy.dir().join("jwks.json")).expect("rotate");
    proxy.admin().wait_generation(2).await;
    assert_eq!(client::get(addr, "/", &[("authorization", &new)]).await.status, StatusCode::OK);
    assert_eq!(client::get(addr, "/", &[("authorization", &old)]).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_on_the_verified_claim_is_the_same_on_two_replicas_and_ignores_forged_headers() {
    let backends = [EchoBackend::start("b1").await, EchoBackend::start("b2").await, EchoBackend::start("b3").await];
    let list: Vec<(&str, SocketAddr)> = backends.iter().map(|b| (b.id.as_str(), b.addr)).collect();
    let (p1, p2) = (start(&list).await, start(&list).await);
    let mut homes = std::collections::BTreeMap::new();
    for i in 0..24 {
        let user = format!("user-{i}");
        let auth = bearer(&token(&user));
        let mut seen_on = Vec::new();
        for proxy in [&p1, &p2] {
            for forged in ["someone-else", "another"] {
                let reply =
                    client::get(proxy.addr("public"), "/private/x", &[("authorization", &auth), ("x-user-id", forged)])
                        .await;
                assert_eq!(reply.status, StatusCode::OK);
                seen_on.push(reply.header("x-backend-id").expect("backend id").to_owned());
            }
        }
        seen_on.dedup();
        assert_eq!(seen_on.len(), 1, "{user} went to {seen_on:?}");
        assert_eq!(
            Some(seen_on[0].clone()),
            p1.running().proxy().home_of("app", &user),
            "{user}: the ring's home of its claim"
        );
        homes.insert(user, seen_on.remove(0));
    }
    let used: std::collections::BTreeSet<_> = homes.values().collect();
    assert!(used.len() > 1, "users spread over the backends: {homes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_an_untrusted_client_are_replaced_and_a_trusted_proxy_s_extended() {
    let backend = EchoBackend::start("b1").await;
    let forged = [
        ("host", "app.test"),
        ("forwarded", "for=6.6.6.6;host=evil"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil"),
        ("x-forwarded-port", "1"),
        ("x-forwarded-prefix", "/admin"),
        ("x-real-ip", "6.6.6.6"),
    ];
    let untrusted =
        TestProxy::start(Yaml::app(|u| u.backend("b1", backend.addr)).set("forwarded_headers", "both")).await;
    let addr = untrusted.addr("public");
    let headers = seen(&client::get(addr, "/headers", &forged).await);
    assert_eq!(values(&headers, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values(&headers, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&headers, "x-forwarded-host"), ["app.test"]);
    assert_eq!(values(&headers, "x-forwarded-port"), [addr.port().to_string()]);
    assert_eq!(values(&headers, "x-real-ip"), ["127.0.0.1"]);
    assert_eq!(values(&headers, "x-forwarded-prefix"), Vec::<String>::new());
    assert_eq!(values(&headers, "forwarded"), ["for=127.0.0.1;proto=http;host=app.test"]);

    let trusted = TestProxy::start(
        Yaml::app(|u| u.backend("b1", backend.addr))
            .set("forwarded_headers", "both")
            .set("trusted_proxies", "[127.0.0.0/8]"),
    )
    .await;
    let headers = seen(&client::get(trusted.addr("public"), "/headers", &forged).await);
    assert_eq!(values(&headers, "x-forwarded-for"), ["6.6.6.6, 127.0.0.1"]);
    assert_eq!(values(&headers, "x-forwarded-proto"), ["https"]);
    assert_eq!(values(&headers, "x-forwarded-host"), ["evil"]);
    assert_eq!(values(&headers, "x-forwarded-prefix"), ["/admin"]);
    assert_eq!(values(&headers, "forwarded"), ["for=6.6.6.6;host=evil, for=127.0.0.1;proto=http;host=app.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_header_rules_apply_after_tether_s_own_headers() {
    let backend = EchoBackend::start("b1").await;
    let yaml = Yaml::app(|u| u.backend("b1", backend.addr)).build().replace(
        "  - upstream: app\n",
        "  - { upstream: app, request_headers: { set: { X-Env: prod, X-Forwarded-Proto: https }, remove: [X-Debug] }, response_headers: { set: { Strict-Transport-Security: \"max-age=63072000\" }, remove: [X-Backend-Id] } }\n",
    );
    let proxy = TestProxy::start(yaml).await;
    let reply = client::get(proxy.addr("public"), "/headers", &[("x-debug", "1"), ("x-env", "dev")]).await;
    let headers = seen(&reply);
    assert_eq!(values(&headers, "x-env"), ["prod"]);
    assert_eq!(values(&headers, "x-debug"), Vec::<String>::new());
    assert_eq!(values(&headers, "x-forwarded-proto"), ["https"], "set after tether wrote its own");
    assert_eq!(reply.header("strict-transport-security"), Some("max-age=63072000"));
    assert_eq!(reply.header("x-backend-id"), None);
    let refused = client::get(proxy.addr("public"), "/nowhere", &[("host", "elsewhere.test")]).await;
    assert_eq!(
        refused.header("strict-transport-security"),
        Some("max-age=63072000"),
        "tether's own answers on the route too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_origins_must_be_the_request_s_own_or_listed() {
    let backend = EchoBackend::start("b1").await;
    let yaml = Yaml::app(|u| u.backend("b1", backend.addr)).build().replace(
        "  - upstream: app\n",
        "  - { upstream: app, websocket: { allowed_origins: [\"https://app.example.com\", \"https://*.example.org\"] } }\n",
    );
    let proxy = TestProxy::start(yaml).await;
    let addr = proxy.addr("public");
    let handshake = |origin: Option<String>| async move {
        let mut request = format!("ws://{addr}/ws").into_client_request().expect("request");
        if let Some(origin) = origin {
            request.headers_mut().insert("origin", origin.parse().expect("value"));
        }
        match within("the handshake", tokio_tungstenite::connect_async(request)).await {
            Ok((_, resp)) => resp.status(),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status(),
            Err(e) => panic!("handshake failed: {e}"),
        }
    };
    for allowed in [
        None,
        Some(format!("http://{addr}")),
        Some("https://app.example.com".into()),
        Some("https://chat.example.org".into()),
    ] {
        assert_eq!(handshake(allowed.clone()).await, StatusCode::SWITCHING_PROTOCOLS, "{allowed:?}");
    }
    for refused in ["https://evil.test", "http://app.example.com", "null", "https://example.org"] {
        assert_eq!(handshake(Some(refused.into())).await, StatusCode::FORBIDDEN, "{refused}");
    }
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::Relaxed),
        4,
        "refused upgrades never reach the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_answers_only_its_own_host_and_refuses_cross_origin_changes() {
    let backend = EchoBackend::start("b1").await;
    let yaml = Yaml::app(|u| u.backend("b1", backend.addr)).build().replace(
        "admin:\n  bind: \"127.0.0.1:0\"\n",
        "admin:\n  bind: \"127.0.0.1:0\"\n  allowed_hosts: [tether-admin.internal]\n",
    );
    let proxy = TestProxy::start(yaml).await;
    let admin = proxy.addr("admin");
    for host in [admin.to_string(), format!("localhost:{}", admin.port()), "tether-admin.internal".into()] {
        let reply = client::get(admin, "/admin/upstreams", &[("host", &host)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{host}");
    }
    for host in ["evil.test", "rebind.attacker.example:9901"] {
        let reply = client::get(admin, "/readyz", &[("host", host)]).await;
        assert_eq!(reply.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
    }
    let drain = "/admin/upstreams/app/backends/b1/drain";
    let post = |origin: Option<&'static str>| async move {
        let mut conn = client::H1::connect(admin).await;
        let mut req = http::Request::builder().method(Method::POST).uri(drain).header("host", admin.to_string());
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        conn.send(req.body(http_body_util::Full::new(bytes::Bytes::new())).expect("request")).await
    };
    let refused = post(Some("http://evil.test")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(proxy.admin().backend("app", "b1").await.expect("b1")["state"], "active", "nothing changed");
    let own = Box::leak(format!("http://{admin}").into_boxed_str());
    assert_eq!(post(Some(own)).await.status, StatusCode::OK, "the status page's own origin");
}
