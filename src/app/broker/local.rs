//! The in-process adapter: instances in one process (one `tether backend` without `--redis`, or
//! the two backends of `tether demo`) share a [`LocalBus`] and hand envelopes to each other
//! directly, the publisher included, synchronously and in call order. It is always up and
//! confirms at once.
//!
//! It must not block: delivery into another instance goes through that instance's non-blocking
//! [`Inbound`]. There is no per-key interest tracking here: the receiving instance drops
//! envelopes nobody subscribed to, which costs one hash lookup and no network.
//!
//! With history (the first instance attached with `--history` or `--history-len` turns it on
//! for the bus), every envelope is recorded in an in-memory [`Rings`] and given its stream id
//! under one lock that is held until every member has it, so ids and deliveries are in the
//! same order on every member: the contract a Redis Stream written by a script gives.

use std::sync::Arc;

use futures_util::FutureExt as _;
use parking_lot::{Mutex, RwLock};

use super::{Ack, Broker, BrokerKind, Envelope, Health, Inbound, Received, Replay, Target};
use crate::app::history::ring::Rings;
use crate::app::history::{Retention, Start};
use crate::app::instance::unix_ms;

/// A cloneable handle to one in-process bus.
#[derive(Clone, Default)]
pub struct LocalBus {
    members: Arc<RwLock<Vec<Member>>>,
    history: Arc<Mutex<Option<Rings<Arc<Envelope>>>>>,
}

struct Member {
    token: u64,
    inbound: Inbound,
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.members.read().len();
        f.debug_struct("LocalBus").field("members", &n).finish()
    }
}

impl LocalBus {
    /// A bus with no instance attached yet.
    pub fn new() -> LocalBus {
        LocalBus::default()
    }

    /// Joins the bus, turning history on for it when `retention` is given and it has none yet.
    /// The member leaves when the returned broker is dropped.
    pub(crate) fn attach(&self, inbound: Inbound, retention: Option<Retention>) -> LocalBroker {
        if let Some(retention) = retention {
            self.history.lock().get_or_insert_with(|| Rings::new(retention));
        }
        let token = rand::random();
        let mut members = self.members.write();
        members.push(Member { token, inbound });
        LocalBroker { bus: self.clone(), token }
    }

    /// Records `envelope` (with history) and hands it to every member.
    fn publish(&self, publisher: u64, envelope: Arc<Envelope>) {
        let mut history = self.history.lock();
        match history.as_mut() {
            None => {
                drop(history);
                self.deliver(publisher, &envelope);
            }
            Some(rings) => {
                let recorded = rings.record(&envelope.destination, unix_ms(), |id| {
                    let mut recorded = (*envelope).clone();
                    recorded.stream_id = Some(id);
                    Arc::new(recorded)
                });
                // Still under the history lock: the next id is not handed out before every
                // member has this one.
                self.deliver(publisher, &recorded);
            }
        }
    }

    /// Hands `envelope` to every member, the publisher first. The read lock is held for the
    /// whole round, so two publishers' rounds do not interleave differently per member.
    fn deliver(&self, publisher: u64, envelope: &Arc<Envelope>) {
        let members = self.members.read();
        let (mine, others): (Vec<&Member>, Vec<&Member>) = members.iter().partition(|m| m.token == publisher);
        for m in mine.into_iter().chain(others) {
            (m.inbound)(Received::Envelope(envelope.clone()));
        }
    }
}

/// One instance's membership in a [`LocalBus`].
pub(crate) struct LocalBroker {
    bus: LocalBus,
    token: u64,
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        let mut members = self.bus.members.write();
        members.retain(|m| m.token != self.token);
    }
}

impl Broker for LocalBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Local
    }

    fn publish(&self, envelope: Arc<Envelope>) -> Ack {
        self.bus.publish(self.token, envelope);
        Ack::ready(Ok(()))
    }

    fn replay(&self, key: &str, start: Start, limit: usize) -> Replay {
        let page = match self.bus.history.lock().as_mut() {
            None => Vec::new(),
            Some(rings) => rings.range(key, start, limit, unix_ms()).into_iter().map(|(_, e)| e).collect(),
        };
        std::future::ready(Ok(page)).boxed()
    }

    fn watch(&self, _target: Target) -> Ack {
        Ack::ready(Ok(()))
    }

    fn unwatch(&self, _target: Target) {}

    fn health(&self) -> Health {
        Health::Up
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn envelope(origin: u64) -> Arc<Envelope> {
        Arc::new(Envelope {
            origin,
            instance: "i".into(),
            id: "m".into(),
            destination: "/t".into(),
            sender: None,
            content_type: None,
            headers: Vec::new(),
            body: bytes::Bytes::from_static(b"x"),
            published_at_ms: 0,
            stream_id: None,
        })
    }

    fn recorder() -> (Arc<Mutex<Vec<u64>>>, Inbound) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let inbound: Inbound = Arc::new(move |r: Received| {
            if let Received::Envelope(e) = r {
                s.lock().unwrap().push(e.origin)
            }
        });
        (seen, inbound)
    }

    #[tokio::test]
    async fn publishes_reach_every_member_including_the_publisher_in_order() {
        let bus = LocalBus::new();
        let (seen_a, in_a) = recorder();
        let (seen_b, in_b) = recorder();
        let a = bus.attach(in_a, None);
        let b = bus.attach(in_b, None);
        assert_eq!(a.publish(envelope(1)).await, Ok(()));
        assert_eq!(b.publish(envelope(2)).await, Ok(()));
        assert_eq!(*seen_a.lock().unwrap(), vec![1, 2]);
        assert_eq!(*seen_b.lock().unwrap(), vec![1, 2]);
        drop(b);
        assert_eq!(a.publish(envelope(3)).await, Ok(()));
        assert_eq!(*seen_a.lock().unwrap(), vec![1, 2, 3]);
        assert_eq!(*seen_b.lock().unwrap(), vec![1, 2]);
    }
}
