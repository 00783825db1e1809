//! The demo chat page in a real headless Chromium, as a new user would try it: the user named
//! in the page's URL is the one that chats, joining is one subscription however often it is
//! clicked, odd message bodies render, and random names do not collide.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;

use crate::support::WAIT;
use crate::support::app::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_chats_as_the_user_in_its_url_and_survives_odd_bodies() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run scripts/test-deps.sh"
    );
    let a = TestApp::builder().id("app-a").spawn().await;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    let mut child = Command::new("node")
        .arg("demo_page.mjs")
        .arg(format!("http://{}/", a.addr))
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): run scripts/test-deps.sh"));
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = async || -> serde_json::Value {
        let line =
            tokio::time::timeout(WAIT * 2, lines.next_line()).await.expect("the page script in time").expect("read");
        let line = line.expect("the page script exited early");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };
    let joined = next().await;
    assert_eq!(joined["event"], "joined", "{joined}");
    assert_eq!(joined["user"], "alice");
    assert!(joined["log"].as_str().unwrap().contains("as alice"), "{joined}");
    assert_eq!(a.health().await["subscriptions"], 1, "two clicks on join, one subscription");

    for body in ["", "null", "42", r#"{"user":"bob","text":"hi alice"}"#] {
        assert_eq!(a.publish("/topic/room.lobby", body).await.status, 202);
    }
    stdin.write_all(b"go\n").await.expect("write");
    let done = next().await;
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
    let _ = tokio::time::timeout(WAIT, child.wait()).await;
    a.shutdown().await;
}
