//! One backend instance's shared state: identity, the subscriber registry (`fanout`), the
//! broker handle, metrics, the session registry and the readiness flag, plus fan-out:
//! publishing goes to the broker, and whatever the broker hands back (this instance's own
//! messages included) is encoded once and queued to the local subscribers.
//!
//! Everything here is synchronous and non-blocking: it is called from session tasks, HTTP
//! handlers and the broker's receive task. Locks are held for bookkeeping only, never across an
//! `.await`. It must not touch sockets.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::broker::{Ack, Broker, BrokerError, BrokerKind, Envelope, Health, Received, Replay, Target};
use super::channel_map::ChannelMap;
use super::fanout::Registry;
use super::history::Start;
use super::hub::SessionId;
use super::message::Prepared;
use super::metrics::{Metrics, Source};
use super::outbox::{self, Delivery, Queued, Refused};
use super::stomp::Limits;

/// Per-instance settings derived from the command line.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Heart-beat interval offered in CONNECTED (both directions); zero disables heart-beats.
    pub(crate) heartbeat: Duration,
    /// Bound of each session's outbound queue, in bytes.
    pub(crate) outbound_bytes: usize,
    /// SEND frames a session may publish per second (`None`: no limit).
    pub(crate) max_publish_rate: Option<u32>,
    pub(crate) limits: Limits,
    pub(crate) max_subscriptions: usize,
    /// Messages of `client`/`client-individual` subscriptions a session may leave unacknowledged.
    pub(crate) max_unacked: usize,
    pub(crate) user_header: http::HeaderName,
    /// How long a session waits for a broker confirmation before answering ERROR.
    pub(crate) confirm_timeout: Duration,
    pub(crate) channel_map: ChannelMap,
    /// `--app-url`: where SENDs to `/app/...` are POSTed.
    pub(crate) app_url: Option<http::Uri>,
    pub(crate) sockjs: super::sockjs::SockJsSettings,
    /// Trusted proxies, origins, the CONNECT token verifier.
    pub(crate) trust: Arc<super::trust::Trust>,
}

/// Why a session is being closed from outside its own task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// Graceful shutdown: WebSocket Close 1001.
    Draining,
    /// Its outbound queue overflowed: ERROR, then close.
    SlowConsumer,
}

/// The outside world's handle on a session: one close request, first reason wins.
#[derive(Debug)]
pub(crate) struct SessionSignal {
    pub(crate) id: SessionId,
    reason: OnceLock<CloseReason>,
    token: tokio_util::sync::CancellationToken,
}

impl SessionSignal {
    pub(crate) fn new(id: SessionId) -> SessionSignal {
        SessionSignal { id, reason: OnceLock::new(), token: tokio_util::sync::CancellationToken::new() }
    }

    /// Requests a close; returns whether this was the first request.
    pub(crate) fn close(&self, reason: CloseReason) -> bool {
        let first = self.reason.set(reason).is_ok();
        self.token.cancel();
        first
    }

    pub(crate) fn reason(&self) -> Option<CloseReason> {
        self.reason.get().copied()
    }

    pub(crate) async fn closed(&self) {
        self.token.cancelled().await
    }
}

/// What the subscriber registry holds per subscription: where its deliveries go.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) session: SessionId,
    pub(crate) outbox: outbox::Sender,
    pub(crate) signal: Arc<SessionSignal>,
}

#[derive(Default)]
struct Sessions {
    sessions: BTreeMap<SessionId, Arc<SessionSignal>>,
    draining: bool,
}

pub(crate) struct Instance {
    pub(crate) id: Arc<str>,
    /// Random per instance; see [`Envelope::origin`].
    pub(crate) nonce: u64,
    pub(crate) settings: Settings,
    pub(crate) metrics: Arc<Metrics>,
    subscribers: Registry<Member>,
    /// Per `--channel-map` glob, how many hub keys with a subscriber it covers (PSUBSCRIBEd
    /// while above zero). Changed under the key's shard lock.
    patterns: Mutex<HashMap<String, usize>>,
    broker: OnceLock<Box<dyn Broker>>,
    message_seq: AtomicU64,
    subscription_seq: AtomicU64,
    session_seq: AtomicU64,
    registry: Mutex<Sessions>,
    /// Live SockJS sessions by id.
    pub(crate) sockjs: super::sockjs::session::Registry,
    shutting_down: AtomicBool,
    /// Whether an identity header from an untrusted peer was logged yet (once per instance;
    /// every one is counted).
    untrusted_identity_logged: AtomicBool,
}

impl Instance {
    pub(crate) fn new(id: Arc<str>, settings: Settings, metrics: Arc<Metrics>) -> Instance {
        Instance {
            id,
            nonce: rand::random(),
            settings,
            metrics,
            subscribers: Registry::default(),
            patterns: Mutex::new(HashMap::new()),
            broker: OnceLock::new(),
            message_seq: AtomicU64::new(0),
            subscription_seq: AtomicU64::new(0),
            session_seq: AtomicU64::new(0),
            registry: Mutex::new(Sessions::default()),
            sockjs: super::sockjs::session::Registry::default(),
            shutting_down: AtomicBool::new(false),
            untrusted_identity_logged: AtomicBool::new(false),
        }
    }

    /// Installs the broker; done once, right after construction (the broker's inbound callback
    /// needs a reference to the instance, hence two steps).
    pub(crate) fn set_broker(&self, broker: Box<dyn Broker>) {
        let _ = self.broker.set(broker);
    }

    fn broker(&self) -> Option<&dyn Broker> {
        self.broker.get().map(|b| &**b)
    }

    pub(crate) fn broker_kind(&self) -> Option<BrokerKind> {
        self.broker().map(|b| b.kind())
    }

    pub(crate) fn broker_health(&self) -> Health {
        self.broker().map_or(Health::Down, |b| b.health())
    }

    /// Counts an identity header sent by a peer outside `--trust-proxy` (and ignored); the
    /// first one is logged, the rest only counted, so a client cannot flood the log.
    pub(crate) fn untrusted_identity_header(&self, peer: std::net::IpAddr) {
        self.metrics.untrusted_identity_headers.inc();
        if !self.untrusted_identity_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                event = "untrusted_identity_header",
                instance = %self.id,
                peer = %peer,
                header = %self.settings.user_header,
                "ignored the identity header of a peer outside --trust-proxy (logged once; counted in tether_backend_untrusted_identity_headers_total)"
            );
        }
    }

    /// A fresh subscription number (instance-unique, never reused).
    pub(crate) fn next_subscription_seq(&self) -> u64 {
        self.subscription_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn next_message_id(&self) -> Arc<str> {
        let n = self.message_seq.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n}", self.nonce).into()
    }

    pub(crate) fn next_session_id(&self) -> SessionId {
        self.session_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The STOMP `session` id: unique across instances, like message ids.
    pub(crate) fn session_name(&self, id: SessionId) -> String {
        format!("{:016x}-s{id}", self.nonce)
    }

    fn update_gauges(&self) {
        self.metrics.subscriptions.set(self.subscribers.subscription_count() as i64);
        self.metrics.destinations.set(self.subscribers.destination_count() as i64);
    }

    /// Registers subscription `seq` under `key`. The returned [`Ack`] resolves once the broker
    /// confirmed every target that delivers `key` (its channel, and the `--channel-map`
    /// patterns covering it): only then may the client be told it is subscribed. When it
    /// fails the caller must [`Instance::unsubscribe`] again, so nothing stays half-made.
    /// Broker changes are issued under the key's shard lock so that a concurrent
    /// last-unsubscribe / first-subscribe pair reaches the broker in that order.
    pub(crate) fn subscribe(&self, key: &str, seq: u64, member: Member) -> Ack {
        let ack = self.subscribers.subscribe(key, seq, member, |first| {
            let Some(b) = self.broker() else {
                return Ack::ready(Ok(()));
            };
            let mut acks = vec![b.watch(Target::Key(key.to_owned()))];
            let mut patterns = self.patterns.lock();
            for i in self.settings.channel_map.rules_covering(key) {
                let glob = self.settings.channel_map.rule(i).glob().to_owned();
                if first {
                    *patterns.entry(glob.clone()).or_default() += 1;
                }
                acks.push(b.watch(Target::Pattern(glob)));
            }
            Ack::from_future(Ack::all(acks))
        });
        self.update_gauges();
        ack
    }

    /// Removes subscription `seq` of `key`; false if it did not exist.
    pub(crate) fn unsubscribe(&self, key: &str, seq: u64) -> bool {
        let existed = self.subscribers.unsubscribe(key, seq, || self.forget_key(key));
        self.update_gauges();
        existed
    }

    /// The broker side of a hub key losing its last subscriber. Called under the key's lock.
    fn forget_key(&self, key: &str) {
        let Some(b) = self.broker() else { return };
        b.unwatch(Target::Key(key.to_owned()));
        let mut patterns = self.patterns.lock();
        for i in self.settings.channel_map.rules_covering(key) {
            let glob = self.settings.channel_map.rule(i).glob();
            if let Some(n) = patterns.get_mut(glob) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    patterns.remove(glob);
                    b.unwatch(Target::Pattern(glob.to_owned()));
                }
            }
        }
    }

    /// A page of `key`'s record from `start` (see [`Broker::replay`]).
    pub(crate) fn replay(&self, key: &str, start: Start, limit: usize) -> Replay {
        use futures_util::FutureExt as _;
        match self.broker() {
            Some(b) => b.replay(key, start, limit),
            None => std::future::ready(Err(BrokerError::Down)).boxed(),
        }
    }

    /// Publishes to every subscriber on every instance (this one included, through the
    /// broker). Resolves once the broker accepted it; `messages_in` counts only what was
    /// accepted, failures are counted in `publish_failures`.
    pub(crate) fn publish(
        &self,
        envelope: Envelope,
        source: Source,
    ) -> impl std::future::Future<Output = Result<(), BrokerError>> + Send + 'static {
        let ack = match self.broker() {
            Some(b) => b.publish(Arc::new(envelope)),
            None => Ack::ready(Err(BrokerError::Down)),
        };
        let metrics = self.metrics.clone();
        async move {
            let result = ack.await;
            match &result {
                Ok(()) => metrics.count_in(source),
                Err(_) => metrics.count_publish_failure(source),
            }
            result
        }
    }

    /// What the broker handed over: an envelope (from any instance, this one included) or a
    /// payload of a mapped foreign channel.
    pub(crate) fn receive(&self, received: Received) {
        match received {
            Received::Envelope(envelope) => {
                if envelope.origin != self.nonce {
                    self.metrics.count_in(Source::Broker);
                }
                let age_ms = unix_ms().saturating_sub(envelope.published_at_ms);
                let started = Instant::now().checked_sub(Duration::from_millis(age_ms)).unwrap_or_else(Instant::now);
                self.deliver(&envelope, started);
            }
            Received::Interrupted(keys) => self.tell_subscribers(&keys, Queued::Interrupted),
            Received::Restored(keys) => self.tell_subscribers(&keys, Queued::Restored),
            Received::Channel { pattern, channel, payload } => {
                let started = Instant::now();
                for destination in self.settings.channel_map.destinations(&pattern, &channel) {
                    self.metrics.count_in(Source::Channel);
                    let envelope = Arc::new(Envelope {
                        origin: self.nonce,
                        instance: self.id.clone(),
                        id: self.next_message_id(),
                        destination,
                        sender: None,
                        content_type: Some(content_type_of(&payload).to_owned()),
                        headers: vec![("redis-channel".to_owned(), channel.clone())],
                        body: payload.clone(),
                        published_at_ms: unix_ms(),
                        stream_id: None,
                    });
                    self.deliver(&envelope, started);
                }
                tracing::debug!(
                    event = "redis_event_processed",
                    channel,
                    processing_time_ms = started.elapsed().as_millis() as u64
                );
            }
        }
    }

    /// Queues news of their broker subscription to every local subscription of `keys`, behind
    /// the messages already queued to them.
    fn tell_subscribers(&self, keys: &[String], news: fn(u64) -> Queued) {
        for key in keys {
            let Some(destination) = self.subscribers.destination(key) else { continue };
            for (seq, member) in destination.read().iter() {
                // A session that is gone needs no news.
                let _ = member.outbox.signal(news(seq));
            }
        }
    }

    /// Queues a MESSAGE to every local subscriber of the envelope's destination, encoded once
    /// for all of them. Never waits: a full queue marks that session a slow consumer and it is
    /// closed; others are unaffected.
    fn deliver(&self, envelope: &Arc<Envelope>, started: Instant) {
        let Some(destination) = self.subscribers.destination(&envelope.destination) else {
            return;
        };
        let message = Arc::new(Prepared::new(envelope.clone()));
        let mut sent = 0u64;
        let subscribers = destination.read();
        for (seq, member) in subscribers.iter() {
            match member.outbox.push(Delivery { message: message.clone(), seq }) {
                Ok(()) => sent += 1,
                Err(Refused::Full) => {
                    if member.signal.close(CloseReason::SlowConsumer) {
                        self.metrics.slow_consumer_disconnects.inc();
                        tracing::warn!(event = "slow_consumer", session = member.session, destination = %envelope.destination);
                    }
                }
                // The session is ending; its subscriptions are about to be removed.
                Err(Refused::Closed) => {}
            }
        }
        drop(subscribers);
        self.metrics.messages_out.inc_by(sent);
        self.metrics.fanout_latency.observe(started.elapsed().as_secs_f64());
    }

    /// Adds a session to the registry; false when draining has begun (the caller must close it
    /// at once, since the drain schedule no longer covers it).
    pub(crate) fn register_session(&self, signal: Arc<SessionSignal>) -> bool {
        let mut reg = self.registry.lock();
        if reg.draining {
            return false;
        }
        reg.sessions.insert(signal.id, signal);
        self.metrics.sessions.set(reg.sessions.len() as i64);
        true
    }

    /// Forgets a session (its subscriptions are removed by the session itself).
    pub(crate) fn remove_session(&self, id: SessionId) {
        let mut reg = self.registry.lock();
        reg.sessions.remove(&id);
        self.metrics.sessions.set(reg.sessions.len() as i64);
    }

    pub(crate) fn session_count(&self) -> usize {
        self.registry.lock().sessions.len()
    }

    pub(crate) fn subscription_count(&self) -> usize {
        self.subscribers.subscription_count()
    }

    /// Marks the instance draining and returns every live session, oldest first.
    pub(crate) fn begin_drain(&self) -> Vec<Arc<SessionSignal>> {
        let mut reg = self.registry.lock();
        reg.draining = true;
        reg.sessions.values().cloned().collect()
    }

    pub(crate) fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

/// The `content-type` of a mapped channel's payload: JSON when it parses (what Spring's
/// `convertAndSend` with Jackson produces), else text, else bytes.
fn content_type_of(payload: &[u8]) -> &'static str {
    if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok() {
        "application/json"
    } else if std::str::from_utf8(payload).is_ok() {
        "text/plain;charset=UTF-8"
    } else {
        "application/octet-stream"
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}
