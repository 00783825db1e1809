//! The proxy data path: routing, streaming, headers, WebSocket tunnels, TLS, HTTP/2, errors.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::config::Yaml;
use crate::support::echo::{EchoBackend, dead_address};
use crate::support::http::{self as client, H1};
use crate::support::proxy::{ProxyProcess, TestProxy};
use crate::support::tls::TestCa;
use crate::support::{until, within};

/// One plain listener `public` (no admin listener) and upstream `app` over backend `id`.
fn yaml(id: &str, addr: SocketAddr) -> Yaml {
    Yaml::new().listener("public").route("app").upstream("app", |u| u.backend(id, addr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_routed_by_host_then_path_first_match_wins() {
    let api = EchoBackend::start("api").await;
    let api_v2 = EchoBackend::start("api-v2").await;
    let sockets = EchoBackend::start("sockets").await;
    let fallback = EchoBackend::start("fallback").await;
    let yaml = Yaml::new()
        .listener("public")
        .route_when("host: api.test, path_prefix: /v2/", "api-v2")
        .route_when("host: api.test", "api")
        .route_when("host: \"*.ws.test\"", "sockets")
        .route_when("path_prefix: /static/", "fallback")
        .upstream("api", |u| u.backend("a", api.addr))
        .upstream("api-v2", |u| u.backend("b", api_v2.addr))
        .upstream("sockets", |u| u.backend("c", sockets.addr))
        .upstream("fallback", |u| u.backend("d", fallback.addr));
    let proxy = TestProxy::start(yaml).await;
    let addr = proxy.addr("public");
    let cases = [
        ("api.test", "/v2/users", StatusCode::OK, "api-v2"),
        ("API.test:8080", "/v1/users", StatusCode::OK, "api"),
        ("eu.ws.test", "/chat", StatusCode::OK, "sockets"),
        ("other.test", "/static/app.js", StatusCode::OK, "fallback"),
    ];
    let mut client = H1::connect(addr).await;
    for (host, path, status, backend) in cases {
        let reply = client.send(Request::get(path).header("host", host).body(Full::new(Bytes::new())).unwrap()).await;
        assert_eq!(reply.status, status, "{host}{path}");
        assert_eq!(reply.header("x-backend-id"), Some(backend), "{host}{path}");
    }
    let reply = client.send(Request::get("/x").header("host", "ws.test").body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.text(), "no route for this host and path\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_and_forwarded_headers_replaced() {
    let backend = EchoBackend::start("app-1").await;
    let proxy = TestProxy::start(yaml("app-1", backend.addr)).await;
    let reply = client::get(
        proxy.addr("public"),
        "/headers?q=1",
        &[
            ("host", "app.test"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-end-to-end", "kept"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.json();
    assert_eq!(seen["uri"], "/headers?q=1");
    assert_eq!(seen["version"], "HTTP/1.1");
    let headers: Vec<(String, String)> = serde_json::from_value(seen["headers"].clone()).unwrap();
    let get = |name: &str| headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    for hop in ["x-hop", "keep-alive", "te", "upgrade"] {
        assert!(get(hop).is_empty(), "{hop} must not reach the backend: {headers:?}");
    }
    assert_eq!(get("host"), ["app.test"]);
    assert_eq!(get("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(get("x-forwarded-proto"), ["http"]);
    assert_eq!(get("x-forwarded-host"), ["app.test"]);
    assert_eq!(get("x-end-to-end"), ["kept"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_keep_their_forwarded_chain() {
    let backend = EchoBackend::start("app-1").await;
    let proxy = TestProxy::start(yaml("app-1", backend.addr).set("trusted_proxies", "[\"127.0.0.0/8\"]")).await;
    let reply = client::get(
        proxy.addr("public"),
        "/headers",
        &[("x-forwarded-for", "203.0.113.7"), ("x-forwarded-proto", "https")],
    )
    .await;
    let headers: Vec<(String, String)> = serde_json::from_value(reply.json()["headers"].clone()).unwrap();
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(get("x-forwarded-for").as_deref(), Some("203.0.113.7, 127.0.0.1"));
    assert_eq!(get("x-forwarded-proto").as_deref(), Some("https"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_gets_502_and_a_slow_one_504() {
    let dead = dead_address();
    let slow = EchoBackend::start("slow").await;
    let yaml = Yaml::new()
        .listener("public")
        .route_when("path_prefix: /dead", "dead")
        .route("slow")
        .upstream("dead", |u| u.backend("d", dead.addr))
        .upstream("slow", |u| u.backend("s", slow.addr))
        .set("timeouts", "{ connect: 1s, request: 300ms }");
    let proxy = TestProxy::start(yaml).await;
    let addr = proxy.addr("public");
    let reply = client::get(addr, "/dead", &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(!reply.text().contains(&dead.addr.to_string()), "no backend address in client-visible bodies");
    let started = Instant::now();
    let reply = client::get(addr, "/slow?ms=5000", &[]).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(4), "504 came after {:?}", started.elapsed());
    // The proxy still serves normally afterwards.
    assert_eq!(client::get(addr, "/", &[]).await.text(), "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_answered_400_and_never_reach_a_backend() {
    let backend = EchoBackend::start("app-1").await;
    let proxy = TestProxy::start(yaml("app-1", backend.addr)).await;
    let addr = proxy.addr("public");
    let smuggle = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n";
    let cases: [(&str, &[u8]); 5] = [
        ("CL+TE conflict", smuggle),
        (
            "two different Content-Lengths",
            b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ),
        ("non-chunked Transfer-Encoding", b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
        ("garbage request line", b"GARBAGE\r\n\r\n"),
        ("two Host headers", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ];
    for (what, bytes) in cases {
        let reply = client::raw(addr, bytes).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{what}: {reply:?}");
        assert_eq!(reply.matches("HTTP/1.1").count(), 1, "{what}: exactly one response: {reply:?}");
    }
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no malformed request reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_stripped_and_served_as_http1() {
    let backend = EchoBackend::start("app-1").await;
    let proxy = TestProxy::start(yaml("app-1", backend.addr)).await;
    let reply = client::raw(
        proxy.addr("public"),
        b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(!reply.to_ascii_lowercase().contains("\"upgrade\""), "Upgrade must not reach the backend: {reply}");
    assert!(!reply.to_ascii_lowercase().contains("http2-settings"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_after_header_read() {
    let backend = EchoBackend::start("app-1").await;
    let proxy =
        TestProxy::start(yaml("app-1", backend.addr).set("timeouts", "{ header_read: 500ms, idle: 30s }")).await;
    let mut stream = TcpStream::connect(proxy.addr("public")).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = within("the proxy to close a slow head", stream.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "closed without a response");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400) && waited < Duration::from_secs(5), "closed after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_live_for_idle_not_header_read() {
    let backend = EchoBackend::start("app-1").await;
    let proxy =
        TestProxy::start(yaml("app-1", backend.addr).set("timeouts", "{ header_read: 300ms, idle: 1500ms }")).await;
    let mut stream = TcpStream::connect(proxy.addr("public")).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = within("first response", stream.read(&mut buf)).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle_from = Instant::now();
    // Far longer than header_read: an idle keep-alive connection must still be open.
    let mut probe = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(800), stream.read(&mut probe)).await;
    assert!(early.is_err(), "closed after {:?}, before `idle`", idle_from.elapsed());
    let n = within("idle close", stream.read(&mut probe)).await.unwrap_or(0);
    assert_eq!(n, 0);
    let waited = idle_from.elapsed();
    assert!(waited >= Duration::from_millis(1400) && waited < Duration::from_secs(6), "idle close after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_refused_with_503() {
    let backend = EchoBackend::start("app-1").await;
    let proxy = TestProxy::start(yaml("app-1", backend.addr).set("limits", "{ max_connections: 2 }")).await;
    let addr = proxy.addr("public");
    let mut a = H1::connect(addr).await;
    let mut b = H1::connect(addr).await;
    assert_eq!(a.get("/", &[]).await.status, StatusCode::OK);
    assert_eq!(b.get("/", &[]).await.status, StatusCode::OK);
    let third = client::raw(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(third.starts_with("HTTP/1.1 503"), "{third}");
    drop(a);
    // The slot frees once the first connection is gone.
    until("a freed slot", async || {
        client::raw(addr, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.starts_with("HTTP/1.1 200")
    })
    .await;
    assert_eq!(b.get("/", &[]).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_works_on_a_plain_listener() {
    let backend = EchoBackend::start("app-1").await;
    let proxy = TestProxy::start(yaml("app-1", backend.addr)).await;
    let stream = TcpStream::connect(proxy.addr("public")).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://h2c.test/headers").body(Full::new(Bytes::new())).unwrap();
    let reply = client::send_h2(&mut sender, req).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.json();
    assert_eq!(seen["version"], "HTTP/1.1", "backends always get HTTP/1.1");
    let headers: Vec<(String, String)> = serde_json::from_value(seen["headers"].clone()).unwrap();
    assert!(headers.contains(&("host".into(), "h2c.test".into())), "{headers:?}");
}

/// Upload and download 256 MiB through the real binary: the proxy's peak RSS must grow by only
/// a few MiB (bodies stream; nothing is buffered whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_in_bounded_memory() {
    const SIZE: u64 = 256 * 1024 * 1024;
    let backend = EchoBackend::start("app-1").await;
    let proxy = TestProxy::builder()
        .yaml(yaml("app-1", backend.addr).set("access_log", "{ format: off }"))
        .spawn_process()
        .await;
    let addr = proxy.addr("public");
    // Warm up allocator and connection pool before the baseline.
    assert_eq!(client::get(addr, "/download?bytes=65536", &[]).await.body.len(), 65536);
    let (_, baseline) = proxy.rss_kib();

    let mut client = H1::connect(addr).await;
    // Download: count bytes as they arrive, never holding them.
    let reply = within("download", async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let resp = sender
            .send_request(
                Request::get(format!("/download?bytes={SIZE}"))
                    .header("host", "a")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let mut body = resp.into_body();
        let mut total = 0u64;
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            total += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
        }
        total
    })
    .await;
    assert_eq!(reply, SIZE);

    // Upload: a streamed request body of SIZE bytes; the backend answers how much it got.
    let chunk = Bytes::from(vec![b'u'; 1024 * 1024]);
    let chunks = futures_util::stream::iter(
        (0..SIZE / chunk.len() as u64)
            .map(move |_| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk.clone()))),
    );
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post("/upload")
        .header("host", "a")
        .header("content-length", SIZE)
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    let resp = within("upload", sender.send_request(req)).await.unwrap();
    let body = within("upload answer", http_body_util::BodyExt::collect(resp.into_body())).await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&body), SIZE.to_string());

    let (_, peak) = proxy.rss_kib();
    let growth_mib = (peak.saturating_sub(baseline)) as f64 / 1024.0;
    println!("figure: proxy peak RSS growth {growth_mib:.1} MiB streaming {} MiB each way", SIZE >> 20);
    assert!(growth_mib < 8.0, "proxy peak RSS grew by {growth_mib:.1} MiB while streaming {} MiB each way", SIZE >> 20);
    assert_eq!(client.get("/", &[]).await.status, StatusCode::OK);
}

async fn ws_echo_roundtrip<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let hello = within("greeting", ws.next()).await.unwrap().unwrap();
    assert_eq!(hello, Message::text("hello from app-1"));
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(within("echo", ws.next()).await.unwrap().unwrap(), Message::text("ping"));
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    let echoed = within("1 MiB echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echoed.into_data(), big, "1 MiB message comes back intact");
    ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).await.unwrap();
    // The close handshake completes: the backend's Close comes back, then the stream ends.
    loop {
        match within("close handshake", ws.next()).await {
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("close handshake failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy_over_ws() {
    let backend = EchoBackend::start("app-1").await;
    let proxy = TestProxy::start(yaml("app-1", backend.addr)).await;
    let url = format!("ws://{}/ws", proxy.addr("public"));
    let (mut ws, resp) = within("ws connect", tokio_tungstenite::connect_async(url)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers().get("x-backend-id").unwrap(), "app-1");
    ws_echo_roundtrip(&mut ws).await;
    drop(ws);
    until("tunnel to be unregistered", async || proxy.running().proxy().loads("app")[0].tunnels == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_is_relayed_as_an_ordinary_response() {
    let backend = EchoBackend::start("app-1").await;
    let proxy = TestProxy::start(yaml("app-1", backend.addr)).await;
    let url = format!("ws://{}/refuse-upgrade", proxy.addr("public"));
    match within("ws connect", tokio_tungstenite::connect_async(url)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::FORBIDDEN)
        }
        other => panic!("expected a 403, got {other:?}"),
    }
}

/// Listener `tls` with certificates `a` (the default, for a.test and localhost) and `b` (for
/// b.test and *.b.test), written to `dir`, in front of `backend`.
fn tls_config(backend: SocketAddr, dir: &std::path::Path, ca: &TestCa) -> Yaml {
    ca.write_leaf(dir, "a", &["a.test", "localhost"]);
    ca.write_leaf(dir, "b", &["b.test", "*.b.test"]);
    Yaml::new()
        .tls_listener("tls", &[("a.crt", "a.key"), ("b.crt", "b.key")])
        .route("app")
        .upstream("app", |u| u.backend("app-1", backend))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy_over_wss() {
    let backend = EchoBackend::start("app-1").await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let yaml = tls_config(backend.addr, dir.path(), &ca);
    let proxy = TestProxy::builder().dir(dir).yaml(yaml).spawn().await;
    let addr = proxy.addr("tls");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!("wss://localhost:{}/ws", addr.port()).into_client_request().unwrap();
    let connector = tokio_tungstenite::Connector::Rustls(ca.client_config(&[b"http/1.1"]));
    let (mut ws, resp) =
        within("wss connect", tokio_tungstenite::client_async_tls_with_config(request, tcp, None, Some(connector)))
            .await
            .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws_echo_roundtrip(&mut ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_is_negotiated_by_alpn_and_proxied_as_http1() {
    let backend = EchoBackend::start("app-1").await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let yaml = tls_config(backend.addr, dir.path(), &ca);
    let proxy = TestProxy::builder().dir(dir).yaml(yaml).spawn().await;
    let (mut sender, alpn) = client::h2_tls(proxy.addr("tls"), "a.test", ca.client_config(&[b"h2", b"http/1.1"])).await;
    assert_eq!(alpn, b"h2");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let req = Request::get("https://a.test/headers").body(Full::new(Bytes::new())).unwrap();
        let reply = client::send_h2(&mut sender, req).await;
        assert_eq!(reply.status, StatusCode::OK);
        let seen = reply.json();
        assert_eq!(seen["version"], "HTTP/1.1");
        let headers: Vec<(String, String)> = serde_json::from_value(seen["headers"].clone()).unwrap();
        assert!(headers.contains(&("x-forwarded-proto".into(), "https".into())), "{headers:?}");
        assert!(headers.contains(&("host".into(), "a.test".into())), "{headers:?}");
        ids.push(seen["backend"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids, ["app-1"; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_the_matching_certificate_and_the_first_is_the_default() {
    let backend = EchoBackend::start("app-1").await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let yaml = tls_config(backend.addr, dir.path(), &ca);
    let a_der = std::fs::read_to_string(dir.path().join("a.crt")).unwrap();
    let b_der = std::fs::read_to_string(dir.path().join("b.crt")).unwrap();
    let proxy = TestProxy::builder().dir(dir).yaml(yaml).spawn().await;
    let addr = proxy.addr("tls");
    let leaf_for = |name: &'static str| {
        let config = ca.client_config(&[b"http/1.1"]);
        async move {
            // Verification is by name, so a wrong pick would fail the handshake for b.test names.
            let tcp = TcpStream::connect(addr).await.unwrap();
            let connector = tokio_rustls::TlsConnector::from(config);
            let tls = connector.connect(rustls::pki_types::ServerName::try_from(name).unwrap(), tcp).await.unwrap();
            tls.get_ref().1.peer_certificates().unwrap()[0].clone()
        }
    };
    let pem_of = |der: rustls::pki_types::CertificateDer<'static>| {
        use rustls::pki_types::pem::PemObject;
        let a = rustls::pki_types::CertificateDer::from_pem_slice(a_der.as_bytes()).unwrap();
        let b = rustls::pki_types::CertificateDer::from_pem_slice(b_der.as_bytes()).unwrap();
        if der == a {
            "a"
        } else if der == b {
            "b"
        } else {
            "?"
        }
    };
    assert_eq!(pem_of(leaf_for("a.test").await), "a");
    assert_eq!(pem_of(leaf_for("b.test").await), "b");
    assert_eq!(pem_of(leaf_for("x.b.test").await), "b");
    // An IP literal sends no SNI: the first certificate is the default.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut config = (*ca.client_config(&[])).clone();
    config.dangerous().set_certificate_verifier(std::sync::Arc::new(AcceptAny));
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(pem_of(tls.get_ref().1.peer_certificates().unwrap()[0].clone()), "a");
}

/// Accepts any server certificate: only for asking "which certificate was presented".
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// The first access-log line of `kind` (`request` or `tunnel`) the proxy wrote to stderr.
async fn log_line(proxy: &ProxyProcess, kind: &str) -> String {
    proxy.wait_for_stderr_line("an access log line", &format!("\"kind\":\"{kind}\"")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_are_json_with_redacted_query_parameters() {
    let backend = EchoBackend::start("app-1").await;
    let proxy = TestProxy::builder().yaml(yaml("app-1", backend.addr)).spawn_process().await;
    let addr = proxy.addr("public");
    assert_eq!(client::get(addr, "/login?user=bob&access_token=s3cr3t", &[]).await.status, StatusCode::OK);
    let line = log_line(&proxy, "request").await;
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["path"], "/login?user=bob&access_token=REDACTED");
    assert_eq!(record["status"], 200);
    assert_eq!(record["method"], "GET");
    assert_eq!(record["backend"], "app-1");
    assert_eq!(record["upstream"], "app");
    assert_eq!(record["listener"], "public");
    assert!(record["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(record["timestamp"].is_string());
    assert!(!proxy.stderr().contains("s3cr3t"), "the token never reaches the log");

    // A finished tunnel gets its own line, with its lifetime and bytes both ways.
    let (mut ws, _) =
        within("ws connect", tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token=abc"))).await.unwrap();
    within("greeting", ws.next()).await.unwrap().unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    within("echo", ws.next()).await.unwrap().unwrap();
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = within("close", ws.next()).await {}
    drop(ws);
    let line = log_line(&proxy, "tunnel").await;
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["path"], "/ws?token=REDACTED");
    assert_eq!(record["backend"], "app-1");
    // After the close handshake the server closes TCP first (RFC 6455 7.1.1).
    assert_eq!(record["end"], "backend_closed");
    assert!(record["lifetime_ms"].as_f64().unwrap() > 0.0);
    assert!(record["bytes_in"].as_u64().unwrap() > 4, "client to backend: the ping and the close");
    assert!(record["bytes_out"].as_u64().unwrap() > 20, "backend to client: greeting, echo, close");
}

/// A backend that answers any upgrade with 101, reads the tunnel until the client's end of
/// stream, then answers how many bytes it got and closes.
async fn half_close_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        stream
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        stream.write_all(format!("got {} bytes", got.len()).as_bytes()).await.unwrap();
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_passes_a_half_close_on_and_keeps_the_other_direction_open() {
    let backend = half_close_backend().await;
    let proxy = TestProxy::start(yaml("raw", backend)).await;
    let mut stream = TcpStream::connect(proxy.addr("public")).await.unwrap();
    stream
        .write_all(b"GET /raw HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        within("the 101", stream.read_exact(&mut byte)).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream.write_all(b"0123456789").await.unwrap();
    // Half-close: no more bytes from the client; the backend must see its end of stream and
    // still be able to answer through the tunnel.
    stream.shutdown().await.unwrap();
    let mut answer = String::new();
    within("the backend's answer after the half-close", stream.read_to_string(&mut answer)).await.unwrap();
    assert_eq!(answer, "got 10 bytes");
}
