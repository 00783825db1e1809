//! Affinity end to end, through the real proxy with real sockets: users stay on their backend by key and by sticky cookie, users behind one
//! NAT spread out, bounded loads hold under a hot key, replicas agree without shared state, bad
//! or stale pins are replaced (never an error), a refused connect fails over, and the admin
//! route helper and the debug header tell the truth.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::admin::AdminClient;
use crate::support::config::Yaml;
use crate::support::echo::{EchoBackend, dead_address};
use crate::support::http::{self as client, H1, Reply};
use crate::support::proxy::TestProxy;
use crate::support::tls::TestCa;
use crate::support::{until, within};

/// The sticky cookie's default name.
const COOKIE: &str = "TETHER_AFFINITY";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Listener `public`, an admin listener and upstream `app` over `backends` with `affinity`
/// (a YAML flow mapping), access log off.
fn yaml(backends: &[(&str, SocketAddr)], affinity: &str) -> Yaml {
    Yaml::app(|u| u.backends(backends.iter().copied()).affinity(affinity)).set("access_log", "{ format: off }")
}

const KEY_BY_HEADER: &str = "{ key: [ { header: X-User-Id } ] }";
const COOKIE_ONLY: &str = "{ cookie: { name: TETHER_AFFINITY } }";
const KEY_AND_COOKIE: &str = "{ key: [ { header: X-User-Id } ], cookie: { name: TETHER_AFFINITY } }";

/// Echo backends `app-1..=app-n` and an in-process proxy in front of them.
struct Stack {
    backends: Vec<EchoBackend>,
    proxy: TestProxy,
}

impl Stack {
    async fn start(n: usize, affinity: &str) -> Self {
        Self::start_with(n, affinity, |yaml| yaml).await
    }

    /// Like [`Stack::start`], with more config from `more`.
    async fn start_with(n: usize, affinity: &str, more: impl FnOnce(Yaml) -> Yaml) -> Self {
        let mut backends = Vec::new();
        for i in 1..=n {
            backends.push(EchoBackend::start(&format!("app-{i}")).await);
        }
        let proxy = TestProxy::start(more(yaml(&Self::list(&backends), affinity))).await;
        Self { backends, proxy }
    }

    fn list(backends: &[EchoBackend]) -> Vec<(&str, SocketAddr)> {
        backends.iter().map(|b| (b.id.as_str(), b.addr)).collect()
    }

    fn public(&self) -> SocketAddr {
        self.proxy.addr("public")
    }

    fn admin(&self) -> AdminClient {
        self.proxy.admin()
    }

    fn backend(&self, id: &str) -> &EchoBackend {
        self.backends.iter().find(|b| b.id == id).unwrap_or_else(|| panic!("no backend {id}"))
    }

    /// `tether_affinity_decisions_total` of upstream `app` for `reason`.
    async fn decisions(&self, reason: &str) -> u64 {
        self.admin().metric("tether_affinity_decisions_total", &[("upstream", "app"), ("reason", reason)]).await as u64
    }

    /// Where the ring sends `key` now, read from the proxy's own membership snapshot.
    fn home_of(&self, key: &str) -> String {
        self.proxy.running().proxy().home_of("app", key).expect("a usable backend")
    }

    async fn drain(&self, id: &str) {
        self.admin().drain("app", id).await;
    }

    async fn undrain(&self, id: &str) {
        self.admin().undrain("app", id).await;
    }

    /// The admin API's JSON for backend `id`.
    async fn admin_backend(&self, id: &str) -> serde_json::Value {
        self.admin().listed("app", id).await
    }

    /// A sticky cookie pinning to `id`, obtained the way a browser gets one: the other backends
    /// are drained for a moment, so a WebSocket upgrade without a cookie lands on `id`, and its
    /// 101 carries the pin. An upgrade (not a GET) so no pooled connection to `id` is left.
    async fn cookie_for(&self, id: &str) -> String {
        let others: Vec<&str> = self.backends.iter().map(|b| b.id.as_str()).filter(|b| *b != id).collect();
        for other in &others {
            self.drain(other).await;
        }
        let (mut ws, resp) = ws_connect(self.public(), "/ws", &[]).await;
        assert_eq!(greeting(&mut ws).await, format!("hello from {id}"));
        let cookie = sticky_cookie(resp.headers()).expect("a fresh pin on the 101");
        close(ws).await;
        for other in &others {
            self.undrain(other).await;
        }
        cookie
    }
}

/// The value of our sticky cookie among the `Set-Cookie` headers, if one is set. Panics if it
/// is set twice (one pin per response).
fn sticky_cookie(headers: &HeaderMap) -> Option<String> {
    let ours: Vec<String> = headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let pair = v.split(';').next()?;
            let (name, value) = pair.split_once('=')?;
            (name.trim() == COOKIE).then(|| value.trim().to_owned())
        })
        .collect();
    assert!(ours.len() <= 1, "at most one pin per response: {ours:?}");
    ours.into_iter().next()
}

fn backend_of(reply: &Reply) -> String {
    reply.header("x-backend-id").unwrap_or_else(|| panic!("no x-backend-id: {reply:?}")).to_owned()
}

/// Every `cookie` header value the echo backend saw (from `/headers` or `/ws/headers` JSON).
fn cookies_seen(seen: &serde_json::Value) -> Vec<String> {
    let headers: Vec<(String, String)> = serde_json::from_value(seen["headers"].clone()).expect("headers list");
    headers.into_iter().filter(|(k, _)| k == "cookie").map(|(_, v)| v).collect()
}

async fn ws_connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (Ws, http::Response<Option<Vec<u8>>>) {
    let mut req = format!("ws://{addr}{path}").into_client_request().expect("ws request");
    for (k, v) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    let (ws, resp) = within("WebSocket upgrade", tokio_tungstenite::connect_async(req)).await.expect("upgrade");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    (ws, resp)
}

async fn greeting(ws: &mut Ws) -> String {
    match within("greeting", ws.next()).await {
        Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
        other => panic!("expected a text greeting, got {other:?}"),
    }
}

/// Close handshake, then wait for the end of the stream.
async fn close(mut ws: Ws) {
    let _ = ws.close(None).await;
    within("close handshake", async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

/// `header.payload.signature` with `claims` as the payload; never verified by tether.
fn jwt(claims: &serde_json::Value) -> String {
    format!(
        "{}.{}.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// max/mean of the counts over `backends` (a backend with no user counts as 0).
fn max_over_mean(counts: &BTreeMap<String, usize>, backends: usize) -> f64 {
    let total: usize = counts.values().sum();
    let max = counts.values().copied().max().unwrap_or(0);
    max as f64 / (total as f64 / backends as f64)
}

// ----- 200 users x (20 requests + 1 upgrade) -------------------------------------------------

const USERS: usize = 200;
const REQUESTS_PER_USER: usize = 20;
/// Users in flight at once: enough to interleave, few enough for a 2-core machine.
const USERS_AT_ONCE: usize = 16;

/// Where each of one user's 21 exchanges landed, and the pins it was given.
struct Journey {
    user: String,
    landed: Vec<String>,
    pins_set: usize,
}

async fn keyed_user(addr: SocketAddr, user: String) -> Journey {
    let mut conn = H1::connect(addr).await;
    let mut landed = Vec::new();
    for i in 0..REQUESTS_PER_USER {
        let reply = conn.get(if i % 5 == 0 { "/headers" } else { "/" }, &[("x-user-id", &user)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{user}");
        assert_eq!(sticky_cookie(&reply.headers), None, "{user}: a keyed request needs no pin");
        landed.push(backend_of(&reply));
    }
    let (mut ws, resp) = ws_connect(addr, "/ws", &[("x-user-id", &user)]).await;
    assert_eq!(sticky_cookie(resp.headers()), None, "{user}: a keyed upgrade needs no pin");
    let hello = greeting(&mut ws).await;
    landed.push(hello.strip_prefix("hello from ").unwrap_or(&hello).to_owned());
    close(ws).await;
    Journey { user, landed, pins_set: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_users_never_leave_their_backend_when_keyed_by_header() {
    // A cookie is configured too: a key takes precedence and needs no pin.
    let stack = Stack::start(3, KEY_AND_COOKIE).await;
    let addr = stack.public();
    let journeys: Vec<Journey> = futures_util::stream::iter((0..USERS).map(|u| keyed_user(addr, format!("user-{u}"))))
        .buffer_unordered(USERS_AT_ONCE)
        .collect()
        .await;

    let mut off = 0;
    let mut users_per_backend = BTreeMap::<String, usize>::new();
    for j in &journeys {
        assert_eq!(j.landed.len(), REQUESTS_PER_USER + 1);
        let home = stack.home_of(&j.user);
        off += j.landed.iter().filter(|b| **b != home).count();
        *users_per_backend.entry(home).or_default() += 1;
    }
    assert_eq!(journeys.len(), USERS);
    assert_eq!(off, 0, "requests that landed off their user's ring home");
    assert_eq!(users_per_backend.len(), 3, "users spread over every backend: {users_per_backend:?}");
    assert_eq!(stack.decisions("key").await, (USERS * (REQUESTS_PER_USER + 1)) as u64);
    assert_eq!(stack.decisions("fallback").await, 0);
}

/// The `Cookie` header a browser would send: another cookie of the site, plus our pin once it
/// has one.
fn cookie_header(jar: &Option<String>) -> String {
    match jar {
        Some(pin) => format!("theme=dark; {COOKIE}={pin}"),
        None => "theme=dark".to_owned(),
    }
}

/// Keep the pin a response sets (the first contact must set one; later ones must not rewrite
/// it). Returns whether one was set.
fn keep_pin(name: &str, jar: &mut Option<String>, headers: &HeaderMap) -> bool {
    match (jar.is_some(), sticky_cookie(headers)) {
        (false, Some(pin)) => {
            *jar = Some(pin);
            true
        }
        (false, None) => panic!("{name}: first contact without a pin must get one"),
        (true, Some(pin)) => panic!("{name}: a valid pin was rewritten: {pin}"),
        (true, None) => false,
    }
}

/// One WebSocket session of a cookie user: where it landed.
async fn cookie_upgrade(addr: SocketAddr, name: &str, jar: &mut Option<String>, pins_set: &mut usize) -> String {
    let (mut ws, resp) = ws_connect(addr, "/ws/headers", &[("cookie", &cookie_header(jar))]).await;
    let seen: serde_json::Value = serde_json::from_str(&greeting(&mut ws).await).expect("JSON greeting");
    assert_eq!(cookies_seen(&seen), ["theme=dark"], "{name}: our cookie is stripped from the upgrade");
    *pins_set += usize::from(keep_pin(name, jar, resp.headers()));
    close(ws).await;
    seen["backend"].as_str().expect("backend id").to_owned()
}

async fn cookie_user(addr: SocketAddr, user: usize) -> Journey {
    let name = format!("user-{user}");
    let mut jar: Option<String> = None;
    let mut landed = Vec::new();
    let mut pins_set = 0;
    // Half the users open their WebSocket first (so its 101 must carry the pin), half last.
    let upgrade_first = user % 2 == 1;
    if upgrade_first {
        landed.push(cookie_upgrade(addr, &name, &mut jar, &mut pins_set).await);
    }
    let mut conn = H1::connect(addr).await;
    for i in 0..REQUESTS_PER_USER {
        let reply = conn.get(if i % 5 == 0 { "/headers" } else { "/" }, &[("cookie", &cookie_header(&jar))]).await;
        assert_eq!(reply.status, StatusCode::OK, "{name}");
        pins_set += usize::from(keep_pin(&name, &mut jar, &reply.headers));
        if i % 5 == 0 {
            assert_eq!(cookies_seen(&reply.json()), ["theme=dark"], "{name}: our cookie never reaches the backend");
        }
        landed.push(backend_of(&reply));
    }
    if !upgrade_first {
        landed.push(cookie_upgrade(addr, &name, &mut jar, &mut pins_set).await);
    }
    Journey { user: name, landed, pins_set }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_users_never_leave_their_backend_when_pinned_by_cookie() {
    let stack = Stack::start(3, COOKIE_ONLY).await;
    let addr = stack.public();

    // The pin's shape: opaque (neither the id nor the address can be read from it), with the
    // configured attributes.
    let reply = client::get(addr, "/", &[]).await;
    let set = reply.header("set-cookie").expect("a pin").to_owned();
    let pin = sticky_cookie(&reply.headers).expect("our cookie");
    assert_eq!(set, format!("{COOKIE}={pin}; HttpOnly; SameSite=Lax; Path=/"));
    for backend in &stack.backends {
        assert!(!pin.contains(&backend.id) && !pin.contains(&backend.addr.port().to_string()), "{pin}");
    }

    let journeys: Vec<Journey> = futures_util::stream::iter((0..USERS).map(|u| cookie_user(addr, u)))
        .buffer_unordered(USERS_AT_ONCE)
        .collect()
        .await;
    let mut off = 0;
    let mut users_per_backend = BTreeMap::<String, usize>::new();
    for j in &journeys {
        assert_eq!(j.landed.len(), REQUESTS_PER_USER + 1);
        assert_eq!(j.pins_set, 1, "{}: exactly one pin, on first contact", j.user);
        off += j.landed.iter().filter(|b| **b != j.landed[0]).count();
        *users_per_backend.entry(j.landed[0].clone()).or_default() += 1;
    }
    assert_eq!(journeys.len(), USERS);
    assert_eq!(off, 0, "requests that landed off their user's pinned backend");
    assert_eq!(users_per_backend.len(), 3, "the fallback spreads new users: {users_per_backend:?}");
    // Every exchange but each user's first was routed by a valid cookie.
    assert_eq!(stack.decisions("cookie").await, (USERS * REQUESTS_PER_USER) as u64);
    assert_eq!(stack.decisions("repin").await, 0);
    // The admin API counts the pins issued: one per user, plus the probe's.
    let mut pins = 0;
    for backend in &stack.backends {
        pins += stack.admin_backend(&backend.id).await["pins"].as_u64().expect("pins");
    }
    assert_eq!(pins, USERS as u64 + 1);
}

// ----- one NAT -----------------------------------------------------------------------------

const NAT_USERS: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_users_behind_one_address_spread_evenly_by_key() {
    let stack = Stack::start(3, KEY_BY_HEADER).await;
    let addr = stack.public();
    // Ten keep-alive connections, 50 users each: every request comes from 127.0.0.1.
    let per_conn: Vec<Vec<String>> = futures_util::stream::iter((0..10).map(|c| async move {
        let mut conn = H1::connect(addr).await;
        let mut landed = Vec::new();
        for u in (c..NAT_USERS).step_by(10) {
            let reply = conn.get("/", &[("x-user-id", &format!("nat-user-{u}"))]).await;
            assert_eq!(reply.status, StatusCode::OK);
            landed.push(backend_of(&reply));
        }
        landed
    }))
    .buffer_unordered(10)
    .collect()
    .await;
    let mut counts = BTreeMap::<String, usize>::new();
    for backend in per_conn.into_iter().flatten() {
        *counts.entry(backend).or_default() += 1;
    }
    let ratio = max_over_mean(&counts, 3);
    eprintln!("figure: {NAT_USERS} keyed users from one address over 3 backends: {counts:?}, max/mean {ratio:.3}");
    assert_eq!(counts.values().sum::<usize>(), NAT_USERS);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(ratio <= 1.25, "max/mean {ratio:.3} over 1.25: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_users_behind_one_address_spread_evenly_by_cookie() {
    let stack = Stack::start(3, COOKIE_ONLY).await;
    let addr = stack.public();
    // Each user loads the page (no cookie yet: the fallback pins it), then opens its WebSocket
    // with the pin and keeps it, as a STOMP client does.
    let users: Vec<(String, Ws)> = futures_util::stream::iter((0..NAT_USERS).map(|u| async move {
        let reply = client::get(addr, "/", &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "user {u}");
        let pin = sticky_cookie(&reply.headers).unwrap_or_else(|| panic!("user {u}: no pin"));
        let (mut ws, resp) = ws_connect(addr, "/ws", &[("cookie", &format!("{COOKIE}={pin}"))]).await;
        assert_eq!(sticky_cookie(resp.headers()), None, "user {u}: the pin holds on the upgrade");
        assert_eq!(greeting(&mut ws).await, format!("hello from {}", backend_of(&reply)), "user {u}");
        (backend_of(&reply), ws)
    }))
    .buffer_unordered(USERS_AT_ONCE)
    .collect()
    .await;
    let mut counts = BTreeMap::<String, usize>::new();
    for (backend, _) in &users {
        *counts.entry(backend.clone()).or_default() += 1;
    }
    let ratio = max_over_mean(&counts, 3);
    eprintln!("figure: {NAT_USERS} cookie users from one address over 3 backends: {counts:?}, max/mean {ratio:.3}");
    assert_eq!(counts.values().sum::<usize>(), NAT_USERS);
    assert!(ratio <= 1.25, "max/mean {ratio:.3} over 1.25: {counts:?}");
    for backend in &stack.backends {
        assert_eq!(
            backend.sockets.load(Ordering::SeqCst),
            counts[&backend.id],
            "{} holds its users' sockets",
            backend.id
        );
    }
    futures_util::future::join_all(users.into_iter().map(|(_, ws)| close(ws))).await;
}

// ----- bounded loads -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_with_bounded_loads_never_pushes_a_backend_over_the_bound() {
    const TUNNELS: usize = 300;
    const FACTOR: f64 = 1.25;
    let affinity = "{ key: [ { header: X-User-Id } ], hash: { balance_factor: 1.25 } }";
    let stack = Stack::start(3, affinity).await;
    let addr = stack.public();
    let proxy = stack.proxy.running().proxy();
    let bound = |total: u32| (FACTOR * f64::from(total) / 3.0 - 1e-9).ceil() as u32;

    // Sample the proxy's own load counters (active requests + tunnels, reserved at decision
    // time) while all 300 upgrades race. Loads only grow here, so a second read taken after
    // the first gives a total at least as large as at any moment of the first read.
    let done = AtomicBool::new(false);
    let sampler = async {
        let (mut samples, mut worst) = (0u32, Vec::new());
        while !done.load(Ordering::Acquire) {
            let loads: Vec<u32> = proxy.loads("app").iter().map(|b| b.load).collect();
            let total: u32 = proxy.loads("app").iter().map(|b| b.load).sum();
            if loads.iter().any(|&l| l > bound(total)) {
                worst.push((loads, total));
            }
            samples += 1;
            // The sampling period: frequent enough to catch a violation, sparse enough to
            // leave the 2 cores to the upgrades.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (samples, worst)
    };
    let opener = async {
        let sockets = futures_util::future::join_all((0..TUNNELS).map(|_| async {
            let (mut ws, _) = ws_connect(addr, "/ws", &[("x-user-id", "hot")]).await;
            let hello = greeting(&mut ws).await;
            (hello.strip_prefix("hello from ").unwrap_or(&hello).to_owned(), ws)
        }))
        .await;
        done.store(true, Ordering::Release);
        sockets
    };
    let ((samples, violations), sockets) = tokio::join!(sampler, opener);

    assert!(samples >= 5, "the sampler ran while the tunnels opened ({samples} samples)");
    assert!(violations.is_empty(), "loads over ceil({FACTOR} * average) while opening: {violations:?}");
    let mut counts = BTreeMap::<String, usize>::new();
    for (backend, _) in &sockets {
        *counts.entry(backend.clone()).or_default() += 1;
    }
    // All open now: the admin API agrees with the clients and every backend is within the bound.
    let limit = bound(TUNNELS as u32) as usize;
    for backend in &stack.backends {
        let json = stack.admin_backend(&backend.id).await;
        let tunnels = json["tunnels"].as_u64().expect("tunnels") as usize;
        assert_eq!(tunnels, counts.get(&backend.id).copied().unwrap_or(0), "{}: {json}", backend.id);
        assert!(tunnels <= limit, "{} holds {tunnels} tunnels, over {limit}", backend.id);
    }
    assert_eq!(counts.values().sum::<usize>(), TUNNELS);
    eprintln!("figure: one hot key, {TUNNELS} tunnels, balance_factor {FACTOR}: {counts:?} (bound {limit})");
    let skips = stack.decisions("bounded_load_skip").await;
    assert!(skips > 0, "skips past the hot key's home are counted");
    assert_eq!(stack.decisions("key").await, TUNNELS as u64);
    futures_util::future::join_all(sockets.into_iter().map(|(_, ws)| close(ws))).await;
}

// ----- replicas ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_sharing_key_env_agree_on_every_key_and_honour_each_others_cookies() {
    const KEY: &str = "a shared secret of at least thirty-two bytes, for tests";
    let backends =
        [EchoBackend::start("app-1").await, EchoBackend::start("app-2").await, EchoBackend::start("app-3").await];
    let affinity = "{ key: [ { header: X-User-Id } ], cookie: { name: TETHER_AFFINITY, key_env: TETHER_COOKIE_KEY } }";
    let yaml = yaml(&Stack::list(&backends), affinity).build();
    let a = TestProxy::builder().yaml(&yaml).env("TETHER_COOKIE_KEY", KEY).spawn_process().await;
    let b = TestProxy::builder().yaml(&yaml).env("TETHER_COOKIE_KEY", KEY).spawn_process().await;
    // A third replica whose operator forgot the key: it hashes keys the same way, but signs
    // (and accepts) cookies with its own random key.
    let c = TestProxy::builder().yaml(&yaml).spawn_process().await;
    let (pa, pb, pc) = (a.addr("public"), b.addr("public"), c.addr("public"));

    let (mut ca, mut cb, mut cc) = (H1::connect(pa).await, H1::connect(pb).await, H1::connect(pc).await);
    let mut used = BTreeSet::new();
    for u in 0..200 {
        let user = format!("replica-user-{u}");
        let on_a = backend_of(&ca.get("/", &[("x-user-id", &user)]).await);
        let on_b = backend_of(&cb.get("/", &[("x-user-id", &user)]).await);
        let on_c = backend_of(&cc.get("/", &[("x-user-id", &user)]).await);
        assert_eq!((&on_a, &on_a), (&on_b, &on_c), "{user}: every replica sends a key to the same backend");
        used.insert(on_a);
    }
    assert_eq!(used.len(), 3, "{used:?}");

    let mut pinned = BTreeSet::new();
    for i in 0..60 {
        // Even rounds: pinned by a, presented to b; odd rounds the other way.
        let (from, to) = if i % 2 == 0 { (&mut ca, &mut cb) } else { (&mut cb, &mut ca) };
        let first = from.get("/", &[]).await;
        let pin = sticky_cookie(&first.headers).expect("a pin from a replica");
        let again = to.get("/", &[("cookie", &format!("{COOKIE}={pin}"))]).await;
        assert_eq!(backend_of(&again), backend_of(&first), "cookie {i} honoured by the other replica");
        assert_eq!(sticky_cookie(&again.headers), None, "cookie {i}: the other replica keeps the pin");
        pinned.insert(backend_of(&first));
    }
    assert!(pinned.len() >= 2, "the pins covered several backends: {pinned:?}");

    for i in 0..10 {
        let pin = sticky_cookie(&ca.get("/", &[]).await.headers).expect("a pin");
        let there = cc.get("/", &[("cookie", &format!("{COOKIE}={pin}"))]).await;
        assert_eq!(there.status, StatusCode::OK);
        let fresh = sticky_cookie(&there.headers);
        assert!(fresh.is_some_and(|f| f != pin), "cookie {i}: a replica with another key re-pins");
    }
    let warning = "replicas will not share sticky cookies";
    c.wait_for_stderr_line("the keyless replica's startup warning", warning).await;
    assert!(!a.stderr().contains(warning) && !b.stderr().contains(warning), "replicas with the key do not warn");
}

// ----- membership changes ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_move_only_the_users_they_must() {
    const KEYED_USERS: usize = 150;
    let stack = Stack::start(3, KEY_BY_HEADER).await;
    let mut conn = H1::connect(stack.public()).await;
    let users: Vec<String> = (0..KEYED_USERS).map(|u| format!("member-user-{u}")).collect();
    async fn where_all(conn: &mut H1, users: &[String]) -> Vec<String> {
        let mut landed = Vec::new();
        for user in users {
            let reply = conn.get("/", &[("x-user-id", user)]).await;
            assert_eq!(reply.status, StatusCode::OK, "{user}");
            landed.push(backend_of(&reply));
        }
        landed
    }
    let before = where_all(&mut conn, &users).await;

    // A backend that stops taking new sessions moves its own users only.
    stack.drain("app-2").await;
    let drained = where_all(&mut conn, &users).await;
    for ((user, was), now) in users.iter().zip(&before).zip(&drained) {
        if was == "app-2" {
            assert_ne!(now, "app-2", "{user} left the draining backend");
        } else {
            assert_eq!(now, was, "{user} was not on the draining backend and stays");
        }
    }
    // ... and they return when it comes back.
    stack.undrain("app-2").await;
    assert_eq!(where_all(&mut conn, &users).await, before, "everyone is home again");

    // Readdressing keeps the id, so no one moves: app-1's users reach its new address.
    let moved_app1 = EchoBackend::start("app-1").await;
    let old_app1_requests = stack.backend("app-1").requests.load(Ordering::SeqCst);
    let mut list = Stack::list(&stack.backends);
    list[0].1 = moved_app1.addr;
    assert_eq!(stack.proxy.rewrite(yaml(&list, KEY_BY_HEADER)).await, Ok(2));
    assert_eq!(where_all(&mut conn, &users).await, before, "a new address moves no one");
    let app1_users = before.iter().filter(|b| *b == "app-1").count();
    assert_eq!(moved_app1.requests.load(Ordering::SeqCst), app1_users);
    assert_eq!(stack.backend("app-1").requests.load(Ordering::SeqCst), old_app1_requests);

    // Scaling out moves users only onto the new backend.
    let app4 = EchoBackend::start("app-4").await;
    list.push(("app-4", app4.addr));
    assert_eq!(stack.proxy.rewrite(yaml(&list, KEY_BY_HEADER)).await, Ok(3));
    let after = where_all(&mut conn, &users).await;
    let mut moved = 0;
    for ((user, was), now) in users.iter().zip(&before).zip(&after) {
        if now != was {
            assert_eq!(now, "app-4", "{user} moved, and only to the new backend");
            moved += 1;
        }
    }
    eprintln!("figure: adding a 4th backend moved {moved} of {KEYED_USERS} keyed users");
    assert!(moved > 0 && moved <= KEYED_USERS / 2, "{moved} moved");
}

// ----- stale, foreign and broken pins ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_garbage_cookies_are_answered_with_a_fresh_pin() {
    let stack = Stack::start(3, COOKIE_ONLY).await;
    let addr = stack.public();
    let good = sticky_cookie(&client::get(addr, "/", &[]).await.headers).expect("a pin");
    let mut tampered = good.clone().into_bytes();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let huge = "A".repeat(4000);
    let cases = [
        ("tampered", tampered.as_str()),
        ("truncated", &good[..20]),
        ("garbage", "not-a-pin!"),
        ("empty", ""),
        ("huge", &huge),
    ];
    let mut conn = H1::connect(addr).await;
    for (what, value) in cases {
        let reply = conn.get("/headers", &[("cookie", &format!("{COOKIE}={value}; theme=dark"))]).await;
        assert_eq!(reply.status, StatusCode::OK, "{what}");
        assert_eq!(cookies_seen(&reply.json()), ["theme=dark"], "{what}: our cookie is stripped even when bad");
        let fresh = sticky_cookie(&reply.headers).unwrap_or_else(|| panic!("{what}: no fresh pin"));
        assert_ne!(fresh, value, "{what}");
        // The fresh pin holds.
        let again = conn.get("/", &[("cookie", &format!("{COOKIE}={fresh}"))]).await;
        assert_eq!(backend_of(&again), backend_of(&reply), "{what}: the fresh pin holds");
        assert_eq!(sticky_cookie(&again.headers), None, "{what}");
    }
    // A bad cookie is no cookie: counted as a fallback, not a re-pin.
    assert_eq!(stack.decisions("fallback").await, 1 + cases.len() as u64);
    assert_eq!(stack.decisions("cookie").await, cases.len() as u64);
    assert_eq!(stack.decisions("repin").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_for_a_backend_removed_by_reload_is_repinned() {
    let stack = Stack::start(3, COOKIE_ONLY).await;
    let addr = stack.public();
    let pin = stack.cookie_for("app-3").await;
    assert_eq!(stack.proxy.rewrite(yaml(&Stack::list(&stack.backends[..2]), COOKIE_ONLY)).await, Ok(2));
    let before = stack.backend("app-3").requests.load(Ordering::SeqCst);

    let reply = client::get(addr, "/", &[("cookie", &format!("{COOKIE}={pin}"))]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let served = backend_of(&reply);
    assert!(served == "app-1" || served == "app-2", "served by {served}");
    let fresh = sticky_cookie(&reply.headers).expect("the pin is rewritten");
    let again = client::get(addr, "/", &[("cookie", &format!("{COOKIE}={fresh}"))]).await;
    assert_eq!(backend_of(&again), served);
    assert_eq!(sticky_cookie(&again.headers), None);
    assert_eq!(stack.backend("app-3").requests.load(Ordering::SeqCst), before, "the removed backend got nothing");
    assert_eq!(stack.decisions("repin").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_naming_an_unreachable_backend_fails_over_and_is_repinned() {
    let stack = Stack::start(3, COOKIE_ONLY).await;
    let addr = stack.public();
    let pin = stack.cookie_for("app-3").await;
    let gone = stack.backend("app-3");
    gone.stop();
    until("app-3 to refuse connections", async || TcpStream::connect(gone.addr).await.is_err()).await;

    let reply = client::get(addr, "/", &[("cookie", &format!("{COOKIE}={pin}"))]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let served = backend_of(&reply);
    assert!(served == "app-1" || served == "app-2", "served by {served}");
    let fresh = sticky_cookie(&reply.headers).expect("the pin is rewritten");
    let again = client::get(addr, "/", &[("cookie", &format!("{COOKIE}={fresh}"))]).await;
    assert_eq!(backend_of(&again), served);
    assert_eq!(sticky_cookie(&again.headers), None);
    // The cookie itself was valid: the decision honoured it and the connect failed over.
    assert_eq!(stack.decisions("cookie").await, 2);
    assert_eq!(stack.admin_backend("app-3").await["totals"]["connect_failures"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_naming_a_draining_backend_is_repinned_and_the_backend_gets_nothing_new() {
    let stack = Stack::start(3, COOKIE_ONLY).await;
    let addr = stack.public();
    let pin = stack.cookie_for("app-2").await;
    // A tunnel already on app-2 stays through the drain.
    let (mut live, _) = ws_connect(addr, "/ws", &[("cookie", &format!("{COOKIE}={pin}"))]).await;
    assert_eq!(greeting(&mut live).await, "hello from app-2");
    stack.drain("app-2").await;
    assert_eq!(stack.admin_backend("app-2").await["state"], "draining");
    let before = stack.backend("app-2").requests.load(Ordering::SeqCst);

    let reply = client::get(addr, "/", &[("cookie", &format!("{COOKIE}={pin}"))]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let served = backend_of(&reply);
    assert_ne!(served, "app-2");
    let fresh = sticky_cookie(&reply.headers).expect("the pin is rewritten");
    let again = client::get(addr, "/", &[("cookie", &format!("{COOKIE}={fresh}"))]).await;
    assert_eq!(backend_of(&again), served);
    assert_eq!(sticky_cookie(&again.headers), None);

    // An upgrade with the old pin is re-pinned on its 101 too.
    let (mut ws, resp) = ws_connect(addr, "/ws", &[("cookie", &format!("{COOKIE}={pin}"))]).await;
    let hello = greeting(&mut ws).await;
    assert_ne!(hello, "hello from app-2");
    assert!(sticky_cookie(resp.headers()).is_some(), "the 101 carries the new pin");
    close(ws).await;

    assert_eq!(stack.backend("app-2").requests.load(Ordering::SeqCst), before, "nothing new reached app-2");
    assert_eq!(stack.decisions("repin").await, 2);
    // The old tunnel still works.
    live.send(Message::text("still here")).await.expect("send");
    assert_eq!(within("echo", live.next()).await.expect("open").expect("frame"), Message::text("still here"));
    close(live).await;
}

// ----- JWT claims --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_claim_keys_are_read_from_a_header_a_cookie_and_the_query() {
    let affinity = r#"{ key: [
        { jwt_claim: { from: "header:Authorization", claim: sub } },
        { jwt_claim: { from: "cookie:session", claim: sub } },
        { jwt_claim: { from: "query:access_token", claim: sub } } ],
      cookie: { name: TETHER_AFFINITY } }"#;
    let stack = Stack::start(3, affinity).await;
    let mut conn = H1::connect(stack.public()).await;
    let mut homes = BTreeSet::new();
    for u in 0..30 {
        let user = format!("jwt-user-{u}");
        let token = jwt(&serde_json::json!({ "sub": user, "name": "someone" }));
        let home = stack.home_of(&user);
        let by_header = conn.get("/", &[("authorization", &format!("Bearer {token}"))]).await;
        let by_cookie = conn.get("/", &[("cookie", &format!("session={token}"))]).await;
        let by_query = conn.get(&format!("/?access_token={token}"), &[]).await;
        for (source, reply) in [("header", &by_header), ("cookie", &by_cookie), ("query", &by_query)] {
            assert_eq!(reply.status, StatusCode::OK, "{user} by {source}");
            assert_eq!(backend_of(reply), home, "{user} by {source}: routed by the claim, like any key");
            assert_eq!(sticky_cookie(&reply.headers), None, "{user} by {source}: keyed, no pin");
        }
        homes.insert(home);
    }
    assert!(homes.len() >= 2, "{homes:?}");
    // A numeric claim is a key too (its JSON text).
    let numeric =
        conn.get("/", &[("authorization", &format!("Bearer {}", jwt(&serde_json::json!({ "sub": 42 }))))]).await;
    assert_eq!(backend_of(&numeric), stack.home_of("42"));
    assert_eq!(stack.decisions("key").await, 91);
    assert_eq!(stack.decisions("fallback").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_jwt_is_answered_normally_by_the_fallback() {
    let affinity = r#"{ key: [ { jwt_claim: { from: "header:Authorization", claim: sub } } ], cookie: { name: TETHER_AFFINITY } }"#;
    let stack = Stack::start(3, affinity).await;
    let seg = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let header = seg(r#"{"alg":"none"}"#);
    let cases = [
        ("not a JWT", "Bearer garbage".to_owned()),
        ("two segments", format!("Bearer {header}.{}", seg(r#"{"sub":"x"}"#))),
        ("four segments", format!("Bearer {header}.{}.sig.more", seg(r#"{"sub":"x"}"#))),
        ("payload not base64url", format!("Bearer {header}.!!!.sig")),
        ("payload not JSON", format!("Bearer {header}.{}.sig", seg("not json"))),
        ("payload not an object", format!("Bearer {header}.{}.sig", seg("[1,2]"))),
        ("claim missing", format!("Bearer {header}.{}.sig", seg(r#"{"name":"x"}"#))),
        ("claim empty", format!("Bearer {header}.{}.sig", seg(r#"{"sub":""}"#))),
        ("claim an object", format!("Bearer {header}.{}.sig", seg(r#"{"sub":{"id":1}}"#))),
        ("another scheme", "Basic dXNlcjpwYXNz".to_owned()),
        ("empty payload", format!("Bearer {header}..sig")),
    ];
    let mut conn = H1::connect(stack.public()).await;
    for (what, value) in &cases {
        let reply = conn.get("/", &[("authorization", value)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{what}");
        assert!(sticky_cookie(&reply.headers).is_some(), "{what}: the fallback pins like for any anonymous user");
    }
    assert_eq!(stack.decisions("fallback").await, cases.len() as u64);
    assert_eq!(stack.decisions("key").await, 0);
}

// ----- fail-over ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_to_the_first_candidate_is_retried_on_the_next() {
    let dead = dead_address();
    let two = EchoBackend::start("app-2").await;
    let three = EchoBackend::start("app-3").await;
    let proxy =
        TestProxy::start(yaml(&[("app-1", dead.addr), ("app-2", two.addr), ("app-3", three.addr)], KEY_BY_HEADER))
            .await;
    let (addr, admin) = (proxy.addr("public"), proxy.admin());

    // A key whose first candidate is the dead backend, as the admin helper reports it.
    let key = admin.key_on("app", "app-1", "retry-").await;
    let next = admin.route("app", &key).await.1[1].clone();

    let reply = client::get(addr, "/", &[("x-user-id", &key)]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(backend_of(&reply), next);

    // Any method: nothing reached the dead backend, so a POST with a body is retried intact.
    let body = vec![b'x'; 100 * 1024];
    let mut conn = H1::connect(addr).await;
    let reply = conn
        .send(
            Request::post("/upload")
                .header("host", "app.test")
                .header("x-user-id", &key)
                .body(Full::new(Bytes::from(body)))
                .expect("request"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!((reply.text(), backend_of(&reply)), ("102400".to_owned(), next.clone()));

    // A WebSocket upgrade fails over the same way.
    let (mut ws, _) = ws_connect(addr, "/ws", &[("x-user-id", &key)]).await;
    assert_eq!(greeting(&mut ws).await, format!("hello from {next}"));
    close(ws).await;

    // The failures are visible to operators.
    let app1 = admin.listed("app", "app-1").await;
    assert_eq!(app1["totals"]["connect_failures"], 3, "{app1}");
    assert_eq!(app1["totals"]["requests"], 0, "{app1}");
    let failures = admin.metric("tether_backend_connect_failures_total", &[("upstream", "app"), ("backend", "app-1")]);
    assert_eq!(failures.await, 3.0);
}

// ----- admin route helper and debug header -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_route_helper_answers_the_contract_and_agrees_with_real_requests() {
    let stack = Stack::start(3, KEY_BY_HEADER).await;
    let (addr, admin) = (stack.public(), stack.proxy.addr("admin"));

    let reply = client::get(admin, "/admin/upstreams/app/route?key=alice", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let route = reply.json();
    let fields: BTreeSet<&str> = route.as_object().expect("an object").keys().map(String::as_str).collect();
    assert_eq!(fields, BTreeSet::from(["upstream", "key", "backend", "reason", "candidates"]));
    let candidates: Vec<String> = serde_json::from_value(route["candidates"].clone()).expect("a list of ids");
    let mut sorted = candidates.clone();
    sorted.sort();
    assert_eq!(sorted, ["app-1", "app-2", "app-3"], "every backend once, in ring order");
    assert_eq!(route["backend"], candidates[0].as_str());
    let expected = serde_json::json!({
        "upstream": "app", "key": "alice", "backend": candidates[0], "reason": "key", "candidates": candidates,
    });
    assert_eq!(route, expected);

    let mut conn = H1::connect(addr).await;
    for user in std::iter::once("alice".to_owned()).chain((0..50).map(|i| format!("routed-{i}"))) {
        let route = client::get(admin, &format!("/admin/upstreams/app/route?key={user}"), &[]).await.json();
        let landed = backend_of(&conn.get("/", &[("x-user-id", &user)]).await);
        assert_eq!(route["backend"], landed.as_str(), "{user}");
    }

    // With alice's home draining, both the helper and real requests move to her next candidate.
    stack.drain(&candidates[0]).await;
    let route = client::get(admin, "/admin/upstreams/app/route?key=alice", &[]).await.json();
    assert_eq!(route["backend"], candidates[1].as_str());
    assert_eq!(route["candidates"], serde_json::json!(candidates), "the ring order itself does not change");
    assert_eq!(backend_of(&conn.get("/", &[("x-user-id", "alice")]).await), candidates[1]);

    // Percent-encoded keys are decoded; errors are JSON.
    let spaced = client::get(admin, "/admin/upstreams/app/route?key=al%20ice", &[]).await.json();
    assert_eq!(spaced["key"], "al ice");
    assert_eq!(backend_of(&conn.get("/", &[("x-user-id", "al ice")]).await), spaced["backend"].as_str().expect("id"));
    assert_eq!(client::get(admin, "/admin/upstreams/app/route", &[]).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(client::get(admin, "/admin/upstreams/nope/route?key=a", &[]).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debug_header_names_the_backend_only_when_enabled() {
    let off = Stack::start(2, KEY_BY_HEADER).await;
    let reply = client::get(off.public(), "/", &[("x-user-id", "dbg")]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-tether-backend"), None, "off by default");
    let (ws, resp) = ws_connect(off.public(), "/ws", &[("x-user-id", "dbg")]).await;
    assert!(resp.headers().get("x-tether-backend").is_none(), "off by default on a 101 too");
    close(ws).await;

    let on = Stack::start_with(2, KEY_BY_HEADER, |yaml| yaml.set("debug", "{ backend_header: true }")).await;
    for user in ["dbg", "dbg-2", "dbg-3", "dbg-4"] {
        let reply = client::get(on.public(), "/", &[("x-user-id", user)]).await;
        assert_eq!(reply.header("x-tether-backend"), Some(backend_of(&reply).as_str()), "{user}");
        let (mut ws, resp) = ws_connect(on.public(), "/ws", &[("x-user-id", user)]).await;
        let named = resp.headers().get("x-tether-backend").and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(named.map(|n| format!("hello from {n}")), Some(greeting(&mut ws).await), "{user}");
        close(ws).await;
    }
}

// ----- TLS and HTTP/2 ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pin_is_secure_on_tls_listeners_and_holds_over_http2() {
    let backends = [EchoBackend::start("app-1").await, EchoBackend::start("app-2").await];
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    ca.write_leaf(dir.path(), "a", &["a.test"]);
    let yaml = Yaml::new()
        .tls_listener("tls", &[("a.crt", "a.key")])
        .listener("public")
        .admin()
        .route("app")
        .upstream("app", |u| u.backends(Stack::list(&backends)).affinity(COOKIE_ONLY))
        .set("access_log", "{ format: off }");
    let proxy = TestProxy::builder().dir(dir).yaml(yaml).spawn().await;

    // secure: auto: no Secure attribute over plain HTTP, Secure over TLS.
    let over_plain = client::get(proxy.addr("public"), "/", &[]).await;
    let set = over_plain.header("set-cookie").expect("a pin");
    assert!(!set.contains("Secure"), "{set}");

    let (mut h2, alpn) = client::h2_tls(proxy.addr("tls"), "a.test", ca.client_config(&[b"h2"])).await;
    assert_eq!(alpn, b"h2");
    let get = |cookies: &[String]| {
        let mut req = Request::get("https://a.test/headers");
        // HTTP/2 clients may send cookies as separate header fields ("crumbs").
        for c in cookies {
            req = req.header("cookie", c.as_str());
        }
        req.body(Full::new(Bytes::new())).expect("request")
    };
    let first = client::send_h2(&mut h2, get(&["theme=dark".to_owned()])).await;
    assert_eq!(first.status, StatusCode::OK);
    let set = first.header("set-cookie").expect("a pin over TLS").to_owned();
    let pin = sticky_cookie(&first.headers).expect("our cookie");
    assert_eq!(set, format!("{COOKIE}={pin}; HttpOnly; SameSite=Lax; Secure; Path=/"));
    for _ in 0..5 {
        let crumbs = ["theme=dark".to_owned(), format!("{COOKIE}={pin}"), "lang=en".to_owned()];
        let again = client::send_h2(&mut h2, get(&crumbs)).await;
        assert_eq!(backend_of(&again), backend_of(&first));
        assert_eq!(sticky_cookie(&again.headers), None);
        // The HTTP/1.1 backend gets one Cookie header (RFC 9113 8.2.3), without our pin.
        assert_eq!(cookies_seen(&again.json()), ["theme=dark; lang=en"]);
    }
}
