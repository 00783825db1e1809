//! Backend selection: which backend serves a request, as a pure decision.
//!
//! Owns: the membership snapshot ([`BackendSet`]: members, consistent-hash ring, cookie tag
//! index), the live per-backend facts shared with the I/O layer ([`Live`], [`LoadGuard`]),
//! affinity keys, the signed sticky cookie, bounded loads, the fallbacks, and [`route`].
//! Must not: do I/O, await, read clocks (time is passed in), log, or know backend addresses.
//! It pins users by key or cookie, never by client IP.
//!
//! # How the proxy uses it
//! ```text
//! per upstream, on (re)config:  policy = AffinityPolicy::new(&cfg.affinity, key)?   (Arc)
//!                               set = BackendSet::new(members, &cfg.affinity.hash, policy.cookie_key())
//!                               (ArcSwap; members keep their Arc<Live> across rebuilds)
//! per request:  let mut d = route(&facts, &policy, &set, SystemTime::now(), &mut rng);
//!               while let Some((i, guard)) = d.next_candidate(&set) { connect; on refused: continue }
//!               None -> 503.  Served by i -> d.set_cookie(&policy, &set, i, now, is_tls)
//!               strip_sticky_cookie(&policy, &mut headers) before forwarding.
//!               Keep `guard` for the request, or move it into the tunnel task.
//! ```
//!
//! # Readdressing
//! Nothing in this module sees an address: the ring and the cookie both use the backend id, so
//! changing a backend's address (a rescheduled pod keeping its name) moves no user, by
//! construction.
//!
//! Layout: `backend` (ids, availability, live counters), `ring` (the hash and ring order),
//! `set` (the snapshot), `keys` (affinity key sources), `cookie` (the cookie codec and header
//! parsing), `policy` (per-upstream config, prepared), `decision` (`route` and candidates),
//! `bits` (a small index set).

mod backend;
mod bits;
mod cookie;
mod decision;
mod keys;
mod policy;
mod ring;
mod set;

pub use backend::{Availability, BackendId, Live, LoadGuard, Member};
pub use cookie::{CookieKey, CookieKeyError};
pub use decision::{Decision, Reason, route};
pub use keys::RequestFacts;
pub(crate) use keys::cookie_value;
pub use policy::{AffinityPolicy, PolicyError};
pub use set::BackendSet;

#[cfg(test)]
mod tests;
