//! One backend at run time.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::health::HealthState;
use super::pool::Pool;
use crate::balance::{Availability, Live};
use crate::config::BackendAddress;
use crate::metrics::BackendMetrics;
use crate::tunnel::registry::TunnelRegistry;

/// Where a backend came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Config,
    Dns,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Dns => "dns",
        }
    }
}

/// Progress of a drain, for the admin API.
#[derive(Debug, Clone)]
pub struct DrainProgress {
    pub started: SystemTime,
    /// Why it drains: `admin`, `not_ready`, `removed`.
    pub reason: &'static str,
    /// When remaining tunnels get their Close (start + `drain.timeout`).
    pub deadline: SystemTime,
    pub tunnels_at_start: usize,
    /// Close requests sent so far by this drain.
    pub closes_sent: usize,
}

/// The externally visible state and when it was entered.
#[derive(Debug, Clone)]
pub struct Status {
    pub availability: Availability,
    pub since: SystemTime,
    pub drain: Option<DrainProgress>,
}

pub struct Backend {
    /// Stable identity (ring, cookies, metrics); never derived from the address for static
    /// backends. A readdressed backend keeps its id, so no user moves.
    pub id: Arc<str>,
    address: ArcSwap<BackendAddress>,
    weight: AtomicU32,
    pub source: Source,
    pub live: Arc<Live>,
    pub pool: Pool,
    pub tunnels: Arc<TunnelRegistry>,
    pub metrics: BackendMetrics,
    /// Sticky cookies issued that pin to this backend.
    pub pins: AtomicU64,
    pub(crate) health: Mutex<HealthState>,
    status: Mutex<Status>,
    /// Cancels the drain task while one runs.
    pub(crate) drain_task: Mutex<Option<CancellationToken>>,
    /// Bumped by every health change, so an ejection-expiry timer knows if it is stale.
    pub(super) epoch: AtomicU64,
}

impl Backend {
    pub(super) fn new(
        id: Arc<str>,
        address: BackendAddress,
        weight: u32,
        source: Source,
        joining: bool,
        metrics: BackendMetrics,
    ) -> Self {
        let health = HealthState::new(joining);
        let availability = health.availability(Instant::now());
        Self {
            id,
            address: ArcSwap::from_pointee(address),
            weight: AtomicU32::new(weight),
            source,
            live: Arc::new(Live::new(availability)),
            pool: Pool::default(),
            tunnels: Arc::default(),
            metrics,
            pins: AtomicU64::new(0),
            health: Mutex::new(health),
            status: Mutex::new(Status { availability, since: SystemTime::now(), drain: None }),
            drain_task: Mutex::new(None),
            epoch: AtomicU64::new(0),
        }
    }

    pub fn address(&self) -> Arc<BackendAddress> {
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

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub(super) fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    pub fn health(&self) -> HealthState {
        self.lock_health().clone()
    }

    pub(crate) fn lock_health(&self) -> MutexGuard<'_, HealthState> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> Status {
        self.lock_status().clone()
    }

    pub(crate) fn lock_status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests in flight (the load minus the tunnels, which also hold load).
    pub fn active_requests(&self) -> u32 {
        let tunnels = u32::try_from(self.tunnels.len()).unwrap_or(u32::MAX);
        self.live.load().saturating_sub(tunnels)
    }

    /// True when nothing is left on the backend: no tunnel, no request in flight.
    pub fn is_idle(&self) -> bool {
        self.live.load() == 0 && self.tunnels.is_empty()
    }

    /// The state name the admin API shows: the availability, with `draining` reported as
    /// `drained` once nothing is left.
    pub fn state_name(&self) -> &'static str {
        match self.live.availability() {
            Availability::Draining if self.is_idle() => "drained",
            other => other.as_str(),
        }
    }
}
