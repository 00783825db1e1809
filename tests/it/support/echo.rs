//! A real HTTP/1.1 + WebSocket backend for proxy tests.
//!
//! Routes: `/headers` and any path ending in it (JSON of what arrived), `/upload` (streams the body, answers its length),
//! `/download?bytes=N` (streams N bytes), `/slow?ms=N`, `/ws` (WebSocket echo that greets with
//! `hello from <id>`), `/ws/headers` (the same echo, greeting with the JSON `/headers` answers,
//! so a test sees what an upgrade request carried), `/refuse-upgrade` (answers a WebSocket
//! upgrade with 403), anything else: `200 <id>`. Every response carries `x-backend-id`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

type Body = BoxBody<Bytes, Infallible>;

pub struct EchoBackend {
    pub id: String,
    pub addr: SocketAddr,
    /// Requests seen (including upgrades).
    pub requests: Arc<AtomicUsize>,
    /// WebSocket sessions currently open.
    pub sockets: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl EchoBackend {
    pub async fn start(id: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
        let addr = listener.local_addr().expect("local addr");
        let stop = CancellationToken::new();
        let requests = Arc::new(AtomicUsize::new(0));
        let sockets = Arc::new(AtomicUsize::new(0));
        let ctx = Arc::new(Ctx { id: id.to_owned(), requests: requests.clone(), sockets: sockets.clone() });
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = token.cancelled() => return,
                };
                let ctx = ctx.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(ctx.handle(req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        Self { id: id.to_owned(), addr, requests, sockets, stop }
    }

    /// Stop accepting and drop every connection: the backend is gone.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An address that refuses connections for as long as this lives: a socket bound to it that
/// never listens, so no other test's server can be given the port meanwhile.
pub struct DeadAddress {
    pub addr: SocketAddr,
    _bound: tokio::net::TcpSocket,
}

/// An address on which nothing listens (connections are refused) while the result lives.
pub fn dead_address() -> DeadAddress {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    DeadAddress { addr: socket.local_addr().expect("addr"), _bound: socket }
}

struct Ctx {
    id: String,
    requests: Arc<AtomicUsize>,
    sockets: Arc<AtomicUsize>,
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder().status(status).body(Full::new(body.into()).map_err(|e| match e {}).boxed()).expect("response")
}

fn query_u64(req: &Request<Incoming>, name: &str) -> Option<u64> {
    let query = req.uri().query()?;
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).and_then(|(_, v)| v.parse().ok())
}

impl Ctx {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut resp = match req.uri().path() {
            "/headers" => full(StatusCode::OK, self.headers_json(&req)),
            "/upload" => {
                let mut body = req.into_body();
                let mut total: u64 = 0;
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
                        Err(_) => return full(StatusCode::BAD_REQUEST, "body error"),
                    }
                }
                full(StatusCode::OK, total.to_string())
            }
            "/download" => {
                let total = query_u64(&req, "bytes").unwrap_or(0);
                const CHUNK: u64 = 64 * 1024;
                let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
                let stream = futures_util::stream::unfold(total, move |left| {
                    let chunk = chunk.clone();
                    async move {
                        if left == 0 {
                            return None;
                        }
                        let n = left.min(CHUNK);
                        Some((Ok::<_, Infallible>(Frame::data(chunk.slice(..n as usize))), left - n))
                    }
                });
                let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
                resp.headers_mut().insert("content-length", total.into());
                resp
            }
            "/slow" => {
                // A slow backend is the point of this route: it answers after `ms`.
                tokio::time::sleep(Duration::from_millis(query_u64(&req, "ms").unwrap_or(1000))).await;
                full(StatusCode::OK, "slow")
            }
            "/refuse-upgrade" => full(StatusCode::FORBIDDEN, "no sockets here"),
            "/ws" | "/ws/headers" => return self.upgrade(req),
            // Below a route prefix (`/private/headers`), the same answer as `/headers`.
            p if p.ends_with("/headers") => full(StatusCode::OK, self.headers_json(&req)),
            _ => full(StatusCode::OK, self.id.clone()),
        };
        resp.headers_mut().insert("x-backend-id", self.id.parse().expect("id is a header value"));
        resp
    }

    /// What arrived, as JSON: backend id, method, URI, version and every header in order.
    fn headers_json(&self, req: &Request<Incoming>) -> String {
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        serde_json::json!({
            "backend": self.id,
            "method": req.method().as_str(),
            "uri": req.uri().to_string(),
            "version": format!("{:?}", req.version()),
            "headers": headers,
        })
        .to_string()
    }

    fn upgrade(self: Arc<Self>, mut req: Request<Incoming>) -> Response<Body> {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return full(StatusCode::BAD_REQUEST, "not a websocket request");
        };
        let greeting = match req.uri().path() {
            "/ws/headers" => self.headers_json(&req),
            _ => format!("hello from {}", self.id),
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let ctx = self.clone();
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            ctx.sockets.fetch_add(1, Ordering::SeqCst);
            let _ = ws.send(Message::text(greeting)).await;
            // After a Close, tungstenite sends the answer on the next poll and then ends the
            // stream, so the loop runs until `None`.
            while let Some(Ok(msg)) = ws.next().await {
                let is_data = matches!(msg, Message::Text(_) | Message::Binary(_));
                if is_data && ws.send(msg).await.is_err() {
                    break;
                }
            }
            ctx.sockets.fetch_sub(1, Ordering::SeqCst);
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
            .header("x-backend-id", self.id.as_str())
            .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
            .expect("response")
    }
}
