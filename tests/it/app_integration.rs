//! Existing publishers and applications, unchanged: services PUBLISH JSON to their own Redis
//! channels (`--channel-map` delivers them to STOMP destinations, PSUBSCRIBEd only while a
//! mapped destination has a local subscriber), and SENDs to `/app/...` go to the application
//! over HTTP (`--app-url`), whose answer is published.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tether::app::stomp::Command;
use tokio::net::TcpListener;

use crate::support::WAIT;
use crate::support::app::TestApp;
use crate::support::jwt;
use crate::support::redis::TestRedis;
use crate::support::stomp_client::{ConnectOptions, StompClient};
use crate::support::until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_redis_channels_reach_stomp_subscribers_on_every_instance() {
    let redis = TestRedis::start().await;
    let spawn = |id: &'static str| {
        TestApp::builder()
            .id(id)
            .redis(&redis.url())
            .channel_map("auction:*=/sub/auction/*")
            .channel_map("category:*:new-auctions=/sub/category/*/new-auctions")
            .channel_map("notification:*=/user/*/queue/notifications")
            .jwt_jwks(&jwt::fixture("jwks.json"))
            .spawn_with_redis_up()
    };
    let a = spawn("app-a").await;
    let b = spawn("app-b").await;
    let numpat = async || redis.query::<i64>(&["PUBSUB", "NUMPAT"]).await;
    assert_eq!(numpat().await, 0, "no pattern without a local subscriber");

    let mut on_a = StompClient::connect(&a.ws_url()).await;
    let alice = ConnectOptions::default().bearer(&jwt::token("alice"));
    let mut on_b = StompClient::connect_with(&b.ws_url(), alice).await;
    on_a.subscribe("/sub/auction/42", "s").await;
    on_b.subscribe("/sub/auction/42", "s").await;
    on_b.subscribe("/user/queue/notifications", "n").await;
    assert_eq!(numpat().await, 2, "auction:* and notification:*");

    // A service publishing JSON on its own channel, as it did before the app existed.
    let _: i64 = redis.query(&["PUBLISH", "auction:42", r#"{"bid":100}"#]).await;
    let _: i64 = redis.query(&["PUBLISH", "auction:43", r#"{"bid":1}"#]).await;
    let _: i64 = redis.query(&["PUBLISH", "auction:42:extra", r#"{"bid":2}"#]).await;
    let _: i64 = redis.query(&["PUBLISH", "notification:alice", r#"{"text":"outbid"}"#]).await;
    let _: i64 = redis.query(&["PUBLISH", "auction:42", "plain"]).await;
    for c in [&mut on_a, &mut on_b] {
        let m = c.next_message().await;
        assert_eq!(&m.body[..], br#"{"bid":100}"#);
        assert_eq!(m.get("destination"), Some("/sub/auction/42"));
        assert_eq!(m.get("content-type"), Some("application/json"));
        assert_eq!(m.get("redis-channel"), Some("auction:42"));
    }
    let n = on_b.next_message().await;
    assert_eq!((n.get("destination"), &n.body[..]), (Some("/user/queue/notifications"), &br#"{"text":"outbid"}"#[..]));
    for c in [&mut on_a, &mut on_b] {
        let m = c.next_message().await;
        assert_eq!((&m.body[..], m.get("content-type")), (&b"plain"[..], Some("text/plain;charset=UTF-8")));
    }

    on_a.unsubscribe("s").await;
    on_b.unsubscribe("s").await;
    on_b.unsubscribe("n").await;
    until("the patterns to be dropped", async || numpat().await == 0).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// What the application was sent: path, user header, one forwarded STOMP header, body.
type Seen = Mutex<Vec<(String, Option<String>, Option<String>, String)>>;

/// A stand-in for a Spring application behind `--app-url`: answers POST /app/bid with the message to
/// publish, and records what it was sent.
struct Application {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Application {
    async fn start() -> Application {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(Application::answer(req, &s).await) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Application { addr, seen, task }
    }

    async fn answer(req: Request<Incoming>, seen: &Seen) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (user, note) = (header("x-user-id"), header("x-stomp-header-x-note"));
        let body =
            String::from_utf8(req.into_body().collect().await.expect("body").to_bytes().to_vec()).expect("utf-8");
        seen.lock().push((path.clone(), user.clone(), note, body.clone()));
        let (status, answer) = match path.as_str() {
            "/app/bid" => {
                let bid: serde_json::Value = serde_json::from_str(&body).expect("JSON bid");
                let answer = serde_json::json!({
                    "destination": "/sub/auction/7",
                    "body": { "auctionId": 7, "amount": bid["amount"], "bidder": user },
                });
                (StatusCode::OK, answer.to_string())
            }
            "/app/quiet" => (StatusCode::NO_CONTENT, String::new()),
            _ => (StatusCode::FORBIDDEN, String::new()),
        };
        let mut r = Response::new(Full::new(Bytes::from(answer)));
        *r.status_mut() = status;
        r
    }
}

impl Drop for Application {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_to_app_destinations_round_trip_through_the_application() {
    let redis = TestRedis::start().await;
    let application = Application::start().await;
    let url = format!("http://{}", application.addr);
    let a = TestApp::builder().id("app-a").redis(&redis.url()).app_url(&url).spawn_with_redis_up().await;
    let b = TestApp::builder().id("app-b").redis(&redis.url()).app_url(&url).spawn_with_redis_up().await;
    let mut watcher = StompClient::connect(&b.ws_url()).await;
    watcher.subscribe("/sub/auction/7", "s").await;

    let mut bidder = StompClient::connect_with(&a.ws_url(), ConnectOptions::default().user_header("carol")).await;
    let send = tether::app::stomp::Frame::new(Command::Send)
        .header("destination", "/app/bid")
        .header("content-type", "application/json")
        .header("x-note", "first")
        .header("receipt", "bid")
        .body(r#"{"amount":120}"#);
    bidder.send_frame(&send).await;
    bidder.expect_receipt("bid").await;
    let m = watcher.next_message().await;
    let body: serde_json::Value = serde_json::from_slice(&m.body).expect("JSON");
    assert_eq!(body, serde_json::json!({ "auctionId": 7, "amount": 120, "bidder": "carol" }));
    assert_eq!(m.get("content-type"), Some("application/json"));
    assert_eq!(m.get("tether-user"), Some("carol"));
    assert_eq!(
        application.seen.lock()[0],
        ("/app/bid".into(), Some("carol".into()), Some("first".into()), r#"{"amount":120}"#.into())
    );

    // 204: nothing to publish, still receipted.
    let r = bidder.send_with_receipt("/app/quiet", "x").await;
    assert_eq!(r.command, Command::Receipt, "{r:?}");
    // A refusal is an ERROR for that SEND.
    let r = bidder.send_with_receipt("/app/forbidden", "x").await;
    assert_eq!(r.command, Command::Error, "{r:?}");
    assert_eq!(r.get("message"), Some("the application refused the message"));
    assert_eq!(&r.body[..], b"the application answered 403");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_application_app_destinations_are_errors() {
    let a = TestApp::builder().spawn().await;
    let mut c = StompClient::connect(&a.ws_url()).await;
    let r = c.send_with_receipt("/app/bid", "{}").await;
    assert_eq!(r.command, Command::Error, "{r:?}");
    assert_eq!(r.get("message"), Some("no application handles /app destinations (the backend runs without --app-url)"));
    let (close, _) = c.expect_close(WAIT).await;
    assert!(close.is_some());
    a.shutdown().await;
}
