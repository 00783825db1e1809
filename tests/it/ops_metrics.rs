//! Prometheus metrics: scripted traffic, then `/metrics` must parse as Prometheus
//! text and every counter must have moved by exactly what the script did.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::config::Yaml;
use crate::support::echo::{EchoBackend, dead_address};
use crate::support::http::H1;
use crate::support::prom::{self, Scrape};
use crate::support::proxy::TestProxy;
use crate::support::ws;
use crate::support::{eventually, within};

/// A TCP stream that keeps a copy of every byte read and written, so a test knows exactly
/// what crossed the wire.
struct Recorder {
    inner: TcpStream,
    read: Arc<Mutex<Vec<u8>>>,
    written: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Recorder {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_ready() {
            let fresh = buf.filled()[before..].to_vec();
            self.read.lock().expect("lock").extend(fresh);
        }
        polled
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            self.written.lock().expect("lock").extend_from_slice(&data[..n]);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Bytes after the HTTP head (the WebSocket part of the connection).
fn after_head(bytes: &[u8]) -> usize {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP head") + 4;
    bytes.len() - end
}

/// One WebSocket session through the proxy as `user`: greeting, one echo, a client-initiated
/// close. Returns the WebSocket bytes (client to proxy, proxy to client).
async fn ws_session(addr: SocketAddr, user: &str) -> (u64, u64) {
    let mut request = format!("ws://{addr}/ws").into_client_request().expect("request");
    request.headers_mut().insert("x-user-id", user.parse().expect("header"));
    let (read, written) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let stream = Recorder {
        inner: TcpStream::connect(addr).await.expect("connect"),
        read: read.clone(),
        written: written.clone(),
    };
    let (mut socket, _) = within("ws handshake", tokio_tungstenite::client_async(request, stream)).await.expect("ws");
    assert!(matches!(within("greeting", socket.next()).await, Some(Ok(Message::Text(_)))));
    socket.send(Message::text("ping")).await.expect("send");
    assert_eq!(within("echo", socket.next()).await.expect("echo").expect("echo"), Message::text("ping"));
    socket.close(None).await.expect("close");
    while let Some(Ok(_)) = within("end of stream", socket.next()).await {}
    drop(socket);
    let up = after_head(&written.lock().expect("lock")) as u64;
    let down = after_head(&read.lock().expect("lock")) as u64;
    (up, down)
}

/// Upstream `app` (keyed, cookie, round robin) for most traffic, plus by host: `broken` (a
/// dead address), `spare` (for a drain) and `down` (health-checked, never up).
fn config(a: SocketAddr, dead: SocketAddr, s: SocketAddr) -> Yaml {
    Yaml::new()
        .listener("public")
        .admin()
        .route_when("host: broken.test", "broken")
        .route_when("host: spare.test", "spare")
        .route_when("host: down.test", "down")
        .route("app")
        .upstream("app", |u| {
            u.backend("a", a)
                .affinity("{ key: [ { header: X-User-Id } ], cookie: { name: PIN }, fallback: round_robin }")
        })
        .upstream("broken", |u| u.backend("dead", dead))
        .upstream("spare", |u| u.backend("s", s).drain("{ timeout: 300ms, close_spread: 100ms, close_code: 1012 }"))
        .upstream("down", |u| {
            u.backend("gone", dead).health_check("{ interval: 100ms, timeout: 50ms, unhealthy_after: 1 }")
        })
}

/// The metric families tether exports, with their Prometheus types.
const FAMILIES: [(&str, &str); 18] = [
    ("tether_requests", "counter"),
    ("tether_request_duration_seconds", "histogram"),
    ("tether_tunnels_open", "gauge"),
    ("tether_tunnels", "counter"),
    ("tether_tunnel_lifetime_seconds", "histogram"),
    ("tether_bytes", "counter"),
    ("tether_affinity_decisions", "counter"),
    ("tether_backend_state", "gauge"),
    ("tether_backend_state_changes", "counter"),
    ("tether_backend_connect_failures", "counter"),
    ("tether_drains_started", "counter"),
    ("tether_drains_finished", "counter"),
    ("tether_closes_sent", "counter"),
    ("tether_rebalance_closes", "counter"),
    ("tether_reloads", "counter"),
    ("tether_config_generation", "gauge"),
    ("tether_connections_open", "gauge"),
    ("tether_connections_refused", "counter"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_what_scripted_traffic_did() {
    let a = EchoBackend::start("a").await;
    let s = EchoBackend::start("s").await;
    let dead = dead_address();
    let yaml = config(a.addr, dead.addr, s.addr).build();
    let proxy = TestProxy::start(&yaml).await;
    let public = proxy.addr("public");
    let admin = proxy.admin();
    let reply = admin.request(http::Method::GET, "/metrics").await;
    assert!(reply.header("content-type").is_some_and(|t| t.starts_with("application/openmetrics-text")));
    let before = prom::parse(&reply.text()).unwrap_or_else(|e| panic!("{e}"));
    for (name, kind) in FAMILIES {
        let family = before.families.get(name).unwrap_or_else(|| panic!("family {name} is exported"));
        assert_eq!(family.kind, kind, "{name}");
        assert!(family.help.as_ref().is_some_and(|h| !h.is_empty()), "{name} has help text");
    }
    assert_eq!(before.value("tether_config_generation", &[]), 1.0);

    let key = [("x-user-id", "alice")];
    let mut conn = H1::connect(public).await;
    for _ in 0..5 {
        assert_eq!(conn.get("/", &key).await.status, StatusCode::OK);
    }
    let mut cookies = Vec::new();
    for _ in 0..3 {
        let reply = conn.get("/", &[]).await;
        let cookie = reply.header("set-cookie").expect("a pin").split(';').next().expect("pair").to_owned();
        cookies.push(cookie);
    }
    for cookie in &cookies[..2] {
        assert!(conn.get("/", &[("cookie", cookie)]).await.header("set-cookie").is_none());
    }
    for _ in 0..4 {
        assert_eq!(conn.get("/refuse-upgrade", &key).await.status, StatusCode::FORBIDDEN);
    }
    let upload = Request::post("/upload")
        .header("host", "app.test")
        .header("x-user-id", "alice")
        .body(Full::new(Bytes::from(vec![7u8; 10_000])))
        .expect("request");
    assert_eq!(conn.send(upload).await.text(), "10000");
    assert_eq!(conn.get("/download?bytes=50000", &key).await.body.len(), 50_000);
    let at_host = async |host: &str| {
        let req = Request::get("/").header("host", host).body(Full::new(Bytes::new())).expect("request");
        H1::connect(public).await.send(req).await.status
    };
    for _ in 0..2 {
        assert_eq!(at_host("broken.test").await, StatusCode::BAD_GATEWAY);
    }
    // Every backend down: answered by the proxy itself, still counted.
    admin.wait_state("down", "gone", &["down"]).await;
    for _ in 0..3 {
        assert_eq!(at_host("down.test").await, StatusCode::SERVICE_UNAVAILABLE);
    }
    let (up1, down1) = ws_session(public, "bob").await;
    let (up2, down2) = ws_session(public, "carol").await;
    let m = admin.wait_metric("tether_tunnel_lifetime_seconds_count", &[("backend", "a")], 2.0).await;
    let app_a = [("upstream", "app"), ("backend", "a")];
    let class = |c: &str| m.value("tether_requests_total", &[("upstream", "app"), ("backend", "a"), ("class", c)]);
    assert_eq!(class("2xx"), 12.0, "5 keyed + 3 fallback + 2 cookie + upload + download");
    assert_eq!(class("4xx"), 4.0);
    assert_eq!(class("1xx"), 2.0, "two WebSocket upgrades");
    assert_eq!(class("5xx"), 0.0);
    assert_eq!(m.value("tether_requests_total", &[("backend", "dead"), ("class", "5xx")]), 2.0);
    assert_eq!(m.value("tether_backend_connect_failures_total", &[("backend", "dead")]), 2.0);
    assert_eq!(m.value("tether_requests_total", &[("upstream", "down"), ("backend", "none"), ("class", "5xx")]), 3.0);
    assert_eq!(m.value("tether_request_duration_seconds_count", &[("upstream", "down")]), 3.0);
    assert_eq!(m.value("tether_request_duration_seconds_count", &[("upstream", "app")]), 18.0);
    assert_eq!(m.value("tether_request_duration_seconds_count", &[("upstream", "broken")]), 2.0);
    let reason = |r: &str| m.value("tether_affinity_decisions_total", &[("upstream", "app"), ("reason", r)]);
    assert_eq!(reason("key"), 13.0, "5 + 4 + upload + download + 2 sessions");
    assert_eq!(reason("fallback"), 3.0);
    assert_eq!(reason("cookie"), 2.0);
    assert_eq!(reason("repin"), 0.0);
    assert_eq!(m.value("tether_tunnels_total", &app_a), 2.0);
    assert_eq!(m.value("tether_tunnels_open", &app_a), 0.0);
    let body_out = 5 + 3 + 2 + 4 * "no sockets here".len() as u64 + "10000".len() as u64 + 50_000;
    assert_eq!(m.value("tether_bytes_total", &[("backend", "a"), ("direction", "in")]), (10_000 + up1 + up2) as f64);
    assert_eq!(
        m.value("tether_bytes_total", &[("backend", "a"), ("direction", "out")]),
        (body_out + down1 + down2) as f64
    );
    let listed = admin.backend("app", "a").await.expect("a listed");
    assert_eq!(listed["pins"], 3);
    assert_eq!(listed["totals"]["requests"], 18);
    assert_eq!(listed["totals"]["tunnels"], 2);
    assert_eq!(listed["totals"]["bytes_in"], 10_000 + up1 + up2);
    assert_eq!(listed["totals"]["bytes_out"], body_out + down1 + down2);

    // A drain with one tunnel left on the backend: one Close with the drain code.
    let (mut tunnel, greeted) = ws::open(public, &[("host", "spare.test")]).await;
    assert_eq!(greeted, "s");
    let (status, _) = admin.post("/admin/upstreams/spare/backends/s/drain").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ws::expect_close(&mut tunnel).await, 1012);
    admin.wait_state("spare", "s", &["drained"]).await;
    let m = admin.wait_metric("tether_drains_finished_total", &[("backend", "s")], 1.0).await;
    let spare_s = [("upstream", "spare"), ("backend", "s")];
    assert_eq!(m.value("tether_drains_started_total", &spare_s), 1.0);
    assert_eq!(m.value("tether_closes_sent_total", &[("upstream", "spare"), ("code", "1012")]), 1.0);
    assert_eq!(m.sum("tether_closes_sent_total", &[]), 1.0);
    assert_eq!(m.value("tether_backend_state", &[("backend", "s"), ("state", "draining")]), 1.0);
    assert_eq!(m.value("tether_backend_state", &[("backend", "s"), ("state", "active")]), 0.0);
    assert_eq!(m.value("tether_backend_state_changes_total", &[("backend", "s"), ("state", "draining")]), 1.0);
    assert_eq!(m.value("tether_backend_state", &[("backend", "a"), ("state", "active")]), 1.0);
    assert_eq!(m.value("tether_affinity_decisions_total", &[("upstream", "spare"), ("reason", "fallback")]), 1.0);
    assert_eq!(m.value("tether_requests_total", &[("backend", "s"), ("class", "1xx")]), 1.0);

    // Reloads: one good, one refused.
    assert_eq!(proxy.rewrite(&yaml).await, Ok(2));
    assert!(proxy.rewrite("listeners: [").await.is_err());
    // Client connections held open now: exactly these two.
    let _held = (H1::connect(public).await, H1::connect(public).await);
    drop(conn);
    let m = eventually("two open client connections", async || {
        let m = admin.metrics().await;
        (m.value("tether_connections_open", &[("listener", "public")]) == 2.0).then_some(m)
    })
    .await;
    assert_eq!(m.value("tether_reloads_total", &[("result", "ok")]), 1.0);
    assert_eq!(m.value("tether_reloads_total", &[("result", "error")]), 1.0);
    assert_eq!(m.value("tether_config_generation", &[]), 2.0);
    assert_eq!(m.sum("tether_connections_refused_total", &[]), 0.0);
    assert_eq!(m.sum("tether_rebalance_closes_total", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalancing_after_a_backend_joins_counts_each_moved_tunnel_once() {
    let a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let c = EchoBackend::start("c").await;
    let upstream = |backends: &[(&str, SocketAddr)]| {
        Yaml::app(|u| {
            u.backends(backends.iter().copied())
                .affinity("{ key: [ { header: X-User-Id } ] }")
                .rebalance("{ enabled: true, max_closes_per_second: 200 }")
                .drain("{ close_code: 1012 }")
        })
    };
    let proxy = TestProxy::start(upstream(&[("a", a.addr), ("b", b.addr)])).await;
    let public = proxy.addr("public");
    let admin = proxy.admin();
    let users: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    let mut sockets = Vec::new();
    for user in &users {
        sockets.push(ws::open(public, &[("x-user-id", user)]).await.0);
    }

    assert_eq!(proxy.rewrite(upstream(&[("a", a.addr), ("b", b.addr), ("c", c.addr)])).await, Ok(2));
    let mut moved = 0;
    for (user, socket) in users.iter().zip(&mut sockets) {
        let home = admin.get_json(&format!("/admin/upstreams/app/route?key={user}")).await["backend"].clone();
        if home == "c" {
            assert_eq!(ws::expect_close(socket).await, 1012, "{user} now belongs to c");
            moved += 1;
        } else {
            ws::echo(socket, "staying").await;
        }
    }
    assert!(moved > 0, "c takes some of 60 users");
    let m = admin.metrics().await;
    assert_eq!(m.value("tether_rebalance_closes_total", &[("upstream", "app")]), moved as f64);
    assert_eq!(m.value("tether_closes_sent_total", &[("upstream", "app"), ("code", "1012")]), moved as f64);
}

#[test]
fn the_prometheus_parser_rejects_what_is_not_prometheus_text() {
    let good = "# HELP x things\n# TYPE x counter\nx_total{a=\"1\"} 3\n# HELP h latency\n# TYPE h histogram\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n# EOF\n";
    let scrape: Scrape = prom::parse(good).expect("valid text parses");
    assert_eq!(scrape.get("x_total", &[("a", "1")]), Some(3.0));
    let broken = [
        ("no EOF", good.replace("# EOF\n", "")),
        ("bad label quoting", good.replace("a=\"1\"", "a=1")),
        ("sample outside its family", good.replace("x_total{", "y_total{")),
        ("gauge suffix on a counter", good.replace("x_total{", "x{")),
        ("not a number", good.replace("} 3", "} three")),
        ("buckets not cumulative", good.replace("le=\"+Inf\"} 2", "le=\"+Inf\"} 0").replace("h_count 2", "h_count 0")),
        ("+Inf bucket differs from count", good.replace("h_count 2", "h_count 5")),
        ("duplicate series", good.replace("x_total{a=\"1\"} 3\n", "x_total{a=\"1\"} 3\nx_total{a=\"1\"} 4\n")),
        ("family declared twice", format!("{}# TYPE x counter\n# EOF\n", good.trim_end_matches("# EOF\n"))),
    ];
    for (what, text) in broken {
        assert!(prom::parse(&text).is_err(), "{what} must be rejected:\n{text}");
    }
}
