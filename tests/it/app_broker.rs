//! What the broker's answers mean, against a real Redis: a RECEIPT for a SUBSCRIBE means the
//! destination is received on every instance from then on; a SEND the broker did not take is
//! an ERROR and is counted; subscription changes are batched; a slow Redis delays messages but
//! never drops or duplicates them; and one publisher's messages reach every subscriber on
//! every instance in the order they were sent.

use tether::app::stomp::{Command, Frame, Version};
use tokio_tungstenite::tungstenite::Message;

use crate::support::WAIT;
use crate::support::app::{TestApp, has_line};
use crate::support::redis::TestRedis;
use crate::support::stomp_client::StompClient;
use crate::support::until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_the_broker_did_not_confirm_is_an_error_and_leaves_nothing_behind() {
    let mut redis = TestRedis::start().await;
    let a = TestApp::builder().id("app-a").redis(&redis.url()).spawn_with_redis_up().await;
    redis.stop();
    a.wait_redis("down").await;

    let mut c = StompClient::connect(&a.ws_url()).await;
    c.send_frame(
        &Frame::new(Command::Subscribe).header("id", "s").header("destination", "/topic/x").header("receipt", "r1"),
    )
    .await;
    let (close, frames) = c.expect_close(WAIT).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].command, Command::Error, "no RECEIPT while Redis is down: {frames:?}");
    assert_eq!(frames[0].get("receipt-id"), Some("r1"));
    assert_eq!(frames[0].get("message"), Some("subscription not confirmed"));
    assert_eq!(&frames[0].body[..], b"the broker is unavailable");
    assert!(close.is_some());
    until("the subscription to be gone", async || a.health().await["subscriptions"] == 0).await;

    // Once Redis is back nothing of it is subscribed.
    redis.restart().await;
    a.wait_redis("up").await;
    assert_eq!(redis.pubsub_channels("tether:dest:*").await, Vec::<String>::new());
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_made_while_redis_answers_slowly_go_out_in_one_command() {
    let redis = TestRedis::start().await;
    let a = TestApp::builder().id("app-a").redis(&redis.url()).spawn_with_redis_up().await;
    let b = TestApp::builder().id("app-b").redis(&redis.url()).spawn_with_redis_up().await;
    // Four sessions of 250 subscriptions each (a session may have 256).
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(StompClient::connect(&a.ws_url()).await);
    }
    let before = redis.command_calls("subscribe").await;

    // The first SUBSCRIBE reaches Redis during the pause and waits there; the other 999
    // arrive meanwhile and must go out together when it is answered.
    redis.pause(1000).await;
    for (n, c) in clients.iter_mut().enumerate() {
        let mut text = String::new();
        for i in n * 250..(n + 1) * 250 {
            let mut f = Frame::new(Command::Subscribe)
                .header("id", i.to_string())
                .header("destination", format!("/topic/many.{i}"));
            if i % 250 == 249 {
                f = f.header("receipt", "all");
            }
            text.push_str(std::str::from_utf8(&tether::app::stomp::to_bytes(&f, Version::V1_2)).unwrap());
        }
        c.send_raw(Message::text(text)).await;
    }
    for c in &mut clients {
        c.expect_receipt("all").await;
    }
    let calls = redis.command_calls("subscribe").await - before;
    assert!((1..=2).contains(&calls), "1000 channels took {calls} SUBSCRIBE commands");
    let c = clients.last_mut().expect("four clients");

    // And remote delivery works for the last of them at once.
    let mut p = StompClient::connect(&b.ws_url()).await;
    let r = p.send_with_receipt("/topic/many.999", "last").await;
    assert_eq!(r.command, Command::Receipt, "{r:?}");
    assert_eq!(c.next_body().await, "last");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_the_broker_refused_is_an_error_and_is_counted_as_failed_not_published() {
    let mut redis = TestRedis::start().await;
    let a = TestApp::builder().id("app-a").redis(&redis.url()).spawn_with_redis_up().await;
    let mut publisher = StompClient::connect(&a.ws_url()).await;
    redis.stop();
    a.wait_redis("down").await;

    // No receipt asked for: still an ERROR, since the message reached nobody.
    publisher.send("/topic/lost", "into the void").await;
    let (close, frames) = publisher.expect_close(WAIT).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].command, Command::Error);
    assert_eq!(frames[0].get("message"), Some("message not published"));
    assert!(close.is_some());
    let metrics = a.metrics().await;
    assert!(has_line(&metrics, "tether_backend_publish_failures_total{source=\"stomp\"} 1"), "{metrics}");
    assert!(!metrics.contains("tether_backend_messages_in_total{source=\"stomp\"}"), "{metrics}");

    // With a receipt: the ERROR names it.
    let mut publisher = StompClient::connect(&a.ws_url()).await;
    let r = publisher.send_with_receipt("/topic/lost", "again").await;
    assert_eq!(r.command, Command::Error, "{r:?}");
    assert_eq!(r.get("receipt-id"), Some("r-1"));
    // POST /publish says 503 and does not claim a local delivery.
    let r = a.publish("/topic/lost", "http").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["delivered_locally"], serde_json::Value::Null);
    let metrics = a.metrics().await;
    assert!(has_line(&metrics, "tether_backend_publish_failures_total{source=\"stomp\"} 2"), "{metrics}");
    assert!(has_line(&metrics, "tether_backend_publish_failures_total{source=\"http\"} 1"), "{metrics}");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_delays_messages_but_never_drops_or_duplicates_them() {
    let redis = TestRedis::start().await;
    let a = TestApp::builder().id("app-a").redis(&redis.url()).spawn_with_redis_up().await;
    let b = TestApp::builder().id("app-b").redis(&redis.url()).spawn_with_redis_up().await;
    let mut sub_a = StompClient::connect(&a.ws_url()).await;
    let mut sub_b = StompClient::connect(&b.ws_url()).await;
    sub_a.subscribe("/topic/slow", "s").await;
    sub_b.subscribe("/topic/slow", "s").await;
    let mut publisher = StompClient::connect(&a.ws_url()).await;

    // Time under test: every Redis round trip takes 2.5 s, longer than the 2 s after which
    // the broker counts as slow.
    redis.pause(2500).await;
    let r = publisher.send_with_receipt("/topic/slow", "during").await;
    assert_eq!(r.command, Command::Receipt, "a slow Redis is waited for, not an outage: {r:?}");
    let r = publisher.send_with_receipt("/topic/slow", "after").await;
    assert_eq!(r.command, Command::Receipt, "{r:?}");
    for sub in [&mut sub_a, &mut sub_b] {
        assert_eq!(sub.next_body().await, "during");
        assert_eq!(sub.next_body().await, "after", "exactly once, in order");
    }
    let metrics = a.metrics().await;
    assert!(has_line(&metrics, "tether_backend_redis_reconnects_total 0"), "{metrics}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publishers_messages_arrive_in_order_on_every_instance() {
    let redis = TestRedis::start().await;
    let a = TestApp::builder().id("app-a").redis(&redis.url()).spawn_with_redis_up().await;
    let b = TestApp::builder().id("app-b").redis(&redis.url()).spawn_with_redis_up().await;
    let mut sub_a = StompClient::connect(&a.ws_url()).await;
    let mut sub_b = StompClient::connect(&b.ws_url()).await;
    sub_a.subscribe("/topic/order", "s").await;
    sub_b.subscribe("/topic/order", "s").await;

    // One publisher whose requests land on either instance (as behind a load balancer), each
    // sent after the previous one was accepted.
    const N: usize = 200;
    for i in 0..N {
        let app = if i % 2 == 0 { &a } else { &b };
        let r = app.publish("/topic/order", &i.to_string()).await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    for sub in [&mut sub_a, &mut sub_b] {
        let mut got = Vec::with_capacity(N);
        for _ in 0..N {
            got.push(sub.next_body().await.parse::<usize>().expect("a number"));
        }
        assert_eq!(got, (0..N).collect::<Vec<_>>());
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_is_reported_slow_not_down_and_recovers() {
    let redis = TestRedis::start().await;
    let a = TestApp::builder()
        .id("app-a")
        .redis(&redis.url())
        .redis_slow_after(std::time::Duration::from_millis(200))
        .spawn_with_redis_up()
        .await;
    let mut c = StompClient::connect(&a.ws_url()).await;
    c.subscribe("/topic/s", "s").await;
    // Time under test: Redis answers nothing for 1.5 s, well past the 200 ms slow threshold.
    redis.pause(1500).await;
    c.send("/topic/s", "waited").await;
    a.wait_redis("slow").await;
    assert_eq!(c.next_body().await, "waited");
    a.wait_redis("up").await;
    let metrics = a.metrics().await;
    assert!(has_line(&metrics, "tether_backend_redis_reconnects_total 0"), "{metrics}");
    a.shutdown().await;
}
