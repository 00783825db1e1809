//! The Redis Cluster adapter (`--redis-cluster`): fan-out through sharded Pub/Sub
//! (`SSUBSCRIBE`/`SPUBLISH`, Redis 7+), so each destination's channel lives on its slot's node
//! and a publish costs one node, not the whole cluster; history in a stream on the same slot
//! (`Naming::Cluster` hash tags), written and published by one script.
//!
//! redis-rs's cluster connection does the routing: it keeps a connection per node, follows
//! `MOVED`/`ASK`, refreshes the slot map, reconnects, and resubscribes a reconnected node to
//! the shard channels it owns. What is left here: the subscription bookkeeping (`interest`,
//! one `SSUBSCRIBE` per channel, since a multi-channel one must stay within a slot), a channel
//! the server drops when its slot moves to another node (an unasked `sunsubscribe` push) is
//! subscribed again (on its new owner), a node connection the library remakes (its
//! `Disconnection` push) counts as an interruption of every key, so sessions fill the gap from
//! the records, health from pinging every primary, and the publisher.
//!
//! As in the single-Redis adapter, callers only ever enqueue, slow is not down, and nothing is
//! sent twice.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::interest::{Batch, Interest};
use super::publish::next_batch;
use super::stream::{self, PublishCommand};
use super::{BACKOFF_MAX, BACKOFF_MIN, Command, MAX_BATCH, Outgoing, PING_INTERVAL, PUBLISH_QUEUE, RedisTimeouts};
use super::{RedisUrlError, State, enqueue, jitter, read_history};
use crate::app::broker::{
    Ack, Broker, BrokerError, BrokerKind, Envelope, Health, Inbound, Naming, Received, Replay, Target,
};
use crate::app::history::{Retention, Start};
use crate::app::metrics::Metrics;

type Waiter = oneshot::Sender<Result<(), BrokerError>>;

/// Handle to the running adapter; its tasks stop on the shutdown token.
pub(crate) struct ClusterBroker {
    state: Arc<State>,
    commands: mpsc::UnboundedSender<Command>,
    publish: mpsc::Sender<Outgoing>,
    history: Option<Retention>,
    conn: Arc<ArcSwapOption<ClusterConnection>>,
    timeouts: RedisTimeouts,
}

/// The nodes named by `--redis-cluster redis://h1:p,h2:p,...`: the scheme (and anything before
/// the first host) of the first entry applies to the others when they have none.
pub(crate) fn initial_nodes(list: &str) -> Result<Vec<String>, String> {
    let mut nodes = Vec::new();
    let mut scheme = String::from("redis://");
    for (i, item) in list.split(',').map(str::trim).enumerate() {
        if item.is_empty() {
            return Err(format!("empty node in {list:?}"));
        }
        match item.find("://") {
            Some(at) => {
                if i == 0 {
                    scheme = item[..at + 3].to_owned();
                }
                nodes.push(item.to_owned());
            }
            None => nodes.push(format!("{scheme}{item}")),
        }
    }
    Ok(nodes)
}

impl ClusterBroker {
    /// Validates the initial nodes and spawns the supervisor and the publisher on `tracker`.
    /// Connecting happens in the background: the instance starts (degraded) while the cluster
    /// is unreachable.
    pub(crate) fn start(
        nodes: &[String],
        timeouts: RedisTimeouts,
        history: Option<Retention>,
        inbound: Inbound,
        metrics: Arc<Metrics>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<ClusterBroker, RedisUrlError> {
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let client = redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push_tx)
            .connection_timeout(timeouts.down)
            .response_timeout(timeouts.down)
            .build()
            .map_err(|source| RedisUrlError { url: nodes.join(","), source })?;
        let state = Arc::new(State::default());
        let conn = Arc::new(ArcSwapOption::empty());
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let supervisor = Supervisor {
            client,
            timeouts,
            inbound,
            state: state.clone(),
            conn: conn.clone(),
            commands: command_rx,
            pushes: push_rx,
            metrics,
            shutdown: shutdown.clone(),
            interest: Interest::default(),
        };
        tracker.spawn(supervisor.run());
        let publisher = Publisher { rx: publish_rx, conn: conn.clone(), state: state.clone(), timeouts, history };
        tracker.spawn(publisher.run(shutdown));
        Ok(ClusterBroker { state, commands: command_tx, publish: publish_tx, history, conn, timeouts })
    }
}

impl Broker for ClusterBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Redis
    }

    fn publish(&self, envelope: Arc<Envelope>) -> Ack {
        enqueue(&self.state, &self.publish, self.history, Naming::Cluster, &envelope)
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
        let Some(conn) = self.conn.load_full() else {
            return std::future::ready(Err(BrokerError::Down)).boxed();
        };
        read_history((*conn).clone(), Naming::Cluster, key.to_owned(), start, limit, self.timeouts.down).boxed()
    }

    fn health(&self) -> Health {
        self.state.health()
    }
}

struct Supervisor {
    client: redis::cluster::ClusterClient,
    timeouts: RedisTimeouts,
    inbound: Inbound,
    state: Arc<State>,
    conn: Arc<ArcSwapOption<ClusterConnection>>,
    commands: mpsc::UnboundedReceiver<Command>,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    interest: Interest<Waiter>,
}

/// A command that has not been answered yet.
struct Pending {
    since: Instant,
    fut: BoxFuture<'static, redis::RedisResult<()>>,
}

impl Supervisor {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut was_up = false;
        loop {
            let connected = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                c = tokio::time::timeout(self.timeouts.down, self.client.get_async_connection()) => c,
            };
            match connected {
                Ok(Ok(conn)) => {
                    self.conn.store(Some(Arc::new(conn.clone())));
                    backoff = BACKOFF_MIN;
                    if self.serve(conn, &mut was_up).await {
                        return;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(event = "redis_connect_failed", error = %e, retry_in_ms = backoff.as_millis() as u64)
                }
                Err(_) => tracing::warn!(event = "redis_connect_failed", error = "timed out"),
            }
            self.set_down();
            let sleep = tokio::time::sleep(jitter(backoff));
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = &mut sleep => break,
                    cmd = self.commands.recv() => match cmd {
                        None => return,
                        Some(Command::Watch(target, waiter)) => {
                            self.interest.want(target);
                            let _ = waiter.send(Err(BrokerError::Down));
                        }
                        Some(Command::Unwatch(target)) => self.interest.unwatch(&target),
                    },
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Serves one cluster connection until it is given up (false) or shutdown (true). The
    /// connection reconnects nodes by itself; it is given up only when no primary has answered
    /// a ping for `timeouts.down`.
    async fn serve(&mut self, conn: ClusterConnection, was_up: &mut bool) -> bool {
        let resubscribed = self.interest.desired_count();
        if let Some(batch) = self.interest.next_batch() {
            match tokio::time::timeout(self.timeouts.down, apply(conn.clone(), batch)).await {
                Ok(Ok(())) => self.answer(),
                Ok(Err(e)) => {
                    tracing::warn!(event = "redis_down", reason = %format!("resubscribe failed: {e}"));
                    return false;
                }
                Err(_) => {
                    tracing::warn!(event = "redis_down", reason = "resubscribe timed out");
                    return false;
                }
            }
        }
        self.state.up.store(true, Ordering::Release);
        self.metrics.redis_up.set(1);
        if *was_up {
            self.metrics.redis_reconnects.inc();
            tracing::info!(event = "redis_reconnected", targets = resubscribed, cluster = true);
        } else {
            tracing::info!(event = "redis_connected", targets = resubscribed, cluster = true);
        }
        *was_up = true;

        let mut batch: Option<Pending> = None;
        let mut ping: Option<Pending> = None;
        let mut next_ping = Instant::now() + PING_INTERVAL;
        loop {
            if batch.is_none()
                && let Some(b) = self.interest.next_batch()
            {
                batch = Some(Pending { since: Instant::now(), fut: Box::pin(apply(conn.clone(), b)) });
            }
            let oldest = [batch.as_ref(), ping.as_ref()].into_iter().flatten().map(|p| p.since).min();
            let slow = self.state.subscriber_slow.load(Ordering::Acquire);
            let watchdog = oldest.map(|t| t + if slow { self.timeouts.down } else { self.timeouts.slow });
            tokio::select! {
                _ = self.shutdown.cancelled() => return true,
                push = self.pushes.recv() => match push {
                    Some(push) => self.on_push(push),
                    None => return true,
                },
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return true };
                    self.on_command(cmd);
                    while let Ok(cmd) = self.commands.try_recv() {
                        self.on_command(cmd);
                    }
                }
                done = async { (&mut batch.as_mut().expect("guarded by is_some").fut).await }, if batch.is_some() => {
                    batch = None;
                    if let Err(e) = done {
                        tracing::warn!(event = "redis_down", reason = %format!("subscription change failed: {e}"));
                        return false;
                    }
                    self.answer();
                    self.clear_slow(&batch, &ping);
                }
                done = async { (&mut ping.as_mut().expect("guarded by is_some").fut).await }, if ping.is_some() => {
                    ping = None;
                    if let Err(e) = done {
                        tracing::warn!(event = "redis_down", reason = %format!("ping failed: {e}"));
                        return false;
                    }
                    self.clear_slow(&batch, &ping);
                }
                _ = tokio::time::sleep_until(watchdog.unwrap_or(next_ping)), if watchdog.is_some() => {
                    let since = oldest.unwrap_or_else(Instant::now);
                    if since.elapsed() >= self.timeouts.down {
                        tracing::warn!(event = "redis_down", reason = "no answer from the cluster");
                        return false;
                    }
                    self.state.subscriber_slow.store(true, Ordering::Release);
                    tracing::warn!(event = "redis_slow", connection = "cluster");
                }
                _ = tokio::time::sleep_until(next_ping), if ping.is_none() => {
                    let mut c = conn.clone();
                    ping = Some(Pending {
                        since: Instant::now(),
                        fut: Box::pin(async move { redis::cmd("PING").query_async::<Value>(&mut c).await.map(|_| ()) }),
                    });
                    next_ping = Instant::now() + PING_INTERVAL;
                }
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Watch(target, waiter) => {
                if let Some(w) = self.interest.watch(target, waiter) {
                    let _ = w.send(Ok(()));
                }
            }
            Command::Unwatch(target) => self.interest.unwatch(&target),
        }
    }

    fn answer(&mut self) {
        for w in self.interest.batch_done() {
            let _ = w.send(Ok(()));
        }
        let restored = self.interest.take_restored();
        if !restored.is_empty() {
            (self.inbound)(Received::Restored(restored));
        }
    }

    fn clear_slow(&self, batch: &Option<Pending>, ping: &Option<Pending>) {
        let waiting_long =
            [batch.as_ref(), ping.as_ref()].into_iter().flatten().any(|p| p.since.elapsed() >= self.timeouts.slow);
        if !waiting_long {
            self.state.subscriber_slow.store(false, Ordering::Release);
        }
    }

    fn on_push(&mut self, push: PushInfo) {
        let mut data = push.data.into_iter();
        match push.kind {
            PushKind::SMessage => {
                let (Some(channel), Some(payload)) = (data.next().and_then(text), data.next()) else { return };
                let Value::BulkString(payload) = payload else { return };
                let envelope = match Envelope::from_wire(&payload) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(event = "redis_envelope_invalid", channel, error = %e);
                        return;
                    }
                };
                if Naming::Cluster.channel(&envelope.destination) != channel {
                    tracing::warn!(event = "redis_envelope_misrouted", channel, destination = %envelope.destination);
                    return;
                }
                (self.inbound)(Received::Envelope(Arc::new(envelope)));
            }
            PushKind::PMessage => {
                let (Some(pattern), Some(channel), Some(Value::BulkString(payload))) =
                    (data.next().and_then(text), data.next().and_then(text), data.next())
                else {
                    return;
                };
                (self.inbound)(Received::Channel { pattern, channel, payload: Bytes::from(payload) });
            }
            PushKind::Disconnection => {
                // The library remakes the node's connection and its subscriptions, silently:
                // what was published meanwhile must come from the records.
                let keys = self.interest.lose_all_keys();
                if !keys.is_empty() {
                    tracing::info!(event = "redis_node_reconnecting", keys = keys.len());
                    (self.inbound)(Received::Interrupted(keys));
                }
            }
            PushKind::SUnsubscribe => {
                // Unasked: the slot moved to another node, which now owns the channel.
                let Some(channel) = data.next().and_then(text) else { return };
                let Some(key) = Naming::Cluster.key_of_channel(&channel) else { return };
                if self.interest.lose(&Target::Key(key.to_owned())) {
                    tracing::info!(event = "redis_channel_moved", channel);
                    (self.inbound)(Received::Interrupted(vec![key.to_owned()]));
                }
            }
            _ => {}
        }
    }

    fn set_down(&mut self) {
        self.conn.store(None);
        self.state.up.store(false, Ordering::Release);
        self.state.subscriber_slow.store(false, Ordering::Release);
        self.metrics.redis_up.set(0);
        let (waiters, interrupted) = self.interest.connection_lost();
        for w in waiters {
            let _ = w.send(Err(BrokerError::Down));
        }
        if !interrupted.is_empty() {
            (self.inbound)(Received::Interrupted(interrupted));
        }
    }
}

/// One round of subscription changes: one command per channel or pattern, all in flight at
/// once (a sharded subscription names channels of one slot only).
async fn apply(conn: ClusterConnection, batch: Batch) -> redis::RedisResult<()> {
    let mut work: Vec<BoxFuture<'static, redis::RedisResult<()>>> = Vec::new();
    for (subscribe, targets) in [(true, batch.subscribe), (false, batch.unsubscribe)] {
        for t in targets {
            let mut c = conn.clone();
            work.push(Box::pin(async move {
                match (subscribe, t) {
                    (true, Target::Key(k)) => c.ssubscribe(Naming::Cluster.channel(&k)).await,
                    (false, Target::Key(k)) => c.sunsubscribe(Naming::Cluster.channel(&k)).await,
                    (true, Target::Pattern(p)) => c.psubscribe(p).await,
                    (false, Target::Pattern(p)) => c.punsubscribe(p).await,
                }
            }));
        }
    }
    for r in futures_util::future::join_all(work).await {
        r?;
    }
    Ok(())
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

struct Publisher {
    rx: mpsc::Receiver<Outgoing>,
    conn: Arc<ArcSwapOption<ClusterConnection>>,
    state: Arc<State>,
    timeouts: RedisTimeouts,
    history: Option<Retention>,
}

impl Publisher {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            if !next_batch(&mut self.rx, &mut batch, &shutdown).await {
                return;
            }
            let outcomes = match self.conn.load_full() {
                None => vec![Err(BrokerError::Down); batch.len()],
                Some(conn) => self.round_trip(&conn, &batch).await,
            };
            for (m, outcome) in batch.drain(..).zip(outcomes) {
                let _ = m.ack.send(outcome);
            }
        }
    }

    /// Every message of the batch in flight at once, in order (requests to one node travel on
    /// one connection, so one destination's messages reach its node in the order given).
    async fn round_trip(&self, conn: &ClusterConnection, batch: &[Outgoing]) -> Vec<Result<(), BrokerError>> {
        let sends = batch.iter().map(|m| {
            let mut c = conn.clone();
            let cmd = match (&m.stream, self.history) {
                (Some(s), Some(retention)) => {
                    stream::record_cmd(s, &m.channel, retention, &m.payload, PublishCommand::SPublish)
                }
                _ => {
                    let mut cmd = redis::cmd("SPUBLISH");
                    cmd.arg(&m.channel).arg(&m.payload);
                    cmd
                }
            };
            async move {
                match cmd.query_async::<Value>(&mut c).await {
                    Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        // A node that never saw the script (added or failed over since): load
                        // it everywhere, then once more.
                        stream::load_cmd().query_async::<Value>(&mut c).await?;
                        cmd.query_async::<Value>(&mut c).await
                    }
                    r => r,
                }
            }
        });
        let all = futures_util::future::join_all(sends);
        tokio::pin!(all);
        let results = match tokio::time::timeout(self.timeouts.slow, &mut all).await {
            Ok(r) => Some(r),
            Err(_) => {
                self.state.publisher_slow.store(true, Ordering::Release);
                tracing::warn!(event = "redis_slow", connection = "publish", messages = batch.len());
                let rest = self.timeouts.down.saturating_sub(self.timeouts.slow);
                let r = tokio::time::timeout(rest, &mut all).await.ok();
                self.state.publisher_slow.store(false, Ordering::Release);
                r
            }
        };
        match results {
            None => {
                tracing::warn!(event = "redis_publish_failed", error = "no answer", messages = batch.len());
                vec![Err(BrokerError::Lost); batch.len()]
            }
            Some(results) => results
                .into_iter()
                .map(|r| {
                    r.map(|_| ()).map_err(|e| {
                        tracing::warn!(event = "redis_publish_failed", error = %e);
                        BrokerError::Lost
                    })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_nodes_share_the_first_ones_scheme() {
        assert_eq!(
            initial_nodes("redis://10.0.0.1:7000,10.0.0.2:7001, 10.0.0.3:7002").unwrap(),
            ["redis://10.0.0.1:7000", "redis://10.0.0.2:7001", "redis://10.0.0.3:7002"]
        );
        assert_eq!(initial_nodes("rediss://a:1,b:2").unwrap(), ["rediss://a:1", "rediss://b:2"]);
        assert_eq!(initial_nodes("a:1,redis://b:2").unwrap(), ["redis://a:1", "redis://b:2"]);
        assert!(initial_nodes("redis://a:1,,b:2").is_err());
        assert!(initial_nodes("").is_err());
    }
}
