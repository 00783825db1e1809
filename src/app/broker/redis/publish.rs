//! The publisher task: PUBLISH pipelines on the connection of the current epoch, one round trip
//! at a time so envelopes reach Redis in the order they were handed over.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwapOption;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::stream::{self, PublishCommand};
use super::{Live, MAX_BATCH, Outgoing, RedisTimeouts, State};
use crate::app::broker::BrokerError;
use crate::app::history::Retention;

pub(super) struct Publisher {
    pub(super) rx: mpsc::Receiver<Outgoing>,
    pub(super) live: Arc<ArcSwapOption<Live>>,
    /// The epoch whose connection failed, for the supervisor to reconnect.
    pub(super) failed: watch::Sender<u64>,
    pub(super) state: Arc<State>,
    pub(super) timeouts: RedisTimeouts,
    pub(super) history: Option<Retention>,
}

/// Wait for the next message and take up to [`MAX_BATCH`] queued behind it into `batch`; false
/// once the queue is closed or shutdown began.
pub(super) async fn next_batch(
    rx: &mut mpsc::Receiver<Outgoing>,
    batch: &mut Vec<Outgoing>,
    shutdown: &CancellationToken,
) -> bool {
    let first = tokio::select! {
        m = rx.recv() => match m { Some(m) => m, None => return false },
        _ = shutdown.cancelled() => return false,
    };
    batch.push(first);
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(m) => batch.push(m),
            Err(_) => break,
        }
    }
    true
}

impl Publisher {
    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            if !next_batch(&mut self.rx, &mut batch, &shutdown).await {
                return;
            }
            let outcome = match self.live.load_full() {
                None => Err(BrokerError::Down),
                Some(live) => self.round_trip(&live, &batch).await,
            };
            for m in batch.drain(..) {
                let _ = m.ack.send(outcome.clone());
            }
        }
    }

    /// One pipeline. Past `slow` the broker is reported slow and the answer is still awaited;
    /// past `down` (or on an I/O error) the connection is given up and the batch reported
    /// [`BrokerError::Lost`]: it may have been applied, and it is not sent again.
    async fn round_trip(&self, live: &Live, batch: &[Outgoing]) -> Result<(), BrokerError> {
        let mut pipe = redis::pipe();
        for m in batch {
            match (&m.stream, self.history) {
                (Some(stream), Some(retention)) => {
                    pipe.add_command(stream::record_cmd(
                        stream,
                        &m.channel,
                        retention,
                        &m.payload,
                        PublishCommand::Publish,
                    ))
                    .ignore();
                }
                _ => {
                    pipe.publish(&m.channel, &m.payload).ignore();
                }
            }
        }
        let mut conn = live.conn.clone();
        let query = pipe.query_async::<()>(&mut conn);
        tokio::pin!(query);
        let result = match tokio::time::timeout(self.timeouts.slow, &mut query).await {
            Ok(r) => Ok(r),
            Err(_) => {
                self.state.publisher_slow.store(true, Ordering::Release);
                tracing::warn!(event = "redis_slow", connection = "publish", messages = batch.len());
                let rest = self.timeouts.down.saturating_sub(self.timeouts.slow);
                let r = tokio::time::timeout(rest, &mut query).await;
                self.state.publisher_slow.store(false, Ordering::Release);
                r.map_err(|_| ())
            }
        };
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(event = "redis_publish_failed", error = %e, messages = batch.len());
                self.failed.send_replace(live.epoch);
                Err(BrokerError::Lost)
            }
            Err(()) => {
                tracing::warn!(event = "redis_publish_failed", error = "no answer", messages = batch.len());
                self.failed.send_replace(live.epoch);
                Err(BrokerError::Lost)
            }
        }
    }
}
