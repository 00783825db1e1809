//! Fan-out through a real three-master Redis Cluster (`--redis-cluster`): sharded Pub/Sub
//! (each destination's channel subscribed only on its slot's node, with `SSUBSCRIBE`), the
//! history stream on the same node (hash tags), and the subscription following its channel
//! when the slot moves to another node (`MOVED`) or the node restarts.

use std::time::Duration;

use crate::support::app::TestApp;
use crate::support::redis_cluster::TestRedisCluster;
use crate::support::stomp_client::StompClient;
use crate::support::until;

const TOPIC: &str = "/topic/sharded";
const CHANNEL: &str = "tether:dest:{/topic/sharded}";
const STREAM: &str = "tether:stream:{/topic/sharded}";

async fn spawn(cluster: &TestRedisCluster, id: &str) -> TestApp {
    TestApp::builder().id(id).redis_cluster(cluster.node_urls()).history_len(1000).spawn_with_redis_up().await
}

async fn publish(app: &TestApp, body: &str) {
    let r = app.publish(TOPIC, body).await;
    assert_eq!(r.status, 202, "publish {body}: {}", r.body);
}

/// Publishes `bodies` through `from` and expects them, in order, at `to`.
async fn round_trip(from: &TestApp, to: &mut StompClient, bodies: &[&str]) {
    for b in bodies {
        publish(from, b).await;
    }
    for b in bodies {
        assert_eq!(to.next_body().await, *b);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_fan_out_through_their_slots_node_and_follow_it_when_the_slot_moves() {
    let cluster = TestRedisCluster::start().await;
    let a = spawn(&cluster, "app-a").await;
    let b = spawn(&cluster, "app-b").await;
    let mut client = StompClient::connect(&a.ws_url()).await;
    client.subscribe(TOPIC, "s").await;

    // The channel and the stream share a slot; only that node has the subscription.
    let (owner, slot) = cluster.owner_of(CHANNEL).await;
    assert_eq!(cluster.owner_of(STREAM).await, (owner, slot));
    for node in 0..3 {
        let expected = i64::from(node == owner);
        assert_eq!(cluster.shard_subscribers(node, CHANNEL).await, expected, "node {node}");
    }
    round_trip(&b, &mut client, &["0", "1", "2"]).await;
    let len: i64 = cluster.query_node(owner, &["XLEN", STREAM]).await;
    assert_eq!(len, 3, "recorded on the channel's node");

    // The slot moves (a reshard) while app-a publishes 200 messages/s: the old owner drops the
    // subscription, app-a's instance subscribes again on the new owner, publishers follow
    // MOVED, and the live subscriber gets what was published in between from the stream:
    // every message taken, once, in order.
    let to = (owner + 1) % 3;
    let stop = tokio_util::sync::CancellationToken::new();
    let publishing = a.publish_numbered_until(TOPIC, "m", stop.clone());
    let moving = async {
        let mut got = vec![client.next_body().await];
        cluster.move_slot(slot, owner, to).await;
        until("the subscription to move to the new owner", async || cluster.shard_subscribers(to, CHANNEL).await == 1)
            .await;
        let moved_at = got.len();
        while got.len() < moved_at + 20 {
            got.push(client.next_body().await);
        }
        stop.cancel();
        got
    };
    let (taken, mut got) = tokio::join!(publishing, moving);
    let expected: Vec<String> = taken.iter().map(|n| format!("m{n}")).collect();
    client.expect_bodies(&mut got, &expected).await;
    assert_eq!(cluster.shard_subscribers(owner, CHANNEL).await, 0);
    round_trip(&b, &mut client, &["3", "4"]).await;
    let len: i64 = cluster.query_node(to, &["XLEN", STREAM]).await;
    assert_eq!(len as usize, 3 + taken.len() + 2, "the stream moved with its slot and goes on growing there");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_gets_its_subscriptions_back() {
    let mut cluster = TestRedisCluster::start().await;
    let a = spawn(&cluster, "app-a").await;
    let b = spawn(&cluster, "app-b").await;
    let mut client = StompClient::connect(&a.ws_url()).await;
    client.subscribe(TOPIC, "s").await;
    round_trip(&b, &mut client, &["0"]).await;
    let (owner, _) = cluster.owner_of(CHANNEL).await;

    cluster.restart_node(owner).await;
    until("the subscription to be made again on the restarted node", async || {
        cluster.shard_subscribers(owner, CHANNEL).await == 1
    })
    .await;
    // Publishing may fail while the cluster client notices the restart; once a publish is
    // taken, every following one arrives, in order.
    until("a publish to be taken after the restart", async || a.publish(TOPIC, "after").await.status == 202).await;
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("after") {
        got.push(tokio::time::timeout(Duration::from_secs(20), client.next_body()).await.expect("a message"));
    }
    round_trip(&b, &mut client, &["1", "2"]).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_the_subscription_is_made_on_the_promoted_replica() {
    let mut cluster = TestRedisCluster::start_with_replicas(1).await;
    let a = spawn(&cluster, "app-a").await;
    let b = spawn(&cluster, "app-b").await;
    let mut client = StompClient::connect(&a.ws_url()).await;
    client.subscribe(TOPIC, "s").await;
    round_trip(&b, &mut client, &["0"]).await;
    let (owner, _) = cluster.owner_of(CHANNEL).await;

    // The master of the channel's slot is lost; its replica takes over.
    cluster.kill_node(owner);
    let promoted = cluster.wait_owner(CHANNEL).await;
    assert_ne!(promoted, owner);
    until("the subscription to be made on the promoted replica", async || {
        cluster.shard_subscribers(promoted, CHANNEL).await == 1
    })
    .await;
    until("a publish to be taken after the failover", async || b.publish(TOPIC, "after").await.status == 202).await;
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("after") {
        got.push(client.next_body().await);
    }
    assert_eq!(got, ["after"], "nothing else arrived, and that once");
    round_trip(&b, &mut client, &["1", "2"]).await;
    a.shutdown().await;
    b.shutdown().await;
}
