//! The supervisor task: the subscription connection, batched (P)SUBSCRIBE/(P)UNSUBSCRIBE,
//! incoming messages, pings, slow/down detection, reconnection and resubscription.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use redis::aio::{MultiplexedConnection, PubSubSink};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::interest::{Batch, Interest};
use super::{BACKOFF_MAX, BACKOFF_MIN, Command, Live, PING_INTERVAL, RedisTimeouts, State, connect, jitter};
use crate::app::broker::{BrokerError, Envelope, Inbound, Naming, Received, Target};
use crate::app::metrics::Metrics;

type Waiter = oneshot::Sender<Result<(), BrokerError>>;

pub(super) struct Parts {
    pub(super) client: redis::Client,
    pub(super) timeouts: RedisTimeouts,
    pub(super) inbound: Inbound,
    pub(super) state: Arc<State>,
    pub(super) live: Arc<ArcSwapOption<Live>>,
    pub(super) failed: watch::Receiver<u64>,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) shutdown: CancellationToken,
}

pub(super) struct Supervisor {
    p: Parts,
    interest: Interest<Waiter>,
}

enum Exit {
    Shutdown,
    Lost(String),
}

/// A command on the subscription connection that has not been answered yet.
struct Pending {
    since: Instant,
    fut: BoxFuture<'static, redis::RedisResult<()>>,
}

impl Supervisor {
    pub(super) fn new(p: Parts) -> Supervisor {
        Supervisor { p, interest: Interest::default() }
    }

    pub(super) async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut epoch = 0u64;
        let mut was_up = false;
        loop {
            epoch += 1;
            let client = self.p.client.clone();
            let timeout = self.p.timeouts.down;
            let connected = match self.while_down(async move { connect(&client, timeout).await }).await {
                None => return,
                Some(c) => c,
            };
            match connected {
                Ok((pubsub, conn)) => match self.serve(pubsub, conn, epoch, &mut was_up, &mut backoff).await {
                    Exit::Shutdown => return,
                    Exit::Lost(reason) => tracing::warn!(event = "redis_down", reason = %reason),
                },
                Err(e) => {
                    tracing::warn!(event = "redis_connect_failed", error = %e, retry_in_ms = backoff.as_millis() as u64);
                }
            }
            self.set_down();
            if self.while_down(tokio::time::sleep(jitter(backoff))).await.is_none() {
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
        let (sink, mut stream) = pubsub.split();
        // Up only once every desired target is subscribed again: "redis up" in /healthz then
        // means cross-instance delivery works, which is what tests and operators read it as.
        let resubscribed = self.interest.desired_count();
        if let Some(batch) = self.interest.next_batch() {
            match tokio::time::timeout(self.p.timeouts.down, apply(sink.clone(), batch)).await {
                Ok(Ok(())) => self.answer(Ok(())),
                Ok(Err(e)) => return Exit::Lost(format!("resubscribe failed: {e}")),
                Err(_) => return Exit::Lost("resubscribe timed out".into()),
            }
        }
        self.p.live.store(Some(Arc::new(Live { epoch, conn })));
        self.p.state.up.store(true, Ordering::Release);
        self.p.metrics.redis_up.set(1);
        if *was_up {
            self.p.metrics.redis_reconnects.inc();
            tracing::info!(event = "redis_reconnected", targets = resubscribed);
        } else {
            tracing::info!(event = "redis_connected", targets = resubscribed);
        }
        *was_up = true;
        *backoff = BACKOFF_MIN;

        let mut batch: Option<Pending> = None;
        let mut ping: Option<Pending> = None;
        let mut next_ping = Instant::now() + PING_INTERVAL;
        loop {
            if batch.is_none()
                && let Some(b) = self.interest.next_batch()
            {
                batch = Some(Pending { since: Instant::now(), fut: Box::pin(apply(sink.clone(), b)) });
            }
            // The oldest unanswered command decides: slow past `slow`, dead past `down`.
            let oldest = [batch.as_ref(), ping.as_ref()].into_iter().flatten().map(|p| p.since).min();
            let slow = self.p.state.subscriber_slow.load(Ordering::Acquire);
            let watchdog = oldest.map(|t| t + if slow { self.p.timeouts.down } else { self.p.timeouts.slow });
            tokio::select! {
                _ = self.p.shutdown.cancelled() => return Exit::Shutdown,
                msg = stream.next() => match msg {
                    Some(msg) => self.on_message(&msg),
                    None => return Exit::Lost("subscription connection closed".into()),
                },
                cmd = self.p.commands.recv() => {
                    let Some(cmd) = cmd else { return Exit::Shutdown };
                    self.on_command(cmd);
                    // Take everything already queued, so it joins the same next batch.
                    while let Ok(cmd) = self.p.commands.try_recv() {
                        self.on_command(cmd);
                    }
                }
                done = async { (&mut batch.as_mut().expect("guarded by is_some").fut).await }, if batch.is_some() => {
                    batch = None;
                    match done {
                        Ok(()) => self.answer(Ok(())),
                        Err(e) => return Exit::Lost(format!("subscription change failed: {e}")),
                    }
                    self.clear_slow(&batch, &ping);
                }
                done = async { (&mut ping.as_mut().expect("guarded by is_some").fut).await }, if ping.is_some() => {
                    ping = None;
                    if let Err(e) = done {
                        return Exit::Lost(format!("ping failed: {e}"));
                    }
                    self.clear_slow(&batch, &ping);
                }
                _ = tokio::time::sleep_until(watchdog.unwrap_or(next_ping)), if watchdog.is_some() => {
                    let since = oldest.unwrap_or_else(Instant::now);
                    if since.elapsed() >= self.p.timeouts.down {
                        return Exit::Lost("no answer from Redis".into());
                    }
                    self.p.state.subscriber_slow.store(true, Ordering::Release);
                    tracing::warn!(event = "redis_slow", connection = "subscribe");
                }
                _ = tokio::time::sleep_until(next_ping), if ping.is_none() => {
                    let mut s = sink.clone();
                    ping = Some(Pending {
                        since: Instant::now(),
                        fut: Box::pin(async move { s.ping::<redis::Value>().await.map(|_| ()) }),
                    });
                    next_ping = Instant::now() + PING_INTERVAL;
                }
                changed = self.p.failed.changed() => {
                    if changed.is_err() {
                        return Exit::Shutdown;
                    }
                    if *self.p.failed.borrow_and_update() == epoch {
                        return Exit::Lost("publish connection failed".into());
                    }
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

    /// Answers the waiters a settled batch confirmed.
    fn answer(&mut self, result: Result<(), BrokerError>) {
        for w in self.interest.batch_done() {
            let _ = w.send(result.clone());
        }
        let restored = self.interest.take_restored();
        if !restored.is_empty() {
            (self.p.inbound)(Received::Restored(restored));
        }
    }

    fn clear_slow(&self, batch: &Option<Pending>, ping: &Option<Pending>) {
        let waiting_long =
            [batch.as_ref(), ping.as_ref()].into_iter().flatten().any(|p| p.since.elapsed() >= self.p.timeouts.slow);
        if !waiting_long {
            self.p.state.subscriber_slow.store(false, Ordering::Release);
        }
    }

    fn on_message(&self, msg: &redis::Msg) {
        let channel = msg.get_channel_name();
        if msg.from_pattern() {
            let Ok(pattern) = msg.get_pattern::<String>() else { return };
            (self.p.inbound)(Received::Channel {
                pattern,
                channel: channel.to_owned(),
                payload: Bytes::copy_from_slice(msg.get_payload_bytes()),
            });
            return;
        }
        let envelope = match Envelope::from_wire(msg.get_payload_bytes()) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(event = "redis_envelope_invalid", channel, error = %e);
                return;
            }
        };
        // Only deliver what was published for this channel: a subscriber of `a` must never get
        // an envelope whose header claims `b` because someone published it on `a`.
        if Naming::Plain.channel(&envelope.destination) != channel {
            tracing::warn!(event = "redis_envelope_misrouted", channel, destination = %envelope.destination);
            return;
        }
        (self.p.inbound)(Received::Envelope(Arc::new(envelope)));
    }

    fn set_down(&mut self) {
        self.p.live.store(None);
        self.p.state.up.store(false, Ordering::Release);
        self.p.state.subscriber_slow.store(false, Ordering::Release);
        self.p.metrics.redis_up.set(0);
        let (waiters, interrupted) = self.interest.connection_lost();
        for w in waiters {
            let _ = w.send(Err(BrokerError::Down));
        }
        if !interrupted.is_empty() {
            (self.p.inbound)(Received::Interrupted(interrupted));
        }
    }

    /// Awaits `fut` while keeping interest bookkeeping current: changes only update the desired
    /// set (applied on reconnect) and watches are answered `Down` at once, so no session ever
    /// waits on an outage. None on shutdown.
    async fn while_down<F: std::future::Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                _ = self.p.shutdown.cancelled() => return None,
                cmd = self.p.commands.recv() => match cmd {
                    None => return None,
                    Some(Command::Watch(target, waiter)) => {
                        self.interest.want(target);
                        let _ = waiter.send(Err(BrokerError::Down));
                    }
                    Some(Command::Unwatch(target)) => self.interest.unwatch(&target),
                },
            }
        }
    }
}

/// One round trip of subscription changes: up to four commands, pipelined on the connection.
async fn apply(sink: PubSubSink, batch: Batch) -> redis::RedisResult<()> {
    let split = |targets: Vec<Target>| {
        let mut channels = Vec::new();
        let mut patterns = Vec::new();
        for t in targets {
            match t {
                Target::Key(k) => channels.push(Naming::Plain.channel(&k)),
                Target::Pattern(p) => patterns.push(p),
            }
        }
        (channels, patterns)
    };
    let (sub, psub) = split(batch.subscribe);
    let (unsub, punsub) = split(batch.unsubscribe);
    let (mut a, mut b, mut c, mut d) = (sink.clone(), sink.clone(), sink.clone(), sink);
    let (r1, r2, r3, r4) = futures_util::join!(
        async { if sub.is_empty() { Ok(()) } else { a.subscribe(&sub).await } },
        async { if psub.is_empty() { Ok(()) } else { b.psubscribe(&psub).await } },
        async { if unsub.is_empty() { Ok(()) } else { c.unsubscribe(&unsub).await } },
        async { if punsub.is_empty() { Ok(()) } else { d.punsubscribe(&punsub).await } },
    );
    r1.and(r2).and(r3).and(r4)
}
