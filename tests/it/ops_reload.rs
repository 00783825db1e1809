//! Live reload: a reload closes nothing by itself; a broken config is refused and
//! the running one keeps serving; removed backends drain gracefully, added ones wait for a
//! healthy check; listeners, certificates and affinity settings follow the file.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;

use crate::support::config::{Upstream, Yaml};
use crate::support::echo::EchoBackend;
use crate::support::gated::GatedBackend;
use crate::support::http::{self as client, H1};
use crate::support::proxy::TestProxy;
use crate::support::tls::TestCa;
use crate::support::ws;
use crate::support::{until, within};

/// Listener `public`, an admin listener, and upstream `app` over `backends`, set up by
/// `upstream`.
fn yaml(backends: &[(&str, SocketAddr)], upstream: impl FnOnce(Upstream) -> Upstream) -> Yaml {
    Yaml::app(|u| upstream(u.backends(backends.iter().copied())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_thousand_open_tunnels_closes_none() {
    const TUNNELS: usize = 1000;
    let a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let c = EchoBackend::start("c").await;
    let proxy = TestProxy::start(yaml(&[("a", a.addr), ("b", b.addr)], |u| u)).await;
    let public = proxy.addr("public");
    let admin = proxy.admin();

    let mut sockets: Vec<ws::Ws> = futures_util::stream::iter(0..TUNNELS)
        .map(|_| async move { ws::open(public, &[]).await.0 })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(sockets.len(), TUNNELS);
    until("every tunnel registered", async || {
        a.sockets.load(Ordering::SeqCst) + b.sockets.load(Ordering::SeqCst) == TUNNELS
    })
    .await;

    // Change nearly everything that can change: membership, weights, affinity (keys, cookie,
    // hash), drain and timeout settings, and a new listener.
    let changed = yaml(&[("a", a.addr), ("b", b.addr), ("c", c.addr)], |u| {
        u.affinity(
            "{ key: [ { header: X-User-Id } ], hash: { vnodes: 200 }, cookie: { name: PIN }, fallback: round_robin }",
        )
        .drain("{ timeout: 2s, close_spread: 1s, close_code: 1012 }")
    })
    .listener("second")
    .set("timeouts", "{ connect: 1s, idle: 30s }");
    assert_eq!(proxy.rewrite(changed).await, Ok(2));
    assert_eq!(admin.generation().await, 2);

    // Every tunnel still answers, and the next thing each one reads is its echo: a Close or
    // an end of stream would come first if the reload had closed it.
    let echoed = futures_util::stream::iter(sockets.iter_mut().enumerate())
        .map(|(i, socket)| async move { ws::echo(socket, &format!("after reload {i}")).await })
        .buffer_unordered(64)
        .count()
        .await;
    assert_eq!(echoed, TUNNELS);
    assert_eq!(a.sockets.load(Ordering::SeqCst) + b.sockets.load(Ordering::SeqCst), TUNNELS);
    assert_eq!(c.sockets.load(Ordering::SeqCst), 0, "open tunnels never move");
    let scrape = admin.metrics().await;
    assert_eq!(scrape.sum("tether_tunnels_open", &[("upstream", "app")]), TUNNELS as f64);
    assert_eq!(scrape.sum("tether_closes_sent_total", &[]), 0.0, "no Close was sent");
    assert_eq!(scrape.value("tether_reloads_total", &[("result", "ok")]), 1.0);
    // The new backend takes new sessions.
    let (_, backend) = ws::open(proxy.addr("second"), &[("x-user-id", "someone")]).await;
    assert!(["a", "b", "c"].contains(&backend.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_is_refused_with_file_line_and_field_and_the_old_one_keeps_serving() {
    let a = EchoBackend::start("a").await;
    let good = yaml(&[("a", a.addr)], |u| u).build();
    let proxy = TestProxy::start(&good).await;
    let public = proxy.addr("public");
    let admin = proxy.admin();
    let (mut socket, _) = ws::open(public, &[]).await;
    let mut keep_alive = H1::connect(public).await;
    assert_eq!(keep_alive.get("/", &[]).await.text(), "a");

    let broken = Yaml::app(|u| u.backend("a", "127.0.0.1:nope").drain("{ timeout: 1s, close_spread: 5s }")).build();
    let address_line = broken.lines().position(|l| l.contains("nope")).expect("bad line") + 1;
    let spread_line = broken.lines().position(|l| l.contains("close_spread")).expect("spread line") + 1;
    let errors = proxy.rewrite(&broken).await.expect_err("a broken config is refused");
    let file = proxy.config_path().display();
    assert!(
        errors.contains(&format!("{file}:{address_line}:")) && errors.contains("upstreams.app.backends[0].address"),
        "the error names file, line and field: {errors}"
    );
    assert!(
        errors.contains(&format!("{file}:{spread_line}:")) && errors.contains("upstreams.app.drain.close_spread"),
        "every problem is reported: {errors}"
    );

    // Nothing changed: same generation, same backend, every connection alive.
    let scrape = admin.metrics().await;
    assert_eq!(scrape.value("tether_reloads_total", &[("result", "error")]), 1.0);
    assert_eq!(scrape.value("tether_reloads_total", &[("result", "ok")]), 0.0);
    assert_eq!(scrape.value("tether_config_generation", &[]), 1.0);
    assert_eq!(admin.generation().await, 1);
    ws::echo(&mut socket, "still here").await;
    assert_eq!(keep_alive.get("/", &[]).await.text(), "a");
    assert_eq!(client::get(public, "/", &[]).await.text(), "a");
    assert_eq!(admin.backend("app", "a").await.expect("a listed")["address"], a.addr.to_string());

    // Fixed, it applies.
    assert_eq!(proxy.rewrite(&good).await, Ok(2));
    let scrape = admin.metrics().await;
    assert_eq!(scrape.value("tether_reloads_total", &[("result", "ok")]), 1.0);
    assert_eq!(scrape.value("tether_reloads_total", &[("result", "error")]), 1.0);
    assert_eq!(scrape.value("tether_config_generation", &[]), 2.0);
    ws::echo(&mut socket, "and still").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_drains_gracefully_with_the_drain_close_code() {
    let a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let upstream = |u: Upstream| {
        u.affinity("{ key: [ { header: X-User-Id } ] }").drain("{ timeout: 2s, close_spread: 300ms, close_code: 1012 }")
    };
    let proxy = TestProxy::start(yaml(&[("a", a.addr), ("b", b.addr)], upstream)).await;
    let public = proxy.addr("public");
    let admin = proxy.admin();

    let mut on_a = Vec::new();
    for user in admin.keys_on("app", "a", "user-", 2).await {
        let (socket, backend) = ws::open(public, &[("x-user-id", &user)]).await;
        assert_eq!(backend, "a");
        on_a.push(socket);
    }
    let b_users = admin.keys_on("app", "b", "user-", 3).await;
    let mut on_b = Vec::new();
    for user in &b_users {
        let (socket, backend) = ws::open(public, &[("x-user-id", user)]).await;
        assert_eq!(backend, "b");
        on_b.push(socket);
    }

    let reloaded_at = Instant::now();
    assert_eq!(proxy.rewrite(yaml(&[("a", a.addr)], upstream)).await, Ok(2));
    // The reload itself closes nothing: b's tunnels still echo, and b drains.
    for socket in &mut on_b {
        ws::echo(socket, "still on b").await;
    }
    let listed = admin.backend("app", "b").await.expect("b is listed while it drains");
    assert_eq!(listed["state"], "draining");
    assert_eq!(listed["member"], false);
    assert_eq!(listed["drain"]["reason"], "removed");
    assert_eq!(listed["drain"]["tunnels_at_start"], 3);
    // New sessions of b's users go to a.
    let (mut moved, backend) = ws::open(public, &[("x-user-id", &b_users[0])]).await;
    assert_eq!(backend, "a");

    // After drain.timeout each of b's tunnels gets a Close with the drain code.
    for socket in &mut on_b {
        assert_eq!(ws::expect_close(socket).await, 1012);
    }
    let waited = reloaded_at.elapsed();
    assert!(waited >= Duration::from_secs(2), "Close frames came after drain.timeout, not before ({waited:?})");
    // a's tunnels were never touched.
    for socket in &mut on_a {
        ws::echo(socket, "a is untouched").await;
    }
    ws::echo(&mut moved, "moved session works").await;
    // Once drained, b is forgotten.
    until("b to leave the admin listing", async || !admin.backend_ids("app").await.contains(&"b".to_owned())).await;
    let scrape = admin.metrics().await;
    assert_eq!(scrape.value("tether_closes_sent_total", &[("upstream", "app"), ("code", "1012")]), 3.0);
    assert_eq!(scrape.value("tether_drains_started_total", &[("backend", "b")]), 1.0);
    assert_eq!(scrape.value("tether_drains_finished_total", &[("backend", "b")]), 1.0);
    assert_eq!(scrape.value("tether_drains_started_total", &[("backend", "a")]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_backend_receives_new_sessions_only_after_a_healthy_check() {
    let a = GatedBackend::start("a", true).await;
    let c = GatedBackend::start("c", false).await;
    let upstream = |u: Upstream| {
        u.affinity("{ fallback: round_robin }")
            .health_check("{ path: /readyz, interval: 200ms, timeout: 150ms, healthy_after: 1, unhealthy_after: 100 }")
    };
    let proxy = TestProxy::start(yaml(&[("a", a.addr)], upstream)).await;
    let public = proxy.addr("public");
    let admin = proxy.admin();
    assert_eq!(proxy.rewrite(yaml(&[("a", a.addr), ("c", c.addr)], upstream)).await, Ok(2));
    assert_eq!(admin.backend("app", "c").await.expect("c listed")["state"], "joining");

    // c is checked and fails: it stays out of rotation however many requests come.
    until("two failed checks of c", async || c.checks.load(Ordering::SeqCst) >= 2).await;
    let mut conn = H1::connect(public).await;
    for _ in 0..10 {
        assert_eq!(conn.get("/", &[]).await.header("x-backend-id"), Some("a"));
    }
    assert_eq!(c.served.load(Ordering::SeqCst), 0);
    let listed = admin.backend("app", "c").await.expect("c listed");
    assert_eq!(listed["state"], "joining");
    assert_eq!(listed["health"]["last_check"]["result"], "failed");

    // Once its check passes, c takes its share of new sessions.
    c.set_ready(true);
    admin.wait_state("app", "c", &["active"]).await;
    let served_by_a = a.served.load(Ordering::SeqCst);
    for _ in 0..10 {
        conn.get("/", &[]).await;
    }
    assert_eq!(c.served.load(Ordering::SeqCst), 5, "round robin over a and c");
    assert_eq!(a.served.load(Ordering::SeqCst) - served_by_a, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_and_removed_by_reload_without_closing_open_connections() {
    let a = EchoBackend::start("a").await;
    let with_listeners = |names: &[&str]| {
        names
            .iter()
            .fold(Yaml::new(), |y, name| y.listener(name))
            .admin()
            .route("app")
            .upstream("app", |u| u.backend("a", a.addr))
    };
    let proxy = TestProxy::start(with_listeners(&["public"])).await;
    let public = proxy.addr("public");
    let mut keep_alive = H1::connect(public).await;
    assert_eq!(keep_alive.get("/", &[]).await.text(), "a");
    let (mut socket, _) = ws::open(public, &[]).await;

    assert_eq!(proxy.rewrite(with_listeners(&["second"])).await, Ok(2));
    assert_eq!(proxy.try_addr("public"), None);
    let second = proxy.try_addr("second").expect("the added listener is bound");
    assert_eq!(client::get(second, "/", &[]).await.text(), "a");
    until("the removed listener to stop accepting", async || TcpStream::connect(public).await.is_err()).await;
    // What was open on the removed listener carries on.
    assert_eq!(keep_alive.get("/", &[]).await.text(), "a");
    ws::echo(&mut socket, "listener gone, tunnel stays").await;

    assert_eq!(proxy.rewrite(with_listeners(&["second", "public"])).await, Ok(3));
    assert_eq!(proxy.try_addr("second"), Some(second), "an unchanged listener keeps its socket");
    let public_again = proxy.try_addr("public").expect("public is back");
    assert_eq!(client::get(public_again, "/", &[]).await.text(), "a");
    assert_eq!(client::get(second, "/", &[]).await.text(), "a");
}

/// A TLS connection to `addr` trusting `ca`: the certificate the server presented, and an
/// HTTP/1.1 sender over the connection.
async fn tls_connect(
    addr: SocketAddr,
    ca: &TestCa,
) -> (CertificateDer<'static>, hyper::client::conn::http1::SendRequest<Full<Bytes>>) {
    let (presented, tls) = ca.connect(addr).await;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("h1 handshake");
    tokio::spawn(conn);
    (presented, sender)
}

async fn tls_get(sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>) -> String {
    within("HTTPS response", async {
        sender.ready().await.expect("ready");
        let req = Request::get("/").header("host", "localhost").body(Full::new(Bytes::new())).expect("request");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        String::from_utf8(resp.into_body().collect().await.expect("body").to_bytes().to_vec()).expect("utf-8")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_change_is_picked_up_by_new_tls_connections() {
    let a = EchoBackend::start("a").await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, _, first) = ca.write_leaf(dir.path(), "site", &["localhost"]);
    let config = Yaml::new()
        .tls_listener("tls", &[("site.crt", "site.key")])
        .admin()
        .route("app")
        .upstream("app", |u| u.backend("a", a.addr))
        .build();
    let proxy = TestProxy::builder().dir(dir).yaml(&config).spawn().await;
    let addr = proxy.addr("tls");
    let (presented, mut old_conn) = tls_connect(addr, &ca).await;
    assert_eq!(presented, first.cert_der);
    assert_eq!(tls_get(&mut old_conn).await, "a");

    // Rotate the files in place (the config text is unchanged) and reload.
    let (_, _, second) = ca.write_leaf(proxy.dir(), "site", &["localhost"]);
    assert_ne!(first.cert_der, second.cert_der);
    assert_eq!(proxy.rewrite(&config).await, Ok(2));
    let (presented, mut new_conn) = tls_connect(addr, &ca).await;
    assert_eq!(presented, second.cert_der, "new connections get the new certificate");
    assert_eq!(tls_get(&mut new_conn).await, "a");
    assert_eq!(tls_get(&mut old_conn).await, "a", "the connection opened before the reload stays open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_setting_changes_apply_to_new_requests() {
    let backends = [EchoBackend::start("a").await, EchoBackend::start("b").await, EchoBackend::start("c").await];
    let list: Vec<(&str, SocketAddr)> = backends.iter().map(|b| (b.id.as_str(), b.addr)).collect();
    let before = "{ key: [ { header: X-User-Id } ], cookie: { name: OLD_PIN }, fallback: round_robin }";
    let after = "{ key: [ { query: user } ], cookie: { name: NEW_PIN }, fallback: round_robin }";
    let proxy = TestProxy::start(yaml(&list, |u| u.affinity(before))).await;
    let public = proxy.addr("public");
    let admin = proxy.admin();
    let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();

    let reply = client::get(public, "/", &[]).await;
    assert!(reply.header("set-cookie").is_some_and(|c| c.starts_with("OLD_PIN=")), "{:?}", reply.headers);
    let start = admin.metrics().await;
    for user in &users {
        client::get(public, &format!("/?user={user}"), &[]).await;
    }
    let mid = admin.metrics().await;
    let reasons = |s: &crate::support::prom::Scrape, reason: &str| {
        s.value("tether_affinity_decisions_total", &[("upstream", "app"), ("reason", reason)])
    };
    assert_eq!(reasons(&mid, "fallback") - reasons(&start, "fallback"), 20.0, "a query parameter is no key yet");
    assert_eq!(reasons(&mid, "key"), reasons(&start, "key"));

    assert_eq!(proxy.rewrite(yaml(&list, |u| u.affinity(after))).await, Ok(2));
    let reply = client::get(public, "/", &[]).await;
    let cookie = reply.header("set-cookie").expect("a pin cookie");
    assert!(cookie.starts_with("NEW_PIN="), "the cookie name changed: {cookie}");
    for user in &users {
        let home = admin.get_json(&format!("/admin/upstreams/app/route?key={user}")).await["backend"].clone();
        for _ in 0..2 {
            let reply = client::get(public, &format!("/?user={user}"), &[]).await;
            assert_eq!(Some(reply.header("x-backend-id").expect("backend id")), home.as_str(), "user {user}");
            assert_eq!(reply.header("set-cookie"), None, "keyed requests get no pin cookie");
        }
    }
    let end = admin.metrics().await;
    assert_eq!(reasons(&end, "key") - reasons(&mid, "key"), 40.0, "the query parameter is the key now");
    // The old header means nothing any more.
    let header_only = client::get(public, "/", &[("x-user-id", "u1")]).await;
    assert!(header_only.header("set-cookie").is_some_and(|c| c.starts_with("NEW_PIN=")));
}
