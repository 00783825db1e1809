//! The demo chat page in a real headless Chromium, as a new user would try it: the user named
//! in the page's URL is the one that chats, joining is one subscription however often it is
//! clicked, odd message bodies render, and random names do not collide.

use tokio::io::AsyncWriteExt as _;

use crate::support::WAIT;
use crate::support::app::TestApp;
use crate::support::node::NodeScript;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_chats_as_the_user_in_its_url_and_survives_odd_bodies() {
    let a = TestApp::builder().id("app-a").spawn().await;
    let mut page = NodeScript::start("demo_page.mjs", &[format!("http://{}/", a.addr)], true);
    let mut stdin = page.stdin.take().expect("stdin");
    let joined = page.next_event().await.expect("an event");
    assert_eq!(joined["event"], "joined", "{joined}");
    assert_eq!(joined["user"], "alice");
    assert!(joined["log"].as_str().unwrap().contains("as alice"), "{joined}");
    assert_eq!(a.health().await["subscriptions"], 1, "two clicks on join, one subscription");

    for body in ["", "null", "42", r#"{"user":"bob","text":"hi alice"}"#] {
        assert_eq!(a.publish("/topic/room.lobby", body).await.status, 202);
    }
    stdin.write_all(b"go\n").await.expect("write");
    let done = page.next_event().await.expect("an event");
    assert_eq!(done["event"], "done", "{done}");
    assert_eq!(done["errors"], serde_json::json!([]), "{done}");
    let rows: Vec<String> = serde_json::from_value(done["rows"].clone()).expect("rows");
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows[1].contains("null") && rows[2].contains("42") && rows[3].contains("hi alice"), "{rows:?}");
    let names: Vec<String> = serde_json::from_value(done["names"].clone()).expect("names");
    assert_ne!(names[0], names[1]);
    for n in &names {
        assert!(n.len() == 21 && n.starts_with("user-"), "{n}");
    }
    let _ = tokio::time::timeout(WAIT, page.child.wait()).await;
    a.shutdown().await;
}
