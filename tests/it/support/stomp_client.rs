//! A small STOMP 1.2 test client over tokio-tungstenite: connect, subscribe with receipt, send,
//! next frame with a timeout, expect close. Every wait is bounded by [`WAIT`] and panics with
//! context when it runs out.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tether::app::stomp::{self, Command, Decoder, Frame, Item, Limits, Version};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::WAIT;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How to open the WebSocket and what CONNECT carries.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Extra upgrade request headers (e.g. `X-User-Id`).
    pub headers: Vec<(String, String)>,
    /// `Sec-WebSocket-Protocol` offer; None sends no header.
    pub subprotocols: Option<String>,
    /// CONNECT headers (besides `accept-version`, `host`, and `heart-beat` defaults).
    pub connect_headers: Vec<(String, String)>,
    pub accept_version: String,
    /// CONNECT `heart-beat`; `0,0` (the default) keeps heart-beats out of tests that do not
    /// test them.
    pub heart_beat: String,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            headers: Vec::new(),
            subprotocols: Some("v12.stomp, v11.stomp, v10.stomp".into()),
            connect_headers: Vec::new(),
            accept_version: "1.2".into(),
            heart_beat: "0,0".into(),
        }
    }
}

impl ConnectOptions {
    pub fn user_header(mut self, user: &str) -> Self {
        self.headers.push(("X-User-Id".into(), user.into()));
        self
    }

    pub fn login(mut self, user: &str) -> Self {
        self.connect_headers.push(("login".into(), user.into()));
        self
    }

    /// A token in the CONNECT frame: `Authorization: Bearer <token>`.
    pub fn bearer(mut self, token: &str) -> Self {
        self.connect_headers.push(("Authorization".into(), format!("Bearer {token}")));
        self
    }

    /// A token in the CONNECT frame's `passcode`.
    pub fn passcode(mut self, token: &str) -> Self {
        self.connect_headers.push(("passcode".into(), token.into()));
        self
    }

    /// An upgrade request header (`Authorization`, `Cookie`, `Origin`, ...).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn heart_beat(mut self, hb: &str) -> Self {
        self.heart_beat = hb.into();
        self
    }
}

/// Opens a WebSocket to `url` without speaking STOMP yet; returns the socket and the
/// negotiated subprotocol.
pub async fn open_ws(url: &str, opts: &ConnectOptions) -> (Ws, Option<String>) {
    let (ws, protocol, _) = open_ws_answered(url, opts).await;
    (ws, protocol)
}

/// [`open_ws`], also returning the 101's `Set-Cookie` (a proxy's sticky pin).
async fn open_ws_answered(url: &str, opts: &ConnectOptions) -> (Ws, Option<String>, Option<String>) {
    let mut req = url.into_client_request().expect("valid ws url");
    if let Some(p) = &opts.subprotocols {
        req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_str(p).expect("header value"));
    }
    for (k, v) in &opts.headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .unwrap_or_else(|_| panic!("WebSocket connect to {url} timed out"))
        .unwrap_or_else(|e| panic!("WebSocket connect to {url} failed: {e}"));
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    (ws, header("sec-websocket-protocol"), header("set-cookie"))
}

/// The status of a WebSocket upgrade to `url` with `headers`: 101 when accepted (the socket is
/// then closed), else the refusal's status.
pub async fn upgrade_status(url: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = url.into_client_request().expect("valid ws url");
    req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("v12.stomp"));
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await {
        Err(_) => panic!("WebSocket upgrade to {url} timed out"),
        Ok(Ok((mut ws, resp))) => {
            let _ = ws.close(None).await;
            resp.status().as_u16()
        }
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => resp.status().as_u16(),
        Ok(Err(e)) => panic!("WebSocket upgrade to {url} failed: {e}"),
    }
}

/// What the server did next.
#[derive(Debug)]
pub enum Event {
    Frame(Frame),
    Closed(Option<CloseFrame>),
}

pub struct StompClient {
    ws: Ws,
    decoder: Decoder,
    /// Frames read while waiting for something else (e.g. MESSAGEs before a RECEIPT).
    backlog: VecDeque<Frame>,
    pub connected: Frame,
    pub protocol: Option<String>,
    /// The `Set-Cookie` of the upgrade's answer, if any.
    pub set_cookie: Option<String>,
    /// Server heart-beats (EOLs) seen so far.
    pub heartbeats_received: usize,
    receipts: u32,
    closed: Option<Option<CloseFrame>>,
}

impl StompClient {
    pub async fn connect(url: &str) -> StompClient {
        Self::connect_with(url, ConnectOptions::default()).await
    }

    /// Opens the WebSocket, sends CONNECT and waits for CONNECTED (panics on ERROR).
    pub async fn connect_with(url: &str, opts: ConnectOptions) -> StompClient {
        let (mut client, reply) = Self::send_connect(url, opts).await;
        assert_eq!(reply.command, Command::Connected, "CONNECT answered with {reply:?}");
        client.connected = reply;
        client
    }

    /// Opens the WebSocket and sends CONNECT, expecting a refusal: returns the ERROR frame
    /// and the close code that followed it.
    pub async fn connect_refused(url: &str, opts: ConnectOptions) -> (Frame, Option<u16>) {
        let (mut client, reply) = Self::send_connect(url, opts).await;
        assert_eq!(reply.command, Command::Error, "CONNECT answered with {reply:?}");
        let (close, rest) = client.expect_close(WAIT).await;
        assert!(rest.is_empty(), "frames after the ERROR: {rest:?}");
        (reply, close.map(|c| u16::from(c.code)))
    }

    async fn send_connect(url: &str, opts: ConnectOptions) -> (StompClient, Frame) {
        let (ws, protocol, set_cookie) = open_ws_answered(url, &opts).await;
        let mut client = StompClient {
            ws,
            set_cookie,
            decoder: Decoder::new(Limits { max_frame_bytes: 1 << 20, max_headers: 64 }),
            backlog: VecDeque::new(),
            connected: Frame::new(Command::Connected),
            protocol,
            heartbeats_received: 0,
            receipts: 0,
            closed: None,
        };
        let mut connect = Frame::new(Command::Connect)
            .header("accept-version", opts.accept_version.clone())
            .header("host", "localhost")
            .header("heart-beat", opts.heart_beat.clone());
        for (k, v) in &opts.connect_headers {
            connect = connect.header(k.clone(), v.clone());
        }
        client.send_frame(&connect).await;
        let reply = client.next_frame().await;
        (client, reply)
    }

    pub async fn send_raw(&mut self, msg: Message) {
        tokio::time::timeout(WAIT, self.ws.send(msg)).await.expect("send timed out").expect("send failed");
    }

    pub async fn send_frame(&mut self, frame: &Frame) {
        let bytes = stomp::to_bytes(frame, Version::V1_2);
        let msg = match String::from_utf8(bytes) {
            Ok(s) => Message::text(s),
            Err(e) => Message::binary(e.into_bytes()),
        };
        self.send_raw(msg).await;
    }

    fn next_receipt_id(&mut self) -> String {
        self.receipts += 1;
        format!("r-{}", self.receipts)
    }

    /// SUBSCRIBE with a receipt, waiting for the RECEIPT.
    pub async fn subscribe(&mut self, destination: &str, id: &str) {
        self.subscribe_with(destination, id, &[]).await;
    }

    /// SUBSCRIBE with extra headers (`x-resume-from`, say) and a receipt, waiting for the
    /// RECEIPT.
    pub async fn subscribe_with(&mut self, destination: &str, id: &str, headers: &[(&str, &str)]) {
        let receipt = self.next_receipt_id();
        let mut frame = Frame::new(Command::Subscribe).header("destination", destination).header("id", id);
        for (k, v) in headers {
            frame = frame.header(*k, *v);
        }
        self.send_frame(&frame.header("receipt", receipt.clone())).await;
        self.expect_receipt(&receipt).await;
    }

    /// UNSUBSCRIBE with a receipt, waiting for the RECEIPT.
    pub async fn unsubscribe(&mut self, id: &str) {
        let receipt = self.next_receipt_id();
        let frame = Frame::new(Command::Unsubscribe).header("id", id).header("receipt", receipt.clone());
        self.send_frame(&frame).await;
        self.expect_receipt(&receipt).await;
    }

    /// SEND without a receipt.
    pub async fn send(&mut self, destination: &str, body: &str) {
        let frame = Frame::new(Command::Send)
            .header("destination", destination)
            .header("content-type", "text/plain")
            .body(body.to_owned());
        self.send_frame(&frame).await;
    }

    /// SEND with a receipt; returns the answer (RECEIPT or ERROR), keeping MESSAGEs that arrive
    /// meanwhile for [`Self::next_message`].
    pub async fn send_with_receipt(&mut self, destination: &str, body: &str) -> Frame {
        let receipt = self.next_receipt_id();
        let frame = Frame::new(Command::Send)
            .header("destination", destination)
            .header("content-type", "text/plain")
            .header("receipt", receipt.clone())
            .body(body.to_owned());
        self.send_frame(&frame).await;
        self.wait_for(|f| {
            f.command == Command::Error || (f.command == Command::Receipt && f.get("receipt-id") == Some(&receipt))
        })
        .await
    }

    pub async fn expect_receipt(&mut self, receipt: &str) {
        let f = self.wait_for(|f| f.command == Command::Receipt || f.command == Command::Error).await;
        assert_eq!(f.command, Command::Receipt, "expected RECEIPT {receipt}, got {f:?}");
        assert_eq!(f.get("receipt-id"), Some(receipt));
    }

    /// Reads until a frame matching `pred`; other frames are kept for later.
    async fn wait_for(&mut self, pred: impl Fn(&Frame) -> bool) -> Frame {
        loop {
            let f = self.read_frame().await;
            if pred(&f) {
                return f;
            }
            self.backlog.push_back(f);
        }
    }

    /// Frames read while waiting for something else and not taken yet.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// The next frame (backlog first). Panics on close or timeout.
    pub async fn next_frame(&mut self) -> Frame {
        if let Some(f) = self.backlog.pop_front() {
            return f;
        }
        self.read_frame().await
    }

    /// The next MESSAGE frame; panics if something else comes first.
    pub async fn next_message(&mut self) -> Frame {
        let f = self.next_frame().await;
        assert_eq!(f.command, Command::Message, "expected MESSAGE, got {f:?}");
        f
    }

    /// Reads MESSAGE bodies into `got` until it holds `expected.len()` of them, then asserts
    /// it equals `expected`; when they stop coming (for [`WAIT`]) the failure says which are
    /// missing.
    pub async fn expect_bodies(&mut self, got: &mut Vec<String>, expected: &[String]) {
        while got.len() < expected.len() {
            match tokio::time::timeout(WAIT, self.next_body()).await {
                Ok(body) => got.push(body),
                Err(_) => {
                    let missing: Vec<&String> = expected.iter().filter(|e| !got.contains(e)).collect();
                    panic!("{} of {} messages arrived; missing {missing:?}", got.len(), expected.len());
                }
            }
        }
        assert_eq!(got, expected);
    }

    /// The body of the next MESSAGE, as text.
    pub async fn next_body(&mut self) -> String {
        let f = self.next_message().await;
        String::from_utf8(f.body.to_vec()).expect("UTF-8 body")
    }

    async fn read_frame(&mut self) -> Frame {
        match tokio::time::timeout(WAIT, self.read_event()).await {
            Ok(Event::Frame(f)) => f,
            Ok(Event::Closed(c)) => panic!("connection closed ({c:?}) while waiting for a frame"),
            Err(_) => panic!("no frame within {WAIT:?}"),
        }
    }

    /// The next frame or the close, unbounded (callers bound it).
    pub async fn read_event(&mut self) -> Event {
        if let Some(f) = self.backlog.pop_front() {
            return Event::Frame(f);
        }
        loop {
            match self.decoder.next_item() {
                Ok(Some(Item::Frame(f))) => return Event::Frame(f),
                Ok(Some(Item::HeartBeat)) => {
                    self.heartbeats_received += 1;
                    continue;
                }
                Ok(None) => {}
                Err(e) => panic!("server sent an undecodable frame: {e}"),
            }
            if let Some(c) = &self.closed {
                return Event::Closed(c.clone());
            }
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => self.decoder.push(t.as_bytes()),
                Some(Ok(Message::Binary(b))) => self.decoder.push(&b),
                Some(Ok(Message::Close(c))) => {
                    // Complete the closing handshake; the server then ends the stream.
                    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.ws.next()).await {}
                    self.closed = Some(c.clone());
                    return Event::Closed(c);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    self.closed = Some(None);
                    return Event::Closed(None);
                }
            }
        }
    }

    /// Reads until the server closes; returns the close frame and the frames seen before it.
    pub async fn expect_close(&mut self, within: Duration) -> (Option<CloseFrame>, Vec<Frame>) {
        let mut frames = Vec::new();
        let fut = async {
            loop {
                match self.read_event().await {
                    Event::Frame(f) => frames.push(f),
                    Event::Closed(c) => return c,
                }
            }
        };
        let close = tokio::time::timeout(within, fut)
            .await
            .unwrap_or_else(|_| panic!("server did not close within {within:?}"));
        (close, frames)
    }

    /// Keeps the connection busy for `duration`: reads everything (frames go to the backlog)
    /// and, when `beat_every` is set, sends an EOL heart-beat at that rate. Panics if the
    /// server closes meanwhile.
    pub async fn idle(&mut self, duration: Duration, beat_every: Option<Duration>) {
        let end = tokio::time::Instant::now() + duration;
        let mut beat = tokio::time::interval(beat_every.unwrap_or(duration));
        beat.tick().await;
        loop {
            tokio::select! {
                // Time under test: the connection must stay up (and quiet) for `duration`.
                _ = tokio::time::sleep_until(end) => return,
                _ = beat.tick(), if beat_every.is_some() => {
                    self.send_raw(Message::text("\n")).await;
                }
                ev = self.read_event() => match ev {
                    Event::Frame(f) => self.backlog.push_back(f),
                    Event::Closed(c) => panic!("server closed the connection while idle: {c:?}"),
                },
            }
        }
    }

    /// DISCONNECT with a receipt, then wait for the server to close.
    pub async fn disconnect(mut self) {
        let receipt = self.next_receipt_id();
        let frame = Frame::new(Command::Disconnect).header("receipt", receipt.clone());
        self.send_frame(&frame).await;
        self.expect_receipt(&receipt).await;
        let (close, _) = self.expect_close(WAIT).await;
        assert_eq!(close.map(|c| u16::from(c.code)), Some(1000));
    }
}
