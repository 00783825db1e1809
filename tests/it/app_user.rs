//! Spring-style user destinations across instances, and dynamic Redis subscriptions that
//! follow local subscribers (checked with `PUBSUB CHANNELS`).

use tether::app::stomp::Command;

use crate::support::app::TestApp;
use crate::support::jwt;
use crate::support::redis::TestRedis;
use crate::support::stomp_client::{ConnectOptions, StompClient};
use crate::support::until;

const QUEUE: &str = "/user/queue/notifications";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_destinations_reach_every_session_of_that_user_on_any_instance() {
    let redis = TestRedis::start().await;
    let jwks = jwt::fixture("jwks.json");
    let a = TestApp::builder().id("app-a").redis(&redis.url()).spawn_with_redis_up().await;
    let b = TestApp::builder().id("app-b").redis(&redis.url()).jwt_jwks(&jwks).spawn_with_redis_up().await;

    // Identity from the trusted proxy's upgrade header on A, from a verified CONNECT token on B.
    let mut alice_a = StompClient::connect_with(&a.ws_url(), ConnectOptions::default().user_header("alice")).await;
    let mut alice_b =
        StompClient::connect_with(&b.ws_url(), ConnectOptions::default().bearer(&jwt::token("alice"))).await;
    let mut bob_a = StompClient::connect_with(&a.ws_url(), ConnectOptions::default().user_header("bob")).await;
    assert_eq!(alice_a.connected.get("user-name"), Some("alice"));
    assert_eq!(alice_b.connected.get("user-name"), Some("alice"));
    for c in [&mut alice_a, &mut alice_b, &mut bob_a] {
        c.subscribe(QUEUE, "n").await;
    }

    let r = bob_a.send_with_receipt("/user/alice/queue/notifications", "hi alice").await;
    assert_eq!(r.command, Command::Receipt, "{r:?}");
    for alice in [&mut alice_a, &mut alice_b] {
        let m = alice.next_message().await;
        assert_eq!(&m.body[..], b"hi alice");
        assert_eq!(m.get("destination"), Some(QUEUE));
        assert_eq!(m.get("tether-user"), Some("bob"));
    }
    // Bob's next message is the one meant for him: he never got alice's.
    let r = alice_b.send_with_receipt("/user/bob/queue/notifications", "hi bob").await;
    assert_eq!(r.command, Command::Receipt, "{r:?}");
    assert_eq!(bob_a.next_body().await, "hi bob");

    // Subscribing to another user's destination only ever listens in your own namespace.
    let mut mallory = StompClient::connect_with(&a.ws_url(), ConnectOptions::default().user_header("mallory")).await;
    mallory.subscribe("/user/alice/queue/notifications", "spy").await;
    mallory.subscribe("/topic/sync", "sync").await;
    let r = bob_a.send_with_receipt("/user/alice/queue/notifications", "private").await;
    assert_eq!(r.command, Command::Receipt);
    assert_eq!(alice_a.next_body().await, "private");
    let r = bob_a.send_with_receipt("/topic/sync", "sync").await;
    assert_eq!(r.command, Command::Receipt);
    let m = mallory.next_message().await;
    assert_eq!(m.get("subscription"), Some("sync"), "mallory got {m:?}");

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_channels_follow_local_subscribers() {
    let redis = TestRedis::start().await;
    let a = TestApp::builder().id("app-a").redis(&redis.url()).spawn_with_redis_up().await;
    let all = "tether:dest:*";
    assert!(redis.pubsub_channels(all).await.is_empty());

    let mut c1 = StompClient::connect(&a.ws_url()).await;
    let mut c2 = StompClient::connect(&a.ws_url()).await;
    c1.subscribe("/topic/dyn", "s1").await;
    assert_eq!(redis.pubsub_channels(all).await, ["tether:dest:/topic/dyn"]);
    c2.subscribe("/topic/dyn", "s2").await;
    c2.unsubscribe("s2").await;
    assert_eq!(redis.pubsub_channels(all).await, ["tether:dest:/topic/dyn"]);
    c1.unsubscribe("s1").await;
    assert!(redis.pubsub_channels(all).await.is_empty());

    let mut carol = StompClient::connect_with(&a.ws_url(), ConnectOptions::default().user_header("carol")).await;
    carol.subscribe("/user/queue/x", "q").await;
    assert_eq!(redis.pubsub_channels(all).await, ["tether:dest:/user/carol/queue/x"]);
    // A session that goes away without unsubscribing releases its channels too.
    carol.disconnect().await;
    until("the channel to be released after the session ended", async || redis.pubsub_channels(all).await.is_empty())
        .await;
    a.shutdown().await;
}
