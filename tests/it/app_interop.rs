//! Interop with a STOMP client nobody here wrote: `@stomp/stompjs` on Node (`tests/js`),
//! run directly against `tether backend`: connect, subscribe, send, receive; and after a drain
//! of its instance, reconnect to the other one and keep receiving.

use std::path::PathBuf;
use std::process::Stdio;

use tether::app::LocalBus;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::support::WAIT;
use crate::support::app::TestApp;

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Starts `node stomp_interop.mjs MODE URL...`; panics loudly when Node or the npm packages
/// are missing (scripts/test-deps.sh installs them).
fn spawn_node(mode: &str, urls: &[String]) -> Child {
    let dir = js_dir();
    assert!(
        dir.join("node_modules/@stomp/stompjs").is_dir() && dir.join("node_modules/ws").is_dir(),
        "tests/js/node_modules is missing: run scripts/test-deps.sh"
    );
    Command::new("node")
        .arg("stomp_interop.mjs")
        .arg(mode)
        .args(urls)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): run scripts/test-deps.sh"))
}

/// Next JSON event line printed by the script.
async fn next_event(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> serde_json::Value {
    let line = tokio::time::timeout(WAIT * 2, lines.next_line())
        .await
        .expect("an event from the stompjs client in time")
        .expect("stdout readable")
        .expect("the client exited without reporting");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

async fn wait_event(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    event: &str,
) -> serde_json::Value {
    loop {
        let e = next_event(lines).await;
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
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();

    let subscribed = wait_event(&mut lines, "subscribed").await;
    assert_eq!(subscribed["version"], "1.2");
    assert_eq!(subscribed["instance"], "app-a");
    let done = wait_event(&mut lines, "done").await;
    assert_eq!(done["ok"], true, "{done}");
    assert_eq!(done["received"], serde_json::json!(["hello-1 ünïcode \u{1F600}"]));
    let status = tokio::time::timeout(WAIT, node.wait()).await.expect("node exits").expect("wait");
    assert!(status.success());
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stompjs_reconnects_to_the_other_instance_after_a_drain_and_still_receives() {
    let bus = LocalBus::new();
    let mut a = TestApp::builder().id("app-a").bus(&bus).spawn().await;
    let b = TestApp::builder().id("app-b").bus(&bus).spawn().await;
    let mut node = spawn_node("drain", &[a.ws_url(), b.ws_url()]);
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();

    let first = wait_event(&mut lines, "subscribed").await;
    assert_eq!(first["instance"], "app-a");
    a.begin_shutdown();
    let closed = wait_event(&mut lines, "closed").await;
    assert_eq!(closed["code"], 1001);
    let second = wait_event(&mut lines, "subscribed").await;
    assert_eq!(second["instance"], "app-b");
    assert_eq!(second["round"], 2);
    // "Received after a reconnect" means after the new SUBSCRIBE's RECEIPT, which the client
    // waited for before printing `subscribed`.
    let r = b.publish("/topic/interop", "from-rust").await;
    assert_eq!(r.status, 202);
    let done = wait_event(&mut lines, "done").await;
    assert_eq!(done["ok"], true, "{done}");
    let received: Vec<String> = serde_json::from_value(done["received"].clone()).expect("list");
    assert!(received.contains(&"from-rust".to_owned()), "{received:?}");
    assert!(received.contains(&"hello-2 ünïcode \u{1F600}".to_owned()), "{received:?}");
    let status = tokio::time::timeout(WAIT, node.wait()).await.expect("node exits").expect("wait");
    assert!(status.success());
    a.join().await;
    b.shutdown().await;
}
