//! STOMP acknowledgement bookkeeping of one session (pure).
//!
//! `ack:auto` messages need nothing. For `client` and `client-individual` subscriptions every
//! MESSAGE carries an `ack` id and stays pending until an ACK or NACK names it: `client` acks
//! are cumulative (they settle every earlier pending message of that subscription),
//! `client-individual` ones settle exactly one. An id that was never handed to this session or
//! is already settled is a protocol error. Settled messages are gone either way: the broker is
//! pub/sub and never redelivers, so NACK is accepted and counted.

use std::collections::{BTreeMap, HashMap};

/// A subscription's `ack` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AckMode {
    Auto,
    Client,
    ClientIndividual,
}

impl AckMode {
    /// Parses the SUBSCRIBE `ack` header; absent means `auto`.
    pub(crate) fn parse(value: Option<&str>) -> Option<AckMode> {
        match value {
            None | Some("auto") => Some(AckMode::Auto),
            Some("client") => Some(AckMode::Client),
            Some("client-individual") => Some(AckMode::ClientIndividual),
            Some(_) => None,
        }
    }
}

/// Why an ACK or NACK was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AckError {
    #[error("no message with ack id {0:?} is waiting for an acknowledgement on this connection")]
    Unknown(String),
}

/// Too many messages are waiting for an acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Overflow;

#[derive(Debug)]
struct Pending {
    /// The subscription's [`crate::app::hub::Subscriber::seq`].
    subscription: u64,
    mode: AckMode,
}

/// Pending acknowledgements, bounded in number.
#[derive(Debug)]
pub(crate) struct Acks {
    next: u64,
    limit: usize,
    pending: BTreeMap<u64, Pending>,
    /// Pending ids per subscription, for cumulative acks and unsubscribe.
    by_subscription: HashMap<u64, Vec<u64>>,
}

impl Acks {
    pub(crate) fn new(limit: usize) -> Acks {
        Acks { next: 0, limit, pending: BTreeMap::new(), by_subscription: HashMap::new() }
    }

    /// A MESSAGE of `subscription` is about to be written: its `ack` header value, or None for
    /// `auto`. Err when the session already has `limit` messages unacknowledged.
    pub(crate) fn deliver(&mut self, subscription: u64, mode: AckMode) -> Result<Option<String>, Overflow> {
        if mode == AckMode::Auto {
            return Ok(None);
        }
        if self.pending.len() >= self.limit {
            return Err(Overflow);
        }
        self.next += 1;
        let id = self.next;
        self.pending.insert(id, Pending { subscription, mode });
        self.by_subscription.entry(subscription).or_default().push(id);
        Ok(Some(id.to_string()))
    }

    /// Settles `id` (ACK or NACK alike): returns how many messages it settled.
    pub(crate) fn settle(&mut self, id: &str) -> Result<usize, AckError> {
        let unknown = || AckError::Unknown(id.chars().take(64).collect());
        let n: u64 = id.parse().map_err(|_| unknown())?;
        let Some(p) = self.pending.get(&n) else {
            return Err(unknown());
        };
        let subscription = p.subscription;
        let ids = self.by_subscription.entry(subscription).or_default();
        let settled: Vec<u64> = match p.mode {
            AckMode::Client => ids.iter().copied().filter(|&i| i <= n).collect(),
            _ => vec![n],
        };
        ids.retain(|i| !settled.contains(i));
        if ids.is_empty() {
            self.by_subscription.remove(&subscription);
        }
        for i in &settled {
            self.pending.remove(i);
        }
        Ok(settled.len())
    }

    /// The subscription ended: its pending messages are forgotten.
    pub(crate) fn forget(&mut self, subscription: u64) {
        for id in self.by_subscription.remove(&subscription).unwrap_or_default() {
            self.pending.remove(&id);
        }
    }

    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ack_header_is_parsed() {
        assert_eq!(AckMode::parse(None), Some(AckMode::Auto));
        assert_eq!(AckMode::parse(Some("auto")), Some(AckMode::Auto));
        assert_eq!(AckMode::parse(Some("client")), Some(AckMode::Client));
        assert_eq!(AckMode::parse(Some("client-individual")), Some(AckMode::ClientIndividual));
        assert_eq!(AckMode::parse(Some("Client")), None);
        assert_eq!(AckMode::parse(Some("")), None);
    }

    #[test]
    fn auto_messages_need_no_acknowledgement() {
        let mut a = Acks::new(1);
        for _ in 0..5 {
            assert_eq!(a.deliver(1, AckMode::Auto), Ok(None));
        }
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn client_acks_are_cumulative_per_subscription() {
        let mut a = Acks::new(10);
        let m1 = a.deliver(1, AckMode::Client).unwrap().unwrap();
        let other = a.deliver(2, AckMode::Client).unwrap().unwrap();
        let m2 = a.deliver(1, AckMode::Client).unwrap().unwrap();
        let m3 = a.deliver(1, AckMode::Client).unwrap().unwrap();
        assert_eq!(a.settle(&m2), Ok(2), "m1 and m2");
        assert_eq!(a.settle(&m1), Err(AckError::Unknown(m1.clone())), "already acknowledged");
        assert_eq!(a.settle(&m3), Ok(1));
        assert_eq!(a.pending(), 1, "the other subscription is untouched");
        assert_eq!(a.settle(&other), Ok(1));
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn client_individual_acks_settle_one_message() {
        let mut a = Acks::new(10);
        let m1 = a.deliver(1, AckMode::ClientIndividual).unwrap().unwrap();
        let m2 = a.deliver(1, AckMode::ClientIndividual).unwrap().unwrap();
        assert_eq!(a.settle(&m2), Ok(1));
        assert_eq!(a.settle(&m2), Err(AckError::Unknown(m2.clone())));
        assert_eq!(a.settle(&m1), Ok(1));
    }

    #[test]
    fn ids_never_delivered_are_unknown() {
        let mut a = Acks::new(10);
        for bad in ["", "0", "1", "-1", "abc", "99999999999999999999999"] {
            assert!(a.settle(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unacknowledged_messages_are_bounded_and_forgotten_with_their_subscription() {
        let mut a = Acks::new(2);
        let m1 = a.deliver(1, AckMode::Client).unwrap().unwrap();
        a.deliver(2, AckMode::ClientIndividual).unwrap();
        assert_eq!(a.deliver(1, AckMode::Client), Err(Overflow));
        assert_eq!(a.deliver(3, AckMode::Auto), Ok(None), "auto is not bounded");
        a.forget(1);
        assert_eq!(a.settle(&m1), Err(AckError::Unknown(m1.clone())));
        assert_eq!(a.pending(), 1);
        assert!(a.deliver(1, AckMode::Client).is_ok());
    }
}
