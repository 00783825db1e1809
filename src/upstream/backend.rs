//! One backend at run time: [`BackendHandle`].
//!
//! Owns: the backend's address and weight as currently configured, its connection pool, its
//! open tunnels, its counters, its health and the state the admin API shows. Must not: decide
//! its own availability (the upstream does, from [`HealthState`]) or start drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::health::HealthState;
use super::pool::Pool;
use crate::balance::{Availability, Live};
use crate::config::BackendAddress;
use crate::metrics::BackendMetrics;
use crate::tunnel::registry::TunnelRegistry;

/// Where a backend came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Config,
    Dns,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Dns => "dns",
        }
    }
}

/// Why a backend drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrainReason {
    /// An operator asked for it (admin API).
    Admin,
    /// Its readiness check answered 503.
    NotReady,
    /// It left the config or DNS.
    Removed,
}

impl DrainReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DrainReason::Admin => "admin",
            DrainReason::NotReady => "not_ready",
            DrainReason::Removed => "removed",
        }
    }

    pub(crate) fn of(health: &HealthState) -> Self {
        if health.admin_drained {
            DrainReason::Admin
        } else if health.removed {
            DrainReason::Removed
        } else {
            DrainReason::NotReady
        }
    }
}

/// Progress of one round of a drain, for the admin API.
#[derive(Debug, Clone)]
pub(crate) struct DrainProgress {
    pub(crate) started: SystemTime,
    pub(crate) reason: DrainReason,
    /// When remaining tunnels get their Close (start + `drain.timeout`).
    pub(crate) deadline: SystemTime,
    /// The same instant on the monotonic clock, for the drain's timer.
    pub(crate) deadline_at: Instant,
    pub(crate) tunnels_at_start: usize,
    /// Close requests sent so far by this round.
    pub(crate) closes_sent: usize,
}

impl DrainProgress {
    /// A round starting now, with `tunnels` open.
    pub(crate) fn begin(reason: DrainReason, timeout: std::time::Duration, tunnels: usize) -> Self {
        let started = SystemTime::now();
        Self {
            started,
            reason,
            deadline: started + timeout,
            deadline_at: Instant::now() + timeout,
            tunnels_at_start: tunnels,
            closes_sent: 0,
        }
    }
}

/// The externally visible state and when it was entered.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    pub(crate) availability: Availability,
    pub(crate) since: SystemTime,
    pub(crate) drain: Option<DrainProgress>,
}

/// What the health lock guards: the inputs of availability and what the admin API shows,
/// changed together.
#[derive(Debug)]
pub(super) struct State {
    pub(super) health: HealthState,
    pub(super) status: Status,
}

/// A backend of an upstream at run time, shared by requests, tunnels, checks and drains.
pub(crate) struct BackendHandle {
    /// Stable identity (ring, cookies, metrics); never derived from the address for static
    /// backends. A readdressed backend keeps its id, so no user moves.
    id: Arc<str>,
    address: ArcSwap<BackendAddress>,
    weight: AtomicU32,
    source: Source,
    live: Arc<Live>,
    pool: Pool,
    tunnels: Arc<TunnelRegistry>,
    metrics: BackendMetrics,
    /// Sticky cookies issued that pin to this backend.
    pins: AtomicU64,
    state: Mutex<State>,
    /// Woken when the backend may have become idle (its last request or tunnel ended) and when
    /// a new session lands on it while it drains; a drain waits on it instead of polling.
    activity: Arc<Notify>,
}

impl BackendHandle {
    pub(super) fn new(
        id: Arc<str>,
        address: BackendAddress,
        weight: u32,
        source: Source,
        health: HealthState,
        metrics: BackendMetrics,
    ) -> Self {
        let availability = health.availability(Instant::now());
        let activity = Arc::new(Notify::new());
        Self {
            id,
            address: ArcSwap::from_pointee(address),
            weight: AtomicU32::new(weight),
            source,
            live: Arc::new(Live::new(availability)),
            pool: Pool::default(),
            tunnels: Arc::new(TunnelRegistry::new(activity.clone())),
            metrics,
            pins: AtomicU64::new(0),
            state: Mutex::new(State { health, status: Status { availability, since: SystemTime::now(), drain: None } }),
            activity,
        }
    }

    pub(crate) fn id(&self) -> &Arc<str> {
        &self.id
    }

    pub(crate) fn address(&self) -> Arc<BackendAddress> {
        self.address.load_full()
    }

    /// A new address for the same backend: pooled connections to the old one are dropped;
    /// open tunnels stay where they are.
    pub(super) fn set_address(&self, address: BackendAddress) {
        if *self.address.load_full() != address {
            self.address.store(Arc::new(address));
            self.pool.clear();
        }
    }

    pub(crate) fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub(super) fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    pub(crate) fn source(&self) -> Source {
        self.source
    }

    pub(crate) fn live(&self) -> &Arc<Live> {
        &self.live
    }

    pub(crate) fn availability(&self) -> Availability {
        self.live.availability()
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    pub(crate) fn tunnels(&self) -> &Arc<TunnelRegistry> {
        &self.tunnels
    }

    pub(crate) fn metrics(&self) -> &BackendMetrics {
        &self.metrics
    }

    pub(crate) fn pins(&self) -> u64 {
        self.pins.load(Ordering::Relaxed)
    }

    pub(super) fn count_pin(&self) {
        self.pins.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn health(&self) -> HealthState {
        self.state.lock().health.clone()
    }

    pub(crate) fn status(&self) -> Status {
        self.state.lock().status.clone()
    }

    pub(super) fn state(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Requests in flight (the load minus the tunnels, which also hold load).
    pub(crate) fn active_requests(&self) -> u32 {
        let tunnels = u32::try_from(self.tunnels.len()).unwrap_or(u32::MAX);
        self.live.load().saturating_sub(tunnels)
    }

    /// True when nothing is left on the backend: no tunnel, no request in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.live.load() == 0 && self.tunnels.is_empty()
    }

    /// The state name the admin API shows: the availability, with `draining` reported as
    /// `drained` once nothing is left.
    pub(crate) fn state_name(&self) -> &'static str {
        match self.live.availability() {
            Availability::Draining if self.is_idle() => "drained",
            other => other.as_str(),
        }
    }

    /// Resolves after the next [`activity`](Self) signal (or at once if one is pending).
    pub(crate) async fn activity(&self) {
        self.activity.notified().await;
    }

    pub(crate) fn signal_activity(&self) {
        self.activity.notify_one();
    }

    /// Start a new drain round now: its progress is visible at once, and its tunnels get their
    /// Close at the returned instant.
    pub(crate) fn begin_drain_round(&self, reason: DrainReason, timeout: std::time::Duration) -> Instant {
        let round = DrainProgress::begin(reason, timeout, self.tunnels.len());
        let deadline = round.deadline_at;
        self.state.lock().status.drain = Some(round);
        deadline
    }

    /// The current drain round, if one was begun.
    pub(crate) fn drain_round(&self) -> Option<DrainProgress> {
        self.state.lock().status.drain.clone()
    }

    pub(crate) fn count_closes_sent(&self, n: usize) {
        if let Some(drain) = self.state.lock().status.drain.as_mut() {
            drain.closes_sent += n;
        }
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.state.lock().health.removed
    }
}

/// One unit of a backend's load, held by a request until its response ends or by a tunnel
/// until it closes. Releasing the last one signals the backend's activity, so a drain notices
/// at once that nothing is left.
pub(crate) struct Load {
    guard: Option<crate::balance::LoadGuard>,
    backend: Arc<BackendHandle>,
}

impl Load {
    pub(super) fn new(guard: crate::balance::LoadGuard, backend: Arc<BackendHandle>) -> Self {
        Self { guard: Some(guard), backend }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        drop(self.guard.take());
        if self.backend.live.load() == 0 {
            self.backend.signal_activity();
        }
    }
}
