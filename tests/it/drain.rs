//! Rolling updates end to end: draining with graceful WebSocket closes, health
//! states, passive ejection, panic mode, rebalancing, the proxy's own SIGTERM sequence and the
//! admin token. Real proxy, real sockets, real WebSocket clients (tokio-tungstenite).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::support::admin::AdminClient;
use crate::support::config::{Upstream, Yaml};
use crate::support::http::{self as client, H1};
use crate::support::process::tether_bin;
use crate::support::proxy::TestProxy;
use crate::support::ws_stream::{self, Readiness, StreamBackend};
use crate::support::{eventually, until, within};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Listener `public`, an admin listener, and upstream `app` over `backends`, set up by
/// `upstream`.
fn yaml(backends: &[&StreamBackend], upstream: impl FnOnce(Upstream) -> Upstream) -> Yaml {
    Yaml::app(|u| upstream(u.backends(backends.iter().map(|b| (b.id.as_str(), b.addr)))))
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

// ----- WebSocket helpers ----------------------------------------------------------------------

/// Open `ws://proxy/ws`, with `X-User-Id: key` when given; returns the socket and the backend
/// that greeted it.
async fn connect_ws(proxy: SocketAddr, key: Option<&str>) -> (Ws, String) {
    let mut request = format!("ws://{proxy}/ws").into_client_request().unwrap();
    if let Some(key) = key {
        request.headers_mut().insert("x-user-id", key.parse().unwrap());
    }
    let (mut ws, resp) = within("WebSocket upgrade", tokio_tungstenite::connect_async(request))
        .await
        .unwrap_or_else(|e| panic!("upgrade for {key:?} failed: {e}"));
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let greeting = match within("greeting", ws.next()).await {
        Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
        other => panic!("expected a greeting, got {other:?}"),
    };
    let backend = greeting.strip_prefix("hello from ").unwrap_or_else(|| panic!("odd greeting {greeting}")).to_owned();
    (ws, backend)
}

/// A text round trip: proves the tunnel is open and was not closed meanwhile (a Close waiting
/// in the socket would be read first).
async fn assert_echoes(ws: &mut Ws, what: &str) {
    ws.send(Message::text("ping")).await.unwrap_or_else(|e| panic!("{what}: send failed: {e}"));
    match within("echo", ws.next()).await {
        Some(Ok(Message::Text(t))) if t.as_str() == "ping" => {}
        other => panic!("{what}: expected the echo, got {other:?}"),
    }
}

/// Read until the Close arrives (verifying streamed messages if `streamed`); returns when it
/// arrived, its code, and how many messages came before it. Then completes the close handshake.
async fn read_until_close(ws: &mut Ws, what: &str, streamed: bool) -> (Instant, Option<u16>, u32) {
    let mut seq = 0u32;
    let (at, code) = loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => break (Instant::now(), frame.map(|f| u16::from(f.code))),
            Some(Ok(msg)) if streamed => {
                ws_stream::verify(&msg, seq).unwrap_or_else(|e| panic!("{what}: corrupt stream: {e}"));
                seq += 1;
            }
            Some(Ok(msg)) => panic!("{what}: unexpected {msg:?} before the Close"),
            Some(Err(e)) => panic!("{what}: broken stream after {seq} messages: {e}"),
            None => panic!("{what}: the connection ended without a Close frame after {seq} messages"),
        }
    };
    // tungstenite answers the Close on the next poll; the proxy then ends the connection.
    within("close handshake", async { while let Some(Ok(_)) = ws.next().await {} }).await;
    (at, code, seq)
}

/// The most closes that fall in any window of `width` (both ends included).
fn most_in_window(sorted: &[Instant], width: Duration) -> usize {
    (0..sorted.len()).map(|i| sorted[i..].iter().take_while(|t| **t - sorted[i] <= width).count()).max().unwrap_or(0)
}

// ----- HTTP load ------------------------------------------------------------------------------

/// One answered (or failed) request of the steady load.
#[derive(Debug, Clone)]
struct Sample {
    sent: Instant,
    status: u16,
    backend: Option<String>,
    /// The backend a `Set-Cookie` in this answer pins the client to (the one that served it).
    pinned: Option<String>,
    error: Option<String>,
}

/// A keep-alive client that sends `GET /` with an optional user key and keeps the sticky
/// cookie it is given, like a browser.
struct LoadClient {
    proxy: SocketAddr,
    key: Option<String>,
    cookie: Option<String>,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl LoadClient {
    fn new(proxy: SocketAddr, key: Option<String>) -> Self {
        Self { proxy, key, cookie: None, sender: None }
    }

    async fn request(&mut self) -> Sample {
        let sent = Instant::now();
        let failed = |error: String| Sample { sent, status: 0, backend: None, pinned: None, error: Some(error) };
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = match TcpStream::connect(self.proxy).await {
                Ok(s) => s,
                Err(e) => return failed(format!("connect: {e}")),
            };
            let (sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(x) => x,
                Err(e) => return failed(format!("handshake: {e}")),
            };
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected above");
        let mut req = Request::get("/").header("host", "app.test");
        if let Some(key) = &self.key {
            req = req.header("x-user-id", key.as_str());
        }
        if let Some(cookie) = &self.cookie {
            req = req.header("cookie", cookie.as_str());
        }
        let req = req.body(Full::new(Bytes::new())).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let (parts, body) = resp.into_parts();
            body.collect().await?;
            Ok::<_, hyper::Error>(parts)
        })
        .await;
        let parts = match answer {
            Ok(Ok(parts)) => parts,
            Ok(Err(e)) => {
                self.sender = None;
                return failed(format!("request: {e}"));
            }
            Err(_) => {
                self.sender = None;
                return failed("no answer within 10 s".into());
            }
        };
        let backend = parts.headers.get("x-backend-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let set_cookie = parts.headers.get("set-cookie").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let pinned = set_cookie.map(|c| {
            self.cookie = c.split(';').next().map(str::to_owned);
            backend.clone().unwrap_or_default()
        });
        Sample { sent, status: parts.status.as_u16(), backend, pinned, error: None }
    }

    /// Send a request every `every` until `stop`, counting each in `done`.
    async fn run(mut self, every: Duration, stop: CancellationToken, done: Arc<AtomicUsize>) -> Vec<Sample> {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return samples,
            }
            samples.push(self.request().await);
            done.fetch_add(1, Ordering::SeqCst);
        }
    }
}

// ----- tests ----------------------------------------------------------------------------------

/// What one WebSocket client on the drained backend went through.
struct Drained {
    key: String,
    closed_at: Instant,
    code: Option<u16>,
    messages: u32,
    landed: String,
    ws: Ws,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_closes_each_tunnel_gracefully_at_the_timeout_and_fails_no_request() {
    const CLIENTS: usize = 100;
    const TIMEOUT: Duration = Duration::from_secs(3);
    const SPREAD: Duration = Duration::from_secs(2);
    let backends =
        [StreamBackend::start("b1").await, StreamBackend::start("b2").await, StreamBackend::start("b3").await];
    let [b1, b2, b3] = &backends;
    let proxy = TestProxy::start(yaml(&[b1, b2, b3], |u| {
        u.affinity("{ key: [ { header: X-User-Id } ], cookie: { name: TETHER_AFFINITY }, fallback: round_robin }")
            .drain("{ timeout: 3s, close_spread: 2s, close_code: 1012 }")
    }))
    .await;
    let (public, admin) = (proxy.addr("public"), proxy.admin());

    // 100 keyed WebSocket clients, each where the ring says.
    let keys: Vec<String> = (0..CLIENTS).map(|i| format!("user-{i}")).collect();
    let mut routes = HashMap::new();
    for key in &keys {
        routes.insert(key.clone(), admin.route("app", key).await);
    }
    let mut on_b1 = Vec::new();
    let mut elsewhere = Vec::new();
    for chunk in keys.chunks(20) {
        let opened = futures_util::future::join_all(chunk.iter().map(|k| connect_ws(public, Some(k)))).await;
        for (key, (ws, backend)) in chunk.iter().zip(opened) {
            assert_eq!(backend, routes[key].0, "{key} lands where the admin API routes it");
            if backend == "b1" {
                on_b1.push((key.clone(), ws));
            } else {
                elsewhere.push((key.clone(), ws));
            }
        }
    }
    let n = on_b1.len();
    assert!(n >= 10, "the ring should give b1 about a third of 100 keys, got {n}");
    assert_eq!(b1.stats.upgrades.load(Ordering::SeqCst), n);

    // Anonymous cookie clients: their first requests go round robin, so one is pinned to b1.
    let mut cookie_clients = Vec::new();
    let mut b1_cookie_client = None;
    for i in 0..3 {
        let mut c = LoadClient::new(public, None);
        let first = c.request().await;
        assert_eq!(first.status, 200, "{first:?}");
        let pinned = first.pinned.clone().expect("an anonymous client gets a sticky cookie");
        if pinned == "b1" {
            b1_cookie_client = Some(i);
        }
        cookie_clients.push(c);
    }
    let b1_cookie_client = b1_cookie_client.expect("round robin pins one of three anonymous clients to b1");
    let b1_cookie = cookie_clients[b1_cookie_client].cookie.clone().expect("kept its cookie");

    // Steady HTTP load: 3 cookie clients and 3 keyed clients, one request per 20 ms each.
    let stop_load = CancellationToken::new();
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for c in cookie_clients {
        load.push(tokio::spawn(c.run(Duration::from_millis(20), stop_load.clone(), done.clone())));
    }
    for i in 0..3 {
        let c = LoadClient::new(public, Some(format!("load-{i}")));
        load.push(tokio::spawn(c.run(Duration::from_millis(20), stop_load.clone(), done.clone())));
    }

    // Every client on b1 has the backend stream to it, and reads until its Close; then it
    // reconnects with the same key.
    let mut readers = Vec::new();
    for (key, mut ws) in on_b1 {
        ws.send(Message::text("stream")).await.unwrap();
        readers.push(tokio::spawn(async move {
            let (closed_at, code, messages) = read_until_close(&mut ws, &key, true).await;
            let (mut ws, landed) = connect_ws(public, Some(&key)).await;
            assert_echoes(&mut ws, &key).await;
            Drained { key, closed_at, code, messages, landed, ws }
        }));
    }

    let before = Instant::now();
    let drained = admin.drain("app", "b1").await;
    let after = Instant::now();
    assert_eq!(drained["state"], "draining");
    assert_eq!(drained["drain"]["reason"], "admin");
    assert_eq!(drained["drain"]["tunnels_at_start"], n);
    let pins_at_drain = drained["pins"].as_u64().unwrap();
    // A cookie naming the draining b1 is re-pinned: served elsewhere with a new cookie, which
    // then holds.
    let mut browser = H1::connect(public).await;
    let repinned = browser.get("/", &[("cookie", &b1_cookie)]).await;
    assert_eq!(repinned.status, StatusCode::OK);
    let moved_to = repinned.header("x-backend-id").expect("served by a backend").to_owned();
    assert!(moved_to == "b2" || moved_to == "b3", "the b1 cookie was served by {moved_to}");
    let new_cookie = repinned.header("set-cookie").expect("the pin is rewritten").split(';').next().unwrap().to_owned();
    let again = browser.get("/", &[("cookie", &new_cookie)]).await;
    assert_eq!(again.header("x-backend-id"), Some(moved_to.as_str()));
    assert_eq!(again.header("set-cookie"), None, "a pin that holds is not rewritten");

    let mut outcomes = Vec::new();
    for reader in readers {
        outcomes.push(within("a client on b1 to be closed and reconnect", reader).await.unwrap());
    }

    // Nothing is left on b1: the admin API reports it drained; only then is it stopped.
    let status = admin.wait_state("app", "b1", &["drained"]).await;
    assert_eq!(status["tunnels"], 0);
    assert_eq!(status["drain"]["closes_sent"], n);
    b1.stop();
    let at_stop = done.load(Ordering::SeqCst);
    until("more requests after b1 stopped", async || done.load(Ordering::SeqCst) >= at_stop + 60).await;
    stop_load.cancel();
    let mut samples = Vec::new();
    for task in load {
        samples.push(within("load client", task).await.unwrap());
    }

    // Zero failed HTTP requests, and none sent after the drain reached b1.
    let all: Vec<&Sample> = samples.iter().flatten().collect();
    let failed: Vec<(u16, Option<&str>)> =
        all.iter().filter(|s| s.status != 200).map(|s| (s.status, s.error.as_deref())).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        all.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(all.len() > 200, "the load ran throughout ({} requests)", all.len());
    for s in all.iter().filter(|s| s.sent >= after) {
        assert_ne!(s.backend.as_deref(), Some("b1"), "a request sent after the drain reached b1: {s:?}");
        assert_ne!(s.pinned.as_deref(), Some("b1"), "a new pin to the draining b1: {s:?}");
    }
    // The load client pinned to b1 was re-pinned to an active backend and stays there. (Its
    // re-pin may be a request begun just before the drain and routed just after, so only the
    // requests begun after it are checked.)
    let later: Vec<&Sample> = samples[b1_cookie_client].iter().filter(|s| s.sent >= after).collect();
    let new_pin = later[0].backend.clone().expect("answered by a backend");
    assert!(new_pin == "b2" || new_pin == "b3", "re-pinned to {new_pin}");
    assert!(later.iter().all(|s| s.backend.as_deref() == Some(new_pin.as_str())), "{later:?}");
    assert_eq!(admin.listed("app", "b1").await["pins"].as_u64().unwrap(), pins_at_drain, "no new pin to b1");
    assert_eq!(b1.stats.upgrades.load(Ordering::SeqCst), n, "no new upgrade reached b1");

    // Every tunnel on b1 got a Close with the configured code, at the drain timeout, spread.
    let mut times = Vec::new();
    for o in &outcomes {
        assert_eq!(o.code, Some(1012), "{}: close code", o.key);
        assert!(o.messages >= 2, "{}: the backend was streaming ({} messages)", o.key, o.messages);
        assert!(
            o.closed_at >= before + TIMEOUT - Duration::from_millis(50),
            "{}: closed {:?} after the drain, before its timeout",
            o.key,
            o.closed_at - before
        );
        assert!(
            o.closed_at <= after + TIMEOUT + SPREAD + Duration::from_millis(500),
            "{}: closed {:?} after the drain",
            o.key,
            o.closed_at - after
        );
        times.push(o.closed_at);
    }
    times.sort();
    let span = times[n - 1] - times[0];
    assert!(span >= SPREAD / 2, "{n} closes span only {span:?}");
    let burst = most_in_window(&times, Duration::from_millis(250));
    assert!(burst <= 2.max(n / 2), "{burst} of {n} closes within 250 ms");
    // The backend side got its (masked) Close with the same code, at a frame boundary too:
    // tungstenite on the backend would have failed the session otherwise.
    until("b1 to see every Close", async || b1.stats.closes.lock().unwrap().len() >= n).await;
    assert_eq!(*b1.stats.closes.lock().unwrap(), vec![Some(1012); n]);
    let closes_sent = ("tether_closes_sent_total", [("upstream", "app"), ("code", "1012")]);
    admin.wait_metric(closes_sent.0, &closes_sent.1, n as f64).await;
    assert_eq!(admin.metric(closes_sent.0, &closes_sent.1).await, n as f64);

    // Reconnected clients land by the affinity rules: the first active backend of their key's
    // ring order.
    for o in &mut outcomes {
        let candidates = &routes[&o.key].1;
        let expected = candidates.iter().find(|c| *c != "b1").unwrap();
        assert_eq!(&o.landed, expected, "{} reconnected off its ring order {candidates:?}", o.key);
        assert_echoes(&mut o.ws, &o.key).await;
    }
    // Nothing else was touched.
    for (key, ws) in &mut elsewhere {
        assert_echoes(ws, key).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readiness_503_drains_at_once_and_keeps_the_tunnels() {
    let (b1, b2) = (StreamBackend::start("b1").await, StreamBackend::start("b2").await);
    let proxy = TestProxy::start(yaml(&[&b1, &b2], |u| {
        u.affinity("{ key: [ { header: X-User-Id } ] }")
            .health_check("{ path: /readyz, interval: 200ms, timeout: 150ms, healthy_after: 2, unhealthy_after: 3 }")
            .drain("{ timeout: 30s, close_spread: 1s }")
    }))
    .await;
    let (public, admin) = (proxy.addr("public"), proxy.admin());
    let mut keys = Vec::new();
    for i in 0..200 {
        let key = format!("user-{i}");
        if admin.route("app", &key).await.0 == "b1" {
            keys.push(key);
        }
        if keys.len() == 3 {
            break;
        }
    }
    assert_eq!(keys.len(), 3, "three keys live on b1");
    let mut clients = Vec::new();
    for key in &keys {
        let (ws, backend) = connect_ws(public, Some(key)).await;
        assert_eq!(backend, "b1");
        clients.push(ws);
    }

    b1.set_readiness(Readiness::NotReady);
    let status = admin.wait_state("app", "b1", &["draining"]).await;
    let first_503 = unix_ms(b1.stats.first_not_ready.lock().unwrap().expect("b1 answered 503"));
    let since = status["state_since_ms"].as_u64().unwrap();
    // Checks run every 200 ms: draining within 200 ms of the first 503 means the first 503
    // did it, not the third (`unhealthy_after`).
    assert!(since + 1 >= first_503 && since < first_503 + 200, "draining {since} ms, first 503 at {first_503} ms");
    assert_eq!(status["drain"]["reason"], "not_ready");
    assert_eq!(status["health"]["last_check"]["result"], "not_ready");
    assert_eq!(status["tunnels"], 3, "its tunnels stay");
    for ws in &mut clients {
        assert_echoes(ws, "a tunnel on the not-ready b1").await;
    }
    // New sessions go elsewhere.
    let (_new, backend) = connect_ws(public, Some(&keys[0])).await;
    assert_eq!(backend, "b2");
    let reply = client::get(public, "/", &[("x-user-id", &keys[1])]).await;
    assert_eq!(reply.header("x-backend-id"), Some("b2"));
    assert_eq!(b1.stats.upgrades.load(Ordering::SeqCst), 3);

    // Ready again: active after `healthy_after` good checks, with the same tunnels.
    b1.set_readiness(Readiness::Ready);
    admin.wait_state("app", "b1", &["active"]).await;
    for ws in &mut clients {
        assert_echoes(ws, "a tunnel on b1 after it recovered").await;
    }
    let (_again, backend) = connect_ws(public, Some(&keys[0])).await;
    assert_eq!(backend, "b1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_silent_backend_is_down_within_unhealthy_after_intervals_plus_the_timeout() {
    let backends =
        [StreamBackend::start("b1").await, StreamBackend::start("b2").await, StreamBackend::start("b3").await];
    let [b1, b2, b3] = &backends;
    let proxy = TestProxy::start(yaml(&[b1, b2, b3], |u| {
        u.health_check("{ path: /readyz, interval: 200ms, timeout: 150ms, healthy_after: 2, unhealthy_after: 3 }")
    }))
    .await;
    let (public, admin) = (proxy.addr("public"), proxy.admin());
    until("first checks", async || {
        b1.stats.probes.load(Ordering::SeqCst) > 0 && b2.stats.probes.load(Ordering::SeqCst) > 0
    })
    .await;
    // 3 * 200 ms + 150 ms + 1 s.
    let bound = Duration::from_millis(3 * 200 + 150 + 1000);

    let start = Instant::now();
    b1.stop(); // refuses connections
    b2.set_readiness(Readiness::Hang); // accepts, never answers
    let mut down_after: BTreeMap<&str, Duration> = BTreeMap::new();
    let mut seen: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    until("b1 and b2 to be down", async || {
        for id in ["b1", "b2"] {
            let b = admin.listed("app", id).await;
            let state = b["state"].as_str().unwrap().to_owned();
            if state == "down" && !down_after.contains_key(id) {
                down_after.insert(id, start.elapsed());
                let check = &b["health"]["last_check"];
                assert_eq!(check["result"], "failed", "{id}: {b}");
                assert!(check["error"].is_string(), "{id}: the admin API says why: {b}");
            }
            seen.entry(id).or_default().push(state);
        }
        down_after.len() == 2
    })
    .await;
    for (id, after) in &down_after {
        assert!(*after <= bound, "{id} down after {after:?}, bound {bound:?}");
    }
    for (id, states) in &seen {
        assert!(states.iter().all(|s| s == "active" || s == "down"), "{id} went through {states:?}");
    }
    assert_eq!(admin.listed("app", "b3").await["state"], "active");
    let mut h1 = H1::connect(public).await;
    for _ in 0..6 {
        let reply = h1.get("/", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-backend-id"), Some("b3"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_backs_off_exponentially_up_to_the_cap_and_recovers() {
    const EJECTION: u64 = 500;
    const MAX: u64 = 1000;
    let (b1, b2) = (StreamBackend::start("b1").await, StreamBackend::start("b2").await);
    let proxy = TestProxy::start(yaml(&[&b1, &b2], |u| {
        u.affinity("{ fallback: round_robin }")
            .passive("{ consecutive_failures: 2, ejection: 500ms, max_ejection: 1s }")
    }))
    .await;
    let (public, admin) = (proxy.addr("public"), proxy.admin());
    let ejections =
        ("tether_backend_state_changes_total", [("upstream", "app"), ("backend", "b1"), ("state", "ejected")]);
    let mut h1 = H1::connect(public).await;
    b1.stop();

    let mut lengths = Vec::new();
    for round in 1..=3u64 {
        // Requests alternate between b1 and b2; those for the dead b1 fail over to b2. The
        // second failure in a row ejects b1.
        let ejected = within("b1 to be ejected", async {
            loop {
                let reply = h1.get("/", &[]).await;
                assert_eq!(reply.status, StatusCode::OK, "failover hides the dead backend");
                assert_eq!(reply.header("x-backend-id"), Some("b2"));
                let b = admin.listed("app", "b1").await;
                if b["state"] == "ejected" {
                    return b;
                }
                assert_eq!(b["state"], "active", "{b}");
            }
        })
        .await;
        assert_eq!(admin.metric(ejections.0, &ejections.1).await, round as f64, "one ejection per round");
        assert_eq!(ejected["health"]["ejected"], true);
        let active = admin.wait_state("app", "b1", &["active"]).await;
        let length = active["state_since_ms"].as_u64().unwrap() - ejected["state_since_ms"].as_u64().unwrap();
        lengths.push(length);
    }
    // 500 ms, then doubled to 1 s, then capped at 1 s (not 2 s). Millisecond truncation of
    // the two timestamps can shave 1 ms.
    assert!(lengths[0] + 1 >= EJECTION, "{lengths:?}");
    assert!(lengths[1] + 1 >= 2 * EJECTION, "the second ejection is twice as long: {lengths:?}");
    assert!(lengths[2] + 1 >= MAX && lengths[2] < 2 * MAX - EJECTION / 2, "the third is capped: {lengths:?}");

    // b1 comes back: requests reach it again and it stays active.
    b1.resume();
    within("a request served by b1 again", async {
        loop {
            let reply = h1.get("/", &[]).await;
            assert_eq!(reply.status, StatusCode::OK);
            if reply.header("x-backend-id") == Some("b1") {
                return;
            }
        }
    })
    .await;
    let status = admin.listed("app", "b1").await;
    assert_eq!(status["state"], "active");
    assert_eq!(status["health"]["ejected"], false);
    assert_eq!(admin.metric(ejections.0, &ejections.1).await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_backend_drains_new_sessions_still_go_to_them_in_panic_mode() {
    let (b1, b2) = (StreamBackend::start("b1").await, StreamBackend::start("b2").await);
    let proxy = TestProxy::start(yaml(&[&b1, &b2], |u| u)).await;
    let (public, admin) = (proxy.addr("public"), proxy.admin());
    let panics = ("tether_affinity_decisions_total", [("upstream", "app"), ("reason", "panic")]);
    assert_eq!(client::get(public, "/", &[]).await.status, StatusCode::OK);
    assert_eq!(admin.metric(panics.0, &panics.1).await, 0.0);

    admin.drain("app", "b1").await;
    admin.drain("app", "b2").await;
    admin.wait_state("app", "b1", &["drained"]).await;
    admin.wait_state("app", "b2", &["drained"]).await;
    let mut h1 = H1::connect(public).await;
    for _ in 0..5 {
        let reply = h1.get("/", &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "served in panic mode");
        assert!(matches!(reply.header("x-backend-id"), Some("b1" | "b2")));
    }
    let (mut ws, _) = connect_ws(public, None).await;
    assert_echoes(&mut ws, "a tunnel opened in panic mode").await;
    assert_eq!(admin.metric(panics.0, &panics.1).await, 6.0, "each decision in panic mode is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_usable_backend_the_answer_is_503_at_once() {
    let (b1, b2) = (StreamBackend::start("b1").await, StreamBackend::start("b2").await);
    let proxy = TestProxy::start(
        yaml(&[&b1, &b2], |u| {
            u.health_check("{ path: /readyz, interval: 200ms, timeout: 150ms, healthy_after: 2, unhealthy_after: 2 }")
        })
        .set("timeouts", "{ connect: 5s, request: 10s }"),
    )
    .await;
    let (public, admin) = (proxy.addr("public"), proxy.admin());
    b1.stop();
    // b2 still serves ordinary requests but never answers its readiness check.
    b2.set_readiness(Readiness::Hang);
    admin.wait_state("app", "b1", &["down"]).await;
    admin.wait_state("app", "b2", &["down"]).await;
    let served_by_b2 = b2.stats.requests.load(Ordering::SeqCst);

    let start = Instant::now();
    let reply = client::get(public, "/", &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.text(), "no backend available\n");
    assert!(start.elapsed() < Duration::from_secs(1), "answered after {:?}", start.elapsed());
    match within("upgrade", tokio_tungstenite::connect_async(format!("ws://{public}/ws"))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE)
        }
        other => panic!("expected a 503 to the upgrade, got {other:?}"),
    }
    assert_eq!(b2.stats.requests.load(Ordering::SeqCst), served_by_b2, "no backend was even tried");
    assert_eq!(b2.stats.upgrades.load(Ordering::SeqCst), 0);
}

/// What one rebalanced client went through.
struct Moved {
    key: String,
    closed_at: Instant,
    code: Option<u16>,
    landed: String,
    ws: Ws,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undraining_a_backend_moves_exactly_the_tunnels_whose_key_it_owns_at_the_configured_rate() {
    const RATE: u32 = 4;
    let backends = [
        StreamBackend::start("b1").await,
        StreamBackend::start("b2").await,
        StreamBackend::start("b3").await,
        StreamBackend::start("b4").await,
    ];
    let refs: Vec<&StreamBackend> = backends.iter().collect();
    let proxy = TestProxy::start(yaml(&refs, |u| {
        u.affinity("{ key: [ { header: X-User-Id } ] }")
            .rebalance("{ enabled: true, max_closes_per_second: 4 }")
            .drain("{ timeout: 30s, close_spread: 1s, close_code: 1012 }")
    }))
    .await;
    let (public, admin) = (proxy.addr("public"), proxy.admin());
    admin.drain("app", "b4").await;
    admin.wait_state("app", "b4", &["drained"]).await;

    // Keys b4 owns on the full ring (now placed on b1-b3), and keys it does not.
    let (mut owned, mut others) = (Vec::new(), Vec::new());
    for i in 0..1000 {
        let key = format!("user-{i}");
        let (backend, candidates) = admin.route("app", &key).await;
        assert_ne!(backend, "b4");
        if candidates[0] == "b4" && owned.len() < 8 {
            owned.push(key);
        } else if candidates[0] != "b4" && others.len() < 12 {
            others.push((key, backend));
        }
        if owned.len() == 8 && others.len() == 12 {
            break;
        }
    }
    assert_eq!((owned.len(), others.len()), (8, 12));
    let mut movers = Vec::new();
    for key in owned {
        let (mut ws, backend) = connect_ws(public, Some(&key)).await;
        assert_ne!(backend, "b4");
        movers.push(tokio::spawn(async move {
            let (closed_at, code, _) = read_until_close(&mut ws, &key, false).await;
            let (ws, landed) = connect_ws(public, Some(&key)).await;
            Moved { key, closed_at, code, landed, ws }
        }));
    }
    let mut stayers = Vec::new();
    for (key, expected) in &others {
        let (ws, backend) = connect_ws(public, Some(key)).await;
        assert_eq!(&backend, expected);
        stayers.push((key.clone(), backend, ws));
    }

    let undrained = Instant::now();
    assert_eq!(admin.undrain("app", "b4").await["state"], "active");
    let mut moved = Vec::new();
    for m in movers {
        moved.push(within("a tunnel owned by b4 to move", m).await.unwrap());
    }
    let mut times: Vec<Instant> = moved.iter().map(|m| m.closed_at).collect();
    times.sort();
    for m in &mut moved {
        assert_eq!(m.code, Some(1012), "{}: close code", m.key);
        assert_eq!(m.landed, "b4", "{} reconnects to the backend that owns its key", m.key);
        assert!(m.closed_at >= undrained);
        assert_echoes(&mut m.ws, &m.key).await;
    }
    // At most RATE closes per second: close i + RATE comes a second after close i (100 ms of
    // slack for when the clients read them).
    for pair in times.windows(RATE as usize + 1) {
        let gap = pair[RATE as usize] - pair[0];
        assert!(gap >= Duration::from_millis(900), "{} closes within {gap:?}", RATE + 1);
    }

    // Nothing else is touched. A misplaced tunnel left over would have been scheduled within
    // one more slot (1 / RATE s) after the last: wait two slots, then look.
    let rebalanced = ("tether_rebalance_closes_total", [("upstream", "app")]);
    admin.wait_metric(rebalanced.0, &rebalanced.1, 8.0).await;
    // Time under test: no further close may come during two more rate slots.
    tokio::time::sleep(Duration::from_millis(2 * 1000 / u64::from(RATE))).await;
    assert_eq!(admin.metric(rebalanced.0, &rebalanced.1).await, 8.0);
    let mut expected_tunnels: BTreeMap<String, u64> = BTreeMap::from([("b4".to_owned(), 8)]);
    for (key, backend, ws) in &mut stayers {
        assert_echoes(ws, key).await;
        *expected_tunnels.entry(backend.clone()).or_default() += 1;
    }
    for (id, count) in &expected_tunnels {
        assert_eq!(admin.listed("app", id).await["tunnels"], *count, "tunnels on {id}");
    }
}

/// Poll `/readyz` on `probe` (a keep-alive connection, like a load balancer's health checker)
/// until it answers 503; returns when it did.
async fn wait_not_ready(probe: &mut H1) -> Instant {
    eventually("/readyz to answer 503", async || {
        let reply = probe.get("/readyz", &[]).await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            return Some(Instant::now());
        }
        assert_eq!(reply.status, StatusCode::OK);
        None
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flips_readiness_keeps_accepting_for_the_delay_closes_tunnels_with_1001_and_exits_0() {
    const DELAY: Duration = Duration::from_secs(2);
    const SPREAD: Duration = Duration::from_secs(1);
    const TIMEOUT: Duration = Duration::from_secs(8);
    let backend = StreamBackend::start("b1").await;
    let yaml = yaml(&[&backend], |u| u.drain("{ close_spread: 1s }")).set("shutdown", "{ delay: 2s, timeout: 8s }");
    let mut proxy = TestProxy::builder().yaml(yaml).spawn_process().await;
    let (public, admin) = (proxy.addr("public"), proxy.addr("admin"));

    // Traffic before the signal: a pooled backend connection, open tunnels, and a slow request
    // that is still in flight when listeners close.
    assert_eq!(client::get(public, "/", &[]).await.status, StatusCode::OK);
    let mut tunnels = Vec::new();
    for _ in 0..6 {
        tunnels.push(connect_ws(public, None).await.0);
    }
    let slow_ms = (DELAY + Duration::from_millis(1500)).as_millis();
    let slow = tokio::spawn(async move { client::get(public, &format!("/slow?ms={slow_ms}"), &[]).await });
    until("the slow request to reach the backend", async || backend.stats.requests.load(Ordering::SeqCst) >= 2).await;

    // A keep-alive connection to the admin listener stays open throughout: it must not hold
    // the shutdown up.
    let mut probe = H1::connect(admin).await;
    assert_eq!(probe.get("/readyz", &[]).await.status, StatusCode::OK);
    let signalled = Instant::now();
    proxy.signal(libc::SIGTERM);
    let not_ready = wait_not_ready(&mut probe).await;
    assert!(not_ready < signalled + DELAY, "readiness flipped after {:?}", not_ready - signalled);
    // Still accepting during the delay: a new connection is served, and a new tunnel opens.
    let reply = client::get(public, "/", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    tunnels.push(connect_ws(public, None).await.0);
    assert!(Instant::now() < signalled + DELAY, "the test itself was too slow to check the delay");

    let readers: Vec<_> = tunnels
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| tokio::spawn(async move { read_until_close(&mut ws, &format!("tunnel {i}"), false).await }))
        .collect();
    let mut closes = Vec::new();
    for r in readers {
        closes.push(within("a tunnel to be closed", r).await.unwrap());
    }
    // After the delay the listener is closed, while the process still finishes its work.
    let refused = eventually("new connections to be refused", async || {
        TcpStream::connect(public).await.is_err().then(Instant::now)
    })
    .await;
    assert!(proxy.is_running(), "refused because the listener closed, not because it exited");
    assert!(refused >= signalled + DELAY);
    let slow = within("the in-flight slow request", slow).await.unwrap();
    assert_eq!((slow.status, slow.text().as_str()), (StatusCode::OK, "slow"), "in-flight requests finish");

    let mut times = Vec::new();
    for (at, code, _) in &closes {
        assert_eq!(*code, Some(1001), "tunnels get a graceful Close 1001");
        assert!(*at >= signalled + DELAY, "closed {:?} after SIGTERM, inside the delay", *at - signalled);
        assert!(
            *at <= signalled + DELAY + SPREAD + Duration::from_millis(500),
            "closed {:?} after SIGTERM",
            *at - signalled
        );
        times.push(*at);
    }
    times.sort();
    assert!(times[times.len() - 1] - times[0] >= SPREAD / 2, "closes are spread over close_spread");

    let (status, exited) = proxy.wait_exit(TIMEOUT + Duration::from_secs(2)).await.expect("the proxy exits");
    assert_eq!(status.code(), Some(0), "exit status; stderr:\n{}", proxy.stderr());
    assert!(
        exited - signalled < TIMEOUT,
        "exited {:?} after SIGTERM, not within shutdown.timeout; stderr:\n{}",
        exited - signalled,
        proxy.stderr()
    );
    assert!(!proxy.stderr().contains("shutdown timeout reached"), "{}", proxy.stderr());
    drop(probe);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let backend = StreamBackend::start("b1").await;
    let yaml = yaml(&[&backend], |u| u).set("shutdown", "{ delay: 10s, timeout: 20s }");
    let mut proxy = TestProxy::builder().yaml(yaml).spawn_process().await;
    let mut probe = H1::connect(proxy.addr("admin")).await;
    let _tunnel = connect_ws(proxy.addr("public"), None).await;
    proxy.signal(libc::SIGTERM);
    wait_not_ready(&mut probe).await;
    let second = Instant::now();
    proxy.signal(libc::SIGINT);
    let (status, exited) = proxy.wait_exit(Duration::from_secs(5)).await.expect("the proxy exits");
    assert!(exited - second < Duration::from_secs(2), "exited {:?} after the second signal", exited - second);
    assert_eq!(status.code(), Some(1), "the forced exit is reported as a failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_admin_endpoints_but_not_the_probes() {
    const VAR: &str = "TETHER_DRAIN_TEST_ADMIN_TOKEN";
    const TOKEN: &str = "drain-test-token-7f3a-0123456789abcdef";
    let backend = StreamBackend::start("b1").await;
    let yaml = Yaml::new()
        .listener("public")
        .admin_with_token_env(VAR)
        .route("app")
        .upstream("app", |u| u.backend(&backend.id, backend.addr));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.yaml");
    std::fs::write(&path, yaml.build()).unwrap();

    // Without the variable the proxy refuses to start, and says why.
    let refused = within(
        "tether proxy to refuse",
        tokio::process::Command::new(tether_bin()).arg("proxy").arg("-c").arg(&path).env_remove(VAR).output(),
    )
    .await
    .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&refused.stdout).contains("listening"));
    assert!(String::from_utf8_lossy(&refused.stderr).contains(VAR), "{}", String::from_utf8_lossy(&refused.stderr));
    // `tether check` only warns.
    let mut check = tokio::process::Command::new(tether_bin());
    check.arg("check").arg("-c").arg(&path).env_remove(VAR);
    let check = within("tether check", check.output()).await.unwrap();
    assert_eq!(check.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&check.stderr).contains(&format!("environment variable {VAR} is not set")));

    let proxy = TestProxy::builder().dir(dir).file(&path).env(VAR, TOKEN).spawn_process().await;
    let admin = proxy.addr("admin");
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(client::get(admin, probe, &[]).await.status, StatusCode::OK, "{probe} stays open");
    }
    // Metrics say what runs where: with a token they need it, unless metrics_public says otherwise.
    assert_eq!(client::get(admin, "/metrics", &[]).await.status, StatusCode::UNAUTHORIZED);
    let with_token = client::get(admin, "/metrics", &[("authorization", &format!("Bearer {TOKEN}"))]).await;
    assert_eq!(with_token.status, StatusCode::OK);
    // No header, a wrong token, the right token without its scheme, another scheme.
    for auth in [None, Some("Bearer wrong-token"), Some(TOKEN), Some("Basic ZHJhaW46dGVzdA==")] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let reply = client::get(admin, "/admin/upstreams", &headers).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
    let bearer = format!("Bearer {TOKEN}");
    let reply = client::get(admin, "/admin/upstreams", &[("authorization", &bearer)]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["upstreams"][0]["backends"][0]["state"], "active");

    let path = "/admin/upstreams/app/backends/b1/drain";
    assert_eq!(AdminClient::new(admin).request(Method::POST, path).await.status, StatusCode::UNAUTHORIZED);
    let wrong = AdminClient::with_token(admin, "wrong");
    assert_eq!(wrong.request(Method::POST, path).await.status, StatusCode::UNAUTHORIZED);
    let reply = client::get(admin, "/admin/upstreams/app", &[("authorization", &bearer)]).await;
    assert_eq!(reply.json()["backends"][0]["state"], "active", "a refused drain changes nothing");
    let reply = AdminClient::with_token(admin, TOKEN).request(Method::POST, path).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["state"], "drained");
}
