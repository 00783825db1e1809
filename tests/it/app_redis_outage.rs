//! Redis killed and restarted mid-test: the instances report it (healthz, metrics) without
//! going unready, refuse what they could not fan out (ERROR, 503), and resume cross-instance
//! fan-out by themselves once Redis is back.

use tether::app::stomp::Command;

use crate::support::WAIT;
use crate::support::app::{TestApp, has_line};
use crate::support::http_client;
use crate::support::redis::TestRedis;
use crate::support::stomp_client::StompClient;

const TOPIC: &str = "/topic/outage";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_degrades_then_fan_out_resumes() {
    let mut redis = TestRedis::start().await;
    let a = TestApp::builder().id("app-a").redis(&redis.url()).spawn_with_redis_up().await;
    let b = TestApp::builder().id("app-b").redis(&redis.url()).spawn_with_redis_up().await;

    let mut sub_a = StompClient::connect(&a.ws_url()).await;
    let mut sub_b = StompClient::connect(&b.ws_url()).await;
    sub_a.subscribe(TOPIC, "s").await;
    sub_b.subscribe(TOPIC, "s").await;
    let mut pub_a = StompClient::connect(&a.ws_url()).await;
    let r = pub_a.send_with_receipt(TOPIC, "before").await;
    assert_eq!(r.command, Command::Receipt);
    assert_eq!(sub_a.next_body().await, "before");
    assert_eq!(sub_b.next_body().await, "before");

    redis.stop();
    a.wait_redis("down").await;
    b.wait_redis("down").await;
    assert_eq!(http_client::get(a.addr, "/readyz").await.status, 200);
    assert_eq!(http_client::get(b.addr, "/readyz").await.status, 200);
    assert!(has_line(&a.metrics().await, "tether_backend_redis_up 0"));

    // POST /publish is answered 503, not a false 202.
    let r = a.publish(TOPIC, "during-http").await;
    assert_eq!(r.status, 503, "{}", r.body);
    // A SEND asking for a receipt gets an ERROR naming that receipt, then the session closes.
    let r = pub_a.send_with_receipt(TOPIC, "during-receipt").await;
    assert_eq!(r.command, Command::Error, "{r:?}");
    assert_eq!(r.get("receipt-id"), Some("r-2"));
    let (close, _) = pub_a.expect_close(WAIT).await;
    assert!(close.is_some(), "expected a WebSocket Close after the ERROR");

    redis.restart().await;
    a.wait_redis("up").await;
    b.wait_redis("up").await;
    let metrics = a.metrics().await;
    assert!(has_line(&metrics, "tether_backend_redis_up 1"), "{metrics}");
    assert!(has_line(&metrics, "tether_backend_redis_reconnects_total 1"), "{metrics}");

    // Fan-out resumes without any client resubscribing: the instances resubscribed.
    let mut pub_a2 = StompClient::connect(&a.ws_url()).await;
    let r = pub_a2.send_with_receipt(TOPIC, "after").await;
    assert_eq!(r.command, Command::Receipt, "{r:?}");
    // Nothing refused during the outage was delivered anywhere.
    assert_eq!(sub_a.next_body().await, "after");
    // B's next message after "before" is "after": nothing from the outage leaked or duplicated.
    assert_eq!(sub_b.next_body().await, "after");

    a.shutdown().await;
    b.shutdown().await;
}
