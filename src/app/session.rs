//! One STOMP session over one WebSocket, from the first byte after the upgrade to the close
//! handshake: CONNECT negotiation (version, heart-beats, identity), frame handling, receipts,
//! heart-beats both ways, the bounded outbound queue, and closing (ERROR, drain, slow consumer).
//!
//! One task owns the socket and does all of it in one `select!` loop. Nothing in the loop waits
//! on the broker: confirmations the client asked for (`receipt`) are futures queued in order and
//! answered when they resolve, so a Redis outage never stalls reading, writing or heart-beats.
//! Framing is `stomp`'s job and fan-out bookkeeping is `instance`'s; this module must not parse
//! bytes itself or touch other sessions.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::broker::{BrokerError, Envelope};
use super::hub::{SessionId, Subscriber, USER_PREFIX, is_valid_user_id, subscription_key};
use super::instance::{CloseReason, Delivery, Instance, SessionHandle, SessionSignal, unix_ms};
use super::metrics::Source;
use super::stomp::{self, Command, DecodeError, Decoder, Frame, Item, Version};

/// A client must send CONNECT this soon after the upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// STOMP 1.2 leaves the tolerance to the implementation; a peer silent for three agreed
/// intervals is closed, which absorbs one lost and one late heart-beat (10 s beats: a dead peer
/// is noticed within 30 s).
const SILENCE_INTERVALS: u32 = 3;
/// A write (one batch of frames) that cannot complete this long means the peer is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the closing handshake (final frame, Close, peer's Close) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on waiting for a broker confirmation before answering a receipt.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);
/// Receipts a client may have outstanding; more means it sends faster than the broker confirms,
/// and the queue of pending answers would grow without bound.
const MAX_PENDING_REPLIES: usize = 1024;
/// MESSAGE frames written per flush.
const WRITE_BATCH: usize = 64;
/// SEND headers that are protocol or server-set, never passed through to MESSAGE.
const RESERVED_HEADERS: [&str; 11] = [
    "destination",
    "receipt",
    "content-length",
    "content-type",
    "transaction",
    "message-id",
    "subscription",
    "ack",
    "id",
    "tether-instance",
    "tether-user",
];

/// How the session ends.
enum End {
    /// Send this ERROR frame, then close with `code`.
    Error { frame: Frame, code: CloseCode },
    /// Optionally send a last frame (a RECEIPT for DISCONNECT), then close with `code`.
    Close { code: CloseCode, reason: &'static str, last: Option<Frame> },
    /// The peer sent Close: answer it and finish.
    PeerClosed,
    /// The transport failed: nothing more can be sent.
    Gone,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingConnect,
    Open,
    /// DISCONNECT received: further frames are ignored until its receipt is sent.
    Disconnecting,
}

/// A queued answer to a frame, resolved in the order the frames arrived.
enum Reply {
    Receipt(String),
    SendFailed { receipt: String, error: BrokerError },
    Disconnect(Option<String>),
}

struct Session<S> {
    inst: Arc<Instance>,
    ws: WebSocketStream<S>,
    id: SessionId,
    name: String,
    signal: Arc<SessionSignal>,
    handle: SessionHandle,
    outbox: mpsc::Receiver<Delivery>,
    decoder: Decoder,
    state: State,
    version: Version,
    header_user: Option<String>,
    user: Option<String>,
    send_every: Option<Duration>,
    expect_every: Option<Duration>,
    started: Instant,
    last_read: Instant,
    last_write: Instant,
    pending: FuturesOrdered<BoxFuture<'static, Reply>>,
}

/// Runs one session to completion. `header_user` is the identity the upgrade request carried
/// in the trusted user header, already validated.
pub(crate) async fn serve<S>(inst: Arc<Instance>, ws: WebSocketStream<S>, header_user: Option<String>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let id = inst.next_session_id();
    let signal = Arc::new(SessionSignal::new(id));
    let (tx, outbox) = mpsc::channel(inst.settings.outbound_queue.max(1));
    let now = Instant::now();
    let mut session = Session {
        name: inst.session_name(id),
        decoder: Decoder::new(inst.settings.limits),
        handle: SessionHandle { outbox: tx, signal: signal.clone() },
        inst,
        ws,
        id,
        signal,
        outbox,
        state: State::AwaitingConnect,
        version: Version::V1_2,
        header_user,
        user: None,
        send_every: None,
        expect_every: None,
        started: now,
        last_read: now,
        last_write: now,
        pending: FuturesOrdered::new(),
    };
    let end = if session.inst.register_session(session.signal.clone()) {
        session.run().await
    } else {
        End::Close { code: CloseCode::Away, reason: "server shutting down", last: None }
    };
    // Stop fan-out to this session before spending time on the closing handshake.
    session.inst.remove_session(session.id);
    session.finish(end).await;
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn run(&mut self) -> End {
        loop {
            if self.signal.reason().is_some() {
                return self.on_signal();
            }
            // Answers that are already known (local receipts) go out before anything queued
            // later, so a client sees RECEIPT before the MESSAGEs its next frames cause.
            while let Some(Some(reply)) = self.pending.next().now_or_never() {
                if let Err(end) = self.on_reply(reply).await {
                    return end;
                }
            }
            let read_deadline = match (self.state, self.expect_every) {
                (State::AwaitingConnect, _) => self.started + CONNECT_TIMEOUT,
                (_, Some(every)) => self.last_read + every * SILENCE_INTERVALS,
                (_, None) => far_future(),
            };
            let beat_due = self.send_every.map(|every| self.last_write + every);
            let step = tokio::select! {
                _ = self.signal.closed() => continue,
                Some(reply) = self.pending.next(), if !self.pending.is_empty() => self.on_reply(reply).await,
                Some(first) = self.outbox.recv() => self.write_deliveries(first).await,
                msg = self.ws.next() => self.on_ws(msg).await,
                _ = tokio::time::sleep_until(read_deadline) => self.on_read_deadline().await,
                _ = tokio::time::sleep_until(beat_due.unwrap_or_else(far_future)), if beat_due.is_some() => {
                    self.write(vec![Message::text("\n")]).await
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    fn on_signal(&mut self) -> End {
        match self.signal.reason() {
            Some(CloseReason::SlowConsumer) => End::Error {
                frame: error_frame(
                    "slow consumer",
                    None,
                    "the outbound queue of this connection overflowed; messages were dropped",
                ),
                code: CloseCode::Again,
            },
            Some(CloseReason::Draining) | None => {
                End::Close { code: CloseCode::Away, reason: "server shutting down", last: None }
            }
        }
    }

    async fn on_read_deadline(&mut self) -> Result<(), End> {
        // A message may have arrived just as the deadline fired; it counts.
        if let Some(msg) = self.ws.next().now_or_never() {
            return self.on_ws(msg).await;
        }
        if self.state == State::AwaitingConnect {
            return Err(End::Error {
                frame: error_frame("no CONNECT frame received in time", None, ""),
                code: CloseCode::Policy,
            });
        }
        self.inst.metrics.heartbeat_timeouts.inc();
        tracing::info!(event = "heartbeat_timeout", session = %self.name);
        Err(End::Close { code: CloseCode::Policy, reason: "heart-beat timeout", last: None })
    }

    async fn on_ws(&mut self, msg: Option<Result<Message, WsError>>) -> Result<(), End> {
        self.last_read = Instant::now();
        let bytes = match msg {
            None => return Err(End::Gone),
            Some(Err(WsError::Capacity(e))) => {
                return Err(End::Error {
                    frame: error_frame("frame too large", None, &e.to_string()),
                    code: CloseCode::Size,
                });
            }
            Some(Err(_)) => return Err(End::Gone),
            Some(Ok(Message::Text(t))) => bytes::Bytes::from(t),
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(_))) => return Err(End::PeerClosed),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return Ok(()),
        };
        self.decoder.push(&bytes);
        loop {
            match self.decoder.next_item() {
                Ok(None) => return Ok(()),
                Ok(Some(Item::HeartBeat)) => {}
                Ok(Some(Item::Frame(frame))) => self.on_frame(frame).await?,
                Err(e) => {
                    let code = match e {
                        DecodeError::FrameTooLarge { .. } => CloseCode::Size,
                        _ => CloseCode::Protocol,
                    };
                    let message = match e {
                        DecodeError::FrameTooLarge { .. } => "frame too large",
                        _ => "malformed frame",
                    };
                    return Err(End::Error { frame: error_frame(message, None, &e.to_string()), code });
                }
            }
        }
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), End> {
        match (self.state, frame.command) {
            (State::Disconnecting, _) => Ok(()),
            (State::AwaitingConnect, Command::Connect | Command::Stomp) => self.on_connect(&frame).await,
            (State::AwaitingConnect, other) => Err(protocol_error(&frame, &format!("expected CONNECT, got {other}"))),
            (State::Open, Command::Send) => self.on_send(frame),
            (State::Open, Command::Subscribe) => self.on_subscribe(&frame),
            (State::Open, Command::Unsubscribe) => self.on_unsubscribe(&frame),
            // Every subscription is auto-acknowledged: ACK/NACK are accepted and only receipted.
            (State::Open, Command::Ack | Command::Nack) => self.receipt_now(&frame),
            (State::Open, Command::Disconnect) => {
                self.state = State::Disconnecting;
                let receipt = frame.get("receipt").map(str::to_owned);
                self.pending.push_back(std::future::ready(Reply::Disconnect(receipt)).boxed());
                Ok(())
            }
            (State::Open, Command::Begin | Command::Commit | Command::Abort) => {
                Err(protocol_error(&frame, "transactions are not supported"))
            }
            (State::Open, Command::Connect | Command::Stomp) => Err(protocol_error(&frame, "already connected")),
            (State::Open, other) => Err(protocol_error(&frame, &format!("{other} is a server frame"))),
        }
    }

    async fn on_connect(&mut self, frame: &Frame) -> Result<(), End> {
        let Some(version) = Version::negotiate(frame.get("accept-version")) else {
            let mut err = protocol_error(frame, "no supported protocol version");
            if let End::Error { frame, .. } = &mut err {
                frame.headers.push(("version".into(), "1.0,1.1,1.2".into()));
            }
            return Err(err);
        };
        let Some(client_beats) = parse_heart_beat(frame.get("heart-beat")) else {
            return Err(protocol_error(frame, "invalid heart-beat header"));
        };
        let user = match (&self.header_user, frame.get("login")) {
            (Some(u), _) => Some(u.clone()),
            (None, Some(login)) if is_valid_user_id(login) => Some(login.to_owned()),
            (None, Some(_)) => return Err(protocol_error(frame, "invalid login")),
            (None, None) => None,
        };
        let server_ms = self.inst.settings.heartbeat.as_millis() as u64;
        let (send_every, expect_every) = negotiate_heart_beat(server_ms, client_beats);
        self.version = version;
        self.decoder.set_version(version);
        self.send_every = send_every;
        self.expect_every = expect_every;
        self.state = State::Open;

        let beats = format!("{server_ms},{server_ms}");
        let mut connected = Frame::new(Command::Connected)
            .header("version", version.as_str())
            .header("heart-beat", beats)
            .header("server", concat!("tether/", env!("CARGO_PKG_VERSION")))
            .header("session", self.name.clone())
            .header("tether-instance", &*self.inst.id);
        if let Some(u) = &user {
            connected = connected.header("user-name", u.clone());
        }
        tracing::debug!(event = "stomp_connected", session = %self.name, version = version.as_str(), user = user.as_deref());
        self.user = user;
        self.write_frame(&connected).await
    }

    fn on_send(&mut self, frame: Frame) -> Result<(), End> {
        let Some(destination) = frame.get("destination") else {
            return Err(protocol_error(&frame, "SEND without destination"));
        };
        if frame.get("transaction").is_some() {
            return Err(protocol_error(&frame, "transactions are not supported"));
        }
        let envelope = Envelope {
            origin: self.inst.nonce,
            instance: self.inst.id.clone(),
            id: self.inst.next_message_id(),
            destination: destination.to_owned(),
            sender: self.user.clone(),
            content_type: frame.get("content-type").map(str::to_owned),
            headers: frame.headers.iter().filter(|(n, _)| !RESERVED_HEADERS.contains(&n.as_str())).cloned().collect(),
            body: frame.body.clone(),
            published_at_ms: unix_ms(),
        };
        if frame.get("receipt").is_some() {
            self.check_pending(&frame)?;
        }
        let ack = self.inst.publish(envelope, Source::Stomp);
        if let Some(receipt) = frame.get("receipt") {
            let receipt = receipt.to_owned();
            self.pending.push_back(
                async move {
                    match tokio::time::timeout(CONFIRM_TIMEOUT, ack).await {
                        Ok(Ok(())) => Reply::Receipt(receipt),
                        Ok(Err(error)) => Reply::SendFailed { receipt, error },
                        Err(_) => Reply::SendFailed { receipt, error: BrokerError::Timeout },
                    }
                }
                .boxed(),
            );
        }
        Ok(())
    }

    fn on_subscribe(&mut self, frame: &Frame) -> Result<(), End> {
        let Some(destination) = frame.get("destination") else {
            return Err(protocol_error(frame, "SUBSCRIBE without destination"));
        };
        // STOMP 1.0 made `id` optional; the destination then names the subscription.
        let id = match (frame.get("id"), self.version) {
            (Some(id), _) => id,
            (None, Version::V1_0) => destination,
            (None, _) => return Err(protocol_error(frame, "SUBSCRIBE without id")),
        };
        let key = if destination.starts_with(USER_PREFIX) {
            // Anonymous sessions get their own session name as user name (Spring does the same),
            // so `/user/{session}/...` still reaches exactly them.
            subscription_key(destination, self.user.as_deref().unwrap_or(&self.name))
        } else {
            destination.to_owned()
        };
        let sub = Subscriber {
            session: self.id,
            id: id.into(),
            destination: destination.into(),
            handle: self.handle.clone(),
        };
        if let Err(e) = self.inst.subscribe(&key, sub) {
            return Err(protocol_error(frame, &e.to_string()));
        }
        self.receipt_after_sync(frame)
    }

    fn on_unsubscribe(&mut self, frame: &Frame) -> Result<(), End> {
        let id = match (frame.get("id"), self.version) {
            (Some(id), _) => id,
            (None, Version::V1_0) => match frame.get("destination") {
                Some(d) => d,
                None => return Err(protocol_error(frame, "UNSUBSCRIBE without id")),
            },
            (None, _) => return Err(protocol_error(frame, "UNSUBSCRIBE without id")),
        };
        // Unknown ids are not an error: the subscription may already be gone.
        self.inst.unsubscribe(self.id, id);
        self.receipt_after_sync(frame)
    }

    /// Queues a RECEIPT that is sent once the broker has applied this subscription change, so
    /// "received after the RECEIPT" holds across instances. During a Redis outage the receipt is
    /// still sent (sync fails fast): the subscription is live locally and is resubscribed on
    /// reconnect, which `/healthz` reports.
    fn receipt_after_sync(&mut self, frame: &Frame) -> Result<(), End> {
        if let Some(receipt) = frame.get("receipt") {
            self.check_pending(frame)?;
            let receipt = receipt.to_owned();
            let sync = self.inst.broker_sync();
            self.pending.push_back(
                async move {
                    let _ = tokio::time::timeout(CONFIRM_TIMEOUT, sync).await;
                    Reply::Receipt(receipt)
                }
                .boxed(),
            );
        }
        Ok(())
    }

    fn receipt_now(&mut self, frame: &Frame) -> Result<(), End> {
        if let Some(receipt) = frame.get("receipt") {
            self.check_pending(frame)?;
            self.pending.push_back(std::future::ready(Reply::Receipt(receipt.to_owned())).boxed());
        }
        Ok(())
    }

    fn check_pending(&self, frame: &Frame) -> Result<(), End> {
        if self.pending.len() >= MAX_PENDING_REPLIES {
            return Err(protocol_error(frame, "too many outstanding receipts"));
        }
        Ok(())
    }

    async fn on_reply(&mut self, reply: Reply) -> Result<(), End> {
        match reply {
            Reply::Receipt(id) => self.write_frame(&Frame::new(Command::Receipt).header("receipt-id", id)).await,
            // STOMP: a server that cannot process a SEND answers ERROR and closes. A RECEIPT
            // here would claim delivery to other instances that did not happen.
            Reply::SendFailed { receipt, error } => Err(End::Error {
                frame: error_frame("message not delivered to other instances", Some(&receipt), &error.to_string()),
                code: CloseCode::Again,
            }),
            Reply::Disconnect(receipt) => Err(End::Close {
                code: CloseCode::Normal,
                reason: "disconnected",
                last: receipt.map(|r| Frame::new(Command::Receipt).header("receipt-id", r)),
            }),
        }
    }

    async fn write_deliveries(&mut self, first: Delivery) -> Result<(), End> {
        let mut batch = Vec::with_capacity(8);
        batch.push(message_ws(&first, self.version));
        while batch.len() < WRITE_BATCH {
            match self.outbox.try_recv() {
                Ok(d) => batch.push(message_ws(&d, self.version)),
                Err(_) => break,
            }
        }
        self.write(batch).await
    }

    async fn write_frame(&mut self, frame: &Frame) -> Result<(), End> {
        let bytes = stomp::to_bytes(frame, self.version);
        self.write(vec![text_message(bytes)]).await
    }

    async fn write(&mut self, messages: Vec<Message>) -> Result<(), End> {
        let ws = &mut self.ws;
        let io = async move {
            for m in messages {
                ws.feed(m).await?;
            }
            ws.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, io).await {
            Ok(Ok(())) => {
                self.last_write = Instant::now();
                Ok(())
            }
            Ok(Err(_)) | Err(_) => Err(End::Gone),
        }
    }

    async fn finish(mut self, end: End) {
        let (last, close) = match end {
            End::Gone => return,
            End::PeerClosed => (None, None),
            End::Error { frame, code } => {
                if code != CloseCode::Again && code != CloseCode::Policy {
                    self.inst.metrics.protocol_errors.inc();
                }
                tracing::info!(event = "stomp_error", session = %self.name, message = frame.get("message").unwrap_or(""));
                (Some(frame), Some((code, "")))
            }
            End::Close { code, reason, last } => (last, Some((code, reason))),
        };
        let version = self.version;
        let ws = &mut self.ws;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async move {
            if let Some(frame) = last {
                let _ = ws.feed(text_message(stomp::to_bytes(&frame, version))).await;
            }
            let close = close.map(|(code, reason)| CloseFrame { code, reason: reason.into() });
            // After a peer's Close this flushes tungstenite's queued reply instead.
            let _ = ws.close(close).await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}

fn far_future() -> Instant {
    // About thirty years: tokio's own "never" for timers.
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

/// A text message when `bytes` are UTF-8 (STOMP frames usually are), else a binary one.
fn text_message(bytes: Vec<u8>) -> Message {
    match String::from_utf8(bytes) {
        Ok(s) => Message::text(s),
        Err(e) => Message::binary(e.into_bytes()),
    }
}

/// Encodes one MESSAGE frame for a delivery.
fn message_ws(d: &Delivery, version: Version) -> Message {
    let e = &d.envelope;
    let len = e.body.len().to_string();
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(8 + e.headers.len());
    headers.push(("subscription", &d.subscription));
    headers.push(("message-id", &e.id));
    headers.push(("destination", &d.destination));
    if let Some(ct) = &e.content_type {
        headers.push(("content-type", ct));
    }
    headers.push(("content-length", &len));
    headers.push(("tether-instance", &e.instance));
    if let Some(sender) = &e.sender {
        headers.push(("tether-user", sender));
    }
    headers.extend(e.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let mut out = Vec::with_capacity(128 + e.body.len());
    stomp::encode_head(Command::Message, headers, version, &mut out);
    out.extend_from_slice(&e.body);
    out.push(0);
    if d.text { text_message(out) } else { Message::binary(out) }
}

fn error_frame(message: &str, receipt: Option<&str>, detail: &str) -> Frame {
    let mut f = Frame::new(Command::Error).header("message", message).header("content-type", "text/plain");
    if let Some(r) = receipt {
        f = f.header("receipt-id", r);
    }
    f.body(detail.to_owned())
}

fn protocol_error(frame: &Frame, message: &str) -> End {
    End::Error { frame: error_frame(message, frame.get("receipt"), ""), code: CloseCode::Protocol }
}

/// Parses a `heart-beat` header `cx,cy` (milliseconds). A missing header is `0,0`.
pub(crate) fn parse_heart_beat(value: Option<&str>) -> Option<(u64, u64)> {
    let Some(v) = value else {
        return Some((0, 0));
    };
    let (a, b) = v.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// STOMP heart-beat negotiation. The server offers `server_ms` both ways; the client said it can
/// send every `cx` and wants to receive every `cy`. Returns (how often we send, how often we
/// expect to hear from the client); None disables that direction.
pub(crate) fn negotiate_heart_beat(server_ms: u64, (cx, cy): (u64, u64)) -> (Option<Duration>, Option<Duration>) {
    let agreed = |ours: u64, theirs: u64| (ours > 0 && theirs > 0).then(|| Duration::from_millis(ours.max(theirs)));
    (agreed(server_ms, cy), agreed(server_ms, cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heart_beats_are_negotiated_per_spec() {
        let ms = Duration::from_millis;
        assert_eq!(negotiate_heart_beat(10_000, (10_000, 10_000)), (Some(ms(10_000)), Some(ms(10_000))));
        // The slower side wins in each direction.
        assert_eq!(negotiate_heart_beat(1_000, (5_000, 200)), (Some(ms(1_000)), Some(ms(5_000))));
        // Zero on either side disables that direction.
        assert_eq!(negotiate_heart_beat(1_000, (0, 500)), (Some(ms(1_000)), None));
        assert_eq!(negotiate_heart_beat(0, (500, 500)), (None, None));
    }

    #[test]
    fn heart_beat_header_parsing() {
        assert_eq!(parse_heart_beat(None), Some((0, 0)));
        assert_eq!(parse_heart_beat(Some("100, 200")), Some((100, 200)));
        assert_eq!(parse_heart_beat(Some("100")), None);
        assert_eq!(parse_heart_beat(Some("-1,5")), None);
    }

    #[test]
    fn message_frames_carry_subscription_specific_headers_and_user_headers() {
        let d = Delivery {
            envelope: Arc::new(Envelope {
                origin: 1,
                instance: "app-1".into(),
                id: "0000000000000001-7".into(),
                destination: "/user/alice/queue/x".into(),
                sender: Some("bob".into()),
                content_type: Some("text/plain".into()),
                headers: vec![("x-k".into(), "a:b".into())],
                body: bytes::Bytes::from_static(b"hi\0there"),
                published_at_ms: 0,
            }),
            subscription: "sub-1".into(),
            destination: "/user/queue/x".into(),
            text: true,
        };
        let Message::Text(t) = message_ws(&d, Version::V1_2) else {
            panic!("expected a text message");
        };
        assert_eq!(
            t.as_str(),
            "MESSAGE\nsubscription:sub-1\nmessage-id:0000000000000001-7\ndestination:/user/queue/x\n\
             content-type:text/plain\ncontent-length:8\ntether-instance:app-1\ntether-user:bob\n\
             x-k:a\\cb\n\nhi\0there\0"
        );
    }
}
