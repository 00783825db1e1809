//! `tether demo` gives a working multi-instance chat whose users are who a verified token says
//! (`/login` mints it, the proxy verifies it and pins by it), anonymous clients are served too,
//! and `@stomp/stompjs` (a client nobody here wrote) works through `tether proxy`, including
//! reconnecting after a drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tether::app::LocalBus;
use tokio::io::{AsyncBufReadExt as _, BufReader as AsyncBufReader};

use crate::support::admin::AdminClient;
use crate::support::app::TestApp;
use crate::support::app_process::DemoProcess;
use crate::support::config::Yaml;
use crate::support::http as client;
use crate::support::proxy::TestProxy;
use crate::support::stomp_client::{ConnectOptions, StompClient, upgrade_status};
use crate::support::within;

/// Signs in through the demo's `/login`; returns the `Cookie` header value it set.
async fn login(public: SocketAddr, user: &str) -> String {
    let reply = client::get(public, &format!("/login?user={user}"), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["user"], user);
    let set = reply.header("set-cookie").expect("a token cookie").to_owned();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/ws"), "{set}");
    set.split(';').next().expect("cookie pair").to_owned()
}

/// A STOMP session through the demo's proxy carrying `cookie` (a signed-in user).
async fn connect_as(public: SocketAddr, cookie: &str) -> StompClient {
    StompClient::connect_with(&format!("ws://{public}/ws"), ConnectOptions::default().header("Cookie", cookie)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_pins_users_by_their_verified_name_and_still_serves_anonymous_clients() {
    let demo = DemoProcess::start().await;
    let public = demo.addr("public");
    let admin_api = AdminClient::new(demo.addr("admin"));

    // A signed-in user lands on the ring's home for their verified name, every time.
    let alice = login(public, "alice").await;
    assert!(alice.starts_with("access_token="), "{alice}");
    let (home, _) = admin_api.route("app", "alice").await;
    for _ in 0..3 {
        let c = connect_as(public, &alice).await;
        assert_eq!(c.connected.get("user-name"), Some("alice"), "the backend heard the verified name");
        assert_eq!(c.connected.get("tether-instance"), Some(home.as_str()));
        c.disconnect().await;
    }

    // Naming yourself is not signing in: a forged header is stripped, `?user=` is no identity.
    let url = format!("ws://{public}/ws");
    let forged = StompClient::connect_with(&url, ConnectOptions::default().header("X-User-Id", "alice")).await;
    assert_eq!(forged.connected.get("user-name"), None);
    let queried = StompClient::connect(&format!("{url}?user=alice")).await;
    assert_eq!(queried.connected.get("user-name"), None);
    // Anonymous clients are served, pinned by the sticky cookie.
    let anonymous = StompClient::connect(&url).await;
    assert_eq!(anonymous.connected.get("user-name"), None);
    assert!(anonymous.connected.get("tether-instance").is_some());

    // A token that does not verify is refused before the upgrade, never taken as anonymous.
    let (name, value) = alice.split_once('=').expect("pair");
    let tampered = format!("{name}={}x", &value[..value.len() - 1]);
    assert_eq!(upgrade_status(&url, &[("cookie", &tampered)]).await, 401);
    let claims =
        serde_json::json!({ "sub": "alice", "iss": "tether-demo", "exp": jsonwebtoken::get_current_timestamp() + 60 });
    let key = jsonwebtoken::EncodingKey::from_secret(b"not this run's key, though long enough").expect("key");
    let foreign = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("sign");
    assert_eq!(upgrade_status(&url, &[("cookie", &format!("access_token={foreign}"))]).await, 401);

    // Bad names are not signed; /logout drops the cookie.
    assert_eq!(client::get(public, "/login?user=a%2Fb", &[]).await.status, 400);
    assert_eq!(client::get(public, "/login", &[]).await.status, 400);
    let out = client::get(public, "/logout", &[]).await;
    assert!(out.header("set-cookie").is_some_and(|c| c.starts_with("access_token=;") && c.contains("Max-Age=0")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_is_a_multi_instance_chat_whose_users_survive_a_drain() {
    let demo = DemoProcess::start().await;
    let public = demo.addr("public");
    let admin = demo.addr("admin");
    let admin_api = AdminClient::new(admin);

    let page = client::get(public, "/", &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap_or("").starts_with("text/html"), "the chat page is served");
    let status_page = client::get(admin, "/", &[]).await;
    assert!(status_page.text().contains("/admin/upstreams"), "the status page is served");

    // One signed-in user per instance (pinned by their verified name), so they talk across
    // instances.
    let alice = login(public, &admin_api.key_on("app", "app-1", "user").await).await;
    let bob = login(public, &admin_api.key_on("app", "app-2", "user").await).await;
    let mut a = connect_as(public, &alice).await;
    let mut b = connect_as(public, &bob).await;
    assert_eq!(a.connected.get("tether-instance"), Some("app-1"));
    assert_eq!(b.connected.get("tether-instance"), Some("app-2"));
    a.subscribe("/topic/room.lobby", "sub-a").await;
    b.subscribe("/topic/room.lobby", "sub-b").await;
    a.send_with_receipt("/topic/room.lobby", "hi from alice").await;
    let got = b.next_message().await;
    assert_eq!(got.body_text_lossy(), "hi from alice");
    assert_eq!(got.get("tether-instance"), Some("app-1"), "delivered across instances");
    assert_eq!(a.next_message().await.body_text_lossy(), "hi from alice");

    // Drain app-1: alice gets a clean close (1001) after the drain timeout and reconnects to
    // app-2; bob is untouched.
    admin_api.drain("app", "app-1").await;
    let (close, _) = a.expect_close(Duration::from_secs(20)).await;
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1001));
    let mut a = connect_as(public, &alice).await;
    assert_eq!(a.connected.get("tether-instance"), Some("app-2"), "alice moved to the live instance");
    a.subscribe("/topic/room.lobby", "sub-a2").await;
    b.send_with_receipt("/topic/room.lobby", "welcome back").await;
    assert_eq!(a.next_message().await.body_text_lossy(), "welcome back");
    assert_eq!(b.next_message().await.body_text_lossy(), "welcome back");
}

trait BodyText {
    fn body_text_lossy(&self) -> String;
}

impl BodyText for tether::app::stomp::Frame {
    fn body_text_lossy(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The next event `wanted` printed by the stompjs client (errors fail the test).
async fn next_event(
    lines: &mut tokio::io::Lines<AsyncBufReader<tokio::process::ChildStdout>>,
    wanted: &str,
) -> serde_json::Value {
    loop {
        let line = within("a stompjs event", lines.next_line()).await.expect("stdout").expect("node exited early");
        let event: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
        assert_ne!(event["event"], "error", "{event}");
        if event["event"] == wanted {
            return event;
        }
    }
}

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stompjs_works_through_the_proxy_and_reconnects_after_a_drain() {
    let bus = LocalBus::new();
    let one = TestApp::builder().id("app-1").bus(&bus).spawn().await;
    let two = TestApp::builder().id("app-2").bus(&bus).spawn().await;
    let proxy = TestProxy::start(Yaml::app(|u| {
        u.backend("app-1", one.addr).backend("app-2", two.addr).drain("{ timeout: 500ms, close_spread: 200ms }")
    }))
    .await;
    let url = format!("ws://{}/ws", proxy.addr("public"));
    assert!(
        js_dir().join("node_modules/@stomp/stompjs").is_dir(),
        "tests/js/node_modules is missing: run scripts/test-deps.sh"
    );
    let mut node = tokio::process::Command::new("node")
        .arg("stomp_interop.mjs")
        .arg("drain")
        .arg(&url)
        .current_dir(js_dir())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (run scripts/test-deps.sh)");
    let mut lines = AsyncBufReader::new(node.stdout.take().expect("stdout")).lines();
    let first = next_event(&mut lines, "subscribed").await;
    let first_instance = first["instance"].as_str().expect("instance").to_owned();
    let other = if first_instance == "app-1" { "app-2" } else { "app-1" };
    proxy.admin().drain("app", &first_instance).await;
    let closed = next_event(&mut lines, "closed").await;
    assert_eq!(closed["code"], 1001, "a clean close, not a dropped connection");
    let second = next_event(&mut lines, "subscribed").await;
    assert_eq!(second["instance"], other, "reconnected through the proxy to the live instance");
    let publisher = if other == "app-1" { &one } else { &two };
    assert_eq!(publisher.publish("/topic/interop", "from-rust").await.status, 202);
    let done = next_event(&mut lines, "done").await;
    assert_eq!(done["ok"], true, "{done}");
    let status = within("node to exit", node.wait()).await.expect("wait");
    assert!(status.success());
}
