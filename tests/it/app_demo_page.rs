//! The demo chat page in a real headless Chromium against the real `tether demo`, as a new
//! user would try it: the user named in the page's URL is signed in (a demo token, verified by
//! the proxy) and is the one that chats, joining is one subscription however often it is
//! clicked, odd message bodies render, a page whose connection drops resumes its room without
//! missing or repeating a message, and visitors without a name chat anonymously under random
//! names that do not collide.

use tokio::io::AsyncWriteExt as _;

use crate::support::app_process::DemoProcess;
use crate::support::node::NodeScript;
use crate::support::{WAIT, http_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_chats_as_the_user_in_its_url_and_survives_odd_bodies() {
    let demo = DemoProcess::start().await;
    let backends = [demo.addr("app-1"), demo.addr("app-2")];
    let mut page = NodeScript::start("demo_page.mjs", &[format!("http://{}/", demo.addr("public"))], true);
    let mut stdin = page.stdin.take().expect("stdin");
    let joined = page.next_event().await.expect("an event");
    assert_eq!(joined["event"], "joined", "{joined}");
    assert_eq!(joined["user"], "alice");
    assert!(joined["log"].as_str().unwrap().contains("as alice"), "signed in and verified: {joined}");
    let mut subscriptions = 0;
    for backend in backends {
        subscriptions += http_client::get(backend, "/healthz").await.json()["subscriptions"].as_u64().expect("count");
    }
    assert_eq!(subscriptions, 1, "two clicks on join, one subscription");

    for body in ["", "null", "42", r#"{"user":"bob","text":"hi alice"}"#] {
        let r = http_client::post(backends[0], "/publish?destination=/topic/room.lobby", body.to_owned()).await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    stdin.write_all(b"go\n").await.expect("write");
    let dropped = page.next_event().await.expect("an event");
    assert_eq!(dropped["event"], "dropped", "{dropped}");
    // Published while the page is away (it reconnects only after its back-off).
    let r = http_client::post(backends[1], "/publish?destination=/topic/room.lobby", "while you were away").await;
    assert_eq!(r.status, 202, "{}", r.body);
    stdin.write_all(b"go\n").await.expect("write");
    let done = page.next_event().await.expect("an event");
    assert_eq!(done["event"], "done", "{done}");
    assert_eq!(done["errors"], serde_json::json!([]), "{done}");
    let rows: Vec<String> = serde_json::from_value(done["rows"].clone()).expect("rows");
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(rows[1].contains("null") && rows[2].contains("42") && rows[3].contains("hi alice"), "{rows:?}");
    assert!(rows[4].contains("while you were away"), "{rows:?}");
    let log = done["log"].as_str().expect("log");
    assert!(log.contains("resuming room lobby after "), "the page resumed its room: {log}");
    assert!(!log.contains("older than the history"), "{log}");
    let names: Vec<String> = serde_json::from_value(done["names"].clone()).expect("names");
    assert_ne!(names[0], names[1]);
    for n in &names {
        assert!(n.len() == 21 && n.starts_with("user-"), "{n}");
    }
    let anonymous: Vec<String> = serde_json::from_value(done["anonymous"].clone()).expect("logs");
    for log in &anonymous {
        assert!(log.contains("as anonymous"), "a visitor without a name is served anonymously: {log}");
    }
    let _ = tokio::time::timeout(WAIT, page.child.wait()).await;
}
