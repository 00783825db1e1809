//! DNS discovery: every address a name resolves to is a backend named after its
//! address; new ones join after a healthy check, vanished ones drain, a failed lookup keeps the
//! last good set, and a hashed user keeps their backend while its address stays. Driven
//! through an injected resolver whose answer the test changes, plus the system resolver on
//! `localhost`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::support::admin::AdminClient;
use crate::support::config::{Upstream, Yaml};
use crate::support::echo::EchoBackend;
use crate::support::gated::GatedBackend;
use crate::support::http::{self as client, H1};
use crate::support::proxy::TestProxy;
use crate::support::resolver::{Answer, ScriptedResolver};
use crate::support::{until, ws};

/// Listener `public`, admin, and upstream `app` discovering `app.internal:8080` every 100 ms
/// besides `static_backends`, set up by `upstream`.
fn yaml(static_backends: &[(&str, SocketAddr)], upstream: impl FnOnce(Upstream) -> Upstream) -> Yaml {
    Yaml::app(|u| upstream(u.discovery("app.internal:8080", "100ms").backends(static_backends.iter().copied())))
}

/// The proxy with `resolver` answering its lookups.
async fn start(yaml: Yaml, resolver: &Arc<ScriptedResolver>) -> TestProxy {
    TestProxy::builder().yaml(yaml).resolver(resolver.clone()).spawn().await
}

/// Wait until `/admin/upstreams/app` lists exactly `ids` (any order).
async fn wait_ids(admin: &AdminClient, ids: &[String]) {
    let mut want = ids.to_vec();
    want.sort();
    until(&format!("backends {want:?}"), async || {
        let mut got = admin.backend_ids("app").await;
        got.sort();
        got == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_addresses_join_after_a_healthy_check_and_vanished_ones_drain() {
    let fixed = EchoBackend::start("fixed").await;
    let e1 = EchoBackend::start("e1").await;
    let e2 = EchoBackend::start("e2").await;
    let e3 = GatedBackend::start("e3", false).await;
    let (id1, id2, id3) = (e1.addr.to_string(), e2.addr.to_string(), e3.addr.to_string());
    let resolver = Arc::new(ScriptedResolver::new(vec![e1.addr, e2.addr]));
    let proxy = start(
        yaml(&[("fixed", fixed.addr)], |u| {
            u.affinity("{ key: [ { header: X-User-Id } ] }")
                .health_check(
                    "{ path: /readyz, interval: 200ms, timeout: 150ms, healthy_after: 1, unhealthy_after: 100 }",
                )
                .drain("{ timeout: 2s, close_spread: 100ms, close_code: 1012 }")
        }),
        &resolver,
    )
    .await;
    let (admin, public) = (&proxy.admin(), proxy.addr("public"));

    // Static backends and discovered ones side by side; the discovered ones are named by
    // their address.
    wait_ids(admin, &["fixed".into(), id1.clone(), id2.clone()]).await;
    assert!(resolver.asked().contains(&("app.internal".to_owned(), 8080)));
    assert_eq!(admin.backend("app", "fixed").await.expect("fixed")["source"], "config");
    let listed = admin.wait_state("app", &id1, &["active"]).await;
    assert_eq!(listed["source"], "dns");
    assert_eq!(listed["address"], id1);
    admin.wait_state("app", &id2, &["active"]).await;
    let user_of_e2 = admin.key_on("app", &id2, "user-").await;
    let (mut on_e2, greeted) = ws::open(public, &[("x-user-id", &user_of_e2)]).await;
    assert_eq!(greeted, "e2");

    // A new record joins only once its check passes.
    resolver.set(Answer::Addrs(vec![e1.addr, e2.addr, e3.addr]));
    wait_ids(admin, &["fixed".into(), id1.clone(), id2.clone(), id3.clone()]).await;
    until("two failed checks of e3", async || e3.checks.load(Ordering::SeqCst) >= 2).await;
    assert_eq!(admin.backend("app", &id3).await.expect("e3")["state"], "joining");
    let mut conn = H1::connect(public).await;
    for i in 0..30 {
        conn.get("/", &[("x-user-id", &format!("probe-{i}"))]).await;
    }
    assert_eq!(e3.served.load(Ordering::SeqCst), 0, "a joining backend gets no session");
    e3.set_ready(true);
    admin.wait_state("app", &id3, &["active"]).await;
    let user_of_e3 = admin.key_on("app", &id3, "user-").await;
    assert_eq!(conn.get("/", &[("x-user-id", &user_of_e3)]).await.header("x-backend-id"), Some("e3"));

    // A record that disappears drains: its tunnel stays until drain.timeout, then is closed
    // gracefully with the drain code.
    resolver.set(Answer::Addrs(vec![e1.addr, e3.addr]));
    let draining = admin.wait_state("app", &id2, &["draining"]).await;
    assert_eq!(draining["drain"]["reason"], "removed");
    assert_eq!(draining["member"], false);
    ws::echo(&mut on_e2, "still here while draining").await;
    assert_eq!(ws::expect_close(&mut on_e2).await, 1012);
    wait_ids(admin, &["fixed".into(), id1.clone(), id3.clone()]).await;
    let reply = conn.get("/", &[("x-user-id", &user_of_e2)]).await;
    assert_ne!(reply.header("x-backend-id"), Some("e2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lookup_or_an_empty_answer_keeps_the_last_good_set() {
    let e1 = EchoBackend::start("e1").await;
    let e2 = EchoBackend::start("e2").await;
    let (id1, id2) = (e1.addr.to_string(), e2.addr.to_string());
    let resolver = Arc::new(ScriptedResolver::new(vec![e1.addr, e2.addr]));
    let proxy = start(
        yaml(&[], |u| u.affinity("{ fallback: round_robin }").drain("{ timeout: 200ms, close_spread: 100ms }")),
        &resolver,
    )
    .await;
    let (admin, public) = (&proxy.admin(), proxy.addr("public"));
    wait_ids(admin, &[id1.clone(), id2.clone()]).await;

    for answer in [Answer::Fail, Answer::Addrs(Vec::new())] {
        resolver.set(answer.clone());
        // Two more lookups: the first one's answer has certainly been handled by then.
        resolver.wait_lookups(resolver.lookups(), 2).await;
        let mut ids = admin.backend_ids("app").await;
        ids.sort();
        let mut want = vec![id1.clone(), id2.clone()];
        want.sort();
        assert_eq!(ids, want, "after {answer:?}");
        for id in [&id1, &id2] {
            assert_eq!(admin.backend("app", id).await.expect("listed")["state"], "active", "after {answer:?}");
        }
        let mut seen = Vec::new();
        let mut conn = H1::connect(public).await;
        for _ in 0..4 {
            seen.push(conn.get("/", &[]).await.text());
        }
        assert!(seen.contains(&"e1".to_owned()) && seen.contains(&"e2".to_owned()), "{seen:?}");
    }

    // Lookups still count: a good answer applies again.
    resolver.set(Answer::Addrs(vec![e1.addr]));
    wait_ids(admin, std::slice::from_ref(&id1)).await;
    assert_eq!(client::get(public, "/", &[]).await.text(), "e1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashed_user_keeps_their_backend_while_its_address_stays_in_dns() {
    let backends = [
        EchoBackend::start("e1").await,
        EchoBackend::start("e2").await,
        EchoBackend::start("e3").await,
        EchoBackend::start("e4").await,
    ];
    let addr = |i: usize| backends[i].addr;
    let id = |i: usize| backends[i].addr.to_string();
    let resolver = Arc::new(ScriptedResolver::new(vec![addr(0), addr(1), addr(2)]));
    let proxy = start(yaml(&[], |u| u.affinity("{ key: [ { header: X-User-Id } ] }")), &resolver).await;
    let (admin, public) = (&proxy.admin(), proxy.addr("public"));
    wait_ids(admin, &[id(0), id(1), id(2)]).await;

    let users: Vec<String> = (0..120).map(|i| format!("user-{i}")).collect();
    let placement = async || {
        let mut conn = H1::connect(public).await;
        let mut at = HashMap::new();
        for user in &users {
            at.insert(user.clone(), conn.get("/", &[("x-user-id", user)]).await.text());
        }
        at
    };
    let first = placement().await;
    let per_backend = |p: &HashMap<String, String>, b: &str| p.values().filter(|v| *v == b).count();
    for b in ["e1", "e2", "e3"] {
        assert!(per_backend(&first, b) > 0, "{b} has users: {first:?}");
    }

    // Re-resolution in another order changes nothing.
    resolver.set(Answer::Addrs(vec![addr(2), addr(0), addr(1)]));
    resolver.wait_lookups(resolver.lookups(), 2).await;
    assert_eq!(placement().await, first, "same addresses, same users");

    // A fourth address: users only ever move to it.
    resolver.set(Answer::Addrs(vec![addr(1), addr(3), addr(2), addr(0)]));
    wait_ids(admin, &[id(0), id(1), id(2), id(3)]).await;
    let second = placement().await;
    let moved: Vec<&String> = users.iter().filter(|u| first[*u] != second[*u]).collect();
    assert!(!moved.is_empty(), "the new backend takes some users");
    assert!(moved.len() < users.len() / 2, "consistent hashing moves about a quarter, not {}", moved.len());
    for user in &moved {
        assert_eq!(second[*user], "e4", "{user} moved from {} to a backend other than the new one", first[*user]);
    }

    // e3 leaves DNS: only its users move.
    resolver.set(Answer::Addrs(vec![addr(0), addr(1), addr(3)]));
    wait_ids(admin, &[id(0), id(1), id(3)]).await;
    let third = placement().await;
    for user in &users {
        if second[user] != "e3" {
            assert_eq!(third[user], second[user], "{user} stays while its backend's address stays");
        } else {
            assert_ne!(third[user], "e3");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_resolver_discovers_localhost() {
    let e1 = EchoBackend::start("e1").await;
    let port = e1.addr.port();
    let yaml = Yaml::app(|u| u.discovery(&format!("localhost:{port}"), "100ms"));
    let proxy = TestProxy::start(yaml).await;
    let (admin, public) = (&proxy.admin(), proxy.addr("public"));
    // What the system resolver says localhost is, here: every answer is a backend.
    let mut expected: Vec<String> = tokio::net::lookup_host(("localhost", port))
        .await
        .expect("localhost resolves")
        .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()).to_string())
        .collect();
    expected.sort();
    expected.dedup();
    assert!(expected.contains(&e1.addr.to_string()), "localhost resolves to 127.0.0.1 here: {expected:?}");
    wait_ids(admin, &expected).await;
    assert_eq!(admin.backend("app", &e1.addr.to_string()).await.expect("listed")["source"], "dns");
    assert_eq!(client::get(public, "/", &[]).await.text(), "e1");
}
