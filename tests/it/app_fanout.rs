//! Fan-out across instances: every subscriber of a destination on every instance gets each
//! message exactly once, whether it was sent over STOMP on either instance or POSTed to
//! `/publish`, through real Redis and through the in-process bus.

use std::collections::BTreeMap;

use tether::app::LocalBus;
use tether::app::stomp::Command;

use crate::support::app::TestApp;
use crate::support::http_client;
use crate::support::redis::TestRedis;
use crate::support::stomp_client::StompClient;

const TOPIC: &str = "/topic/auction.1";

/// Sends `from-a` (STOMP on A), `from-b` (STOMP on B) and `from-http` (POST on A), each
/// confirmed before the next, then markers `end-a` and `end-b`; returns the senders.
async fn publish_all(a: &TestApp, b: &TestApp) -> (StompClient, StompClient) {
    let mut sender_a = StompClient::connect(&a.ws_url()).await;
    let mut sender_b = StompClient::connect(&b.ws_url()).await;
    let r = sender_a.send_with_receipt(TOPIC, "from-a").await;
    assert_eq!(r.command, Command::Receipt, "{r:?}");
    let r = sender_b.send_with_receipt(TOPIC, "from-b").await;
    assert_eq!(r.command, Command::Receipt, "{r:?}");
    let r = a.publish(TOPIC, "from-http").await;
    assert_eq!(r.status, 202, "{}", r.body);
    // Markers go out last from each instance. A duplicate caused by a broken local bypass is
    // the publisher's own echo coming back from the broker; the broker delivers in publish
    // order, so any echo reaches a subscriber before the *other* instance's later marker.
    let r = sender_a.send_with_receipt(TOPIC, "end-a").await;
    assert_eq!(r.command, Command::Receipt, "{r:?}");
    let r = sender_b.send_with_receipt(TOPIC, "end-b").await;
    assert_eq!(r.command, Command::Receipt, "{r:?}");
    (sender_a, sender_b)
}

/// Reads until both markers arrived; returns how often each payload was received.
async fn receive_until_markers(client: &mut StompClient) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    while !(counts.contains_key("end-a") && counts.contains_key("end-b")) {
        let m = client.next_message().await;
        assert_eq!(m.get("destination"), Some(TOPIC));
        assert_eq!(m.get("subscription"), Some("sub-0"));
        let body = String::from_utf8(m.body.to_vec()).expect("utf8");
        *counts.entry(body).or_insert(0) += 1;
    }
    counts
}

fn expected() -> BTreeMap<String, usize> {
    ["from-a", "from-b", "from-http", "end-a", "end-b"].into_iter().map(|s| (s.to_owned(), 1)).collect()
}

async fn fifty_subscribers_get_every_message_once(a: TestApp, b: TestApp) {
    let mut clients = Vec::new();
    for i in 0..50 {
        let backend = if i % 2 == 0 { &a } else { &b };
        let mut c = StompClient::connect(&backend.ws_url()).await;
        c.subscribe(TOPIC, "sub-0").await;
        clients.push(c);
    }
    let _senders = publish_all(&a, &b).await;
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(receive_until_markers(c).await, expected(), "client {i}");
    }
    let ids: Vec<_> =
        clients.iter().map(|c| c.connected.get("tether-instance").unwrap_or_default().to_owned()).collect();
    assert_eq!(ids.iter().filter(|i| *i == "app-a").count(), 25);
    assert_eq!(ids.iter().filter(|i| *i == "app-b").count(), 25);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_send_reaches_fifty_subscribers_on_two_redis_instances_exactly_once() {
    let redis = TestRedis::start().await;
    let a = TestApp::builder().id("app-a").redis(&redis.url()).spawn_with_redis_up().await;
    let b = TestApp::builder().id("app-b").redis(&redis.url()).spawn_with_redis_up().await;
    fifty_subscribers_get_every_message_once(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_send_reaches_fifty_subscribers_on_a_shared_local_bus_exactly_once() {
    let bus = LocalBus::new();
    let a = TestApp::builder().id("app-a").bus(&bus).spawn().await;
    let b = TestApp::builder().id("app-b").bus(&bus).spawn().await;
    fifty_subscribers_get_every_message_once(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_an_id_still_get_each_others_messages() {
    // Local bypass keys on a random per-process nonce, never on --id.
    let redis = TestRedis::start().await;
    let a = TestApp::builder().id("same").redis(&redis.url()).spawn_with_redis_up().await;
    let b = TestApp::builder().id("same").redis(&redis.url()).spawn_with_redis_up().await;
    let mut on_b = StompClient::connect(&b.ws_url()).await;
    on_b.subscribe("/topic/x", "s").await;
    let mut on_a = StompClient::connect(&a.ws_url()).await;
    let r = on_a.send_with_receipt("/topic/x", "hello").await;
    assert_eq!(r.command, Command::Receipt);
    let m = on_b.next_message().await;
    assert_eq!(&m.body[..], b"hello");
    assert_eq!(m.get("tether-instance"), Some("same"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_metrics_move_to_the_internal_listener() {
    let a = TestApp::builder().internal_listener().spawn().await;
    let internal = a.internal.expect("internal listener");
    let mut c = StompClient::connect(&a.ws_url()).await;
    c.subscribe("/topic/biz", "s").await;

    assert_eq!(http_client::post(a.addr, "/publish?destination=/topic/biz", "x").await.status, 404);
    assert_eq!(http_client::get(a.addr, "/metrics").await.status, 404);
    let r = http_client::post(internal, "/publish", "x").await;
    assert_eq!(r.status, 400, "missing destination: {}", r.body);

    let r = a.publish("/topic/biz", "{\"price\":42}").await;
    assert_eq!(r.status, 202, "{}", r.body);
    let m = c.next_message().await;
    assert_eq!(&m.body[..], b"{\"price\":42}");
    assert_eq!(m.get("message-id"), r.json()["id"].as_str());

    let metrics = a.metrics().await;
    for line in [
        "tether_backend_sessions 1",
        "tether_backend_subscriptions 1",
        "tether_backend_destinations 1",
        "tether_backend_messages_in_total{source=\"http\"} 1",
        "tether_backend_messages_out_total 1",
        "tether_backend_fanout_latency_seconds_count 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
    }
    a.shutdown().await;
}
