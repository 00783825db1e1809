//! Interop with a STOMP client nobody here wrote: `@stomp/stompjs` on Node (`tests/js`),
//! run directly against `tether backend`: connect, subscribe, send, receive; authenticate with
//! a token in its `connectHeaders`; and after a drain of its instance, reconnect to the other
//! one and keep receiving.

use tether::app::LocalBus;

use crate::support::WAIT;
use crate::support::app::TestApp;
use crate::support::jwt;
use crate::support::node::NodeScript;

fn spawn_node(mode: &str, urls: &[String]) -> NodeScript {
    let mut args = vec![mode.to_owned()];
    args.extend(urls.iter().cloned());
    NodeScript::start("stomp_interop.mjs", &args, false)
}

/// The next event named `event`; panics on a STOMP error or when the client finished first.
async fn wait_event(node: &mut NodeScript, event: &str) -> serde_json::Value {
    loop {
        let e = node.next_event().await.expect("the client exited without reporting");
        assert_ne!(e["event"], "error", "stompjs reported {e}");
        if e["event"] == event {
            return e;
        }
        if e["event"] == "done" {
            panic!("client finished before {event}: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stompjs_connects_subscribes_sends_and_receives() {
    let a = TestApp::builder().id("app-a").spawn().await;
    let mut node = spawn_node("basic", &[a.ws_url()]);

    let subscribed = wait_event(&mut node, "subscribed").await;
    assert_eq!(subscribed["version"], "1.2");
    assert_eq!(subscribed["instance"], "app-a");
    assert_eq!(subscribed["user"], serde_json::Value::Null, "its login names nobody");
    let done = wait_event(&mut node, "done").await;
    assert_eq!(done["ok"], true, "{done}");
    assert_eq!(done["received"], serde_json::json!(["hello-1 ünïcode \u{1F600}"]));
    let status = tokio::time::timeout(WAIT, node.child.wait()).await.expect("node exits").expect("wait");
    assert!(status.success());
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stompjs_authenticates_with_a_token_in_its_connect_headers() {
    let a = TestApp::builder().id("app-a").jwt_jwks(&jwt::fixture("jwks.json")).spawn().await;
    let mut node = spawn_node("token", &[jwt::token("alice"), a.ws_url()]);
    let subscribed = wait_event(&mut node, "subscribed").await;
    assert_eq!(subscribed["user"], "alice");
    let done = wait_event(&mut node, "done").await;
    assert_eq!(done["ok"], true, "{done}");
    // A bad token is a STOMP ERROR the client reports.
    let mut node = spawn_node("token", &["not-a-token".to_owned(), a.ws_url()]);
    let e = node.next_event().await.expect("an event");
    assert_eq!((e["event"].as_str(), e["message"].as_str()), (Some("error"), Some("invalid token")), "{e}");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stompjs_reconnects_to_the_other_instance_after_a_drain_and_still_receives() {
    let bus = LocalBus::new();
    let mut a = TestApp::builder().id("app-a").bus(&bus).spawn().await;
    let b = TestApp::builder().id("app-b").bus(&bus).spawn().await;
    let mut node = spawn_node("drain", &[a.ws_url(), b.ws_url()]);

    let first = wait_event(&mut node, "subscribed").await;
    assert_eq!(first["instance"], "app-a");
    a.begin_shutdown();
    let closed = wait_event(&mut node, "closed").await;
    assert_eq!(closed["code"], 1001);
    let second = wait_event(&mut node, "subscribed").await;
    assert_eq!(second["instance"], "app-b");
    assert_eq!(second["round"], 2);
    // "Received after a reconnect" means after the new SUBSCRIBE's RECEIPT, which the client
    // waited for before printing `subscribed`.
    let r = b.publish("/topic/interop", "from-rust").await;
    assert_eq!(r.status, 202);
    let done = wait_event(&mut node, "done").await;
    assert_eq!(done["ok"], true, "{done}");
    let received: Vec<String> = serde_json::from_value(done["received"].clone()).expect("list");
    assert!(received.contains(&"from-rust".to_owned()), "{received:?}");
    assert!(received.contains(&"hello-2 ünïcode \u{1F600}".to_owned()), "{received:?}");
    let status = tokio::time::timeout(WAIT, node.child.wait()).await.expect("node exits").expect("wait");
    assert!(status.success());
    a.join().await;
    b.shutdown().await;
}
