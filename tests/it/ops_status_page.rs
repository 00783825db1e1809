//! The status page: fetched, it is one self-contained HTML document; loaded in a real
//! headless Chromium (Debian's `chromium`, driven by playwright-core from `tests/js`), it shows
//! the backends with their state, its drain button drains (checked through the admin API), it
//! refreshes itself, and it works behind an admin token.

use std::path::PathBuf;
use std::process::Stdio;

use http::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::support::admin::AdminClient;
use crate::support::config::Yaml;
use crate::support::echo::EchoBackend;
use crate::support::proxy::TestProxy;
use crate::support::ws;

/// Listener `public`, an admin listener and upstream `app` over backends `a` and `b`.
fn yaml(a: std::net::SocketAddr, b: std::net::SocketAddr) -> Yaml {
    Yaml::app(|u| u.backend("a", a).backend("b", b).drain("{ timeout: 30s, close_spread: 1s }"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_is_one_self_contained_html_document() {
    let a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let proxy = TestProxy::start(yaml(a.addr, b.addr)).await;
    let page = AdminClient::new(proxy.addr("admin")).request(Method::GET, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let html = page.text();
    assert!(html.starts_with("<!doctype html>"), "{}", &html[..40.min(html.len())]);
    assert!(html.trim_end().ends_with("</html>"));
    for external in ["http://", "https://", "@import", "url(", "<iframe", "<object", "<embed"] {
        assert!(!html.contains(external), "the page must not reference {external}");
    }
    // Attributes that load something may only hold inline `data:` URLs (the favicon, so the
    // browser does not ask the server for /favicon.ico).
    for attribute in [" src=", " href="] {
        for (at, _) in html.match_indices(attribute) {
            let value = &html[at + attribute.len()..];
            assert!(value.starts_with("\"data:"), "{attribute}{}", &value[..30.min(value.len())]);
        }
    }
    // `//` only as a JavaScript comment (after whitespace), never starting a
    // protocol-relative URL in a string or attribute.
    for (at, _) in html.match_indices("//") {
        let before = html[..at].chars().next_back();
        assert!(
            before.is_some_and(char::is_whitespace),
            "a `//` URL at byte {at}: {}",
            &html[at.saturating_sub(20)..at + 20]
        );
    }
    // It reads the API with relative URLs only.
    for (at, _) in html.match_indices("fetch(") {
        let arg = &html[at + "fetch(".len()..];
        assert!(arg.starts_with("\"/admin/") || arg.starts_with("url,"), "fetch of {}", &arg[..30.min(arg.len())]);
    }
    assert!(html.contains("\"/admin/upstreams/\" + encodeURIComponent(upstream)"), "actions go to the admin API");
}

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

struct Driver {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Driver {
    /// Run `status_page.mjs` against `url`; panics loudly when Chromium or the npm packages are
    /// missing (scripts/test-deps.sh installs them).
    fn start(url: &str, drain: &str, token: Option<&str>) -> Self {
        assert!(
            std::path::Path::new("/usr/bin/chromium").exists(),
            "/usr/bin/chromium is missing: run scripts/test-deps.sh"
        );
        assert!(
            js_dir().join("node_modules/playwright-core").is_dir(),
            "tests/js/node_modules/playwright-core is missing: run scripts/test-deps.sh"
        );
        let args = serde_json::json!({ "url": url, "upstream": "app", "drain": drain, "token": token });
        let mut child = Command::new("node")
            .arg("status_page.mjs")
            .arg(args.to_string())
            .current_dir(js_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node ({e}): run scripts/test-deps.sh"));
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self { child, lines }
    }

    /// The next event, which must be `event`.
    async fn expect(&mut self, event: &str) -> Value {
        let line = tokio::time::timeout(crate::support::WAIT * 2, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no {event} event from the browser driver in time"))
            .expect("driver stdout")
            .unwrap_or_else(|| panic!("the browser driver exited before {event}"));
        let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(value["event"], event, "{value}");
        value
    }

    async fn go_on(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").await.expect("write to driver");
        stdin.flush().await.expect("flush");
    }

    async fn finish(mut self) -> Value {
        let done = self.expect("done").await;
        let status =
            tokio::time::timeout(crate::support::WAIT, self.child.wait()).await.expect("driver exits").expect("wait");
        assert!(status.success(), "driver failed: {status}");
        done
    }
}

/// The cells of backend `id` in the `rows` event.
fn row<'a>(rows: &'a Value, id: &str) -> Vec<&'a str> {
    rows["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("the page shows no row for {id}: {rows}"))["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .map(|c| c.as_str().expect("text"))
        .collect()
}

/// Everything the browser asked for went to the admin listener.
fn assert_only_admin_requests(done: &Value, admin: std::net::SocketAddr) {
    let origin = format!("http://{admin}/");
    let requests = done["requests"].as_array().expect("requests");
    assert!(!requests.is_empty());
    for r in requests {
        let url = r.as_str().expect("text").split_once(' ').expect("method url").1;
        assert!(url.starts_with(&origin), "the page loaded {url}, outside the admin listener");
    }
    assert_eq!(done["errors"], serde_json::json!([]), "no script or console errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_shows_the_backends_and_its_drain_button_drains() {
    let a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let proxy = TestProxy::start(yaml(a.addr, b.addr)).await;
    let admin_addr = proxy.addr("admin");
    let admin = AdminClient::new(admin_addr);
    // One tunnel on each backend (least connections spreads them), so the page has numbers
    // to show.
    let mut tunnels = vec![ws::open(proxy.addr("public"), &[]).await, ws::open(proxy.addr("public"), &[]).await];
    let mut at: Vec<&str> = tunnels.iter().map(|(_, b)| b.as_str()).collect();
    at.sort();
    assert_eq!(at, ["a", "b"]);

    let mut driver = Driver::start(&format!("http://{admin_addr}/"), "b", None);
    let rows = driver.expect("rows").await;
    assert_eq!(rows["title"], "tether status");
    for column in ["backend", "address", "state", "tunnels", "req/s", "error rate", "pins", "drain"] {
        assert!(rows["headers"].as_array().expect("headers").iter().any(|h| h == column), "column {column}: {rows}");
    }
    for (id, addr) in [("a", a.addr), ("b", b.addr)] {
        let cells = row(&rows, id);
        assert_eq!(&cells[..4], [id, addr.to_string().as_str(), "active", "1"], "{rows}");
    }
    assert!(rows["summary"].as_str().expect("summary").contains("2 backends · 2 tunnels"), "{rows}");
    // Which replica's figures these are.
    let replica = admin.get_json("/admin/upstreams").await["replica"].clone();
    let named = format!("replica {} (pid {})", replica["hostname"].as_str().expect("hostname"), replica["pid"]);
    assert!(rows["summary"].as_str().expect("summary").starts_with(&named), "{named}: {rows}");

    let drained = driver.expect("drained").await;
    assert!(["draining", "drained"].contains(&drained["state"].as_str().expect("state")), "{drained}");
    assert_eq!(drained["button"], "undrain");
    assert!(drained["drainCell"].as_str().expect("drain cell").starts_with("admin: 1/1 left"), "{drained}");
    // The click really drained b, as the admin API tells.
    let listed = admin.backend("app", "b").await.expect("b listed");
    assert_eq!(listed["state"], "draining", "b keeps its tunnel until the drain timeout");
    assert_eq!(listed["health"]["admin_drained"], true);
    assert_eq!(listed["drain"]["reason"], "admin");
    assert_eq!(admin.backend("app", "a").await.expect("a listed")["state"], "active");

    // Undrained behind the page's back: the page catches up by itself.
    let (status, _) = admin.post("/admin/upstreams/app/backends/b/undrain").await;
    assert_eq!(status, StatusCode::OK);
    driver.go_on().await;
    let refreshed = driver.expect("refreshed").await;
    assert_eq!(refreshed["navigations"], serde_json::json!([]), "no reload: the page refreshed its data");
    let done = driver.finish().await;
    assert_only_admin_requests(&done, admin_addr);
    for (socket, _) in &mut tunnels {
        ws::echo(socket, "tunnels untouched").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_works_behind_an_admin_token() {
    const TOKEN: &str = "status-page-test-token-0123456789";
    let a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let yaml = yaml(a.addr, b.addr).admin_with_token_env("TETHER_OPS_ADMIN_TOKEN");
    let proxy = TestProxy::builder().yaml(yaml).env("TETHER_OPS_ADMIN_TOKEN", TOKEN).spawn_process().await;
    let admin_addr = proxy.addr("admin");
    let without = AdminClient::new(admin_addr);
    assert_eq!(without.request(Method::GET, "/admin/upstreams").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(without.request(Method::GET, "/").await.status, StatusCode::OK, "the page itself is public");

    let mut driver = Driver::start(&format!("http://{admin_addr}/"), "a", Some(TOKEN));
    let rows = driver.expect("rows").await;
    assert_eq!(rows["promptedForToken"], "enter the admin token");
    assert_eq!(row(&rows, "a")[2], "active");
    assert_eq!(row(&rows, "b")[2], "active");
    let drained = driver.expect("drained").await;
    assert_eq!(drained["state"], "drained", "a holds nothing, so its drain completes at once");
    let admin = AdminClient::with_token(admin_addr, TOKEN);
    let listed = admin.backend("app", "a").await.expect("a listed");
    assert_eq!(listed["state"], "drained");
    assert_eq!(listed["health"]["admin_drained"], true);
    let (status, _) = admin.post("/admin/upstreams/app/backends/a/undrain").await;
    assert_eq!(status, StatusCode::OK);
    driver.go_on().await;
    driver.expect("refreshed").await;
    let done = driver.finish().await;
    assert_only_admin_requests(&done, admin_addr);
    let requests: Vec<&str> = done["requests"].as_array().expect("requests").iter().filter_map(Value::as_str).collect();
    assert!(
        requests.iter().any(|r| r.starts_with("401 ") && r.ends_with("/admin/upstreams")),
        "the first fetch, before the token, was refused: {requests:?}"
    );
    assert!(
        requests.iter().any(|r| r.starts_with("POST ") && r.ends_with("/admin/upstreams/app/backends/a/drain")),
        "{requests:?}"
    );
}
