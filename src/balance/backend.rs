//! Backend identity and the live facts the I/O layer shares with the decision.
//!
//! Owns: [`BackendId`] (the stable name that goes on the ring and, as a keyed digest, into
//! cookies), [`Availability`], [`Live`] (availability + load as atomics) and [`LoadGuard`] (one
//! unit of load, released on drop). Must not: decide anything, read clocks or touch sockets;
//! health checks and admin calls flip availability through [`Live`], requests and tunnels hold
//! [`LoadGuard`]s.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

/// The stable name of a backend (`id` in the config). It is what the ring hashes and what a
/// sticky cookie refers to (as a keyed digest), never the address, so readdressing a backend
/// moves no user.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(Arc<str>);

impl BackendId {
    pub(crate) fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for BackendId {
    fn from(id: &str) -> Self {
        Self(id.into())
    }
}

impl From<String> for BackendId {
    fn from(id: String) -> Self {
        Self(id.into())
    }
}

impl AsRef<str> for BackendId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for BackendId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Whether a backend may receive new sessions. Only [`Availability::Active`] does, except in
/// panic mode (no member `Active`), where `Draining` members do; `Joining`, `Down` and `Ejected`
/// never do. Live tunnels are never moved by a change of availability.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Availability {
    /// Takes new sessions.
    Active = 0,
    /// Added, waiting for its first healthy check.
    Joining = 1,
    /// No new sessions; existing tunnels stay until they end or the drain times out.
    Draining = 2,
    /// Failed active health checks.
    Down = 3,
    /// Ejected by passive checks (connect failures), for a backoff period.
    Ejected = 4,
}

impl Availability {
    /// The lowercase name used by the admin API and logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Joining => "joining",
            Self::Draining => "draining",
            Self::Down => "down",
            Self::Ejected => "ejected",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Active,
            1 => Self::Joining,
            2 => Self::Draining,
            3 => Self::Down,
            // Only values written by `Live` exist; anything else would be a bug, and the safe
            // reading of a bug is "send nothing new here".
            _ => Self::Ejected,
        }
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Live per-backend facts shared between the decision and the I/O layer. Survives
/// [`BackendSet`](super::BackendSet) rebuilds: a backend that keeps its id keeps its `Live`
/// (the caller carries the `Arc` over), so loads and availability are not reset by a reload.
pub struct Live {
    state: AtomicU8,
    /// Active requests + open tunnels, each held as a [`LoadGuard`].
    load: AtomicU32,
}

impl Live {
    pub(crate) fn new(availability: Availability) -> Self {
        Self { state: AtomicU8::new(availability as u8), load: AtomicU32::new(0) }
    }

    pub(crate) fn availability(&self) -> Availability {
        Availability::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Set the availability; returns the previous one (so callers can log transitions).
    pub(crate) fn set_availability(&self, availability: Availability) -> Availability {
        Availability::from_u8(self.state.swap(availability as u8, Ordering::AcqRel))
    }

    /// Current load: active requests + open tunnels.
    pub(crate) fn load(&self) -> u32 {
        self.load.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Live").field("availability", &self.availability()).field("load", &self.load()).finish()
    }
}

/// One unit of load on a backend (a request in flight or an open tunnel); released on drop.
/// Move it into the tunnel task when a request upgrades, so the tunnel keeps counting.
#[derive(Debug)]
pub struct LoadGuard {
    live: Arc<Live>,
}

/// How many times a bounded reservation retries a lost compare-and-swap before treating the
/// backend as full. Losing 64 races in a row only happens under a storm of reservations on
/// the same counter; skipping to the next candidate is then the right answer anyway.
const MAX_CAS_ATTEMPTS: u32 = 64;

impl LoadGuard {
    /// Count one more unit of load on `live`, unconditionally.
    pub(crate) fn acquire(live: &Arc<Live>) -> Self {
        // Relaxed: the counter is an independent statistic; nothing else is published
        // through it.
        live.load.fetch_add(1, Ordering::Relaxed);
        Self { live: Arc::clone(live) }
    }

    /// Count one more unit of load only if the load, counting it, stays <= `bound`. The
    /// compare-and-swap makes concurrent reservations see each other, so simultaneous
    /// upgrades cannot all pass the check against the same stale load.
    pub(crate) fn try_acquire_within(live: &Arc<Live>, bound: u32) -> Option<Self> {
        let mut current = live.load.load(Ordering::Relaxed);
        for _ in 0..MAX_CAS_ATTEMPTS {
            if current >= bound {
                return None;
            }
            match live.load.compare_exchange_weak(current, current + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    return Some(Self { live: Arc::clone(live) });
                }
                Err(actual) => current = actual,
            }
        }
        None
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        // Every guard added exactly one unit when it was created, so this never underflows.
        self.live.load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One backend of a [`BackendSet`](super::BackendSet).
#[derive(Debug, Clone)]
pub struct Member {
    pub(crate) id: BackendId,
    /// Share of the ring: `weight * vnodes` virtual nodes. Config guarantees >= 1; 0 is
    /// treated as 1 (a member without virtual nodes would be unreachable by key).
    pub(crate) weight: u32,
    pub(crate) live: Arc<Live>,
}

impl Member {
    /// A member with a fresh [`Live`] in state `availability`.
    pub fn new(id: impl Into<BackendId>, weight: u32, availability: Availability) -> Self {
        Self { id: id.into(), weight, live: Arc::new(Live::new(availability)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_round_trips_through_the_atomic() {
        let live = Live::new(Availability::Joining);
        for state in [
            Availability::Active,
            Availability::Joining,
            Availability::Draining,
            Availability::Down,
            Availability::Ejected,
        ] {
            let before = live.availability();
            assert_eq!(live.set_availability(state), before);
            assert_eq!(live.availability(), state);
        }
    }

    #[test]
    fn load_guards_count_and_release() {
        let live = Arc::new(Live::new(Availability::Active));
        let a = LoadGuard::acquire(&live);
        let b = LoadGuard::acquire(&live);
        assert_eq!(live.load(), 2);
        drop(a);
        assert_eq!(live.load(), 1);
        drop(b);
        assert_eq!(live.load(), 0);
    }

    #[test]
    fn bounded_reservation_refuses_at_the_bound() {
        let live = Arc::new(Live::new(Availability::Active));
        let first = LoadGuard::try_acquire_within(&live, 2);
        let second = LoadGuard::try_acquire_within(&live, 2);
        assert!(first.is_some() && second.is_some());
        assert!(LoadGuard::try_acquire_within(&live, 2).is_none());
        assert_eq!(live.load(), 2);
        assert!(LoadGuard::try_acquire_within(&live, 0).is_none());
        drop(first);
        assert!(LoadGuard::try_acquire_within(&live, 2).is_some());
    }
}
