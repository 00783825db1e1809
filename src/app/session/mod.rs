//! One STOMP session, from the first byte after the upgrade (or the SockJS open) to the close:
//! CONNECT negotiation (version, heart-beats, identity), frame handling, subscriptions and
//! their acknowledgements, transactions, receipts, heart-beats both ways, the bounded outbound
//! queue, resuming subscriptions (`x-resume-from`: replay from the record, then live), the
//! publish rate limit, and closing (ERROR, drain, slow consumer).
//!
//! One task owns the transport ([`Link`]) and does all of it in one `select!` loop. Nothing in
//! the loop waits on the broker: every answer that depends on it (a RECEIPT, or the ERROR for a
//! SEND or SUBSCRIBE the broker refused) is a future queued in frame order and written when it
//! resolves, so a Redis outage never stalls reading, writing or heart-beats. Framing is
//! `stomp`'s job, fan-out bookkeeping is `instance`'s; the pure parts live in [`ack`],
//! [`transaction`] and [`frames`]. This module must not parse bytes itself or touch other
//! sessions.

mod ack;
mod frames;
mod identity;
mod link;
mod publish;
mod rate;
mod transaction;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, FuturesUnordered};
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub(crate) use link::Link;

use self::ack::{AckMode, Acks};
use self::identity::Identity;
use self::link::Incoming;
use self::rate::RateLimit;
use self::transaction::Transactions;
use super::broker::{BrokerError, Envelope};
use super::history::seam::{Next, Out, Overflow, Seam};
use super::history::{REPLAY_PAGE, Start, StreamId};
use super::hub::{SessionId, USER_PREFIX, subscription_key};
use super::instance::{CloseReason, Instance, Member, SessionSignal};
use super::message::{OutFrame, Prepared, RESUME_FROM_HEADER, RESUME_GAP_HEADER, STREAM_ID_HEADER, SubLines};
use super::outbox::{self, Queued};
use super::stomp::{self, Command, DecodeError, Decoder, Frame, Item, Version};

/// A client must send CONNECT this soon after the upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// STOMP 1.2 leaves the tolerance to the implementation; a peer silent for three agreed
/// intervals is closed, which absorbs one lost and one late heart-beat (10 s beats: a dead peer
/// is noticed within 30 s).
const SILENCE_INTERVALS: u32 = 3;
/// Answers a session may have queued. At this many the session stops reading until the broker
/// catches up: backpressure on a client that sends faster than the broker confirms.
const MAX_PENDING_REPLIES: usize = 1024;
/// MESSAGE frames written per flush.
const WRITE_BATCH: usize = 64;
/// SEND headers that are protocol or server-set, never passed through to MESSAGE.
const RESERVED_HEADERS: [&str; 14] = [
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
    "redis-channel",
    STREAM_ID_HEADER,
    RESUME_GAP_HEADER,
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
    /// Done; send a RECEIPT when the frame asked for one.
    Done(Option<String>),
    /// The broker or the application refused it: ERROR naming `receipt`, then close.
    Failed {
        message: &'static str,
        receipt: Option<String>,
        detail: String,
    },
    Disconnect(Option<String>),
}

/// A subscription of this session.
struct Sub {
    /// The hub key it is registered under.
    key: Arc<str>,
    mode: AckMode,
    /// Its `subscription` and `destination` header lines, escaped for the session's version.
    lines: SubLines,
    /// Where it stands in its destination's stream (replaying, or live).
    seam: Seam<Arc<Prepared>>,
}

/// A page of a resumed subscription's record: `None` when the live subscription was not
/// confirmed (that is answered as the SUBSCRIBE's failure).
type ReplayPage = (u64, Option<Result<Vec<Arc<Envelope>>, BrokerError>>);

struct Session {
    inst: Arc<Instance>,
    link: Link,
    id: SessionId,
    name: String,
    signal: Arc<SessionSignal>,
    /// What the registry holds for each of this session's subscriptions.
    member: Member,
    outbox: outbox::Receiver,
    decoder: Decoder,
    state: State,
    version: Version,
    header_user: Option<String>,
    /// Decided at CONNECT (`identity`).
    identity: Option<Identity>,
    /// The user others see (`None`: anonymous), from `identity`.
    user: Option<String>,
    /// Subscription numbers by STOMP id.
    ids: HashMap<Arc<str>, u64>,
    /// Subscriptions by number (what deliveries name).
    subs: HashMap<u64, Sub>,
    /// Pages being read for resuming subscriptions.
    replays: FuturesUnordered<BoxFuture<'static, ReplayPage>>,
    /// `--max-publish-rate`.
    rate: Option<RateLimit>,
    acks: Acks,
    transactions: Transactions,
    send_every: Option<Duration>,
    expect_every: Option<Duration>,
    started: Instant,
    last_read: Instant,
    last_write: Instant,
    pending: FuturesOrdered<BoxFuture<'static, Reply>>,
}

/// Runs one session to completion. `header_user` is the identity the upgrade request carried
/// in the user header, already validated, and only when a trusted proxy sent it.
pub(crate) async fn serve(inst: Arc<Instance>, link: Link, header_user: Option<String>) {
    let id = inst.next_session_id();
    let signal = Arc::new(SessionSignal::new(id));
    let (tx, outbox) = outbox::channel(inst.settings.outbound_bytes);
    let now = Instant::now();
    let mut session = Session {
        name: inst.session_name(id),
        decoder: Decoder::new(inst.settings.limits),
        member: Member { session: id, outbox: tx, signal: signal.clone() },
        rate: inst.settings.max_publish_rate.map(|n| RateLimit::new(n, now.into_std())),
        acks: Acks::new(inst.settings.max_unacked),
        inst,
        link,
        id,
        signal,
        outbox,
        state: State::AwaitingConnect,
        version: Version::V1_2,
        header_user,
        identity: None,
        user: None,
        ids: HashMap::new(),
        subs: HashMap::new(),
        replays: FuturesUnordered::new(),
        transactions: Transactions::default(),
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
    for (seq, sub) in session.subs.drain() {
        session.inst.unsubscribe(&sub.key, seq);
    }
    session.inst.remove_session(session.id);
    session.finish(end).await;
}

impl Session {
    async fn run(&mut self) -> End {
        loop {
            if self.signal.reason().is_some() {
                return self.on_signal();
            }
            // Answers that are already known go out before anything queued later, so a client
            // sees RECEIPT before the MESSAGEs its next frames cause.
            while let Some(Some(reply)) = self.pending.next().now_or_never() {
                if let Err(end) = self.on_reply(reply).await {
                    return end;
                }
            }
            let reading = self.pending.len() < MAX_PENDING_REPLIES;
            if !reading {
                // Not reading is our choice: the client's silence meanwhile is not its fault.
                self.last_read = Instant::now();
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
                Some((seq, page)) = self.replays.next(), if !self.replays.is_empty() => self.on_replay(seq, page).await,
                msg = self.link.recv(), if reading => self.on_incoming(msg).await,
                _ = tokio::time::sleep_until(read_deadline), if reading => self.on_read_deadline(),
                _ = tokio::time::sleep_until(beat_due.unwrap_or_else(far_future)), if beat_due.is_some() => {
                    self.write(vec![OutFrame::heart_beat()]).await
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    fn on_signal(&mut self) -> End {
        match self.signal.reason() {
            Some(CloseReason::SlowConsumer) => slow_consumer("the outbound queue of this connection overflowed"),
            Some(CloseReason::Draining) | None => {
                End::Close { code: CloseCode::Away, reason: "server shutting down", last: None }
            }
        }
    }

    fn on_read_deadline(&mut self) -> Result<(), End> {
        if self.state == State::AwaitingConnect {
            return Err(End::Error {
                frame: frames::error("no CONNECT frame received in time", None, ""),
                code: CloseCode::Policy,
            });
        }
        self.inst.metrics.heartbeat_timeouts.inc();
        tracing::info!(event = "heartbeat_timeout", session = %self.name);
        Err(End::Close { code: CloseCode::Policy, reason: "heart-beat timeout", last: None })
    }

    async fn on_incoming(&mut self, msg: Incoming) -> Result<(), End> {
        self.last_read = Instant::now();
        let bytes = match msg {
            Incoming::Data(b) => b,
            Incoming::Nothing => return Ok(()),
            Incoming::Gone => return Err(End::Gone),
            Incoming::Closed => return Err(End::PeerClosed),
            Incoming::TooLarge(e) => {
                return Err(End::Error { frame: frames::error("frame too large", None, &e), code: CloseCode::Size });
            }
        };
        self.decoder.push(&bytes);
        loop {
            match self.decoder.next_item() {
                Ok(None) => return Ok(()),
                Ok(Some(Item::HeartBeat)) => {}
                Ok(Some(Item::Frame(frame))) => self.on_frame(frame).await?,
                Err(e) => {
                    let (message, code) = match e {
                        DecodeError::FrameTooLarge { .. } => ("frame too large", CloseCode::Size),
                        _ => ("malformed frame", CloseCode::Protocol),
                    };
                    return Err(End::Error { frame: frames::error(message, None, &e.to_string()), code });
                }
            }
        }
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), End> {
        match (self.state, frame.command) {
            (State::Disconnecting, _) => Ok(()),
            (State::AwaitingConnect, Command::Connect | Command::Stomp) => self.on_connect(&frame).await,
            (State::AwaitingConnect, other) => Err(protocol_error(&frame, &format!("expected CONNECT, got {other}"))),
            (State::Open, Command::Send | Command::Ack | Command::Nack) if frame.get("transaction").is_some() => {
                let tx = frame.get("transaction").unwrap_or_default().to_owned();
                let receipt = frame.get("receipt").map(str::to_owned);
                if let Err(e) = self.transactions.hold(&tx, frame.clone()) {
                    return Err(protocol_error(&frame, &e.to_string()));
                }
                self.reply_now(receipt);
                Ok(())
            }
            (State::Open, Command::Send) => self.on_send(frame),
            (State::Open, Command::Subscribe) => self.on_subscribe(&frame),
            (State::Open, Command::Unsubscribe) => self.on_unsubscribe(&frame),
            (State::Open, Command::Ack | Command::Nack) => {
                self.on_ack(&frame)?;
                self.reply_now(frame.get("receipt").map(str::to_owned));
                Ok(())
            }
            (State::Open, Command::Begin | Command::Commit | Command::Abort) => self.on_transaction(&frame),
            (State::Open, Command::Disconnect) => {
                self.state = State::Disconnecting;
                self.transactions.abort_all();
                let receipt = frame.get("receipt").map(str::to_owned);
                self.pending.push_back(std::future::ready(Reply::Disconnect(receipt)).boxed());
                Ok(())
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
        let Some(client_beats) = frames::parse_heart_beat(frame.get("heart-beat")) else {
            return Err(protocol_error(frame, "invalid heart-beat header"));
        };
        let identity = match identity::decide(&self.inst.settings.trust, frame, self.header_user.as_deref()) {
            Ok(identity) => identity,
            Err(refused) => {
                if let identity::Refused::Token(e) = &refused {
                    self.inst.metrics.count_token_rejection(e.label());
                }
                // Policy (1008): the client is refused, not broken.
                let frame = frames::error(refused.message(), frame.get("receipt"), &refused.to_string());
                return Err(End::Error { frame, code: CloseCode::Policy });
            }
        };
        let user = identity.user().map(str::to_owned);
        let server_ms = self.inst.settings.heartbeat.as_millis() as u64;
        let (send_every, expect_every) = frames::negotiate_heart_beat(server_ms, client_beats);
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
        self.identity = Some(identity);
        self.write(vec![OutFrame::checked(stomp::to_bytes(&connected, self.version))]).await
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
        let Some(mode) = AckMode::parse(frame.get("ack")) else {
            return Err(protocol_error(frame, "ack must be auto, client or client-individual"));
        };
        let resume = match frame.get(RESUME_FROM_HEADER) {
            None => None,
            Some(v) => match StreamId::parse(v.trim()) {
                Some(id) => Some(id),
                None => {
                    return Err(protocol_error(
                        frame,
                        "invalid x-resume-from: give the x-stream-id of the last MESSAGE received",
                    ));
                }
            },
        };
        if self.ids.contains_key(id) {
            return Err(protocol_error(frame, &format!("subscription id {id:?} is already in use on this connection")));
        }
        let limit = self.inst.settings.max_subscriptions;
        if self.ids.len() >= limit {
            return Err(protocol_error(frame, &format!("too many subscriptions on this connection (limit {limit})")));
        }
        let key: Arc<str> = if destination.starts_with(USER_PREFIX) {
            // Anonymous sessions have a random name that nobody else learns, so their user
            // destinations reach exactly them.
            let name = self.identity.as_ref().map_or(self.name.as_str(), Identity::routing_name);
            subscription_key(destination, name).into()
        } else {
            destination.into()
        };
        let seq = self.inst.next_subscription_seq();
        let confirmed = self.inst.subscribe(&key, seq, self.member.clone());
        let receipt = frame.get("receipt").map(str::to_owned);
        let lines = SubLines::new(id, destination, self.version);
        let (seam, start) = match resume {
            None => (Seam::live(), None),
            Some(cursor) => {
                // Live messages wait while the record is read: as much as the outbound queue.
                let (seam, start) = Seam::resume(cursor, self.inst.settings.outbound_bytes);
                (seam, Some(start))
            }
        };
        self.ids.insert(id.into(), seq);
        self.subs.insert(seq, Sub { key: key.clone(), mode, lines, seam });
        // RECEIPT means "from now on you receive this destination on every instance"; when the
        // broker cannot confirm that, the answer is an ERROR (and the session ends, taking the
        // subscription with it).
        match start {
            None => self.answer_after(receipt, confirmed, "subscription not confirmed"),
            Some(start) => {
                // The record is read only once the live subscription is confirmed: whatever is
                // published later arrives live, so replay and live overlap instead of leaving
                // a hole, and the seam drops the overlap.
                let confirmed = confirmed.shared();
                self.answer_after(receipt, confirmed.clone(), "subscription not confirmed");
                let inst = self.inst.clone();
                self.replays.push(
                    async move {
                        match confirmed.await {
                            Ok(()) => (seq, Some(inst.replay(&key, start, REPLAY_PAGE).await)),
                            Err(_) => (seq, None),
                        }
                    }
                    .boxed(),
                );
            }
        }
        Ok(())
    }

    /// Queues the answer to a frame that waits on the broker: its RECEIPT (when asked for)
    /// once `confirmed` resolves, else an ERROR `failure` naming the cause.
    fn answer_after(
        &mut self,
        receipt: Option<String>,
        confirmed: impl std::future::Future<Output = Result<(), BrokerError>> + Send + 'static,
        failure: &'static str,
    ) {
        let timeout = self.inst.settings.confirm_timeout;
        self.pending.push_back(
            async move {
                match tokio::time::timeout(timeout, confirmed).await.unwrap_or(Err(BrokerError::Timeout)) {
                    Ok(()) => Reply::Done(receipt),
                    Err(e) => Reply::Failed { message: failure, receipt, detail: e.to_string() },
                }
            }
            .boxed(),
        );
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
        // Unknown ids are not an error: the subscription may already be gone. Deliveries
        // still queued for it are dropped when written (their seq no longer matches).
        if let Some(seq) = self.ids.remove(id) {
            self.acks.forget(seq);
            if let Some(sub) = self.subs.remove(&seq) {
                self.inst.unsubscribe(&sub.key, seq);
            }
        }
        self.reply_now(frame.get("receipt").map(str::to_owned));
        Ok(())
    }

    fn on_ack(&mut self, frame: &Frame) -> Result<(), End> {
        let Some(id) = frame.get("id").or_else(|| frame.get("message-id")) else {
            return Err(protocol_error(frame, &format!("{} without id", frame.command)));
        };
        match self.acks.settle(id) {
            Ok(_) if frame.command == Command::Nack => self.inst.metrics.nacks.inc(),
            Ok(_) => self.inst.metrics.acks.inc(),
            Err(e) => return Err(protocol_error(frame, &e.to_string())),
        };
        Ok(())
    }

    fn on_transaction(&mut self, frame: &Frame) -> Result<(), End> {
        let Some(tx) = frame.get("transaction") else {
            return Err(protocol_error(frame, &format!("{} without transaction", frame.command)));
        };
        let result = match frame.command {
            Command::Begin => self.transactions.begin(tx),
            Command::Abort => self.transactions.abort(tx),
            _ => match self.transactions.commit(tx) {
                Ok(held) => {
                    for mut f in held {
                        // Its RECEIPT went out when it was held.
                        f.headers.retain(|(n, _)| n != "receipt");
                        match f.command {
                            Command::Send => self.on_send(f)?,
                            _ => self.on_ack(&f)?,
                        }
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            return Err(protocol_error(frame, &e.to_string()));
        }
        // After a COMMIT, this follows the answers of the SENDs it released.
        self.reply_now(frame.get("receipt").map(str::to_owned));
        Ok(())
    }

    /// Queues a RECEIPT (if asked for) behind the answers already queued.
    fn reply_now(&mut self, receipt: Option<String>) {
        if receipt.is_some() {
            self.pending.push_back(std::future::ready(Reply::Done(receipt)).boxed());
        }
    }

    async fn on_reply(&mut self, reply: Reply) -> Result<(), End> {
        match reply {
            Reply::Done(None) => Ok(()),
            Reply::Done(Some(id)) => {
                let receipt = Frame::new(Command::Receipt).header("receipt-id", id);
                self.write(vec![OutFrame::checked(stomp::to_bytes(&receipt, self.version))]).await
            }
            // STOMP: a server that cannot process a frame answers ERROR and closes. A RECEIPT
            // here would claim something that did not happen.
            Reply::Failed { message, receipt, detail } => {
                Err(End::Error { frame: frames::error(message, receipt.as_deref(), &detail), code: CloseCode::Again })
            }
            Reply::Disconnect(receipt) => Err(End::Close {
                code: CloseCode::Normal,
                reason: "disconnected",
                last: receipt.map(|r| Frame::new(Command::Receipt).header("receipt-id", r)),
            }),
        }
    }

    async fn write_deliveries(&mut self, first: Queued) -> Result<(), End> {
        let mut batch = Vec::with_capacity(8);
        let mut next = Some(first);
        let mut ended = None;
        while let Some(queued) = next.take() {
            let d = match queued {
                Queued::Message(d) => d,
                Queued::Interrupted(seq) => {
                    // Live messages wait while the record is read: as much as the outbound queue.
                    let limit = self.inst.settings.outbound_bytes;
                    if let Some(sub) = self.subs.get_mut(&seq) {
                        sub.seam.hold(limit);
                    }
                    next = self.outbox.try_recv();
                    continue;
                }
                Queued::Restored(seq) => {
                    if let Some((key, start)) =
                        self.subs.get_mut(&seq).and_then(|sub| Some((sub.key.clone(), sub.seam.resync()?)))
                    {
                        self.fetch_page(seq, key, start);
                    }
                    next = self.outbox.try_recv();
                    continue;
                }
            };
            // Only for the SUBSCRIBE it was queued for: not after its UNSUBSCRIBE, not for a
            // later subscription that reuses the id.
            if let Some(sub) = self.subs.get_mut(&d.seq) {
                let out = match sub.seam.on_live(d.message) {
                    Ok(out) => out,
                    Err(Overflow) => {
                        ended =
                            Some(slow_consumer("too many messages arrived while a subscription replayed its history"));
                        break;
                    }
                };
                if let Some(out) = out {
                    match message_frame(&mut self.acks, self.version, d.seq, sub, out) {
                        Ok(frame) => batch.push(frame),
                        Err(end) => {
                            ended = Some(end);
                            break;
                        }
                    }
                }
            }
            if batch.len() < WRITE_BATCH {
                next = self.outbox.try_recv();
            }
        }
        self.write_then(batch, ended).await
    }

    /// Writes `batch` (what was due before a session-ending condition), then ends with
    /// `ended` if set.
    async fn write_then(&mut self, batch: Vec<OutFrame>, ended: Option<End>) -> Result<(), End> {
        if !batch.is_empty() {
            self.write(batch).await?;
        }
        ended.map_or(Ok(()), Err)
    }

    /// A page of a resumed subscription's record arrived: write what the seam hands out, read
    /// on or go live.
    async fn on_replay(&mut self, seq: u64, page: Option<Result<Vec<Arc<Envelope>>, BrokerError>>) -> Result<(), End> {
        // Unsubscribed meanwhile, or not confirmed (answered as the SUBSCRIBE's failure).
        let (Some(sub), Some(page)) = (self.subs.get_mut(&seq), page) else {
            return Ok(());
        };
        let page = page.map_err(|e| End::Error {
            frame: frames::error("history not available", None, &e.to_string()),
            code: CloseCode::Again,
        })?;
        let prepared = page.into_iter().map(|e| Arc::new(Prepared::new(e))).collect();
        let (outs, next) = sub.seam.on_page(prepared, REPLAY_PAGE);
        if let Next::Fetch(start) = next {
            let key = sub.key.clone();
            self.fetch_page(seq, key, start);
        }
        let Some(sub) = self.subs.get_mut(&seq) else { return Ok(()) };
        let mut batch = Vec::with_capacity(outs.len());
        let mut ended = None;
        for out in outs {
            match message_frame(&mut self.acks, self.version, seq, sub, out) {
                Ok(frame) => batch.push(frame),
                Err(end) => {
                    ended = Some(end);
                    break;
                }
            }
        }
        self.write_then(batch, ended).await
    }

    fn fetch_page(&mut self, seq: u64, key: Arc<str>, start: Start) {
        let inst = self.inst.clone();
        self.replays.push(async move { (seq, Some(inst.replay(&key, start, REPLAY_PAGE).await)) }.boxed());
    }

    async fn write(&mut self, frames: Vec<OutFrame>) -> Result<(), End> {
        match self.link.send(frames).await {
            Ok(()) => {
                self.last_write = Instant::now();
                Ok(())
            }
            Err(()) => Err(End::Gone),
        }
    }

    async fn finish(mut self, end: End) {
        let (last, close) = match end {
            End::Gone => {
                self.link.abandon();
                return;
            }
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
        let last = last.map(|f| OutFrame::checked(stomp::to_bytes(&f, self.version)));
        self.link.close(last, close).await;
    }
}

/// The MESSAGE for one delivery of subscription `seq`, with its `ack` header when the
/// subscription is client-acknowledged.
fn message_frame(
    acks: &mut Acks,
    version: Version,
    seq: u64,
    sub: &Sub,
    out: Out<Arc<Prepared>>,
) -> Result<OutFrame, End> {
    let ack = match acks.deliver(seq, sub.mode) {
        Ok(ack) => ack,
        Err(ack::Overflow) => {
            return Err(slow_consumer("too many messages are waiting for an ACK on this connection"));
        }
    };
    Ok(out.message.frame(version, &sub.lines, ack.as_deref(), out.gap))
}

fn far_future() -> Instant {
    // About thirty years: tokio's own "never" for timers.
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

fn protocol_error(frame: &Frame, message: &str) -> End {
    End::Error { frame: frames::error(message, frame.get("receipt"), ""), code: CloseCode::Protocol }
}

fn slow_consumer(detail: &str) -> End {
    End::Error { frame: frames::error("slow consumer", None, detail), code: CloseCode::Again }
}
