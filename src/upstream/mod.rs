//! Upstreams and their backends at run time.
//!
//! Owns: each backend's connection pool, open-tunnel registry and counters, and the upstream's
//! current membership. Must not: choose a backend for a request (that is `balance`) or touch
//! client connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::config::{BackendAddress, BackendConfig, UpstreamConfig};
use crate::tunnel::registry::TunnelRegistry;

pub mod pool;

/// Counters of one backend, for the admin API and metrics.
#[derive(Debug, Default)]
pub struct BackendStats {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// One backend of an upstream.
pub struct Backend {
    /// Stable identity (ring, cookies); never derived from the address.
    pub id: Arc<str>,
    pub address: BackendAddress,
    pub weight: u32,
    pub pool: pool::Pool,
    pub tunnels: Arc<TunnelRegistry>,
    pub stats: BackendStats,
}

impl Backend {
    pub fn new(config: &BackendConfig) -> Self {
        Self {
            id: config.id.as_str().into(),
            address: config.address.clone(),
            weight: config.weight,
            pool: pool::Pool::default(),
            tunnels: Arc::default(),
            stats: BackendStats::default(),
        }
    }
}

/// An upstream: its config and current backends.
pub struct Upstream {
    pub name: Arc<str>,
    pub config: UpstreamConfig,
    backends: Vec<Arc<Backend>>,
    next: AtomicUsize,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Self {
        Self {
            name: config.name.as_str().into(),
            config: config.clone(),
            backends: config
                .backends
                .iter()
                .map(|b| Arc::new(Backend::new(b)))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// Every backend, starting at the next one in round-robin order.
    pub fn candidates(&self) -> Vec<Arc<Backend>> {
        let n = self.backends.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|i| self.backends[(start + i) % n].clone())
            .collect()
    }
}
