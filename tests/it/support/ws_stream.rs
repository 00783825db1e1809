//! `StreamBackend`: a backend for drain and shutdown tests. It streams large WebSocket messages
//! on demand, answers its readiness probe as the test says, and can stop and come back on the
//! same port.
//!
//! Routes: `/readyz` (200, 503 or no answer at all, see [`Readiness`]), `/ws` (WebSocket: greets
//! with `hello from <id>`, echoes data messages, and on the text message `stream` starts
//! streaming, see below), `/slow?ms=N` (answers `slow` after N ms), anything else `200 <id>`.
//! Every HTTP answer carries `x-backend-id`.
//!
//! Streaming alternates an unfragmented binary message of [`LARGE`] bytes with a text message
//! of [`FRAGMENT`] * [`FRAGMENTS`] bytes sent as [`FRAGMENTS`] frames, numbered from 0, with
//! payloads from [`binary_payload`] / [`text_payload`] so a client can check every byte
//! ([`verify`]). All writes of a session trickle out [`TRICKLE_CHUNK`] bytes at a time with a
//! short pause between writes, so at any moment a frame is most likely half written: exactly
//! when a proxy's Close must wait for the frame boundary.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::Sleep;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_util::sync::CancellationToken;

/// Size of each unfragmented binary message.
pub const LARGE: usize = 24 * 1024;
/// Size of each frame of a fragmented text message, and how many frames it has.
pub const FRAGMENT: usize = 8 * 1024 + 3;
pub const FRAGMENTS: usize = 3;
/// Bytes per socket write, and the pause after each write.
pub const TRICKLE_CHUNK: usize = 2048;
pub const TRICKLE_PAUSE: Duration = Duration::from_millis(2);

/// What `/readyz` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready = 0,
    /// 503, like a terminating pod.
    NotReady = 1,
    /// Accepts the request and never answers.
    Hang = 2,
}

/// What the backend saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// HTTP requests other than `/readyz` and upgrades.
    pub requests: AtomicUsize,
    /// WebSocket sessions ever accepted.
    pub upgrades: AtomicUsize,
    /// WebSocket sessions open now.
    pub sockets: AtomicUsize,
    /// `/readyz` probes received.
    pub probes: AtomicUsize,
    /// When `/readyz` first answered 503.
    pub first_not_ready: Mutex<Option<SystemTime>>,
    /// The code of every Close frame a client (the proxy) sent us; `None` for a Close without
    /// a code.
    pub closes: Mutex<Vec<Option<u16>>>,
}

pub struct StreamBackend {
    pub id: String,
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    readiness: Arc<AtomicU8>,
    stop: Mutex<CancellationToken>,
}

impl StreamBackend {
    pub async fn start(id: &str) -> Self {
        let listener = bind("127.0.0.1:0".parse().expect("address")).expect("bind stream backend");
        let addr = listener.local_addr().expect("local addr");
        let backend = Self {
            id: id.to_owned(),
            addr,
            stats: Arc::default(),
            readiness: Arc::new(AtomicU8::new(Readiness::Ready as u8)),
            stop: Mutex::new(CancellationToken::new()),
        };
        backend.serve(listener);
        backend
    }

    pub fn set_readiness(&self, readiness: Readiness) {
        self.readiness.store(readiness as u8, Ordering::SeqCst);
    }

    /// Close the listener and every connection: connections to the port are now refused.
    pub fn stop(&self) {
        self.lock_stop().cancel();
    }

    /// Listen again on the same address after [`StreamBackend::stop`].
    pub fn resume(&self) {
        let listener = bind(self.addr).expect("rebind the same port");
        self.serve(listener);
    }

    fn lock_stop(&self) -> std::sync::MutexGuard<'_, CancellationToken> {
        self.stop.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serve(&self, listener: TcpListener) {
        let token = CancellationToken::new();
        *self.lock_stop() = token.clone();
        let ctx = Arc::new(Ctx { id: self.id.clone(), stats: self.stats.clone(), readiness: self.readiness.clone() });
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = token.cancelled() => return,
                };
                let (ctx, token) = (ctx.clone(), token.clone());
                tokio::spawn(async move {
                    let service = {
                        let (ctx, token) = (ctx.clone(), token.clone());
                        hyper::service::service_fn(move |req| {
                            let (ctx, token) = (ctx.clone(), token.clone());
                            async move { Ok::<_, Infallible>(ctx.handle(req, token).await) }
                        })
                    };
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
    }
}

impl Drop for StreamBackend {
    fn drop(&mut self) {
        self.lock_stop().cancel();
    }
}

/// A listener with SO_REUSEADDR, so a stopped backend can listen on its port again while
/// connections it closed linger in TIME_WAIT.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

struct Ctx {
    id: String,
    stats: Arc<Stats>,
    readiness: Arc<AtomicU8>,
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

impl Ctx {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, stop: CancellationToken) -> Response<Full<Bytes>> {
        let mut resp = match req.uri().path() {
            "/readyz" => {
                self.stats.probes.fetch_add(1, Ordering::SeqCst);
                match self.readiness.load(Ordering::SeqCst) {
                    0 => text(StatusCode::OK, "ready"),
                    1 => {
                        self.stats.first_not_ready.lock().unwrap().get_or_insert_with(SystemTime::now);
                        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
                    }
                    _ => {
                        stop.cancelled().await;
                        text(StatusCode::SERVICE_UNAVAILABLE, "stopped")
                    }
                }
            }
            "/ws" => return self.upgrade(req, stop),
            "/slow" => {
                self.stats.requests.fetch_add(1, Ordering::SeqCst);
                let ms = req
                    .uri()
                    .query()
                    .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "ms"))
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(1000);
                // A slow backend is the point of this route: it answers after `ms`.
                tokio::time::sleep(Duration::from_millis(ms)).await;
                text(StatusCode::OK, "slow")
            }
            _ => {
                self.stats.requests.fetch_add(1, Ordering::SeqCst);
                text(StatusCode::OK, self.id.clone())
            }
        };
        resp.headers_mut().insert("x-backend-id", self.id.parse().expect("id is a header value"));
        resp
    }

    fn upgrade(self: Arc<Self>, mut req: Request<Incoming>, stop: CancellationToken) -> Response<Full<Bytes>> {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return text(StatusCode::BAD_REQUEST, "not a websocket request");
        };
        self.stats.upgrades.fetch_add(1, Ordering::SeqCst);
        let on_upgrade = hyper::upgrade::on(&mut req);
        let ctx = self.clone();
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            let io = Trickle::new(TokioIo::new(upgraded));
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            ctx.stats.sockets.fetch_add(1, Ordering::SeqCst);
            tokio::select! {
                _ = ctx.session(ws) => {}
                _ = stop.cancelled() => {}
            }
            ctx.stats.sockets.fetch_sub(1, Ordering::SeqCst);
        });
        let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
        let headers = resp.headers_mut();
        headers.insert("connection", "upgrade".parse().expect("value"));
        headers.insert("upgrade", "websocket".parse().expect("value"));
        headers.insert("sec-websocket-accept", derive_accept_key(key.as_bytes()).parse().expect("value"));
        headers.insert("x-backend-id", self.id.parse().expect("id is a header value"));
        resp
    }

    async fn session<S>(&self, ws: WebSocketStream<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut sink, mut stream) = ws.split();
        if sink.send(Message::text(format!("hello from {}", self.id))).await.is_err() {
            return;
        }
        let mut streaming = false;
        let mut seq = 0u32;
        loop {
            let received = if streaming {
                tokio::select! {
                    sent = send_streamed(&mut sink, seq) => {
                        if sent.is_err() {
                            return;
                        }
                        seq += 1;
                        continue;
                    }
                    received = stream.next() => received,
                }
            } else {
                stream.next().await
            };
            match received {
                Some(Ok(Message::Text(t))) if t.as_str() == "stream" => streaming = true,
                Some(Ok(msg @ (Message::Text(_) | Message::Binary(_)))) => {
                    if !streaming && sink.send(msg).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    self.stats.closes.lock().unwrap().push(frame.map(|f| u16::from(f.code)));
                    // tungstenite queued the Close answer; flush it (and whatever was half
                    // written before it, which the proxy no longer forwards).
                    let _ = sink.close().await;
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    }
}

/// Send streamed message `seq`: even numbers one binary frame, odd numbers a fragmented text
/// message.
async fn send_streamed<S>(
    sink: &mut futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    seq: u32,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if seq.is_multiple_of(2) {
        return sink.send(Message::binary(binary_payload(seq))).await;
    }
    let body = text_payload(seq);
    for (i, part) in body.as_bytes().chunks(FRAGMENT).enumerate() {
        let opcode = if i == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
        let header = FrameHeader { is_final: i == FRAGMENTS - 1, opcode, ..FrameHeader::default() };
        sink.feed(Message::Frame(Frame::from_payload(header, Bytes::copy_from_slice(part)))).await?;
    }
    sink.flush().await
}

/// Binary message `seq`: its number, then a pattern that depends on it.
pub fn binary_payload(seq: u32) -> Vec<u8> {
    let mut p = seq.to_be_bytes().to_vec();
    p.extend((0..LARGE - 4).map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8));
    p
}

/// Text message `seq`: its number in ten digits, then letters that depend on it.
pub fn text_payload(seq: u32) -> String {
    let mut s = format!("{seq:010}");
    s.extend((0..FRAGMENT * FRAGMENTS - 10).map(|i| char::from(b'a' + ((i as u32 * 7 + seq) % 26) as u8)));
    s
}

/// Check that `msg` is streamed message `seq`, byte for byte.
pub fn verify(msg: &Message, seq: u32) -> Result<(), String> {
    match msg {
        Message::Binary(data) if seq.is_multiple_of(2) => {
            if data.len() != LARGE {
                return Err(format!("binary message {seq}: {} bytes instead of {LARGE}", data.len()));
            }
            if data[..] != binary_payload(seq)[..] {
                return Err(format!("binary message {seq}: payload differs"));
            }
            Ok(())
        }
        Message::Text(data) if !seq.is_multiple_of(2) => {
            if data.as_str() != text_payload(seq) {
                return Err(format!("text message {seq}: payload differs ({} bytes)", data.len()));
            }
            Ok(())
        }
        other => Err(format!("message {seq}: unexpected {:?}", other_kind(other))),
    }
}

fn other_kind(msg: &Message) -> String {
    match msg {
        Message::Text(t) => format!("text of {} bytes", t.len()),
        Message::Binary(b) => format!("binary of {} bytes", b.len()),
        other => format!("{other:?}"),
    }
}

/// An IO that writes at most [`TRICKLE_CHUNK`] bytes at a time and pauses [`TRICKLE_PAUSE`]
/// after each write; reads pass through.
struct Trickle<T> {
    inner: T,
    pause: Option<Pin<Box<Sleep>>>,
}

impl<T> Trickle<T> {
    fn new(inner: T) -> Self {
        Self { inner, pause: None }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Trickle<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Trickle<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(pause) = self.pause.as_mut() {
            ready!(pause.as_mut().poll(cx));
            self.pause = None;
        }
        let n = buf.len().min(TRICKLE_CHUNK);
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[..n]));
        if written.is_ok() {
            // The trickle is the point of this stream: a pause between small writes.
            self.pause = Some(Box::pin(tokio::time::sleep(TRICKLE_PAUSE)));
        }
        Poll::Ready(written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
