//! Local subscription bookkeeping, pure: one destination's subscribers ([`Subscribers`]: added
//! and removed in O(1), iterated as a dense slice for delivery) and the naming rules for user
//! destinations.
//!
//! It must not do I/O, lock, send messages or talk to the broker: `fanout` shards these sets
//! behind locks and delivers; the caller turns "first subscriber" and "last one gone" into
//! broker interest (dynamic subscription).

use std::collections::HashMap;

/// Instance-local session number.
pub(crate) type SessionId = u64;

/// Prefix of Spring-style user destinations.
pub(crate) const USER_PREFIX: &str = "/user/";

/// Longest accepted user id; ids travel in headers and Redis channel names.
pub(crate) const MAX_USER_ID_BYTES: usize = 128;

/// The subscribers of one destination key, each under its instance-unique subscription number
/// (`seq`): a dense list (delivery walks a slice) and where each one sits in it, so a removal
/// is a swap with the last one, not a scan.
#[derive(Debug)]
pub(crate) struct Subscribers<H> {
    list: Vec<(u64, H)>,
    at: HashMap<u64, usize>,
}

impl<H> Default for Subscribers<H> {
    fn default() -> Self {
        Subscribers { list: Vec::new(), at: HashMap::new() }
    }
}

impl<H> Subscribers<H> {
    /// Adds subscription `seq`; returns true when the set was empty (the key's first
    /// subscriber). A `seq` already present is replaced.
    pub(crate) fn insert(&mut self, seq: u64, handle: H) -> bool {
        if let Some(&i) = self.at.get(&seq) {
            self.list[i].1 = handle;
            return false;
        }
        self.at.insert(seq, self.list.len());
        self.list.push((seq, handle));
        self.list.len() == 1
    }

    /// Removes subscription `seq`; returns its handle, or None if it was not here.
    pub(crate) fn remove(&mut self, seq: u64) -> Option<H> {
        let i = self.at.remove(&seq)?;
        let (_, handle) = self.list.swap_remove(i);
        if let Some((moved, _)) = self.list.get(i) {
            self.at.insert(*moved, i);
        }
        Some(handle)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    /// Every subscriber, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &H)> {
        self.list.iter().map(|(seq, h)| (*seq, h))
    }
}

/// The hub key a SUBSCRIBE registers under. Spring's convention: a session of user `alice`
/// subscribing to `/user/queue/x` listens on `/user/alice/queue/x`, which is where a SEND to
/// `/user/alice/queue/x` goes. Every `/user/...` subscription is prefixed with the subscriber's
/// own name, so nobody can listen on another user's destinations by subscribing to them.
pub(crate) fn subscription_key(destination: &str, user: &str) -> String {
    match destination.strip_prefix(USER_PREFIX) {
        Some(rest) => format!("{USER_PREFIX}{user}/{rest}"),
        None => destination.to_owned(),
    }
}

/// Whether `id` can name a user: it becomes a path segment of user destinations, so it must not
/// contain `/` (that would let `a/b` collide with `a`) or control characters.
pub(crate) fn is_valid_user_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_USER_ID_BYTES && !id.chars().any(|c| c == '/' || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(s: &Subscribers<char>) -> Vec<(u64, char)> {
        let mut v: Vec<_> = s.iter().map(|(q, h)| (q, *h)).collect();
        v.sort();
        v
    }

    #[test]
    fn the_first_subscriber_is_reported_and_removal_keeps_the_others() {
        let mut s = Subscribers::default();
        assert!(s.insert(1, 'a'));
        assert!(!s.insert(2, 'b'));
        assert!(!s.insert(3, 'c'));
        assert_eq!(s.remove(1), Some('a'));
        assert_eq!(s.remove(1), None);
        assert_eq!(seqs(&s), [(2, 'b'), (3, 'c')]);
        assert_eq!(s.remove(3), Some('c'));
        assert_eq!(s.remove(2), Some('b'));
        assert!(s.is_empty());
        assert!(s.insert(4, 'd'), "first again once emptied");
    }

    #[test]
    fn a_repeated_seq_replaces_and_is_not_counted_twice() {
        let mut s = Subscribers::default();
        s.insert(1, 'a');
        assert!(!s.insert(1, 'z'));
        assert_eq!(s.len(), 1);
        assert_eq!(s.remove(1), Some('z'));
    }

    #[test]
    fn any_order_of_inserts_and_removals_keeps_the_index_true() {
        // Every permutation of removing 5 of 6 subscribers, then the last.
        let order = [3u64, 0, 5, 1, 4, 2];
        for rot in 0..order.len() {
            let mut s = Subscribers::default();
            for q in 0..6 {
                s.insert(q, q as u32);
            }
            let mut left: Vec<u64> = (0..6).collect();
            for k in 0..6 {
                let q = order[(rot + k) % order.len()];
                assert_eq!(s.remove(q), Some(q as u32));
                left.retain(|&x| x != q);
                let mut now: Vec<u64> = s
                    .iter()
                    .map(|(q, h)| {
                        assert_eq!(*h as u64, q, "each seq keeps its own handle");
                        q
                    })
                    .collect();
                now.sort();
                assert_eq!(now, left);
            }
        }
    }

    #[test]
    fn user_destinations_are_keyed_by_the_subscribers_own_name() {
        assert_eq!(subscription_key("/user/queue/x", "alice"), "/user/alice/queue/x");
        // Subscribing to someone else's destination only reaches your own namespace.
        assert_eq!(subscription_key("/user/bob/queue/x", "alice"), "/user/alice/bob/queue/x");
        assert_eq!(subscription_key("/topic/x", "alice"), "/topic/x");
    }

    #[test]
    fn user_ids_that_would_alias_other_users_are_invalid() {
        assert!(is_valid_user_id("alice"));
        assert!(is_valid_user_id("user@example.com"));
        assert!(!is_valid_user_id(""));
        assert!(!is_valid_user_id("a/b"));
        assert!(!is_valid_user_id("a\nb"));
        assert!(!is_valid_user_id(&"x".repeat(MAX_USER_ID_BYTES + 1)));
    }
}
