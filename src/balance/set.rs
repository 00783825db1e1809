//! The immutable membership snapshot of one upstream.
//!
//! Owns: the members (ids, weights, shared [`Live`](super::Live)s), the hash ring, the cookie
//! tag index, an id index and the round-robin counter. Must not: be rebuilt per request. It is
//! rebuilt only when membership or weights change, off the data path, and swapped by the caller
//! (`ArcSwap`); availability and load changes need no rebuild because they live in the shared
//! `Live`s. Nothing here knows an address, so readdressing a backend changes nothing.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::backend::{Availability, Member};
use super::cookie::{CookieKey, CookieTag};
use super::keys::truncate_key;
use super::ring::{self, Ring, RingWalk};
use crate::config::HashConfig;

/// See the module doc.
pub struct BackendSet {
    members: Vec<Member>,
    ring: Ring,
    /// Cookie tag of each member, by index.
    member_tags: Box<[CookieTag]>,
    /// `(tag, member index)` sorted by tag, for cookie lookups.
    tags: Box<[(CookieTag, usize)]>,
    round_robin: AtomicUsize,
}

impl BackendSet {
    /// Build the snapshot. Ids are expected to be unique (config guarantees it); a later
    /// duplicate of an id is a shadow that receives no keys and no cookies.
    /// `cookie_key` must be the policy's key ([`super::AffinityPolicy::cookie_key`]).
    pub fn new(members: Vec<Member>, hash: &HashConfig, cookie_key: &CookieKey) -> Self {
        let spec: Vec<(&str, u64)> =
            members.iter().map(|m| (m.id.as_str(), ring::vnode_count(hash.vnodes, m.weight))).collect();
        let ring = Ring::build(&spec);
        let member_tags: Box<[CookieTag]> = members.iter().map(|m| cookie_key.tag(m.id.as_str())).collect();
        let mut tags: Vec<(CookieTag, usize)> = member_tags.iter().enumerate().map(|(i, t)| (*t, i)).collect();
        // Stable by index, so on a (duplicate-id) tag clash the first member wins.
        tags.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        tags.dedup_by_key(|t| t.0);
        Self { members, ring, member_tags, tags: tags.into_boxed_slice(), round_robin: AtomicUsize::new(0) }
    }

    pub(crate) fn members(&self) -> &[Member] {
        &self.members
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    /// Total virtual nodes on the ring.
    #[cfg(test)]
    pub(crate) fn vnodes(&self) -> usize {
        self.ring.len()
    }

    /// Every member in `key`'s ring order (distinct, complete), ignoring availability: for the
    /// admin route helper and for rebalancing ("where does this key belong now"). The key is
    /// truncated exactly as routing truncates it.
    pub(crate) fn ring_order(&self, key: &str) -> impl Iterator<Item = usize> + '_ {
        let mut walk = RingWalk::new(ring::hash_str(truncate_key(key)));
        std::iter::from_fn(move || walk.next(&self.ring))
    }

    /// Where `key` gets a new session right now: the first member of its ring order that
    /// receives new sessions (bounded loads aside). `None` when no member is usable.
    pub(crate) fn home_of(&self, key: &str) -> Option<usize> {
        let state = self.new_session_state()?;
        self.ring_order(key).find(|&i| self.members[i].live.availability() == state)
    }

    /// The availability that receives new sessions now: `Active`, or `Draining` in panic mode
    /// (no member is `Active`), or `None` when nothing is usable (answer 503 at once).
    pub(crate) fn new_session_state(&self) -> Option<Availability> {
        let mut draining = false;
        // Stops at the first Active member: in a healthy upstream that is one atomic load.
        for member in &self.members {
            match member.live.availability() {
                Availability::Active => return Some(Availability::Active),
                Availability::Draining => draining = true,
                _ => {}
            }
        }
        draining.then_some(Availability::Draining)
    }

    pub(crate) fn ring(&self) -> &Ring {
        &self.ring
    }

    pub(crate) fn index_of_tag(&self, tag: &CookieTag) -> Option<usize> {
        self.tags.binary_search_by(|(t, _)| t.cmp(tag)).ok().map(|pos| self.tags[pos].1)
    }

    pub(crate) fn tag_of(&self, index: usize) -> Option<&CookieTag> {
        self.member_tags.get(index)
    }

    /// The next round-robin start (wrapping is harmless: only the residue is used).
    pub(crate) fn next_round_robin(&self) -> usize {
        self.round_robin.fetch_add(1, Ordering::Relaxed)
    }
}

impl fmt::Debug for BackendSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendSet").field("members", &self.members).field("vnodes", &self.ring.len()).finish()
    }
}
