//! The per-request decision: which backends to try, in which order, and whether to pin.
//!
//! Owns [`route`], [`Decision`] and the candidate orders (ring order, pinned cookie, the three
//! fallbacks, bounded loads). Must not: connect, await, read clocks (`now` is passed in) or log;
//! the proxy reports what a decision says (`reason`, `is_panic`, `bounded_skips`).
//!
//! # Invariants
//! - Only members whose availability equals the set's new-session state receive candidates:
//!   `Active`, or `Draining` in panic mode (no member `Active`). `Joining`, `Down` and `Ejected`
//!   never do. The state is fixed when the decision is made; each candidate's availability is
//!   re-read when it is handed out, so a backend that went down meanwhile is skipped.
//! - Every candidate is handed out with its load already reserved ([`LoadGuard`]), and no member
//!   is handed out twice by one decision.
//! - Bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads"),
//!   only for keys and only when `balance_factor > 0`: a member is taken only if its load,
//!   counting the new one, stays <= `ceil(c * (total + 1) / usable)` (total and usable over the
//!   members in the new-session state), checked and reserved by one compare-and-swap.
//!   Otherwise it is skipped (counted) and the key's next candidate tried. This trades exact
//!   stickiness for balance: at low load one user's connections can spread over backends.
//! - A decision must be driven with the same [`BackendSet`] snapshot it was made with (keep the
//!   `Arc` for the request); indices from another snapshot are never used to index out of
//!   bounds, but would name other members.

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};
use rand::Rng;

use super::backend::{Availability, LoadGuard};
use super::bits::Bits;
use super::cookie::{CookieTag, cookie_pairs};
use super::keys::{extract_key, truncate_key};
use super::policy::{AffinityPolicy, unix_secs};
use super::ring::{self, RingWalk};
use super::set::BackendSet;
use crate::config::Fallback;

/// What [`route`] reads from a request head.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The request's headers (keys, cookies).
    pub headers: &'a HeaderMap,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The request path, without the query (`path_segment` keys).
    pub path: &'a str,
}

/// Why a decision chose its first candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// An affinity key was found; candidates follow its ring order.
    Key,
    /// A valid sticky cookie pins a usable backend.
    Cookie,
    /// No key and no valid cookie (absent, tampered, expired or foreign): the fallback picks.
    Fallback,
    /// A valid sticky cookie names a backend that is gone or no longer takes new sessions: the
    /// fallback picks and the cookie is rewritten.
    Repin,
}

/// The outcome of [`route`]: an ordered, lazily computed list of candidates.
#[derive(Debug)]
pub struct Decision {
    reason: Reason,
    key: Option<Arc<str>>,
    /// The member named by a valid cookie the request carried, usable or not.
    cookie_member: Option<usize>,
    /// Availability that receives new sessions; `None`: nothing is usable.
    state: Option<Availability>,
    plan: Plan,
    returned: Bits,
    skips: u32,
}

#[derive(Debug)]
enum Plan {
    Ring { walk: RingWalk, bounded: Option<Bounded> },
    Pinned { member: Option<usize>, rest: Picker },
    Fallback(Picker),
}

#[derive(Debug, Clone, Copy)]
struct Bounded {
    factor: f64,
    /// Computed once per decision; refreshed only when every candidate is over it.
    bound: u32,
}

/// How many times the bounded-load overflow path refreshes the bound before taking the least
/// loaded member regardless (see [`Decision::next_candidate`]).
const OVERFLOW_ROUNDS: u32 = 16;

/// Choose the backends for one request (or WebSocket upgrade). Pure: reads the request head,
/// the policy, the set's live atomics, `now` (cookie expiry) and `rng` (one draw, for
/// tie-breaking and two-choices); no I/O. Then call [`Decision::next_candidate`].
///
/// Precedence: a key (first non-empty source) > a valid sticky cookie > the fallback.
pub fn route(
    facts: &RequestFacts<'_>,
    policy: &AffinityPolicy,
    set: &BackendSet,
    now: SystemTime,
    rng: &mut impl Rng,
) -> Decision {
    let state = set.new_session_state();
    if let Some(key) = extract_key(facts.headers, facts.query, facts.path, &policy.keys) {
        let key = truncate_key(&key);
        let bounded = match (policy.balance_factor, state) {
            (Some(factor), Some(state)) => Some(Bounded { factor, bound: load_bound(set, state, factor) }),
            _ => None,
        };
        return Decision {
            reason: Reason::Key,
            key: Some(Arc::from(key)),
            cookie_member: None,
            state,
            plan: Plan::Ring { walk: RingWalk::new(ring::hash_str(key)), bounded },
            returned: Bits::default(),
            skips: 0,
        };
    }

    let mut reason = Reason::Fallback;
    let mut cookie_member = None;
    if let Some(cookie) = &policy.cookie {
        let now_secs = unix_secs(now);
        let carried: Option<CookieTag> = cookie_pairs(facts.headers)
            .filter(|(name, _)| *name == cookie.name)
            .find_map(|(_, value)| policy.cookie_key.decode(value.as_bytes(), now_secs));
        if let Some(tag) = carried {
            cookie_member = set.index_of_tag(&tag);
            reason = match (cookie_member, state) {
                (Some(i), Some(state)) if set.members()[i].live.availability() == state => Reason::Cookie,
                _ => Reason::Repin,
            };
        }
    }
    let rest = Picker::new(policy.fallback, rng.next_u64());
    let plan = match (reason, cookie_member) {
        (Reason::Cookie, Some(member)) => Plan::Pinned { member: Some(member), rest },
        _ => Plan::Fallback(rest),
    };
    Decision { reason, key: None, cookie_member, state, plan, returned: Bits::default(), skips: 0 }
}

impl Decision {
    pub(crate) fn reason(&self) -> Reason {
        self.reason
    }

    /// The affinity key used (truncated as hashed), if any.
    #[cfg(test)]
    pub(crate) fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The key as a shared string, for a tunnel to keep (rebalancing) without copying it.
    pub(crate) fn shared_key(&self) -> Option<Arc<str>> {
        self.key.clone()
    }

    /// No member was `Active`: `Draining` members are being used (log and count it).
    pub(crate) fn is_panic(&self) -> bool {
        self.state == Some(Availability::Draining)
    }

    /// Candidates skipped so far because of bounded loads.
    pub(crate) fn bounded_skips(&self) -> u32 {
        self.skips
    }

    /// The next candidate with its load reserved; the first call gives the primary. Call it
    /// again after a connect failure (fail over). `None` when no usable candidate is left
    /// (immediately if nothing is usable): the proxy answers 503.
    pub fn next_candidate(&mut self, set: &BackendSet) -> Option<(usize, LoadGuard)> {
        let state = self.state?;
        let members = set.members();
        let usable = |i: usize| members.get(i).is_some_and(|m| m.live.availability() == state);
        let Self { plan, returned, skips, .. } = self;
        let take = |returned: &mut Bits, i: usize, guard: LoadGuard| {
            returned.insert(i);
            Some((i, guard))
        };
        match plan {
            Plan::Ring { walk, bounded } => {
                // The walk emits each member once, so this loop runs at most `len` times.
                while let Some(i) = walk.next(set.ring()) {
                    if !usable(i) {
                        continue;
                    }
                    let live = &members[i].live;
                    match bounded {
                        None => return take(returned, i, LoadGuard::acquire(live)),
                        Some(b) => match LoadGuard::try_acquire_within(live, b.bound) {
                            Some(guard) => return take(returned, i, guard),
                            None => *skips += 1,
                        },
                    }
                }
                let factor = bounded.as_ref()?.factor;
                // Every usable member left is over the bound. That happens when concurrent
                // reservations overtook the load total the bound was computed from: refresh
                // it (with a fresh total some member is always under it when c >= 1) and try
                // the least loaded; after a few lost races take it regardless rather than
                // failing the request.
                for _ in 0..OVERFLOW_ROUNDS {
                    let i = least_loaded(set, state, returned, 0)?;
                    let bound = load_bound(set, state, factor);
                    if let Some(guard) = LoadGuard::try_acquire_within(&members[i].live, bound) {
                        return take(returned, i, guard);
                    }
                }
                let i = least_loaded(set, state, returned, 0)?;
                take(returned, i, LoadGuard::acquire(&members[i].live))
            }
            Plan::Pinned { member, rest } => {
                if let Some(i) = member.take()
                    && usable(i)
                    && !returned.contains(i)
                {
                    return take(returned, i, LoadGuard::acquire(&members[i].live));
                }
                let i = rest.next(set, state, returned)?;
                take(returned, i, LoadGuard::acquire(&members[i].live))
            }
            Plan::Fallback(picker) => {
                let i = picker.next(set, state, returned)?;
                take(returned, i, LoadGuard::acquire(&members[i].live))
            }
        }
    }

    /// The `Set-Cookie` value to send if the request ends up served by member `served`.
    /// `None` when no cookie is configured, when the request was routed by key (keys need no
    /// pin), or when it already carries a valid cookie for `served` (a pin is only written
    /// when it changes; a cookie with `ttl > 0` is therefore not extended by use).
    pub fn set_cookie(
        &self,
        policy: &AffinityPolicy,
        set: &BackendSet,
        served: usize,
        now: SystemTime,
        is_tls: bool,
    ) -> Option<HeaderValue> {
        let cookie = policy.cookie.as_ref()?;
        if self.reason == Reason::Key || self.cookie_member == Some(served) {
            return None;
        }
        cookie.render(&policy.cookie_key, set.tag_of(served)?, now, is_tls)
    }
}

/// The fallback order for requests without a key or a usable pin. Randomness comes from one
/// seed drawn in [`route`], so the picker needs no generator later and costs nothing until a
/// candidate is asked for.
#[derive(Debug)]
struct Picker {
    kind: Fallback,
    seed: u64,
    started: bool,
    /// Round robin: start index (from the set's counter) and members scanned so far.
    start: usize,
    cursor: usize,
    /// Random two choices: the two draws, less loaded first, and how many were offered.
    pair: [Option<usize>; 2],
    offered: usize,
}

impl Picker {
    fn new(kind: Fallback, seed: u64) -> Self {
        Self { kind, seed, started: false, start: 0, cursor: 0, pair: [None, None], offered: 0 }
    }

    fn next(&mut self, set: &BackendSet, state: Availability, returned: &Bits) -> Option<usize> {
        let members = set.members();
        let open = |i: usize| !returned.contains(i) && members[i].live.availability() == state;
        match self.kind {
            Fallback::LeastConnections => least_loaded(set, state, returned, self.seed),
            Fallback::RoundRobin => {
                if members.is_empty() {
                    return None;
                }
                if !self.started {
                    self.started = true;
                    self.start = set.next_round_robin() % members.len();
                }
                while self.cursor < members.len() {
                    let i = (self.start + self.cursor) % members.len();
                    self.cursor += 1;
                    if open(i) {
                        return Some(i);
                    }
                }
                None
            }
            Fallback::RandomTwoChoices => {
                if !self.started {
                    self.started = true;
                    self.pair = two_choices(set, state, returned, self.seed);
                }
                while self.offered < 2 {
                    let pick = self.pair[self.offered];
                    self.offered += 1;
                    if let Some(i) = pick
                        && open(i)
                    {
                        return Some(i);
                    }
                }
                least_loaded(set, state, returned, self.seed)
            }
        }
    }
}

/// Two distinct random open members (one if only one is open), the less loaded first (the
/// first drawn on a tie).
fn two_choices(set: &BackendSet, state: Availability, returned: &Bits, seed: u64) -> [Option<usize>; 2] {
    let members = set.members();
    let open = |i: &usize| !returned.contains(*i) && members[*i].live.availability() == state;
    let count = (0..members.len()).filter(open).count();
    if count == 0 {
        return [None, None];
    }
    let nth = |n: usize| (0..members.len()).filter(open).nth(n);
    // Modulo bias is at most count / 2^64: irrelevant for member counts.
    let first = (mix64(seed) % count as u64) as usize;
    if count == 1 {
        return [nth(first), None];
    }
    let mut second = (mix64(seed ^ 0x5bd1_e995_5bd1_e995) % (count as u64 - 1)) as usize;
    if second >= first {
        second += 1;
    }
    let (a, b) = (nth(first), nth(second));
    match (a, b) {
        (Some(x), Some(y)) if members[y].live.load() < members[x].live.load() => [b, a],
        _ => [a, b],
    }
}

/// The open member with the lowest load; ties broken by a per-decision pseudo-random order
/// (`seed`), so sequential requests on an idle upstream spread instead of all landing on the
/// first member.
fn least_loaded(set: &BackendSet, state: Availability, returned: &Bits, seed: u64) -> Option<usize> {
    let mut best: Option<(u32, u64, usize)> = None;
    for (i, member) in set.members().iter().enumerate() {
        if returned.contains(i) || member.live.availability() != state {
            continue;
        }
        let rank = (member.live.load(), mix64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        if best.is_none_or(|(load, tie, _)| rank < (load, tie)) {
            best = Some((rank.0, rank.1, i));
        }
    }
    best.map(|(_, _, i)| i)
}

/// `ceil(factor * (total + 1) / usable)` over the members in `state`, at least 1.
fn load_bound(set: &BackendSet, state: Availability, factor: f64) -> u32 {
    let (mut usable, mut total) = (0u64, 0u64);
    for member in set.members() {
        if member.live.availability() == state {
            usable += 1;
            total += u64::from(member.live.load());
        }
    }
    if usable == 0 {
        return u32::MAX;
    }
    let exact = factor * (total + 1) as f64 / usable as f64;
    // Shave a relative 1e-12 so representation error (1.1 * 10 = 11.000000000000002) does not
    // add a whole unit; `as` saturates, so an infinite factor means "no bound".
    ((exact * (1.0 - 1e-12)).ceil() as u32).max(1)
}

/// SplitMix64's finalizer: a cheap, well-mixed permutation of u64.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
