//! Who on this instance listens on which destination key: the subscriber sets of `hub`,
//! sharded by key so that no lock covers the whole instance.
//!
//! Delivering a message takes one shard's read lock for a hash lookup, releases it, and walks
//! that destination's set under the destination's own read lock: deliveries to different
//! destinations never wait for each other, and subscribing to one destination never waits for
//! a delivery to another. Subscription changes take the shard's write lock, and run the
//! caller's broker bookkeeping under it, so the first-subscriber and last-subscriber events of
//! one key reach the broker in the order they happened.
//!
//! It owns no I/O and sends nothing: the caller (`instance`) walks the set and queues.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;

use super::hub::Subscribers;

/// Shards of the key map: more than enough that two busy destinations rarely share one.
const SHARDS: usize = 64;

/// One destination's subscribers, shared with deliveries in progress.
pub(crate) type Destination<H> = Arc<RwLock<Subscribers<H>>>;

/// The destinations whose keys hash to one shard.
type Shard<H> = RwLock<HashMap<Arc<str>, Destination<H>>>;

pub(crate) struct Registry<H> {
    shards: Box<[Shard<H>]>,
    hasher: std::hash::RandomState,
    subscriptions: AtomicUsize,
    destinations: AtomicUsize,
}

impl<H> Default for Registry<H> {
    fn default() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: std::hash::RandomState::new(),
            subscriptions: AtomicUsize::new(0),
            destinations: AtomicUsize::new(0),
        }
    }
}

impl<H> Registry<H> {
    fn shard(&self, key: &str) -> &Shard<H> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Adds subscription `seq` under `key`, then runs `then(first)` (whether `key` had no
    /// subscriber before) while the shard is still locked.
    pub(crate) fn subscribe<R>(&self, key: &str, seq: u64, handle: H, then: impl FnOnce(bool) -> R) -> R {
        let mut shard = self.shard(key).write();
        let destination = match shard.get(key) {
            Some(d) => d.clone(),
            None => {
                let d = Destination::default();
                shard.insert(Arc::from(key), d.clone());
                self.destinations.fetch_add(1, Ordering::Relaxed);
                d
            }
        };
        let mut set = destination.write();
        let before = set.len();
        let first = set.insert(seq, handle);
        if set.len() > before {
            self.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        drop(set);
        then(first)
    }

    /// Removes subscription `seq` from `key`, then runs `then()` under the shard lock when that
    /// left `key` without subscribers. Returns whether the subscription existed.
    pub(crate) fn unsubscribe(&self, key: &str, seq: u64, then: impl FnOnce()) -> bool {
        let mut shard = self.shard(key).write();
        let Some(destination) = shard.get(key) else { return false };
        let mut set = destination.write();
        if set.remove(seq).is_none() {
            return false;
        }
        self.subscriptions.fetch_sub(1, Ordering::Relaxed);
        let emptied = set.is_empty();
        drop(set);
        if emptied {
            shard.remove(key);
            self.destinations.fetch_sub(1, Ordering::Relaxed);
            then();
        }
        true
    }

    /// The subscribers of `key`, if any. The shard lock is released before this returns.
    pub(crate) fn destination(&self, key: &str) -> Option<Destination<H>> {
        self.shard(key).read().get(key).cloned()
    }

    /// Every key with a subscriber.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> Vec<Arc<str>> {
        self.shards.iter().flat_map(|s| s.read().keys().cloned().collect::<Vec<_>>()).collect()
    }

    pub(crate) fn subscription_count(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    pub(crate) fn destination_count(&self) -> usize {
        self.destinations.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_last_subscribers_of_a_key_are_reported_and_counted() {
        let r: Registry<char> = Registry::default();
        assert!(r.subscribe("/t", 1, 'a', |first| first));
        assert!(!r.subscribe("/t", 2, 'b', |first| first));
        assert!(r.subscribe("/u", 3, 'c', |first| first));
        assert_eq!((r.subscription_count(), r.destination_count()), (3, 2));
        let mut emptied = 0;
        assert!(r.unsubscribe("/t", 1, || emptied += 1));
        assert!(!r.unsubscribe("/t", 1, || emptied += 1), "already gone");
        assert!(!r.unsubscribe("/nowhere", 1, || emptied += 1));
        assert_eq!(emptied, 0);
        assert!(r.unsubscribe("/t", 2, || emptied += 1));
        assert_eq!(emptied, 1);
        assert!(r.destination("/t").is_none());
        assert_eq!(r.destination("/u").map(|d| d.read().len()), Some(1));
        assert_eq!((r.subscription_count(), r.destination_count()), (1, 1));
        let mut keys = r.keys();
        keys.sort();
        assert_eq!(keys, vec![Arc::<str>::from("/u")]);
    }

    #[test]
    fn a_delivery_in_progress_keeps_its_set_while_the_key_is_recreated() {
        let r: Registry<char> = Registry::default();
        r.subscribe("/t", 1, 'a', |_| ());
        let held = r.destination("/t").unwrap();
        r.unsubscribe("/t", 1, || ());
        assert!(r.subscribe("/t", 2, 'b', |first| first), "a fresh set");
        assert!(held.read().is_empty());
        assert_eq!(r.destination("/t").unwrap().read().len(), 1);
    }

    #[test]
    fn many_threads_subscribing_and_unsubscribing_leave_exact_counts() {
        let r: Arc<Registry<u64>> = Arc::new(Registry::default());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..500u64 {
                        let seq = t * 1000 + i;
                        let key = format!("/k{}", i % 7);
                        r.subscribe(&key, seq, seq, |_| ());
                        if i % 2 == 0 {
                            assert!(r.unsubscribe(&key, seq, || ()));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(r.subscription_count(), 4 * 250);
        assert_eq!(r.destination_count(), 7);
        let total: usize = r.keys().iter().map(|k| r.destination(k).unwrap().read().len()).sum();
        assert_eq!(total, 1000);
    }
}
