//! The Redis Pub/Sub adapter: one connection for PUBLISH, one for SUBSCRIBE, channels
//! `tether:dest:{key}`, subscribed only while the instance has a local subscriber for the key.
//!
//! Owns both connections, reconnection with backoff and resubscription. Two tasks do the I/O:
//! the *supervisor* (subscription connection, interest changes, health) and the *publisher*
//! (batched PUBLISH pipelines). Callers only ever enqueue: a Redis outage never blocks a session;
//! publishes fail fast with [`BrokerError::Down`] while it lasts.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures_util::StreamExt as _;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Ack, Broker, BrokerError, BrokerKind, CHANNEL_PREFIX, Envelope, Inbound, channel_name};
use crate::app::metrics::Metrics;

/// First reconnect delay; doubles per failed attempt.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Reconnect delay cap: short, so a restarted Redis is picked up within ~2 s.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Bound on connecting and on each command; a Redis slower than this counts as down.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the idle subscription connection is pinged, to notice a half-open TCP connection
/// (no RST ever arrives) instead of silently losing every remote message.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// Envelopes waiting for the publisher. When full, publishes fail (`Overloaded`) rather than wait.
const PUBLISH_QUEUE: usize = 8192;
/// Most PUBLISH commands sent in one pipeline round trip.
const MAX_BATCH: usize = 256;

/// Why the Redis adapter could not be created.
#[derive(Debug, thiserror::Error)]
#[error("invalid Redis URL {url:?}: {source}")]
pub struct RedisUrlError {
    url: String,
    #[source]
    source: redis::RedisError,
}

enum Interest {
    Watch(String),
    Unwatch(String),
    Sync(oneshot::Sender<Result<(), BrokerError>>),
}

struct Outgoing {
    channel: String,
    payload: Vec<u8>,
    ack: oneshot::Sender<Result<(), BrokerError>>,
}

/// The publish connection of the current connection epoch.
struct Live {
    epoch: u64,
    conn: MultiplexedConnection,
}

/// Handle to the running adapter; its tasks stop on the shutdown token.
pub(crate) struct RedisBroker {
    up: Arc<AtomicBool>,
    interest: mpsc::UnboundedSender<Interest>,
    publish: mpsc::Sender<Outgoing>,
}

impl RedisBroker {
    /// Validates `url` and spawns the supervisor and publisher on `tracker`. Connecting happens
    /// in the background: the instance starts (degraded) even while Redis is unreachable.
    pub(crate) fn start(
        url: &str,
        origin: u64,
        inbound: Inbound,
        metrics: Arc<Metrics>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<RedisBroker, RedisUrlError> {
        let client = redis::Client::open(url).map_err(|source| RedisUrlError { url: url.to_owned(), source })?;
        let up = Arc::new(AtomicBool::new(false));
        let live = Arc::new(ArcSwapOption::empty());
        let (failed_tx, failed_rx) = watch::channel(0u64);
        let (interest_tx, interest_rx) = mpsc::unbounded_channel();
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);

        let supervisor = Supervisor {
            client,
            origin,
            inbound,
            up: up.clone(),
            live: live.clone(),
            failed: failed_rx,
            interest: interest_rx,
            desired: HashSet::new(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        tracker.spawn(supervisor.run());
        tracker.spawn(publish_loop(publish_rx, live, failed_tx, metrics, shutdown));
        Ok(RedisBroker { up, interest: interest_tx, publish: publish_tx })
    }
}

impl Broker for RedisBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Redis
    }

    fn publish(&self, envelope: Arc<Envelope>) -> Ack {
        if !self.up.load(Ordering::Acquire) {
            return Ack::ready(Err(BrokerError::Down));
        }
        let (ack, pending) = Ack::channel();
        let out = Outgoing { channel: channel_name(&envelope.destination), payload: envelope.to_wire(), ack };
        match self.publish.try_send(out) {
            Ok(()) => pending,
            Err(mpsc::error::TrySendError::Full(_)) => Ack::ready(Err(BrokerError::Overloaded)),
            Err(mpsc::error::TrySendError::Closed(_)) => Ack::ready(Err(BrokerError::Closed)),
        }
    }

    fn watch(&self, key: &str) {
        let _ = self.interest.send(Interest::Watch(key.to_owned()));
    }

    fn unwatch(&self, key: &str) {
        let _ = self.interest.send(Interest::Unwatch(key.to_owned()));
    }

    fn sync(&self) -> Ack {
        let (tx, ack) = Ack::channel();
        let _ = self.interest.send(Interest::Sync(tx));
        ack
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

struct Supervisor {
    client: redis::Client,
    origin: u64,
    inbound: Inbound,
    up: Arc<AtomicBool>,
    live: Arc<ArcSwapOption<Live>>,
    failed: watch::Receiver<u64>,
    interest: mpsc::UnboundedReceiver<Interest>,
    /// Hub keys with a local subscriber: what must be subscribed whenever connected.
    desired: HashSet<String>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

enum Exit {
    Shutdown,
    Lost(String),
}

impl Supervisor {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut epoch = 0u64;
        let mut was_up = false;
        loop {
            epoch += 1;
            let client = self.client.clone();
            let attempt = async move { connect(&client).await };
            let connected = match self.while_down(attempt).await {
                None => return,
                Some(c) => c,
            };
            match connected {
                Ok((pubsub, conn)) => match self.serve(pubsub, conn, epoch, &mut was_up, &mut backoff).await {
                    Exit::Shutdown => return,
                    Exit::Lost(reason) => {
                        tracing::warn!(event = "redis_down", reason = %reason);
                    }
                },
                Err(e) => {
                    tracing::warn!(event = "redis_connect_failed", error = %e, retry_in_ms = backoff.as_millis() as u64);
                }
            }
            self.set_down();
            let pause = tokio::time::sleep(jitter(backoff));
            if self.while_down(pause).await.is_none() {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Runs one connection epoch until the connection is lost or shutdown.
    async fn serve(
        &mut self,
        pubsub: redis::aio::PubSub,
        conn: MultiplexedConnection,
        epoch: u64,
        was_up: &mut bool,
        backoff: &mut Duration,
    ) -> Exit {
        let (mut sink, mut stream) = pubsub.split();
        let channels: Vec<String> = self.desired.iter().map(|k| channel_name(k)).collect();
        if !channels.is_empty() {
            match tokio::time::timeout(OP_TIMEOUT, sink.subscribe(&channels)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Exit::Lost(format!("resubscribe failed: {e}")),
                Err(_) => return Exit::Lost("resubscribe timed out".into()),
            }
        }
        // Up only once every live channel is subscribed again: "redis up" in /healthz then means
        // cross-instance delivery works, which is what tests and operators read it as.
        self.live.store(Some(Arc::new(Live { epoch, conn })));
        self.up.store(true, Ordering::Release);
        self.metrics.redis_up.set(1);
        if *was_up {
            self.metrics.redis_reconnects.inc();
            tracing::info!(event = "redis_reconnected", channels = channels.len());
        } else {
            tracing::info!(event = "redis_connected", channels = channels.len());
        }
        *was_up = true;
        *backoff = BACKOFF_MIN;

        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.reset();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Exit::Shutdown,
                msg = stream.next() => match msg {
                    Some(msg) => self.on_message(&msg),
                    None => return Exit::Lost("subscription connection closed".into()),
                },
                cmd = self.interest.recv() => {
                    let Some(cmd) = cmd else { return Exit::Shutdown };
                    let result = match cmd {
                        Interest::Watch(key) => {
                            let channel = channel_name(&key);
                            if self.desired.insert(key) {
                                tokio::time::timeout(OP_TIMEOUT, sink.subscribe(channel)).await
                            } else {
                                Ok(Ok(()))
                            }
                        }
                        Interest::Unwatch(key) => {
                            if self.desired.remove(&key) {
                                tokio::time::timeout(OP_TIMEOUT, sink.unsubscribe(channel_name(&key))).await
                            } else {
                                Ok(Ok(()))
                            }
                        }
                        Interest::Sync(tx) => {
                            let _ = tx.send(Ok(()));
                            Ok(Ok(()))
                        }
                    };
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Exit::Lost(format!("subscription change failed: {e}")),
                        Err(_) => return Exit::Lost("subscription change timed out".into()),
                    }
                }
                changed = self.failed.changed() => {
                    if changed.is_err() {
                        return Exit::Shutdown;
                    }
                    if *self.failed.borrow_and_update() == epoch {
                        return Exit::Lost("publish connection failed".into());
                    }
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(OP_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Exit::Lost(format!("ping failed: {e}")),
                        Err(_) => return Exit::Lost("ping timed out".into()),
                    }
                }
            }
        }
    }

    fn on_message(&self, msg: &redis::Msg) {
        let started = Instant::now();
        let channel = msg.get_channel_name();
        let envelope = match Envelope::from_wire(msg.get_payload_bytes()) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(event = "redis_envelope_invalid", channel, error = %e);
                return;
            }
        };
        // Only deliver what was published for this channel: a subscriber of `a` must never get
        // an envelope whose header claims `b` because someone published it on `a`.
        if channel.strip_prefix(CHANNEL_PREFIX) != Some(envelope.destination.as_str()) {
            tracing::warn!(event = "redis_envelope_misrouted", channel, destination = %envelope.destination);
            return;
        }
        if envelope.origin == self.origin {
            // Local bypass: our own subscribers got it when it was published.
            return;
        }
        (self.inbound)(Arc::new(envelope));
        tracing::debug!(
            event = "redis_event_processed",
            channel,
            processing_time_ms = started.elapsed().as_millis() as u64
        );
    }

    fn set_down(&self) {
        self.live.store(None);
        self.up.store(false, Ordering::Release);
        self.metrics.redis_up.set(0);
    }

    /// Awaits `fut` while keeping interest bookkeeping current: watch/unwatch only update the
    /// desired set (applied on reconnect) and sync is answered `Down` at once, so no session ever
    /// waits on an outage. None on shutdown.
    async fn while_down<F: std::future::Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                _ = self.shutdown.cancelled() => return None,
                cmd = self.interest.recv() => match cmd {
                    None => return None,
                    Some(Interest::Watch(key)) => { self.desired.insert(key); }
                    Some(Interest::Unwatch(key)) => { self.desired.remove(&key); }
                    Some(Interest::Sync(tx)) => { let _ = tx.send(Err(BrokerError::Down)); }
                },
            }
        }
    }
}

async fn connect(client: &redis::Client) -> Result<(redis::aio::PubSub, MultiplexedConnection), String> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(OP_TIMEOUT))
        .set_response_timeout(Some(OP_TIMEOUT));
    let conn = client.get_multiplexed_async_connection_with_config(&config).await.map_err(|e| e.to_string())?;
    let pubsub = tokio::time::timeout(OP_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| "subscription connection timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok((pubsub, conn))
}

/// Up to +25 % so instances that lost Redis together do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let extra = rand::random::<u64>() % (d.as_millis() as u64 / 4 + 1);
    d + Duration::from_millis(extra)
}

async fn publish_loop(
    mut rx: mpsc::Receiver<Outgoing>,
    live: Arc<ArcSwapOption<Live>>,
    failed: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => return },
            _ = shutdown.cancelled() => return,
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let result = match live.load_full() {
            None => Err((BrokerError::Down, None)),
            Some(live) => {
                let mut pipe = redis::pipe();
                for m in &batch {
                    pipe.publish(&m.channel, &m.payload).ignore();
                }
                let mut conn = live.conn.clone();
                match tokio::time::timeout(OP_TIMEOUT, pipe.query_async::<()>(&mut conn)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => {
                        tracing::warn!(event = "redis_publish_failed", error = %e, messages = batch.len());
                        Err((BrokerError::Down, Some(live.epoch)))
                    }
                    Err(_) => Err((BrokerError::Timeout, Some(live.epoch))),
                }
            }
        };
        let outcome = match result {
            Ok(()) => Ok(()),
            Err((e, epoch)) => {
                metrics.broker_publish_failures.inc_by(batch.len() as u64);
                if let Some(epoch) = epoch {
                    failed.send_replace(epoch);
                }
                Err(e)
            }
        };
        for m in batch.drain(..) {
            let _ = m.ack.send(outcome.clone());
        }
    }
}
