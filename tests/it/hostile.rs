//! Hostile clients and failing backends, through the real proxy: every wait is bounded, every
//! budget holds, and a fault affects only the requests it touches.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::support::app_process::AppProcess;
use crate::support::config::Yaml;
use crate::support::echo::EchoBackend;
use crate::support::h2_frames::{self as h2f, RawH2, get_block};
use crate::support::http::{self as client, H1};
use crate::support::proxy::{Logs, TestProxy};
use crate::support::stomp_client::{ConnectOptions, StompClient};
use crate::support::tls::TestCa;
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

/// A backend that accepts connections and never answers; the task holds them until aborted.
async fn blackhole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

/// A backend that answers whatever it is sent with bytes that are not HTTP, then hangs up.
async fn garbage() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(b"\x00\x01NOT HTTP AT ALL\r\n\r\n\xff\xfe").await;
            });
        }
    });
    (addr, task)
}

/// An upstream of `bad` and a healthy echo backend `a`, taking turns, ejecting after two
/// failures in a row for 60 s.
fn bad_and_good(bad: SocketAddr, good: SocketAddr) -> Yaml {
    Yaml::new()
        .listener("public")
        .admin()
        .route("app")
        .upstream("app", |u| {
            u.backend("bad", bad)
                .backend("a", good)
                .affinity("{ fallback: round_robin }")
                .passive("{ consecutive_failures: 2, ejection: 60s, max_ejection: 60s }")
        })
        .raw("timeouts: { request: 500ms }\n")
}

/// Sends requests until `bad` is ejected; every answer is either the healthy backend's 200 or
/// `failure` (what a request that reached `bad` gets). Returns how many got `failure`.
async fn until_ejected(proxy: &TestProxy, failure: u16) -> usize {
    let addr = proxy.addr("public");
    let admin = proxy.admin();
    let mut failed = 0;
    for _ in 0..20 {
        let reply = client::get(addr, "/", &[]).await;
        match reply.status.as_u16() {
            200 => assert_eq!(reply.text(), "a"),
            status => {
                assert_eq!(status, failure, "{}", reply.text());
                assert!(!reply.text().contains("127.0.0.1"), "no backend address in the answer");
                failed += 1;
            }
        }
        if admin.listed("app", "bad").await["state"] == "ejected" {
            return failed;
        }
    }
    panic!("the failing backend was never ejected ({failed} failures)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_gives_504_after_the_request_timeout_and_is_ejected() {
    let (hole, _task) = blackhole().await;
    let good = EchoBackend::start("a").await;
    let proxy = TestProxy::start(bad_and_good(hole, good.addr)).await;
    let started = Instant::now();
    assert_eq!(until_ejected(&proxy, 504).await, 2, "ejected after exactly the configured failures");
    assert!(started.elapsed() >= Duration::from_millis(1000), "each 504 waited timeouts.request");
    // Ejected: everything goes to the healthy backend.
    for _ in 0..5 {
        let reply = client::get(proxy.addr("public"), "/", &[]).await;
        assert_eq!((reply.status.as_u16(), reply.text()), (200, "a".to_owned()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_answers_garbage_gives_502_and_is_ejected() {
    let (junk, _task) = garbage().await;
    let good = EchoBackend::start("a").await;
    let proxy = TestProxy::start(bad_and_good(junk, good.addr)).await;
    assert_eq!(until_ejected(&proxy, 502).await, 2, "ejected after exactly the configured failures");
    for _ in 0..5 {
        let reply = client::get(proxy.addr("public"), "/", &[]).await;
        assert_eq!((reply.status.as_u16(), reply.text()), (200, "a".to_owned()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_tunnel_leaves_its_clients_a_close_1011_and_no_one_else_notices() {
    let app_args = |id: &str| ["backend", "--listen", "127.0.0.1:0", "--id", id].map(String::from);
    let doomed = AppProcess::spawn(&app_args("k1")).await;
    let survivor = AppProcess::spawn(&app_args("k2")).await;
    let proxy = TestProxy::start(Yaml::new().listener("public").admin().route("app").upstream("app", |u| {
        u.backend("k1", doomed.addr)
            .backend("k2", survivor.addr)
            .affinity("{ key: [ { header: X-User-Id } ], fallback: round_robin }")
    }))
    .await;
    let admin = proxy.admin();
    let url = format!("ws://{}/ws", proxy.addr("public"));
    let on = async |backend: &str| {
        let user = admin.key_on("app", backend, "user-").await;
        let mut c = StompClient::connect_with(&url, ConnectOptions::default().user_header(&user)).await;
        c.subscribe("/topic/t", "s").await;
        c.send("/topic/t", "before").await;
        assert_eq!(c.next_body().await, "before");
        c
    };
    let mut victim = on("k1").await;
    let mut bystander = on("k2").await;

    // SIGKILL: no Close frame from the backend, no shutdown of any kind.
    let pid = doomed.pid().expect("running") as libc::pid_t;
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);

    let (close, _) = victim.expect_close(crate::support::WAIT).await;
    let close = close.expect("a Close frame, not a bare end of stream");
    assert_eq!(u16::from(close.code), 1011);
    assert_eq!(close.reason.as_str(), "tether: backend connection lost");
    // The tunnel on the other backend carries on.
    bystander.send("/topic/t", "after").await;
    assert_eq!(bystander.next_body().await, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_whose_log_pipe_nobody_reads_still_answers_10000_requests() {
    let backend = EchoBackend::start("a").await;
    let yaml = Yaml::new()
        .listener("public")
        .admin()
        .route("app")
        .upstream("app", |u| u.backend("a", backend.addr))
        .raw("access_log: { format: json }\n");
    let proxy = TestProxy::builder().yaml(yaml).spawn_process_logging(Logs::ToUnreadPipe).await;
    let addr = proxy.addr("public");
    // 10,000 requests over 4 keep-alive connections, each logged: far more than a pipe holds.
    const CONNECTIONS: usize = 4;
    const EACH: usize = 2_500;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(tokio::spawn(async move {
            let mut h1 = H1::connect(addr).await;
            for _ in 0..EACH {
                let reply = h1.get("/", &[]).await;
                assert_eq!((reply.status.as_u16(), &reply.body[..]), (200, &b"a"[..]));
            }
        }));
    }
    for client in clients {
        client.await.expect("a client's 2,500 requests");
    }
    // The lines that did not fit were dropped and counted, not waited for.
    let dropped = proxy.admin().metric("tether_log_lines_dropped_total", &[]).await;
    assert!(dropped > 0.0, "the full pipe dropped lines (dropped: {dropped})");
}

/// Descriptors `pid` has open.
fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc/<pid>/fd").count() as u64
}

/// Set `pid`'s open-file limit (soft and hard) to `limit`.
fn set_nofile(pid: u32, limit: u64) {
    let new = libc::rlimit { rlim_cur: limit, rlim_max: limit };
    // SAFETY: prlimit(2) on our own child, with a valid rlimit and no old value asked for.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_out_of_descriptors_keeps_its_listener_and_serves_again_once_they_free_up() {
    let backend = EchoBackend::start("a").await;
    let proxy = TestProxy::builder()
        .yaml(Yaml::new().listener("public").route("app").upstream("app", |u| u.backend("a", backend.addr)))
        .spawn_process()
        .await;
    let addr = proxy.addr("public");
    assert_eq!(client::get(addr, "/", &[]).await.status, 200);
    // Room for a handful of descriptors more than the proxy holds now.
    set_nofile(proxy.pid(), open_fds(proxy.pid()) + 6);

    // 40 clients: the kernel queues their connections, the proxy runs out of descriptors
    // accepting them.
    let mut clients = Vec::new();
    for _ in 0..40 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("request");
        clients.push(stream);
    }
    let line = proxy.wait_for_stderr_line("the accept loop to back off", "accept failed: out of descriptors").await;
    assert!(line.contains("Too many open files"), "{line}");
    assert!(proxy.is_running_now(), "the proxy survived");
    // The clients give up; their descriptors free up, and the same listener serves again.
    drop(clients);
    let reply = eventually("the proxy to serve again", async || {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer)).await.ok()?.ok()?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        answer.starts_with("HTTP/1.1 200").then_some(answer)
    })
    .await;
    assert!(reply.ends_with("\r\n\r\na"), "{reply}");
}

/// What a request to `target` gets: `(status, backend id, URI the backend saw)`; the backend
/// and URI are empty when no backend answered.
async fn routed(addr: SocketAddr, target: &str) -> (u16, String, String) {
    let reply =
        client::raw(addr, format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await;
    let status = reply.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(seen) => {
            (status, seen["backend"].as_str().unwrap_or("").to_owned(), seen["uri"].as_str().unwrap_or("").to_owned())
        }
        Err(_) => (status, String::new(), String::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_then_matched_by_whole_segments_and_the_backend_sees_what_was_routed() {
    let api = EchoBackend::start("api").await;
    let files = EchoBackend::start("files").await;
    let fallback = EchoBackend::start("fallback").await;
    let yaml = Yaml::new()
        .listener("public")
        .route_when("path_prefix: /api", "api")
        .route_when("path_prefix: /files/, path: { allow_encoded_slash: true }", "files")
        .route("fallback")
        .upstream("api", |u| u.backend("api", api.addr))
        .upstream("files", |u| u.backend("files", files.addr))
        .upstream("fallback", |u| u.backend("fallback", fallback.addr));
    let proxy = TestProxy::start(yaml).await;
    let addr = proxy.addr("public");
    let ok = |backend: &str, uri: &str| (200, backend.to_owned(), uri.to_owned());
    let cases = [
        // Whole segments: /api is /api and below, never /apix.
        ("/api/headers", ok("api", "/api/headers")),
        ("/api/v1/headers", ok("api", "/api/v1/headers")),
        ("/apix/headers", ok("fallback", "/apix/headers")),
        // Dot segments are resolved before matching, so a climb out of /api is routed (and
        // forwarded) as where it lands.
        ("/api/../admin/headers", ok("fallback", "/admin/headers")),
        ("/api/%2e%2e/admin/headers", ok("fallback", "/admin/headers")),
        ("/api/./v1/../headers", ok("api", "/api/headers")),
        // Unreserved characters are decoded: %61pi is api. The query is kept as sent.
        ("/%61pi/headers?q=%2F", ok("api", "/api/headers?q=%2F")),
        // An encoded slash only where the route allows it, and forwarded still encoded.
        ("/files/a%2Fb/headers", ok("files", "/files/a%2Fb/headers")),
    ];
    for (target, expected) in cases {
        assert_eq!(routed(addr, target).await, expected, "{target}");
    }
    let refused = ["/../etc/passwd", "/api/%2e%2e/%2e%2e/etc", "/api/a%2Fb", "/api\\..\\admin", "/api/%00", "/api/%5C"];
    for target in refused {
        assert_eq!(routed(addr, target).await.0, 400, "{target}");
    }
    let reached = |b: &EchoBackend| b.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(reached(&api) + reached(&files) + reached(&fallback), 8, "no refused path reached a backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_host_and_upgrades_with_a_body_are_refused_400_before_any_backend() {
    let backend = EchoBackend::start("a").await;
    let proxy = TestProxy::start(
        Yaml::new()
            .listener("public")
            .route_when("host: api.test", "app")
            .upstream("app", |u| u.backend("a", backend.addr)),
    )
    .await;
    let addr = proxy.addr("public");
    let upgrade = "GET /ws HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases = [
        ("HTTP/1.1 without Host", "GET / HTTP/1.1\r\n\r\n".to_owned()),
        ("HTTP/1.1 with an empty Host", "GET / HTTP/1.1\r\nHost:\r\n\r\n".to_owned()),
        ("an upgrade with Content-Length", format!("{upgrade}Content-Length: 5\r\n\r\nhello")),
        (
            "an upgrade with a chunked body",
            format!("{upgrade}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ),
    ];
    for (what, request) in cases {
        let reply = client::raw(addr, request.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 400 "), "{what}: {reply}");
    }
    assert_eq!(backend.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The same host with a trailing dot, or in capitals, is the same host.
    for host in ["api.test.", "API.Test.:80"] {
        let reply =
            client::raw(addr, format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 200 "), "{host}: {reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_other_than_the_connections_sni_on_a_multi_certificate_listener_is_421() {
    let backend = EchoBackend::start("a").await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    ca.write_leaf(dir.path(), "a", &["a.test"]);
    ca.write_leaf(dir.path(), "b", &["b.test", "*.b.test"]);
    let yaml = Yaml::new()
        .tls_listener("tls", &[("a.crt", "a.key"), ("b.crt", "b.key")])
        .route("app")
        .upstream("app", |u| u.backend("a", backend.addr));
    let proxy = TestProxy::builder().dir(dir).yaml(yaml).spawn().await;
    // An HTTP/2 connection set up for x.b.test: a client reusing it for another name of the
    // same certificate (or of another) is told to open its own connection.
    let (mut h2, _) = client::h2_tls(proxy.addr("tls"), "x.b.test", ca.client_config(&[b"h2"])).await;
    let status = async |h2: &mut _, authority: &str| {
        let req =
            http::Request::get(format!("https://{authority}/")).body(http_body_util::Full::new(bytes::Bytes::new()));
        client::send_h2(h2, req.expect("request")).await.status.as_u16()
    };
    assert_eq!(status(&mut h2, "x.b.test").await, 200);
    assert_eq!(status(&mut h2, "X.B.Test.").await, 200, "case and a trailing dot do not matter");
    assert_eq!(status(&mut h2, "b.test").await, 421);
    assert_eq!(status(&mut h2, "a.test").await, 421);
    assert_eq!(backend.requests.load(std::sync::atomic::Ordering::SeqCst), 2);
}
