//! Upstreams and their backends at run time.
//!
//! Owns: each upstream's membership (backends + hash ring, swapped atomically when it
//! changes), each backend's connection pool, tunnels, counters and health, and turning health
//! events into availability changes (with their side effects: drains, rebalancing). Must not:
//! choose a backend for a request (that is `balance`) or touch client connections.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::{self, AffinityPolicy, Availability, BackendId, BackendSet, CookieKey, Decision, Member};
use crate::config::{BackendAddress, UpstreamConfig};
use crate::metrics::Metrics;

pub mod backend;
pub mod checker;
pub mod discovery;
pub mod health;
pub mod pool;

pub use backend::{Backend, DrainProgress, Source, Status};
use health::CheckOutcome;

/// What every upstream shares with the rest of the proxy.
pub struct Ctx {
    /// Owns every background task (checks, drains, rebalancing, tunnels).
    pub tasks: TaskTracker,
    pub metrics: Arc<Metrics>,
    pub resolver: Arc<dyn discovery::Resolve>,
}

/// The backends of an upstream and the ring over them. Immutable; replaced as a whole when
/// membership or weights change. `backends[i]` is `set.members()[i]`.
pub struct Membership {
    pub backends: Vec<Arc<Backend>>,
    pub set: BackendSet,
}

pub struct Upstream {
    pub name: Arc<str>,
    config: ArcSwap<UpstreamConfig>,
    policy: ArcSwap<AffinityPolicy>,
    membership: ArcSwap<Membership>,
    /// Backends removed from the membership that still drain.
    retired: Mutex<Vec<Arc<Backend>>>,
    /// The last good answer of DNS discovery (None before the first one).
    discovered: Mutex<Option<Vec<BackendAddress>>>,
    /// Serialises membership changes (reload and discovery both make them).
    changing: Mutex<()>,
    checker_running: std::sync::atomic::AtomicBool,
    discovery_running: std::sync::atomic::AtomicBool,
    shutting_down: std::sync::atomic::AtomicBool,
    /// The sticky-cookie key and the variable it came from (None: random, per process).
    cookie_key: Mutex<(Option<String>, CookieKey)>,
    rebalance: Mutex<Option<CancellationToken>>,
    /// Request latency of this upstream (a handle, so requests need no family lookup).
    pub request_duration: prometheus_client::metrics::histogram::Histogram,
    pub affinity_counters: crate::metrics::AffinityCounters,
    pub ctx: Arc<Ctx>,
    /// Stops this upstream's own tasks (checks, discovery) when it is removed.
    cancel: CancellationToken,
}

/// Background tasks an upstream runs at most once at a time.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Singleton {
    Checker,
    Discovery,
}

/// Why a backend started draining.
fn drain_reason(health: &health::HealthState) -> &'static str {
    if health.admin_drained {
        "admin"
    } else if health.removed {
        "removed"
    } else {
        "not_ready"
    }
}

impl Upstream {
    /// Build an upstream from its config and start its checker and discovery. At startup
    /// (`joining` false) backends are active until a check says otherwise; an upstream added
    /// by a reload has its backends join after their first healthy check, when it has checks.
    pub fn start(config: &UpstreamConfig, ctx: Arc<Ctx>, joining: bool) -> Arc<Self> {
        let joining = joining && config.health_check.is_some();
        let name: Arc<str> = config.name.as_str().into();
        let (key_env, key) = cookie_key_for(config, None);
        let policy = policy_for(config, &key);
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| {
                let id: Arc<str> = b.id.as_str().into();
                let metrics = ctx.metrics.backend(&name, &id);
                Arc::new(Backend::new(id, b.address.clone(), b.weight, Source::Config, joining, metrics))
            })
            .collect();
        for b in &backends {
            ctx.metrics.state_change(&name, &b.id, None, b.live.availability().as_str());
        }
        let affinity_counters = ctx.metrics.upstream_series(&name, config.drain.close_code);
        let membership = build_membership(backends, config, &key);
        let upstream = Arc::new(Self {
            name: name.clone(),
            config: ArcSwap::from_pointee(config.clone()),
            policy: ArcSwap::from_pointee(policy),
            membership: ArcSwap::from_pointee(membership),
            retired: Mutex::new(Vec::new()),
            discovered: Mutex::new(None),
            changing: Mutex::new(()),
            checker_running: std::sync::atomic::AtomicBool::new(false),
            discovery_running: std::sync::atomic::AtomicBool::new(false),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            cookie_key: Mutex::new((key_env, key)),
            rebalance: Mutex::new(None),
            affinity_counters,
            request_duration: ctx
                .metrics
                .request_duration
                .get_or_create_owned(&crate::metrics::UpstreamLabels { upstream: name.clone() }),
            ctx,
            cancel: CancellationToken::new(),
        });
        checker::spawn(&upstream);
        discovery::spawn(&upstream);
        if joining {
            for backend in upstream.membership().backends.clone() {
                checker::check_now(&upstream, &backend);
            }
        }
        upstream
    }

    /// The upstream left the config: every backend drains (its tunnels close gracefully at
    /// the drain timeout) and its checks and discovery stop.
    pub fn retire(self: &Arc<Self>) {
        self.cancel.cancel();
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.membership();
        let key = self.cookie_key.lock().unwrap_or_else(|e| e.into_inner()).1.clone();
        self.lock_retired().extend(current.backends.iter().cloned());
        self.membership.store(Arc::new(build_membership(Vec::new(), &self.config(), &key)));
        drop(_changing);
        for backend in &current.backends {
            backend.lock_health().removed = true;
            self.refresh(backend);
        }
        tracing::info!(upstream = %self.name, "upstream removed: its backends drain");
    }

    /// Apply a reloaded config: affinity settings, weights, addresses, and membership
    /// (removed backends drain; added ones join after their first healthy check, or at once
    /// without active checks). Open tunnels are never touched by the change itself.
    pub fn apply(self: &Arc<Self>, config: &UpstreamConfig) {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let key = {
            let mut slot = self.cookie_key.lock().unwrap_or_else(|e| e.into_inner());
            let (env, key) = cookie_key_for(config, Some((&slot.0, &slot.1)));
            *slot = (env, key.clone());
            key
        };
        self.policy.store(Arc::new(policy_for(config, &key)));
        self.config.store(Arc::new(config.clone()));
        let _ = self.ctx.metrics.upstream_series(&self.name, config.drain.close_code);
        let (changed, added) = self.sync_members(&key);
        checker::spawn(self);
        discovery::spawn(self);
        self.settle(changed, added);
    }

    /// After a membership change: apply health changes, and check new backends at once (they
    /// join on their first healthy check) or, without checks, let them trigger a rebalance.
    fn settle(self: &Arc<Self>, changed: Vec<Arc<Backend>>, added: Vec<Arc<Backend>>) {
        for backend in changed {
            self.refresh(&backend);
        }
        let rebalance = self.config().rebalance.enabled;
        for backend in added {
            if backend.live.availability() == Availability::Joining {
                checker::check_now(self, &backend);
            } else if rebalance {
                crate::lifecycle::rebalance::start(self);
            }
        }
    }

    /// DNS discovery found `addresses` (the whole current answer).
    pub fn set_discovered(self: &Arc<Self>, mut addresses: Vec<BackendAddress>) {
        addresses.sort_by_key(|a| a.to_string());
        addresses.dedup();
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut discovered = self.discovered.lock().unwrap_or_else(|e| e.into_inner());
            if discovered.as_ref() == Some(&addresses) {
                return;
            }
            tracing::info!(upstream = %self.name, backends = ?addresses.iter().map(ToString::to_string).collect::<Vec<_>>(), "discovery: backend set changed");
            *discovered = Some(addresses);
        }
        let key = self.cookie_key.lock().unwrap_or_else(|e| e.into_inner()).1.clone();
        let (changed, added) = self.sync_members(&key);
        drop(_changing);
        self.settle(changed, added);
    }

    /// Bring the membership in line with config + discovery. Returns the backends whose
    /// health changed (to be refreshed once the new membership is in place) and the new ones.
    fn sync_members(&self, key: &CookieKey) -> (Vec<Arc<Backend>>, Vec<Arc<Backend>>) {
        let config = self.config();
        let joining = config.health_check.is_some();
        let mut desired: Vec<(Arc<str>, BackendAddress, u32, Source)> = config
            .backends
            .iter()
            .map(|b| (Arc::from(b.id.as_str()), b.address.clone(), b.weight, Source::Config))
            .collect();
        if config.discovery.is_some()
            && let Some(found) = self.discovered.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
        {
            for address in found {
                // Discovered backends are named by their address: stable while it stays in DNS.
                let id: Arc<str> = address.to_string().into();
                if !desired.iter().any(|(d, ..)| *d == id) {
                    desired.push((id, address.clone(), 1, Source::Dns));
                }
            }
        }
        let current = self.membership();
        let mut retired = self.lock_retired();
        let mut changed = Vec::new();
        let mut added = Vec::new();
        let mut members = Vec::with_capacity(desired.len());
        for (id, address, weight, source) in desired {
            let existing = current
                .backends
                .iter()
                .find(|b| b.id == id)
                .cloned()
                .or_else(|| retired.iter().position(|b| b.id == id).map(|i| retired.remove(i)));
            let backend = match existing {
                Some(backend) => {
                    backend.set_address(address);
                    backend.set_weight(weight);
                    let mut health = backend.lock_health();
                    if health.removed {
                        // Back in the config or DNS before its drain ended: it stays.
                        health.removed = false;
                        changed.push(backend.clone());
                    }
                    drop(health);
                    backend
                }
                None => {
                    let metrics = self.ctx.metrics.backend(&self.name, &id);
                    let backend = Arc::new(Backend::new(id, address, weight, source, joining, metrics));
                    self.ctx.metrics.state_change(&self.name, &backend.id, None, backend.live.availability().as_str());
                    tracing::info!(upstream = %self.name, backend = %backend.id, state = backend.live.availability().as_str(), "backend added");
                    added.push(backend.clone());
                    backend
                }
            };
            members.push(backend);
        }
        for old in &current.backends {
            if !members.iter().any(|b| Arc::ptr_eq(b, old)) {
                tracing::info!(upstream = %self.name, backend = %old.id, "backend removed: draining");
                old.lock_health().removed = true;
                retired.push(old.clone());
                changed.push(old.clone());
            }
        }
        drop(retired);
        self.membership.store(Arc::new(build_membership(members, &config, key)));
        (changed, added)
    }

    fn singleton_flag(&self, which: Singleton) -> &std::sync::atomic::AtomicBool {
        match which {
            Singleton::Checker => &self.checker_running,
            Singleton::Discovery => &self.discovery_running,
        }
    }

    /// Run `task` while the config `wants` it, with at most one instance at a time: a reload
    /// that turns it on starts it, one that turns it off lets it end at its next round.
    pub(crate) fn keep_one<F, Fut>(self: &Arc<Self>, which: Singleton, wants: fn(&UpstreamConfig) -> bool, task: F)
    where
        F: Fn(Arc<Upstream>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let claim = move |u: &Upstream| !u.singleton_flag(which).swap(true, Ordering::AcqRel);
        if !wants(&self.config()) || !claim(self) {
            return;
        }
        let upstream = self.clone();
        let tasks = upstream.ctx.tasks.clone();
        tasks.spawn(async move {
            loop {
                task(upstream.clone()).await;
                upstream.singleton_flag(which).store(false, Ordering::Release);
                // A reload may have turned it back on between the task ending and the release.
                let wanted = wants(&upstream.config()) && !upstream.cancel.is_cancelled();
                if !wanted || !claim(&upstream) {
                    return;
                }
            }
        });
    }

    pub fn config(&self) -> Arc<UpstreamConfig> {
        self.config.load_full()
    }

    pub fn policy(&self) -> Arc<AffinityPolicy> {
        self.policy.load_full()
    }

    pub fn membership(&self) -> Arc<Membership> {
        self.membership.load_full()
    }

    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Decide where a request goes. Keep the returned membership for the whole request: the
    /// decision's indices refer to it.
    pub fn route(&self, facts: &balance::RequestFacts<'_>) -> (Arc<Membership>, Arc<AffinityPolicy>, Decision) {
        let membership = self.membership();
        let policy = self.policy();
        let decision = balance::route(facts, &policy, &membership.set, SystemTime::now(), &mut rand::rng());
        let counters = &self.affinity_counters;
        match decision.reason() {
            balance::Reason::Key => counters.key.inc(),
            balance::Reason::Cookie => counters.cookie.inc(),
            balance::Reason::Fallback => counters.fallback.inc(),
            balance::Reason::Repin => counters.repin.inc(),
        };
        if decision.is_panic() {
            counters.panic.inc();
            tracing::warn!(upstream = %self.name, "no active backend: panic mode, sending new sessions to draining backends");
        }
        (membership, policy, decision)
    }

    /// Current members and retired (still draining) backends.
    pub fn all_backends(&self) -> Vec<Arc<Backend>> {
        let mut all = self.membership().backends.clone();
        all.extend(self.lock_retired().iter().cloned());
        all
    }

    pub fn backend(&self, id: &str) -> Option<Arc<Backend>> {
        self.all_backends().into_iter().find(|b| &*b.id == id)
    }

    fn lock_retired(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Backend>>> {
        self.retired.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Operator drain: sticky until [`Upstream::undrain`].
    pub fn drain(self: &Arc<Self>, backend: &Arc<Backend>) {
        backend.lock_health().admin_drained = true;
        self.refresh(backend);
    }

    pub fn undrain(self: &Arc<Self>, backend: &Arc<Backend>) {
        backend.lock_health().admin_drained = false;
        self.refresh(backend);
    }

    pub fn on_check(self: &Arc<Self>, backend: &Arc<Backend>, outcome: CheckOutcome) {
        let Some(policy) = self.config().health_check.clone() else { return };
        if let CheckOutcome::Failed(why) = &outcome {
            tracing::debug!(upstream = %self.name, backend = %backend.id, reason = %why, "health check failed");
        }
        backend.lock_health().on_check(outcome, &policy);
        self.refresh(backend);
    }

    pub fn on_connect_failure(self: &Arc<Self>, backend: &Arc<Backend>) {
        backend.metrics.connect_failures.inc();
        let passive = self.config().passive.clone();
        let ejected_until = backend.lock_health().on_connect_failure(Instant::now(), &passive);
        self.refresh(backend);
        if let Some(until) = ejected_until {
            tracing::warn!(upstream = %self.name, backend = %backend.id, for_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64, "backend ejected after consecutive connect failures");
            let (upstream, backend) = (self.clone(), backend.clone());
            self.ctx.tasks.spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => upstream.refresh(&backend),
                    _ = upstream.cancel.cancelled() => {}
                }
            });
        }
    }

    pub fn on_connect_success(&self, backend: &Backend) {
        backend.lock_health().on_connect_success(Instant::now());
    }

    /// Recompute a backend's availability from its health and apply what a change implies.
    pub fn refresh(self: &Arc<Self>, backend: &Arc<Backend>) {
        let now = Instant::now();
        let (old, new, reason) = {
            // The health lock serialises concurrent refreshes of one backend.
            let health = backend.lock_health();
            let new = health.availability(now);
            let old = backend.live.set_availability(new);
            (old, new, drain_reason(&health))
        };
        if old == new {
            return;
        }
        backend.epoch.fetch_add(1, Ordering::Relaxed);
        {
            let mut status = backend.lock_status();
            status.availability = new;
            status.since = SystemTime::now();
            if new != Availability::Draining {
                status.drain = None;
            }
        }
        self.ctx.metrics.state_change(&self.name, &backend.id, Some(old.as_str()), new.as_str());
        tracing::info!(upstream = %self.name, backend = %backend.id, from = old.as_str(), to = new.as_str(), "backend state changed");
        if new != Availability::Active {
            // Pooled connections are not reused on a backend that takes no new sessions.
            backend.pool.clear();
        }
        if new == Availability::Draining {
            crate::lifecycle::drain::start(self, backend, reason);
        } else if old == Availability::Draining {
            crate::lifecycle::drain::cancel(backend);
        }
        if new == Availability::Active && self.config().rebalance.enabled {
            crate::lifecycle::rebalance::start(self);
        }
    }

    /// A retired backend finished draining: forget it.
    pub(crate) fn forget_retired(&self, backend: &Arc<Backend>) {
        self.lock_retired().retain(|b| !Arc::ptr_eq(b, backend));
    }

    pub(crate) fn rebalance_slot(&self) -> std::sync::MutexGuard<'_, Option<CancellationToken>> {
        self.rebalance.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ask every open tunnel to close gracefully, spread over `drain.close_spread` (proxy
    /// shutdown).
    pub fn close_all_tunnels(self: &Arc<Self>) {
        crate::lifecycle::drain::close_all(self);
    }

    /// The proxy is shutting down: stop checks, discovery and timers, and start no new drains
    /// (every tunnel is being closed anyway).
    pub fn stop(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.cancel.cancel();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

/// The sticky-cookie key: from the `key_env` variable, or random per process (with a warning,
/// since replicas then reject each other's cookies). `previous` keeps a random key across
/// reloads, so a reload does not invalidate every cookie.
fn cookie_key_for(
    config: &UpstreamConfig,
    previous: Option<(&Option<String>, &CookieKey)>,
) -> (Option<String>, CookieKey) {
    let Some(var) = config.affinity.cookie.as_ref().and_then(|c| c.key_env.clone()) else {
        if let Some((None, key)) = previous {
            return (None, key.clone());
        }
        return (None, CookieKey::random());
    };
    match std::env::var(&var).ok().map(|v| CookieKey::from_bytes(v.as_bytes())) {
        Some(Ok(key)) => (Some(var), key),
        Some(Err(e)) => {
            tracing::warn!(upstream = %config.name, variable = %var, error = %e, "cookie key unusable; using a random per-process key");
            (None, CookieKey::random())
        }
        None => {
            if config.affinity.cookie.is_some() {
                tracing::warn!(upstream = %config.name, variable = %var, "cookie key variable is not set; replicas will not share sticky cookies (random per-process key)");
            }
            match previous {
                Some((None, key)) => (None, key.clone()),
                _ => (None, CookieKey::random()),
            }
        }
    }
}

fn policy_for(config: &UpstreamConfig, key: &CookieKey) -> AffinityPolicy {
    AffinityPolicy::new(&config.affinity, key.clone()).unwrap_or_else(|e| {
        // Config validation rejects what the policy cannot render; keep routing without the
        // cookie rather than fail if something slipped through.
        tracing::error!(upstream = %config.name, error = %e, "sticky cookie disabled");
        let mut affinity = config.affinity.clone();
        affinity.cookie = None;
        AffinityPolicy::new(&affinity, key.clone()).expect("a policy without a cookie has nothing to reject")
    })
}

fn build_membership(backends: Vec<Arc<Backend>>, config: &UpstreamConfig, key: &CookieKey) -> Membership {
    let members = backends
        .iter()
        .map(|b| Member { id: BackendId::new(b.id.clone()), weight: b.weight(), live: b.live.clone() })
        .collect();
    Membership { set: BackendSet::new(members, &config.affinity.hash, key), backends }
}
