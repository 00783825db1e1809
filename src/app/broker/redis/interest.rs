//! What the subscription connection should listen to, and which SUBSCRIBE-like commands bring
//! Redis there. Pure bookkeeping: the supervisor does the I/O and reports back.
//!
//! At most one batch is in flight. Changes that arrive meanwhile accumulate and go out as the
//! next batch, one command per kind however many channels it names, so a thousand new
//! destinations cost a few round trips instead of a thousand sequential ones.

use std::collections::HashSet;

use crate::app::broker::Target;

/// The commands of one round trip.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Batch {
    pub(super) subscribe: Vec<Target>,
    pub(super) unsubscribe: Vec<Target>,
}

/// Desired and confirmed interest, plus whoever waits for a confirmation (`W`).
#[derive(Debug)]
pub(super) struct Interest<W> {
    desired: HashSet<Target>,
    subscribed: HashSet<Target>,
    in_flight: Option<Batch>,
    waiters: Vec<(Target, W)>,
    /// Keys whose subscription the server or the connection dropped while they were wanted:
    /// messages may have been missed until they are subscribed again.
    interrupted: HashSet<Target>,
}

impl<W> Default for Interest<W> {
    fn default() -> Self {
        Interest {
            desired: HashSet::new(),
            subscribed: HashSet::new(),
            in_flight: None,
            waiters: Vec::new(),
            interrupted: HashSet::new(),
        }
    }
}

impl<W> Interest<W> {
    /// Wants `target`. Returns the waiter at once when Redis already confirmed it (and no
    /// in-flight batch is taking it away); otherwise it is kept until a batch settles it.
    pub(super) fn watch(&mut self, target: Target, waiter: W) -> Option<W> {
        let leaving = self.in_flight.as_ref().is_some_and(|b| b.unsubscribe.contains(&target));
        let confirmed = self.subscribed.contains(&target) && !leaving;
        self.desired.insert(target.clone());
        if confirmed {
            return Some(waiter);
        }
        self.waiters.push((target, waiter));
        None
    }

    /// Wants `target` with nobody waiting (while disconnected: applied on reconnect).
    pub(super) fn want(&mut self, target: Target) {
        self.desired.insert(target);
    }

    pub(super) fn unwatch(&mut self, target: &Target) {
        self.desired.remove(target);
    }

    /// The next round trip: everything desired but not subscribed, and the reverse. None while
    /// one is in flight or when Redis already matches.
    pub(super) fn next_batch(&mut self) -> Option<Batch> {
        if self.in_flight.is_some() {
            return None;
        }
        let mut subscribe: Vec<Target> = self.desired.difference(&self.subscribed).cloned().collect();
        let mut unsubscribe: Vec<Target> = self.subscribed.difference(&self.desired).cloned().collect();
        if subscribe.is_empty() && unsubscribe.is_empty() {
            return None;
        }
        subscribe.sort();
        unsubscribe.sort();
        let batch = Batch { subscribe, unsubscribe };
        self.in_flight = Some(batch.clone());
        Some(batch)
    }

    /// The in-flight batch was confirmed. Returns the waiters that are now answered: their
    /// target is subscribed, or nobody wants it any more.
    pub(super) fn batch_done(&mut self) -> Vec<W> {
        if let Some(batch) = self.in_flight.take() {
            for t in batch.unsubscribe {
                self.subscribed.remove(&t);
            }
            self.subscribed.extend(batch.subscribe);
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(t, _)| self.subscribed.contains(t) || !self.desired.contains(t));
        self.waiters = waiting;
        done.into_iter().map(|(_, w)| w).collect()
    }

    /// The server dropped `target` on its own (its slot moved to another node): it is no longer
    /// subscribed, and the next batch subscribes it again if it is still wanted. Returns
    /// whether that is the case (false when it was not subscribed, or is being unsubscribed).
    pub(super) fn lose(&mut self, target: &Target) -> bool {
        let leaving = self.in_flight.as_ref().is_some_and(|b| b.unsubscribe.contains(target));
        if leaving || !self.desired.contains(target) {
            return false;
        }
        let lost = self.subscribed.remove(target);
        if lost && matches!(target, Target::Key(_)) {
            self.interrupted.insert(target.clone());
        }
        lost
    }

    /// One of several connections dropped and was remade by the client library, which
    /// subscribes it again on its own but says nothing of what it missed: every subscribed key
    /// counts as dropped ([`Interest::lose`]) and is subscribed again by the next batch (a
    /// repeated subscription is harmless). Returns those keys.
    pub(super) fn lose_all_keys(&mut self) -> Vec<String> {
        let keys: Vec<Target> = self.subscribed.iter().filter(|t| matches!(t, Target::Key(_))).cloned().collect();
        let mut lost: Vec<String> = keys
            .into_iter()
            .filter(|t| self.lose(t))
            .filter_map(|t| match t {
                Target::Key(k) => Some(k),
                Target::Pattern(_) => None,
            })
            .collect();
        lost.sort();
        lost
    }

    /// The connection is gone: nothing is subscribed any more, and every waiter fails (the
    /// desired set stays, for the resubscription on reconnect). Returns the keys that were
    /// subscribed and are still wanted: they are interrupted until subscribed again.
    pub(super) fn connection_lost(&mut self) -> (Vec<W>, Vec<String>) {
        let mut keys = Vec::new();
        for t in self.subscribed.drain() {
            if let (Target::Key(k), true) = (&t, self.desired.contains(&t)) {
                keys.push(k.clone());
                self.interrupted.insert(t);
            }
        }
        keys.sort();
        self.in_flight = None;
        (std::mem::take(&mut self.waiters).into_iter().map(|(_, w)| w).collect(), keys)
    }

    /// Interrupted keys that are subscribed again (or no longer wanted, which are just
    /// forgotten): what was published to the subscribed ones meanwhile is in their record.
    pub(super) fn take_restored(&mut self) -> Vec<String> {
        let mut restored = Vec::new();
        let (subscribed, desired) = (&self.subscribed, &self.desired);
        self.interrupted.retain(|t| {
            if subscribed.contains(t) {
                if let Target::Key(k) = t {
                    restored.push(k.clone());
                }
                return false;
            }
            desired.contains(t)
        });
        restored.sort();
        restored
    }

    /// How many targets are desired (for the `redis_connected` log line).
    pub(super) fn desired_count(&self) -> usize {
        self.desired.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Target {
        Target::Key(k.into())
    }

    #[test]
    fn changes_made_while_a_batch_is_in_flight_go_out_together() {
        let mut i = Interest::default();
        assert_eq!(i.watch(key("a"), 1), None);
        let first = i.next_batch().unwrap();
        assert_eq!(first, Batch { subscribe: vec![key("a")], unsubscribe: vec![] });
        for (n, k) in ["b", "c", "d"].into_iter().enumerate() {
            assert_eq!(i.watch(key(k), 10 + n), None);
        }
        assert_eq!(i.next_batch(), None, "one batch in flight at a time");
        assert_eq!(i.batch_done(), vec![1]);
        let second = i.next_batch().unwrap();
        assert_eq!(second.subscribe, vec![key("b"), key("c"), key("d")]);
        assert_eq!(i.batch_done(), vec![10, 11, 12]);
        assert_eq!(i.next_batch(), None);
        // Already confirmed: answered at once.
        assert_eq!(i.watch(key("b"), 20), Some(20));
    }

    #[test]
    fn a_target_being_unsubscribed_is_confirmed_only_after_it_is_subscribed_again() {
        let mut i = Interest::default();
        i.watch(key("a"), 1);
        i.next_batch();
        i.batch_done();
        i.unwatch(&key("a"));
        assert_eq!(i.next_batch(), Some(Batch { subscribe: vec![], unsubscribe: vec![key("a")] }));
        assert_eq!(i.watch(key("a"), 2), None, "the in-flight UNSUBSCRIBE would undo it");
        assert_eq!(i.batch_done(), Vec::<i32>::new());
        assert_eq!(i.next_batch(), Some(Batch { subscribe: vec![key("a")], unsubscribe: vec![] }));
        assert_eq!(i.batch_done(), vec![2]);
    }

    #[test]
    fn a_watch_and_unwatch_before_the_round_trip_cancel_out() {
        let mut i: Interest<u8> = Interest::default();
        assert_eq!(i.watch(key("a"), 1), None);
        i.unwatch(&key("a"));
        assert_eq!(i.next_batch(), None);
        // The waiter of a target nobody wants any more is answered with the next settlement.
        i.watch(Target::Pattern("p:*".into()), 2);
        i.next_batch();
        assert_eq!(i.batch_done(), vec![1, 2]);
    }

    #[test]
    fn a_target_the_server_dropped_is_subscribed_again_unless_it_was_leaving() {
        let mut i: Interest<u8> = Interest::default();
        i.watch(key("a"), 1);
        i.watch(key("b"), 2);
        i.next_batch();
        i.batch_done();
        assert!(i.lose(&key("a")));
        assert!(!i.lose(&key("a")), "already lost");
        assert_eq!(i.next_batch(), Some(Batch { subscribe: vec![key("a")], unsubscribe: vec![] }));
        i.batch_done();
        i.unwatch(&key("b"));
        i.next_batch();
        assert!(!i.lose(&key("b")), "being unsubscribed: the drop is the answer");
        assert!(!i.lose(&key("zzz")));
    }

    #[test]
    fn a_lost_connection_fails_every_waiter_and_resubscribes_everything_desired() {
        let mut i = Interest::default();
        i.watch(key("a"), 1);
        i.next_batch();
        i.batch_done();
        i.watch(key("b"), 2);
        i.next_batch();
        assert_eq!(i.connection_lost().0, vec![2]);
        let again = i.next_batch().unwrap();
        assert_eq!(again.subscribe, vec![key("a"), key("b")]);
        assert_eq!(i.desired_count(), 2);
    }

    #[test]
    fn a_remade_connection_counts_every_subscribed_key_as_dropped() {
        let mut i = Interest::default();
        for k in ["a", "b"] {
            i.watch(key(k), 0);
        }
        i.watch(Target::Pattern("p:*".into()), 0);
        i.next_batch();
        i.batch_done();
        i.unwatch(&key("b"));
        assert_eq!(i.lose_all_keys(), ["a"], "not b, which is being given up, nor the pattern");
        let batch = i.next_batch().unwrap();
        assert_eq!(batch.subscribe, vec![key("a")]);
        i.batch_done();
        assert_eq!(i.take_restored(), ["a"]);
    }

    #[test]
    fn keys_dropped_while_wanted_are_reported_once_subscribed_again() {
        let mut i = Interest::default();
        for k in ["a", "b", "c"] {
            i.watch(key(k), 0);
        }
        i.watch(Target::Pattern("p:*".into()), 0);
        i.next_batch();
        i.batch_done();
        assert!(i.take_restored().is_empty(), "nothing was interrupted");
        // The server drops "a" (its slot moved); the next batch brings it back.
        assert!(i.lose(&key("a")));
        assert!(i.take_restored().is_empty(), "not subscribed again yet");
        assert_eq!(i.next_batch().unwrap().subscribe, vec![key("a")]);
        i.batch_done();
        assert_eq!(i.take_restored(), ["a"]);
        assert!(i.take_restored().is_empty(), "reported once");
        // The connection goes: every wanted key is interrupted; one is given up meanwhile.
        let (_, keys) = i.connection_lost();
        assert_eq!(keys, ["a", "b", "c"], "patterns are not keys");
        i.unwatch(&key("c"));
        i.next_batch();
        i.batch_done();
        assert_eq!(i.take_restored(), ["a", "b"]);
        let (_, keys) = i.connection_lost();
        assert_eq!(keys, ["a", "b"]);
        i.unwatch(&key("a"));
        i.unwatch(&key("b"));
        i.next_batch();
        i.batch_done();
        assert!(i.take_restored().is_empty(), "keys nobody wants any more are forgotten");
    }
}
