//! The admin API contract: `GET /admin/config` shows the running config as written
//! (`${VAR}` unexpanded, no secret), `POST /admin/reload` answers the generation or the
//! errors, `/admin/*` needs the bearer token when one is configured, and the backend JSON
//! carries weight, health, totals, pins, state change time and drain progress.

use http::{Method, StatusCode};

use crate::support::admin::AdminClient;
use crate::support::config::Yaml;
use crate::support::echo::EchoBackend;
use crate::support::proxy::TestProxy;
use crate::support::{eventually, ws};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_config_is_the_running_file_as_written_without_secrets() {
    const TOKEN: &str = "admin-token-value-not-for-eyes-0123456789";
    const COOKIE_KEY: &str = "cookie-key-value-0123456789abcdef0123456789";
    let a = EchoBackend::start("a").await;
    let text = r#"# the running config, comments included
listeners:
  - name: public
    bind: "${OPS_PUBLIC_BIND:-127.0.0.1:0}"
admin:
  bind: "127.0.0.1:0"
  token_env: OPS_ADMIN_TOKEN
routes:
  - upstream: app
upstreams:
  app:
    backends:
      - { id: a, address: "${OPS_BACKEND_ADDR}" }
    affinity:
      cookie: { name: PIN, key_env: OPS_COOKIE_KEY }
"#;
    let backend = a.addr.to_string();
    let proxy = TestProxy::builder()
        .yaml(text)
        .env("OPS_ADMIN_TOKEN", TOKEN)
        .env("OPS_BACKEND_ADDR", &backend)
        .env("OPS_COOKIE_KEY", COOKIE_KEY)
        .spawn_process()
        .await;
    let admin = AdminClient::with_token(proxy.addr("admin"), TOKEN);
    let anonymous = AdminClient::new(proxy.addr("admin"));
    let wrong = AdminClient::with_token(proxy.addr("admin"), "not-the-token");

    // The variables did their work...
    let listed = admin.backend("app", "a").await.expect("a listed");
    assert_eq!(listed["address"], backend);
    // ...but the config shown is the text as written.
    let shown = admin.request(Method::GET, "/admin/config").await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.header("content-type"), Some("application/yaml"));
    assert_eq!(shown.text(), text);
    for secret in [TOKEN, COOKIE_KEY, backend.as_str()] {
        assert!(!shown.text().contains(secret), "/admin/config shows {secret}");
    }

    // Only with the token.
    for client in [&anonymous, &wrong] {
        for (method, path) in [
            (Method::GET, "/admin/config"),
            (Method::GET, "/admin/upstreams"),
            (Method::POST, "/admin/reload"),
            (Method::POST, "/admin/upstreams/app/backends/a/drain"),
        ] {
            let reply = client.request(method.clone(), path).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {path} with {:?}", client.token);
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        }
    }
    assert_eq!(admin.backend("app", "a").await.expect("a")["state"], "active", "the refused drain did nothing");
    // Probes stay open for orchestrators; metrics need the token unless admin.metrics_public.
    for path in ["/healthz", "/readyz", "/"] {
        assert_eq!(anonymous.request(Method::GET, path).await.status, StatusCode::OK, "{path}");
    }
    assert_eq!(anonymous.request(Method::GET, "/metrics").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(admin.request(Method::GET, "/metrics").await.status, StatusCode::OK);
    assert!(!proxy.stderr().contains(TOKEN), "the token never reaches the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_admin_reload_answers_the_generation_or_the_errors() {
    let a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let one = Yaml::app(|u| u.backend("a", a.addr)).build();
    let two = Yaml::app(|u| u.backend("a", a.addr).weighted("b", b.addr, 3)).build();
    let proxy = TestProxy::start(&one).await;
    let admin = proxy.admin();
    let path = proxy.config_path().to_owned();

    std::fs::write(&path, &two).expect("write");
    let (status, body) = admin.post("/admin/reload").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({ "result": "ok", "generation": 2 }));
    assert_eq!(admin.backend("app", "b").await.expect("b joined")["weight"], 3);
    assert_eq!(admin.request(Method::GET, "/admin/config").await.text(), two);

    let broken = two.replace("weight: 3", "weight: 0");
    std::fs::write(&path, &broken).expect("write");
    let line = broken.lines().position(|l| l.contains("weight: 0")).expect("line") + 1;
    let (status, body) = admin.post("/admin/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["result"], "error");
    let errors = body["errors"].as_str().expect("errors text");
    assert!(
        errors.starts_with(&format!("{}:{line}:", path.display()))
            && errors.contains("upstreams.app.backends[1].weight"),
        "{errors}"
    );
    // Refused: the running config (and what /admin/config shows) is still generation 2.
    assert_eq!(admin.generation().await, 2);
    assert_eq!(admin.request(Method::GET, "/admin/config").await.text(), two);
    assert_eq!(admin.request(Method::GET, "/admin/reload").await.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_json_carries_weight_health_totals_pins_and_drain_progress() {
    let a = EchoBackend::start("a").await;
    let proxy = TestProxy::start(Yaml::app(|u| {
        u.weighted("a", a.addr, 7)
            .affinity("{ cookie: { name: PIN } }")
            .health_check("{ path: /readyz, interval: 200ms, timeout: 150ms }")
            .drain("{ timeout: 30s, close_spread: 1s }")
    }))
    .await;
    let admin = proxy.admin();
    let (_tunnel, _) = ws::open(proxy.addr("public"), &[]).await;
    let listed = admin.wait_state("app", "a", &["active"]).await;
    let checked = eventually("a first health check", async || {
        admin.backend("app", "a").await.filter(|b| b["health"]["last_check"]["result"] == "healthy")
    })
    .await;
    assert_eq!(listed["weight"], 7);
    assert_eq!(listed["source"], "config");
    assert_eq!(listed["member"], true);
    assert_eq!(listed["tunnels"], 1);
    assert_eq!(listed["active_requests"], 0);
    assert_eq!(listed["pins"], 1, "the upgrade pinned the client with a cookie");
    assert_eq!(checked["health"]["admin_drained"], false);
    assert_eq!(checked["health"]["ejected"], false);
    assert_eq!(listed["totals"]["requests"], 1);
    assert_eq!(listed["totals"]["tunnels"], 1);
    assert_eq!(listed["totals"]["errors_5xx"], 0);
    assert_eq!(listed["totals"]["connect_failures"], 0);
    assert!(listed["totals"]["bytes_in"].is_u64() && listed["totals"]["bytes_out"].is_u64());
    assert!(listed["state_since_ms"].as_u64().is_some_and(|t| t > 1_600_000_000_000), "a wall-clock time");
    assert_eq!(listed["drain"], serde_json::Value::Null);

    let (status, drained) = admin.post("/admin/upstreams/app/backends/a/drain").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(drained["state"], "draining");
    let drain = &drained["drain"];
    assert_eq!(drain["reason"], "admin");
    assert_eq!(drain["tunnels_at_start"], 1);
    assert_eq!(drain["tunnels_left"], 1);
    assert_eq!(drain["closes_sent"], 0);
    let (started, deadline) =
        (drain["started_ms"].as_u64().expect("started"), drain["deadline_ms"].as_u64().expect("deadline"));
    assert_eq!(deadline - started, 30_000, "deadline = start + drain.timeout");
    assert!(drained["state_since_ms"].as_u64().expect("since") >= listed["state_since_ms"].as_u64().expect("since"));
    assert_eq!(admin.post("/admin/upstreams/app/backends/nope/drain").await.0, StatusCode::NOT_FOUND);
    assert_eq!(admin.post("/admin/upstreams/nope/backends/a/drain").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_proxy_replica_names_itself_and_reports_its_own_figures() {
    let a = EchoBackend::start("a").await;
    let yaml = Yaml::app(|u| u.backend("a", a.addr)).set("access_log", "{ format: off }");
    let one = TestProxy::builder().yaml(&yaml).spawn_process().await;
    let two = TestProxy::builder().yaml(&yaml).spawn_process().await;
    let (_tunnel, _) = ws::open(one.addr("public"), &[]).await;
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    for (replica, tunnels) in [(&one, 1), (&two, 0)] {
        let listed = replica.admin().get_json("/admin/upstreams").await;
        assert_eq!(listed["replica"]["hostname"], hostname.as_str(), "{listed}");
        assert_eq!(listed["replica"]["pid"], replica.pid(), "{listed}");
        assert_eq!(listed["upstreams"][0]["backends"][0]["tunnels"], tunnels, "{listed}");
    }
}
