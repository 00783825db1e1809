//! A session's outbound queue: deliveries from the fan-out to the session's task, bounded in
//! bytes (what a slow reader really costs), not in frames (a hundred 32 KiB messages and a
//! hundred 100-byte ones are not the same debt).
//!
//! Pushing never waits: a push past the bound is refused and the caller closes the session as
//! a slow consumer. One message is always accepted into an empty queue, whatever its size, so
//! a large message never closes a reader that keeps up.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use super::message::Prepared;

/// One MESSAGE to write: the prepared message and which subscription it is for.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) message: Arc<Prepared>,
    /// The subscription's instance-unique number: a delivery queued before an UNSUBSCRIBE must
    /// not be written for a later SUBSCRIBE that reuses the STOMP id.
    pub(crate) seq: u64,
}

/// What a session's queue carries: messages, and news of a subscription's broker side.
#[derive(Debug)]
pub(crate) enum Queued {
    Message(Delivery),
    /// Subscription `seq` may be missing messages from here on (its broker subscription was
    /// dropped): hold what arrives until it is restored.
    Interrupted(u64),
    /// Subscription `seq`'s broker subscription is back: fetch what was missed.
    Restored(u64),
}

impl Queued {
    fn size(&self) -> usize {
        match self {
            Queued::Message(d) => d.message.size(),
            Queued::Interrupted(_) | Queued::Restored(_) => 0,
        }
    }
}

/// Why a push was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue holds its bound in bytes: the session is a slow consumer.
    Full,
    /// The session is gone.
    Closed,
}

/// The fan-out's end.
#[derive(Clone, Debug)]
pub(crate) struct Sender {
    tx: mpsc::UnboundedSender<Queued>,
    queued: Arc<AtomicUsize>,
    limit: usize,
}

/// The session's end.
#[derive(Debug)]
pub(crate) struct Receiver {
    rx: mpsc::UnboundedReceiver<Queued>,
    queued: Arc<AtomicUsize>,
}

/// A queue bounded at `limit_bytes`.
pub(crate) fn channel(limit_bytes: usize) -> (Sender, Receiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (Sender { tx, queued: queued.clone(), limit: limit_bytes }, Receiver { rx, queued })
}

impl Sender {
    pub(crate) fn push(&self, delivery: Delivery) -> Result<(), Refused> {
        let size = delivery.message.size();
        let before = self.queued.fetch_add(size, Ordering::AcqRel);
        if before > 0 && before + size > self.limit {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            return Err(Refused::Full);
        }
        self.tx.send(Queued::Message(delivery)).map_err(|_| {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            Refused::Closed
        })
    }

    /// Queues news of a subscription, outside the bound (it costs nothing to hold, and must not
    /// be lost or overtake the messages before it).
    pub(crate) fn signal(&self, news: Queued) -> Result<(), Refused> {
        self.tx.send(news).map_err(|_| Refused::Closed)
    }
}

impl Receiver {
    pub(crate) async fn recv(&mut self) -> Option<Queued> {
        let q = self.rx.recv().await?;
        self.taken(&q);
        Some(q)
    }

    pub(crate) fn try_recv(&mut self) -> Option<Queued> {
        let q = self.rx.try_recv().ok()?;
        self.taken(&q);
        Some(q)
    }

    fn taken(&self, q: &Queued) {
        self.queued.fetch_sub(q.size(), Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::broker::Envelope;

    fn delivery(body_bytes: usize) -> Delivery {
        let envelope = Envelope {
            origin: 1,
            instance: "i".into(),
            id: "m".into(),
            destination: "/d".into(),
            sender: None,
            content_type: None,
            headers: Vec::new(),
            body: vec![b'x'; body_bytes].into(),
            published_at_ms: 0,
            stream_id: None,
        };
        Delivery { message: Arc::new(Prepared::new(Arc::new(envelope))), seq: 1 }
    }

    #[tokio::test]
    async fn the_bound_is_in_bytes_and_taking_frees_room() {
        let size = delivery(1000).message.size();
        let (tx, mut rx) = channel(3 * size);
        for _ in 0..3 {
            assert_eq!(tx.push(delivery(1000)), Ok(()));
        }
        assert_eq!(tx.push(delivery(1000)), Err(Refused::Full));
        // Small ones still fit where a big one does not.
        let (tx2, _rx2) = channel(3 * size);
        for _ in 0..3 * size / delivery(10).message.size() {
            assert_eq!(tx2.push(delivery(10)), Ok(()));
        }
        assert!(rx.recv().await.is_some());
        assert_eq!(tx.push(delivery(1000)), Ok(()), "room again after one was taken");
        assert!(rx.try_recv().is_some());
        assert!(rx.try_recv().is_some());
        assert!(rx.try_recv().is_some());
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn news_of_a_subscription_passes_a_full_queue_in_order() {
        let (tx, mut rx) = channel(10);
        assert_eq!(tx.push(delivery(100)), Ok(()));
        assert_eq!(tx.signal(Queued::Interrupted(1)), Ok(()));
        assert_eq!(tx.push(delivery(1)), Err(Refused::Full), "news takes no room");
        assert!(matches!(rx.try_recv(), Some(Queued::Message(_))));
        assert!(matches!(rx.try_recv(), Some(Queued::Interrupted(1))));
        assert_eq!(tx.push(delivery(1)), Ok(()), "empty again");
        drop(rx);
        assert_eq!(tx.signal(Queued::Restored(1)), Err(Refused::Closed));
    }

    #[tokio::test]
    async fn one_message_always_fits_an_empty_queue_and_a_gone_session_refuses() {
        let (tx, rx) = channel(10);
        assert_eq!(tx.push(delivery(100_000)), Ok(()));
        assert_eq!(tx.push(delivery(1)), Err(Refused::Full));
        drop(rx);
        let (tx, rx) = channel(1 << 20);
        drop(rx);
        assert_eq!(tx.push(delivery(1)), Err(Refused::Closed));
    }
}
