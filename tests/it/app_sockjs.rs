//! SockJS as a browser frontend uses it: the real `sockjs-client` carrying `@stomp/stompjs`,
//! forced onto each transport in turn (Node for websocket, xhr-streaming, xhr-polling and
//! eventsource; headless Chromium for htmlfile), through tether's proxy in front of two
//! backend instances, sessions kept on one backend by the `path_segment` affinity key. Also:
//! streaming responses flow through the proxy unbuffered, and the protocol's details (info,
//! CORS, cookie, one receiver per session, send errors, the streaming limit).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::WAIT;
use crate::support::app::TestApp;
use crate::support::config::Yaml;
use crate::support::http_client;
use crate::support::node::NodeScript;
use crate::support::proxy::TestProxy;
use crate::support::redis::TestRedis;
use crate::support::stomp_client::StompClient;

struct Stack {
    _redis: TestRedis,
    a: TestApp,
    b: TestApp,
    proxy: TestProxy,
}

/// Two backends on one Redis behind the proxy, SockJS sessions pinned by their server id.
async fn stack() -> Stack {
    let redis = TestRedis::start().await;
    let spawn = |id: &'static str| {
        TestApp::builder()
            .id(id)
            .redis(&redis.url())
            .sockjs(Duration::from_secs(25), Duration::from_secs(5), 16 * 1024)
            .spawn_with_redis_up()
    };
    let a = spawn("app-a").await;
    let b = spawn("app-b").await;
    let yaml = Yaml::app(|u| u.backend("a", a.addr).backend("b", b.addr).affinity("{ key: [ { path_segment: 1 } ] }"));
    let proxy = TestProxy::start(yaml).await;
    Stack { _redis: redis, a, b, proxy }
}

fn check_transports(events: &[serde_json::Value], transports: &[&str]) {
    for e in events {
        assert_ne!(e["event"], "error", "{e}");
    }
    assert_eq!(events.last().map(|e| e["ok"].clone()), Some(serde_json::json!(true)), "{events:?}");
    for t in transports {
        let e = events.iter().find(|e| e["transport"] == *t).unwrap_or_else(|| panic!("no result for {t}: {events:?}"));
        let instances: BTreeSet<String> = serde_json::from_value(e["instances"].clone()).expect("instances");
        assert_eq!(instances, BTreeSet::from(["app-a".to_owned(), "app-b".to_owned()]), "{e}");
        let received: Vec<Vec<String>> = serde_json::from_value(e["received"].clone()).expect("received");
        assert_eq!(received.len(), 2);
        assert_eq!(received[0], received[1], "both clients got both messages: {e}");
        assert_eq!(received[0].len(), 2, "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockjs_client_with_stompjs_works_over_every_transport_through_the_proxy_across_two_instances() {
    let s = stack().await;
    let base = format!("http://{}/ws", s.proxy.addr("public"));
    let node_transports = ["websocket", "xhr-streaming", "xhr-polling", "eventsource"];
    let mut args = vec![base];
    args.extend(node_transports.iter().map(|t| t.to_string()));
    let events = NodeScript::start("sockjs_transports.mjs", &args, false).until_done().await;
    check_transports(&events, &node_transports);

    let origin = format!("http://{}", s.proxy.addr("public"));
    let events = NodeScript::start("sockjs_browser.mjs", &[origin, "htmlfile".into()], true).until_done().await;
    check_transports(&events, &["htmlfile"]);
    s.a.shutdown().await;
    s.b.shutdown().await;
}

/// A raw HTTP/1.1 exchange whose response is read incrementally.
struct Raw {
    stream: TcpStream,
    seen: Vec<u8>,
}

impl Raw {
    async fn send(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> Raw {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: shop.test\r\norigin: http://shop.test\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(req.as_bytes()).await.expect("write");
        Raw { stream, seen: Vec::new() }
    }

    /// Reads until `needle` has been seen; panics at end of stream or after [`WAIT`].
    async fn until(&mut self, needle: &str) -> String {
        let fut = async {
            loop {
                if let Some(at) = find(&self.seen, needle.as_bytes()) {
                    return String::from_utf8_lossy(&self.seen[..at + needle.len()]).into_owned();
                }
                let mut buf = [0u8; 8192];
                let n = self.stream.read(&mut buf).await.expect("read");
                assert!(n > 0, "stream ended before {needle:?}: {}", String::from_utf8_lossy(&self.seen));
                self.seen.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(WAIT, fut).await.unwrap_or_else(|_| panic!("no {needle:?} within {WAIT:?}"))
    }

    fn is_open(&mut self) -> bool {
        let mut buf = [0u8; 1];
        !matches!(self.stream.try_read(&mut buf), Ok(0))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_responses_flow_through_the_proxy_unbuffered() {
    let s = stack().await;
    let proxy = s.proxy.addr("public");
    for (transport, method, open, sep) in
        [("xhr_streaming", "POST", "\no\n", "\n"), ("eventsource", "GET", "data: o\r\n", "\r\n")]
    {
        let session = format!("stream-{transport}");
        let started = Instant::now();
        let mut stream = Raw::send(proxy, method, &format!("/ws/7/{session}/{transport}"), "").await;
        let head = stream.until(open).await;
        let first_frame = started.elapsed();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // The open frame arrived while the response is still open: the proxy streams it.
        assert!(stream.is_open());
        let connect = serde_json::to_string(&["CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0"]).unwrap();
        let r = http_client::post(proxy, &format!("/ws/7/{session}/xhr_send"), connect).await;
        assert_eq!(r.status, 204, "{}", r.body);
        stream.until("a[\"CONNECTED\\n").await;
        stream.until(sep).await;
        let connected = started.elapsed();
        eprintln!("{transport} through the proxy: open frame after {first_frame:?}, CONNECTED after {connected:?}");
        assert!(first_frame < Duration::from_secs(5), "{first_frame:?}");
    }
    s.a.shutdown().await;
    s.b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sockjs_endpoint_speaks_the_protocol() {
    // A page of another origin uses the endpoint (its origin listed), as a CORS client.
    let a = TestApp::builder()
        .sockjs(Duration::from_millis(300), Duration::from_millis(500), 4096)
        .allowed_origin("http://shop.test")
        .spawn()
        .await;
    // The raw WebSocket Spring offers plain WebSocket clients of a SockJS endpoint.
    let mut raw = StompClient::connect(&format!("ws://{}/ws/websocket", a.addr)).await;
    raw.subscribe("/topic/raw", "s").await;
    raw.send("/topic/raw", "plain").await;
    assert_eq!(raw.next_body().await, "plain");
    raw.disconnect().await;
    let info = http_client::request(a.addr, http::Method::GET, "/ws/info", &[("origin", "http://shop.test")], "").await;
    assert_eq!(info.status, 200);
    let json = info.json();
    assert_eq!(json["websocket"], true);
    assert_eq!(json["cookie_needed"], true);
    assert_eq!(json["origins"], serde_json::json!(["*:*"]));
    assert!(json["entropy"].is_u64());
    assert_eq!(info.headers["access-control-allow-origin"], "http://shop.test");
    assert_eq!(info.headers["access-control-allow-credentials"], "true");
    assert!(info.headers["cache-control"].to_str().unwrap().contains("no-store"));
    let pre = http_client::request(
        a.addr,
        http::Method::OPTIONS,
        "/ws/1/s/xhr_send",
        &[("origin", "http://shop.test"), ("access-control-request-headers", "content-type")],
        "",
    )
    .await;
    assert_eq!(pre.status, 204);
    assert_eq!(pre.headers["access-control-allow-methods"], "OPTIONS, POST");
    assert_eq!(pre.headers["access-control-allow-headers"], "content-type");
    assert_eq!(pre.headers["access-control-max-age"], "31536000");

    // Polling: open frame, then heartbeat when idle, a JSESSIONID cookie, CORS.
    let poll = async |session: &str| http_client::post(a.addr, &format!("/ws/1/{session}/xhr"), "").await;
    let first = poll("p1").await;
    assert_eq!(first.body, "o\n");
    assert!(first.headers["set-cookie"].to_str().unwrap().starts_with("JSESSIONID="));
    assert_eq!(first.headers["content-type"], "application/javascript;charset=UTF-8");
    assert_eq!(poll("p1").await.body, "h\n", "an idle poll is answered with a heartbeat");
    // Sending: errors per the protocol, 404 for unknown sessions.
    let send = async |session: &str, body: &str| {
        http_client::post(a.addr, &format!("/ws/1/{session}/xhr_send"), body.to_owned()).await
    };
    assert_eq!(send("nope", "[\"x\"]").await.status, 404);
    let r = send("p1", "").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (500, "Payload expected."));
    let r = send("p1", "[\"x\"").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (500, "Broken JSON encoding."));
    // Garbage STOMP closes that session with an ERROR and the close frame.
    assert_eq!(send("p1", "[\"BOGUS\\n\\n\\u0000\"]").await.status, 204);
    let r = poll("p1").await;
    assert!(r.body.starts_with("a[\"ERROR\\nmessage:malformed frame"), "{}", r.body);
    assert!(r.body.ends_with("c[1002,\"\"]\n"), "{}", r.body);

    // One receiver at a time.
    let mut held = Raw::send(a.addr, "POST", "/ws/1/p2/xhr_streaming", "").await;
    held.until("\no\n").await;
    let second = poll("p2").await;
    assert_eq!(second.body, "c[2010,\"Another connection still open\"]\n");
    drop(held);
    // htmlfile needs a valid callback.
    assert_eq!(http_client::get(a.addr, "/ws/1/h1/htmlfile").await.status, 500);
    assert_eq!(http_client::get(a.addr, "/ws/1/h1/htmlfile?c=x%3Balert(1)").await.status, 500);
    assert_eq!(http_client::get(a.addr, "/ws/iframe.html").await.status, 404);

    // The streaming limit ends a response (the client opens the next one); the session lives on.
    let mut s1 = Raw::send(a.addr, "POST", "/ws/1/big/xhr_streaming", "").await;
    s1.until("\no\n").await;
    let connect =
        serde_json::to_string(&["CONNECT\naccept-version:1.2\n\n\0SUBSCRIBE\nid:0\ndestination:/t\nreceipt:r\n\n\0"])
            .unwrap();
    assert_eq!(send("big", &connect).await.status, 204);
    s1.until("RECEIPT").await;
    let big = "x".repeat(5000);
    assert_eq!(a.publish("/t", &big).await.status, 202);
    s1.until(&format!("{big}\\u0000\"]\n")).await;
    // Past the limit the response ends (the last chunk of a chunked body).
    s1.until("\r\n0\r\n\r\n").await;
    assert_eq!(a.publish("/t", "next").await.status, 202);
    let r = poll("big").await;
    assert!(r.body.contains("next\\u0000\"]"), "{}", r.body);

    // No receiver for the disconnect delay: the session and its STOMP session are gone.
    crate::support::until("the sessions to expire", async || {
        let h = a.health().await;
        h["sockjs_sessions"] == 0 && h["sessions"] == 0
    })
    .await;
    a.shutdown().await;
}
