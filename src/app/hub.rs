//! Local subscription bookkeeping: which session subscriptions listen on which destination key,
//! plus the pure naming rules for user destinations.
//!
//! The hub is a plain data structure over an opaque per-session handle `H`. It must not do I/O,
//! send messages or talk to the broker: it reports when a key gains its first or loses its last
//! subscriber, and the caller turns that into broker interest (dynamic subscription).

use std::collections::HashMap;
use std::sync::Arc;

/// Instance-local session number.
pub(crate) type SessionId = u64;

/// Prefix of Spring-style user destinations.
pub(crate) const USER_PREFIX: &str = "/user/";

/// Longest accepted user id; ids travel in headers and Redis channel names.
pub(crate) const MAX_USER_ID_BYTES: usize = 128;

/// One SUBSCRIBE, as the hub stores it.
#[derive(Clone, Debug)]
pub(crate) struct Subscriber<H> {
    pub(crate) session: SessionId,
    /// The STOMP `id` of the SUBSCRIBE (echoed as MESSAGE `subscription`).
    pub(crate) id: Arc<str>,
    /// The destination as the client subscribed to it (echoed as MESSAGE `destination`); for
    /// user destinations this differs from the key (`/user/queue/x` vs `/user/alice/queue/x`).
    pub(crate) destination: Arc<str>,
    /// Instance-unique number of this SUBSCRIBE, so deliveries can tell it from an earlier
    /// subscription that had the same id.
    pub(crate) seq: u64,
    pub(crate) handle: H,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SubscribeError {
    #[error("subscription id {0:?} is already in use on this connection")]
    DuplicateId(String),
    #[error("too many subscriptions on this connection (limit {0})")]
    TooMany(usize),
}

/// Subscriptions by destination key and by session.
#[derive(Debug)]
pub(crate) struct Hub<H> {
    by_key: HashMap<Arc<str>, Vec<Subscriber<H>>>,
    by_session: HashMap<SessionId, HashMap<Arc<str>, Arc<str>>>,
    subscriptions: usize,
}

impl<H> Default for Hub<H> {
    fn default() -> Self {
        Hub { by_key: HashMap::new(), by_session: HashMap::new(), subscriptions: 0 }
    }
}

impl<H> Hub<H> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds a subscription under `key`. Returns true when `key` had no subscriber before, i.e.
    /// the instance must start listening for it on the broker.
    pub(crate) fn subscribe(
        &mut self,
        key: &str,
        sub: Subscriber<H>,
        max_per_session: usize,
    ) -> Result<bool, SubscribeError> {
        let mine = self.by_session.entry(sub.session).or_default();
        if mine.contains_key(&sub.id) {
            return Err(SubscribeError::DuplicateId(sub.id.to_string()));
        }
        if mine.len() >= max_per_session {
            return Err(SubscribeError::TooMany(max_per_session));
        }
        let key: Arc<str> = match self.by_key.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Arc::from(key),
        };
        mine.insert(sub.id.clone(), key.clone());
        let list = self.by_key.entry(key).or_default();
        list.push(sub);
        self.subscriptions += 1;
        Ok(list.len() == 1)
    }

    /// Removes subscription `id` of `session`. Returns its key and whether that key now has no
    /// subscriber (the instance must stop listening), or None if there was no such subscription.
    pub(crate) fn unsubscribe(&mut self, session: SessionId, id: &str) -> Option<(Arc<str>, bool)> {
        let mine = self.by_session.get_mut(&session)?;
        let key = mine.remove(id)?;
        if mine.is_empty() {
            self.by_session.remove(&session);
        }
        let emptied = self.remove_from_key(&key, |s| s.session == session && &*s.id == id);
        Some((key, emptied))
    }

    /// Removes every subscription of `session`; returns the keys left without any subscriber.
    pub(crate) fn remove_session(&mut self, session: SessionId) -> Vec<Arc<str>> {
        let Some(mine) = self.by_session.remove(&session) else {
            return Vec::new();
        };
        let mut emptied = Vec::new();
        for (id, key) in mine {
            if self.remove_from_key(&key, |s| s.session == session && s.id == id) {
                emptied.push(key);
            }
        }
        emptied
    }

    fn remove_from_key(&mut self, key: &str, is_it: impl Fn(&Subscriber<H>) -> bool) -> bool {
        let Some(list) = self.by_key.get_mut(key) else {
            return false;
        };
        let before = list.len();
        list.retain(|s| !is_it(s));
        self.subscriptions -= before - list.len();
        if list.is_empty() {
            self.by_key.remove(key);
            true
        } else {
            false
        }
    }

    /// Everyone subscribed under `key`.
    pub(crate) fn subscribers(&self, key: &str) -> &[Subscriber<H>] {
        self.by_key.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Keys with at least one subscriber.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.by_key.keys().map(|k| &**k)
    }

    pub(crate) fn destination_count(&self) -> usize {
        self.by_key.len()
    }

    pub(crate) fn subscription_count(&self) -> usize {
        self.subscriptions
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

    fn sub(session: SessionId, id: &str, dest: &str) -> Subscriber<()> {
        Subscriber { session, id: id.into(), destination: dest.into(), seq: 0, handle: () }
    }

    #[test]
    fn first_and_last_subscriber_of_a_key_are_reported() {
        let mut hub = Hub::new();
        assert_eq!(hub.subscribe("/t", sub(1, "a", "/t"), 10), Ok(true));
        assert_eq!(hub.subscribe("/t", sub(2, "a", "/t"), 10), Ok(false));
        assert_eq!(hub.subscribers("/t").len(), 2);
        assert_eq!(hub.unsubscribe(1, "a"), Some(("/t".into(), false)));
        assert_eq!(hub.unsubscribe(1, "a"), None);
        assert_eq!(hub.unsubscribe(2, "a"), Some(("/t".into(), true)));
        assert_eq!(hub.destination_count(), 0);
        assert_eq!(hub.subscription_count(), 0);
    }

    #[test]
    fn duplicate_ids_and_the_per_session_limit_are_refused() {
        let mut hub = Hub::new();
        assert_eq!(hub.subscribe("/t", sub(1, "a", "/t"), 2), Ok(true));
        assert_eq!(hub.subscribe("/u", sub(1, "a", "/u"), 2), Err(SubscribeError::DuplicateId("a".into())));
        assert_eq!(hub.subscribe("/u", sub(1, "b", "/u"), 2), Ok(true));
        assert_eq!(hub.subscribe("/v", sub(1, "c", "/v"), 2), Err(SubscribeError::TooMany(2)));
        assert_eq!(hub.subscription_count(), 2);
    }

    #[test]
    fn removing_a_session_reports_only_emptied_keys() {
        let mut hub = Hub::new();
        hub.subscribe("/t", sub(1, "a", "/t"), 10).unwrap();
        hub.subscribe("/t", sub(1, "b", "/t"), 10).unwrap();
        hub.subscribe("/u", sub(1, "c", "/u"), 10).unwrap();
        hub.subscribe("/u", sub(2, "a", "/u"), 10).unwrap();
        let mut emptied = hub.remove_session(1);
        emptied.sort();
        assert_eq!(emptied, vec![Arc::<str>::from("/t")]);
        assert_eq!(hub.subscription_count(), 1);
        assert_eq!(hub.keys().collect::<Vec<_>>(), vec!["/u"]);
        assert!(hub.remove_session(1).is_empty());
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
