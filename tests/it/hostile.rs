//! Hostile clients and failing backends, through the real proxy: every wait is bounded, every
//! budget holds, and a fault affects only the requests it touches.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::support::config::Yaml;
use crate::support::echo::EchoBackend;
use crate::support::h2_frames::{self as h2f, RawH2, get_block};
use crate::support::http::{self as client};
use crate::support::proxy::TestProxy;
use crate::support::{eventually, within};

/// A proxy in front of `backend` with short `send`, `body_read` and `header_read` timeouts (the
/// watchdog looks at a busy connection at least every `header_read`).
fn impatient(backend: SocketAddr) -> Yaml {
    Yaml::new()
        .listener("public")
        .admin()
        .route("app")
        .upstream("app", |u| u.backend("a", backend))
        .raw("timeouts: { send: 1s, body_read: 1s, header_read: 1s }\n")
}

/// A client socket with a receive buffer of a few KiB, so a proxy writing to a client that does
/// not read blocks after little data.
async fn small_window_connect(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(addr).await.expect("connect")
}

/// Read whatever the peer still sends until it closes the connection; the bytes read.
async fn read_until_closed(stream: &mut TcpStream) -> usize {
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    within("the proxy to close the connection", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    })
    .await
}

/// The HTTP/2 error code for a peer generating excessive load (RFC 9113 7).
const ENHANCE_YOUR_CALM: u32 = 0xb;

const LARGE: u64 = 256 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_a_response_are_closed_after_the_send_timeout_with_memory_bounded() {
    let backend = EchoBackend::start("a").await;
    let proxy = TestProxy::builder().yaml(impatient(backend.addr)).spawn_process().await;
    let addr = proxy.addr("public");
    let (rss_before, _) = proxy.rss_kib();

    // 50 clients each ask for 256 MiB and read nothing.
    const READERS: usize = 50;
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut stream = small_window_connect(addr).await;
        stream
            .write_all(format!("GET /download?bytes={LARGE} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("request");
        readers.push(stream);
    }
    let admin = proxy.admin();
    // Every one of them is dropped for not reading, and counted.
    admin.wait_metric("tether_timeouts_total", &[("kind", "send")], READERS as f64).await;
    let (_, rss_peak) = proxy.rss_kib();
    // Meanwhile a client that reads is served.
    let reply = client::get(addr, "/download?bytes=1000000", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), 1_000_000);

    for mut stream in readers {
        let read = read_until_closed(&mut stream).await;
        assert!((read as u64) < LARGE / 4, "a stalled reader was cut off long before the end ({read} bytes)");
    }
    // What the proxy buffered for 50 stalled readers of 256 MiB each stays a few MiB per
    // reader, whatever the response size.
    let grown = rss_peak.saturating_sub(rss_before);
    assert!(grown < 128 * 1024, "RSS grew by {grown} KiB for {READERS} stalled readers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stops_arriving_gets_408_after_body_read() {
    let backend = EchoBackend::start("a").await;
    let proxy = TestProxy::start(impatient(backend.addr)).await;
    let addr = proxy.addr("public");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // 100 bytes announced, 10 sent, then nothing.
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .expect("request");
    let started = Instant::now();
    let mut answer = Vec::new();
    within("the proxy to answer and close", stream.read_to_end(&mut answer)).await.expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(900), "answered before body_read passed");
    proxy.admin().wait_metric("tether_timeouts_total", &[("kind", "body_read")], 1.0).await;
    // A body that keeps arriving is not cut, however slowly it comes overall.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n").await.expect("head");
    for byte in b"abcdef" {
        // Each byte 400 ms after the last: 2.4 s in all, more than body_read.
        tokio::time::sleep(Duration::from_millis(400)).await;
        stream.write_all(&[*byte]).await.expect("body byte");
    }
    let mut head = vec![0u8; 12];
    within("the answer", stream.read_exact(&mut head)).await.expect("read");
    assert_eq!(&head, b"HTTP/1.1 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_stops_reading_is_closed_after_the_send_timeout_and_others_are_unaffected() {
    let backend = EchoBackend::start("a").await;
    let proxy = TestProxy::start(impatient(backend.addr)).await;
    let url = format!("ws://{}/ws", proxy.addr("public"));
    let (mut healthy, _) = within("a WebSocket", tokio_tungstenite::connect_async(&url)).await.expect("ws");
    let (stalled, _) = within("a WebSocket", tokio_tungstenite::connect_async(&url)).await.expect("ws");
    let (mut sink, _never_read) = stalled.split();
    // The echo backend sends back every message; this client never reads them. Sending stops
    // once the proxy stops taking them (the writes block), bounded at 64 MiB.
    let sending = tokio::spawn(async move {
        for _ in 0..1024 {
            if sink.send(Message::binary(vec![1u8; 64 * 1024])).await.is_err() {
                return;
            }
        }
    });
    proxy.admin().wait_metric("tether_timeouts_total", &[("kind", "send")], 1.0).await;
    within("the stalled client's sends to end", sending).await.expect("sender");
    // The other tunnel carries on.
    match within("hello", healthy.next()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "hello from a"),
        other => panic!("expected the greeting, got {other:?}"),
    }
    healthy.send(Message::text("still here")).await.expect("send");
    match within("echo", healthy.next()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "still here"),
        other => panic!("expected the echo, got {other:?}"),
    }
    eventually("the stalled tunnel to be gone from the backend", async || {
        (backend.sockets.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    })
    .await;
}

fn budgets(backend: SocketAddr, limits: &str) -> Yaml {
    Yaml::new()
        .listener("public")
        .admin()
        .route("app")
        .upstream("app", |u| u.backend("a", backend))
        .raw(&format!("limits: {limits}\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_past_the_advertised_limit_are_refused() {
    let backend = EchoBackend::start("a").await;
    let proxy = TestProxy::start(budgets(backend.addr, "{ max_streams_per_connection: 4 }")).await;
    let (mut h2, settings) = RawH2::connect(proxy.addr("public")).await;
    assert!(
        settings.contains(&(h2f::SETTINGS_MAX_CONCURRENT_STREAMS, 4)),
        "the limit is advertised in SETTINGS: {settings:?}"
    );
    // Five requests at once, each held by the backend for 30 s: the fifth is one too many.
    let mut burst = Vec::new();
    for stream in [1, 3, 5, 7, 9] {
        burst.extend(h2f::frame(
            h2f::HEADERS,
            h2f::END_HEADERS | h2f::END_STREAM,
            stream,
            &get_block("/slow?ms=30000"),
        ));
    }
    h2.send(&burst).await.expect("requests");
    let reset = h2.until(|f| f.kind == h2f::RST_STREAM).await.expect("a RST_STREAM");
    assert_eq!((reset.stream, reset.error_code()), (9, Some(h2f::REFUSED_STREAM)));
    eventually("the four streams within the limit to reach the backend", async || {
        (backend.requests.load(std::sync::atomic::Ordering::SeqCst) == 4).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_max_in_flight_get_503_on_http1_and_refused_stream_on_http2() {
    let backend = EchoBackend::start("a").await;
    let proxy = TestProxy::start(budgets(backend.addr, "{ max_in_flight: 2 }")).await;
    let addr = proxy.addr("public");
    // Two tunnels take the whole budget.
    let url = format!("ws://{addr}/ws");
    let (mut first, _) = within("a WebSocket", tokio_tungstenite::connect_async(&url)).await.expect("ws");
    let (_second, _) = within("a WebSocket", tokio_tungstenite::connect_async(&url)).await.expect("ws");

    let reply = client::get(addr, "/", &[]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("1"));
    let (mut h2, _) = RawH2::connect(addr).await;
    h2.send(&h2f::frame(h2f::HEADERS, h2f::END_HEADERS | h2f::END_STREAM, 1, &get_block("/"))).await.expect("request");
    let reset = h2.until(|f| f.kind == h2f::RST_STREAM || f.kind == h2f::HEADERS).await.expect("an answer");
    assert_eq!((reset.kind, reset.error_code()), (h2f::RST_STREAM, Some(h2f::REFUSED_STREAM)));
    let admin = proxy.admin();
    assert_eq!(admin.metric("tether_in_flight_refused_total", &[("listener", "public")]).await, 2.0);
    assert_eq!(backend.requests.load(std::sync::atomic::Ordering::SeqCst), 2, "only the upgrades reached the backend");

    // A tunnel ends: its place is free again.
    first.close(None).await.expect("close");
    while let Some(Ok(_)) = within("the tunnel to end", first.next()).await {}
    eventually("a request to be served again", async || {
        (client::get(addr, "/", &[]).await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_ends_in_goaway_and_costs_the_backend_little() {
    let backend = EchoBackend::start("a").await;
    let proxy = TestProxy::start(budgets(backend.addr, "{ max_streams_per_connection: 100 }")).await;
    let addr = proxy.addr("public");
    let (mut h2, _) = RawH2::connect(addr).await;
    // Up to 10,000 streams, each opened and cancelled at once, 100 per write.
    const STREAMS: u32 = 10_000;
    let mut sent = 0;
    'flood: for batch in 0..STREAMS / 100 {
        let mut bytes = Vec::new();
        for i in 0..100 {
            let stream = 2 * (batch * 100 + i) + 1;
            bytes.extend(h2f::frame(h2f::HEADERS, h2f::END_HEADERS | h2f::END_STREAM, stream, &get_block("/")));
            bytes.extend(h2f::frame(h2f::RST_STREAM, 0, stream, &h2f::CANCEL.to_be_bytes()));
        }
        if h2.send(&bytes).await.is_err() {
            break 'flood;
        }
        sent += 100;
    }
    let goaway = h2.until(|f| f.kind == h2f::GOAWAY).await.expect("a GOAWAY");
    assert_eq!(goaway.error_code(), Some(ENHANCE_YOUR_CALM), "sent {sent} streams");
    assert_eq!(h2.until(|_| false).await.map(|f| f.kind), None, "the connection is closed after the GOAWAY");
    let reached = backend.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert!(reached < 1_000, "{reached} of {sent} cancelled streams reached the backend");
    // Nobody else noticed.
    assert_eq!(client::get(addr, "/", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_and_others_are_served() {
    let backend = EchoBackend::start("a").await;
    let proxy = TestProxy::start(budgets(backend.addr, "{ max_header_bytes: 16KiB }")).await;
    let addr = proxy.addr("public");
    let (mut h2, _) = RawH2::connect(addr).await;
    // A HEADERS frame that never ends: up to 10,000 CONTINUATION frames of 1 KiB of header
    // data (a literal header repeated), none with END_HEADERS.
    h2.send(&h2f::frame(h2f::HEADERS, 0, 1, &get_block("/"))).await.expect("headers");
    // A literal header `x: yyy…` (value length 1018 as an HPACK integer: 127 + 891).
    let mut fragment = vec![0x40, 0x01, b'x', 0x7f, 0xfb, 0x06];
    fragment.extend(std::iter::repeat_n(b'y', 1018));
    let mut sent = 0;
    for _ in 0..10_000 {
        if h2.send(&h2f::frame(h2f::CONTINUATION, 0, 1, &fragment)).await.is_err() {
            break;
        }
        sent += 1;
    }
    // The header block is over max_header_bytes long before the flood ends.
    let goaway = h2.until(|f| f.kind == h2f::GOAWAY).await.expect("a GOAWAY");
    assert_eq!(goaway.error_code(), Some(ENHANCE_YOUR_CALM), "after {sent} CONTINUATION frames");
    assert!(sent < 10_000, "the flood was cut off before its end");
    assert_eq!(h2.until(|_| false).await.map(|f| f.kind), None, "the connection is closed");
    assert_eq!(backend.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(client::get(addr, "/", &[]).await.status, 200);
}
