//! The Redis Pub/Sub adapter: one connection for PUBLISH, one for SUBSCRIBE/PSUBSCRIBE.
//! Envelopes travel on `tether:dest:{key}`, subscribed only while the instance has a local
//! subscriber for the key; `--channel-map` patterns are PSUBSCRIBEd the same way.
//!
//! Owns both connections, reconnection with backoff and resubscription. Two tasks do the I/O:
//! the supervisor (`supervisor`: subscription connection, interest changes, health) and the
//! publisher (`publish`: batched PUBLISH pipelines). Callers only ever enqueue: a Redis outage
//! never blocks a session; publishes fail fast with [`BrokerError::Down`] while it lasts.
//!
//! Slow is not down: a command unanswered for [`RedisTimeouts::slow`] only marks the broker
//! slow (`/healthz`); the connection is given up after [`RedisTimeouts::down`] without an
//! answer. Nothing is ever sent twice, so a slow Redis delays messages but never drops or
//! duplicates them.

pub(crate) mod cluster;
pub(crate) mod interest;
mod publish;
pub(crate) mod stream;
mod supervisor;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use futures_util::FutureExt as _;

use super::{Ack, Broker, BrokerError, BrokerKind, Envelope, Health, Inbound, Naming, Replay, Target};
use crate::app::history::{Retention, Start};
use crate::app::metrics::Metrics;

/// Default for [`RedisTimeouts::slow`]: a round trip this long is reported, not acted on.
pub(crate) const DEFAULT_SLOW_AFTER: Duration = Duration::from_secs(2);
/// Default for [`RedisTimeouts::down`]: no answer this long means the connection is dead
/// (a half-open TCP connection never gets an RST).
pub(crate) const DEFAULT_DOWN_AFTER: Duration = Duration::from_secs(10);
/// First reconnect delay; doubles per failed attempt.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Reconnect delay cap: short, so a restarted Redis is picked up within ~2 s.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often the subscription connection is pinged when idle, to notice a dead connection
/// instead of silently losing every remote message.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// Envelopes waiting for the publisher. When full, publishes fail (`Overloaded`) rather than wait.
const PUBLISH_QUEUE: usize = 8192;
/// Most PUBLISH commands sent in one pipeline round trip.
const MAX_BATCH: usize = 256;

/// When a Redis round trip is slow and when the connection counts as down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RedisTimeouts {
    pub(crate) slow: Duration,
    pub(crate) down: Duration,
}

impl Default for RedisTimeouts {
    fn default() -> Self {
        RedisTimeouts { slow: DEFAULT_SLOW_AFTER, down: DEFAULT_DOWN_AFTER }
    }
}

/// Why the Redis adapter could not be created.
#[derive(Debug, thiserror::Error)]
#[error("invalid Redis URL {url:?}: {source}")]
pub struct RedisUrlError {
    pub(super) url: String,
    #[source]
    pub(super) source: redis::RedisError,
}

/// A request to the supervisor.
enum Command {
    Watch(Target, oneshot::Sender<Result<(), BrokerError>>),
    Unwatch(Target),
}

struct Outgoing {
    channel: String,
    /// The stream to record it in first, with history.
    stream: Option<String>,
    payload: Vec<u8>,
    ack: oneshot::Sender<Result<(), BrokerError>>,
}

/// The publish connection of the current connection epoch.
struct Live {
    epoch: u64,
    conn: MultiplexedConnection,
}

/// Connection state both tasks write and `health()` reads.
#[derive(Default)]
struct State {
    up: AtomicBool,
    subscriber_slow: AtomicBool,
    publisher_slow: AtomicBool,
}

impl State {
    fn health(&self) -> Health {
        if !self.up.load(Ordering::Acquire) {
            Health::Down
        } else if self.subscriber_slow.load(Ordering::Acquire) || self.publisher_slow.load(Ordering::Acquire) {
            Health::Slow
        } else {
            Health::Up
        }
    }
}

/// Hand `envelope` to the publisher task, named as `naming` names its channel and stream.
fn enqueue(
    state: &State,
    publish: &mpsc::Sender<Outgoing>,
    history: Option<Retention>,
    naming: Naming,
    envelope: &Envelope,
) -> Ack {
    if !state.up.load(Ordering::Acquire) {
        return Ack::ready(Err(BrokerError::Down));
    }
    let (ack, pending) = Ack::channel();
    let key = &envelope.destination;
    let stream = history.map(|_| naming.stream(key));
    let out = Outgoing { channel: naming.channel(key), stream, payload: envelope.to_wire(), ack };
    match publish.try_send(out) {
        Ok(()) => pending,
        Err(mpsc::error::TrySendError::Full(_)) => Ack::ready(Err(BrokerError::Overloaded)),
        Err(mpsc::error::TrySendError::Closed(_)) => Ack::ready(Err(BrokerError::Closed)),
    }
}

/// Up to `limit` recorded messages of destination `key` from `start`, over `conn`.
async fn read_history(
    mut conn: impl redis::aio::ConnectionLike,
    naming: Naming,
    key: String,
    start: Start,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<Arc<Envelope>>, BrokerError> {
    let cmd = stream::xrange_cmd(&naming.stream(&key), start, limit);
    let reply = match tokio::time::timeout(timeout, cmd.query_async::<redis::Value>(&mut conn)).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => {
            tracing::warn!(event = "redis_replay_failed", destination = %key, error = %e);
            return Err(BrokerError::Lost);
        }
        Err(_) => return Err(BrokerError::Timeout),
    };
    stream::parse_xrange(&key, reply).map_err(|e| {
        tracing::warn!(event = "redis_replay_invalid", destination = %key, error = %e);
        BrokerError::Lost
    })
}

/// Handle to the running adapter; its tasks stop on the shutdown token.
pub(crate) struct RedisBroker {
    state: Arc<State>,
    commands: mpsc::UnboundedSender<Command>,
    publish: mpsc::Sender<Outgoing>,
    history: Option<Retention>,
    /// The publish connection, also used to read history.
    live: Arc<ArcSwapOption<Live>>,
    timeouts: RedisTimeouts,
}

impl RedisBroker {
    /// Validates `url` and spawns the supervisor and publisher on `tracker`. Connecting happens
    /// in the background: the instance starts (degraded) even while Redis is unreachable.
    pub(crate) fn start(
        url: &str,
        timeouts: RedisTimeouts,
        history: Option<Retention>,
        inbound: Inbound,
        metrics: Arc<Metrics>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<RedisBroker, RedisUrlError> {
        let client = redis::Client::open(url).map_err(|source| RedisUrlError { url: url.to_owned(), source })?;
        let state = Arc::new(State::default());
        let live = Arc::new(ArcSwapOption::empty());
        let (failed_tx, failed_rx) = watch::channel(0u64);
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);

        let supervisor = supervisor::Supervisor::new(supervisor::Parts {
            client,
            timeouts,
            inbound,
            state: state.clone(),
            live: live.clone(),
            failed: failed_rx,
            commands: command_rx,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        });
        tracker.spawn(supervisor.run());
        let publisher = publish::Publisher {
            rx: publish_rx,
            live: live.clone(),
            failed: failed_tx,
            state: state.clone(),
            timeouts,
            history,
        };
        tracker.spawn(publisher.run(shutdown));
        Ok(RedisBroker { state, commands: command_tx, publish: publish_tx, history, live, timeouts })
    }
}

impl Broker for RedisBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Redis
    }

    fn publish(&self, envelope: Arc<Envelope>) -> Ack {
        enqueue(&self.state, &self.publish, self.history, Naming::Plain, &envelope)
    }

    fn watch(&self, target: Target) -> Ack {
        let (tx, ack) = Ack::channel();
        let _ = self.commands.send(Command::Watch(target, tx));
        ack
    }

    fn unwatch(&self, target: Target) {
        let _ = self.commands.send(Command::Unwatch(target));
    }

    fn replay(&self, key: &str, start: Start, limit: usize) -> Replay {
        if self.history.is_none() {
            return std::future::ready(Ok(Vec::new())).boxed();
        }
        let Some(live) = self.live.load_full() else {
            return std::future::ready(Err(BrokerError::Down)).boxed();
        };
        read_history(live.conn.clone(), Naming::Plain, key.to_owned(), start, limit, self.timeouts.down).boxed()
    }

    fn health(&self) -> Health {
        self.state.health()
    }
}

async fn connect(
    client: &redis::Client,
    timeout: Duration,
) -> Result<(redis::aio::PubSub, MultiplexedConnection), String> {
    // No response timeout on the connection itself: the publisher tells slow from down.
    let config = redis::AsyncConnectionConfig::new().set_connection_timeout(Some(timeout)).set_response_timeout(None);
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await.map_err(|e| e.to_string())?;
    // The history script is called by hash in publish pipelines: load it on every connection
    // (a restarted Redis has an empty script cache).
    tokio::time::timeout(timeout, stream::load_cmd().query_async::<String>(&mut conn))
        .await
        .map_err(|_| "loading the history script timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
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
