//! Upstreams and their backends at run time.
//!
//! Owns: each upstream's membership (backends + hash ring, swapped atomically when it changes),
//! its affinity settings, each backend's connection pool, tunnels, counters and health, and
//! turning health events into availability changes. Every change of availability is reported
//! as an [`Event`] to whoever drives drains and rebalancing (`lifecycle`); this module never
//! starts one itself. Must not: choose a backend for a request (that is `balance`, through
//! [`Selection`]) or touch client connections.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::{self, AffinityPolicy, Availability, BackendId, BackendSet, CookieKey, Member};
use crate::config::{BackendAddress, Env, UpstreamConfig};
use crate::metrics::{AffinityCounters, Metrics, UpstreamLabels};

/// How a request to a backend failed, as passive health counts it (like nginx's
/// `max_fails`: error, timeout, invalid header). A status the backend chose (a 500) is an
/// answer, not a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection could not be made.
    Connect,
    /// Connected, but no response head within `timeouts.request`.
    Timeout,
    /// The connection broke before a response head, or what came back was not HTTP.
    BadResponse,
}

impl Failure {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::BadResponse => "bad_response",
        }
    }
}

mod backend;
pub(crate) mod body;
mod checker;
pub mod discovery;
pub(crate) mod health;
pub(crate) mod pool;
mod selection;

pub(crate) use backend::BackendHandle;
pub(crate) use backend::{DrainProgress, DrainReason, Load, Source};
pub(crate) use discovery::{Resolve, SystemResolver};
pub(crate) use selection::{Candidate, Selection};

/// What upstreams need from the rest of the process.
pub(crate) struct UpstreamDeps {
    /// Owns every background task (checks, discovery, ejection timers, connection drivers).
    pub(crate) tasks: TaskTracker,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) resolver: Arc<dyn Resolve>,
    /// Where availability changes go (to `lifecycle`).
    pub(crate) events: UnboundedSender<Event>,
    /// Where secrets named by `*_env` keys are read.
    pub(crate) env: Env,
}

/// A change the lifecycle reacts to.
pub(crate) enum Event {
    /// A backend's availability changed; the new one is already in effect.
    Changed { upstream: Arc<Upstream>, backend: Arc<BackendHandle>, from: Availability, to: Availability },
    /// Backends joined the membership already active (no active checks to wait for).
    Joined { upstream: Arc<Upstream> },
}

/// The backends of an upstream and the ring over them. Immutable; replaced as a whole when
/// membership or weights change. `backends[i]` is `set.members()[i]`.
pub(crate) struct Membership {
    pub(crate) backends: Vec<Arc<BackendHandle>>,
    pub(crate) set: BackendSet,
}

/// An upstream's config and the affinity policy prepared from it, swapped together.
pub(crate) struct Settings {
    pub(crate) config: UpstreamConfig,
    pub(crate) policy: AffinityPolicy,
}

/// Membership bookkeeping behind one lock, which also serialises membership changes (reload
/// and discovery both make them).
struct Members {
    /// Backends removed from the membership that still drain.
    retired: Vec<Arc<BackendHandle>>,
    /// The last good answer of DNS discovery (None before the first one).
    discovered: Option<Vec<BackendAddress>>,
    /// The sticky-cookie key and the variable it came from (None: random, per process).
    cookie_key: (Option<String>, CookieKey),
}

/// Background tasks an upstream runs at most once at a time.
#[derive(Debug, Clone, Copy)]
enum Singleton {
    Checker,
    Discovery,
}

/// The upstream's own background work: which singletons run, and stopping them.
#[derive(Default)]
struct Background {
    checker: AtomicBool,
    discovery: AtomicBool,
    /// Stops checks, discovery and timers (the upstream was removed, or the proxy stops).
    cancel: CancellationToken,
}

impl Background {
    fn flag(&self, which: Singleton) -> &AtomicBool {
        match which {
            Singleton::Checker => &self.checker,
            Singleton::Discovery => &self.discovery,
        }
    }
}

/// When an upstream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// With the process: backends are active until a check says otherwise.
    Initial,
    /// Added by a reload: with active checks, backends join after their first healthy one.
    Reloaded,
}

pub(crate) struct Upstream {
    name: Arc<str>,
    settings: ArcSwap<Settings>,
    membership: ArcSwap<Membership>,
    members: Mutex<Members>,
    background: Background,
    /// Request latency and affinity counters (handles, so requests need no family lookup).
    latency: Histogram,
    affinity: AffinityCounters,
    deps: Arc<UpstreamDeps>,
}

impl Upstream {
    /// Build an upstream from its config and start its checker and discovery.
    pub(crate) fn start(config: &UpstreamConfig, deps: Arc<UpstreamDeps>, start: Start) -> Arc<Self> {
        let joining = start == Start::Reloaded && config.health_check.is_some();
        let name: Arc<str> = config.name.as_str().into();
        let (key_env, key) = cookie_key_for(config, None, &deps.env);
        let backends: Vec<Arc<BackendHandle>> = config
            .backends
            .iter()
            .map(|b| {
                let id: Arc<str> = b.id.as_str().into();
                let metrics = deps.metrics.backend(&name, &id);
                let health = if joining { health::HealthState::joining() } else { health::HealthState::active() };
                Arc::new(BackendHandle::new(id, b.address.clone(), b.weight, Source::Config, health, metrics))
            })
            .collect();
        for b in &backends {
            deps.metrics.state_change(&name, b.id(), None, b.availability().as_str());
        }
        let affinity = deps.metrics.upstream_series(&name, config.drain.close_code);
        let membership = build_membership(backends, config, &key);
        let upstream = Arc::new(Self {
            name: name.clone(),
            settings: ArcSwap::from_pointee(settings_for(config, &key)),
            membership: ArcSwap::from_pointee(membership),
            members: Mutex::new(Members { retired: Vec::new(), discovered: None, cookie_key: (key_env, key) }),
            background: Background::default(),
            latency: deps.metrics.request_duration.get_or_create_owned(&UpstreamLabels { upstream: name }),
            affinity,
            deps,
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

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub(crate) fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    pub(crate) fn membership(&self) -> Arc<Membership> {
        self.membership.load_full()
    }

    pub(crate) fn latency(&self) -> &Histogram {
        &self.latency
    }

    /// The upstream left the config: every backend drains (its tunnels close gracefully at
    /// the drain timeout) and its checks and discovery stop.
    pub(crate) fn retire(self: &Arc<Self>) {
        self.background.cancel.cancel();
        let current = {
            let mut members = self.members.lock();
            let current = self.membership();
            members.retired.extend(current.backends.iter().cloned());
            let settings = self.settings();
            self.membership.store(Arc::new(build_membership(Vec::new(), &settings.config, &members.cookie_key.1)));
            current
        };
        for backend in &current.backends {
            backend.state().health.removed = true;
            self.refresh(backend);
        }
        tracing::info!(upstream = %self.name, "upstream removed: its backends drain");
    }

    /// Apply a reloaded config: affinity settings, weights, addresses, and membership
    /// (removed backends drain; added ones join after their first healthy check, or at once
    /// without active checks). Open tunnels are never touched by the change itself.
    pub(crate) fn apply(self: &Arc<Self>, config: &UpstreamConfig) {
        let (changed, added) = {
            let mut members = self.members.lock();
            let (env, key) =
                cookie_key_for(config, Some((&members.cookie_key.0, &members.cookie_key.1)), &self.deps.env);
            members.cookie_key = (env, key.clone());
            self.settings.store(Arc::new(settings_for(config, &key)));
            let _ = self.deps.metrics.upstream_series(&self.name, config.drain.close_code);
            self.sync_members(&mut members)
        };
        checker::spawn(self);
        discovery::spawn(self);
        self.settle(changed, added);
    }

    /// After a membership change: apply health changes, and check new backends at once (they
    /// join on their first healthy check), or report that active ones joined.
    fn settle(self: &Arc<Self>, changed: Vec<Arc<BackendHandle>>, added: Vec<Arc<BackendHandle>>) {
        for backend in changed {
            self.refresh(&backend);
        }
        let mut joined = false;
        for backend in added {
            if backend.availability() == Availability::Joining {
                checker::check_now(self, &backend);
            } else {
                joined = true;
            }
        }
        if joined {
            self.report(Event::Joined { upstream: self.clone() });
        }
    }

    /// DNS discovery found `addresses` (the whole current answer).
    pub(crate) fn set_discovered(self: &Arc<Self>, mut addresses: Vec<BackendAddress>) {
        addresses.sort_by_key(|a| a.to_string());
        addresses.dedup();
        let (changed, added) = {
            let mut members = self.members.lock();
            if members.discovered.as_ref() == Some(&addresses) {
                return;
            }
            tracing::info!(upstream = %self.name, backends = ?addresses.iter().map(ToString::to_string).collect::<Vec<_>>(), "discovery: backend set changed");
            members.discovered = Some(addresses);
            self.sync_members(&mut members)
        };
        self.settle(changed, added);
    }

    /// Bring the membership in line with config + discovery. Returns the backends whose
    /// health changed (to be refreshed once the new membership is in place) and the new ones.
    fn sync_members(&self, members: &mut Members) -> (Vec<Arc<BackendHandle>>, Vec<Arc<BackendHandle>>) {
        let settings = self.settings();
        let config = &settings.config;
        let joining = config.health_check.is_some();
        let mut desired: Vec<(Arc<str>, BackendAddress, u32, Source)> = config
            .backends
            .iter()
            .map(|b| (Arc::from(b.id.as_str()), b.address.clone(), b.weight, Source::Config))
            .collect();
        if config.discovery.is_some()
            && let Some(found) = members.discovered.as_ref()
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
        let mut changed = Vec::new();
        let mut added = Vec::new();
        let mut backends = Vec::with_capacity(desired.len());
        for (id, address, weight, source) in desired {
            let existing = current
                .backends
                .iter()
                .find(|b| *b.id() == id)
                .cloned()
                .or_else(|| members.retired.iter().position(|b| *b.id() == id).map(|i| members.retired.remove(i)));
            let backend = match existing {
                Some(backend) => {
                    backend.set_address(address);
                    backend.set_weight(weight);
                    let mut state = backend.state();
                    if state.health.removed {
                        // Back in the config or DNS before its drain ended: it stays.
                        state.health.removed = false;
                        changed.push(backend.clone());
                    }
                    drop(state);
                    backend
                }
                None => {
                    let metrics = self.deps.metrics.backend(&self.name, &id);
                    let health = if joining { health::HealthState::joining() } else { health::HealthState::active() };
                    let backend = Arc::new(BackendHandle::new(id, address, weight, source, health, metrics));
                    let state = backend.availability().as_str();
                    self.deps.metrics.state_change(&self.name, backend.id(), None, state);
                    tracing::info!(upstream = %self.name, backend = %backend.id(), state, "backend added");
                    added.push(backend.clone());
                    backend
                }
            };
            backends.push(backend);
        }
        for old in &current.backends {
            if !backends.iter().any(|b| Arc::ptr_eq(b, old)) {
                tracing::info!(upstream = %self.name, backend = %old.id(), "backend removed: draining");
                old.state().health.removed = true;
                members.retired.push(old.clone());
                changed.push(old.clone());
            }
        }
        self.membership.store(Arc::new(build_membership(backends, config, &members.cookie_key.1)));
        (changed, added)
    }

    /// Run `task` while the config `wants` it, with at most one instance at a time: a reload
    /// that turns it on starts it, one that turns it off lets it end at its next round.
    fn keep_one<F, Fut>(self: &Arc<Self>, which: Singleton, wants: fn(&UpstreamConfig) -> bool, task: F)
    where
        F: Fn(Arc<Upstream>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let claim = move |u: &Upstream| !u.background.flag(which).swap(true, Ordering::AcqRel);
        if !wants(&self.settings().config) || !claim(self) {
            return;
        }
        let upstream = self.clone();
        self.deps.tasks.spawn(async move {
            loop {
                task(upstream.clone()).await;
                upstream.background.flag(which).store(false, Ordering::Release);
                // A reload may have turned it back on between the task ending and the release.
                let wanted = wants(&upstream.settings().config) && !upstream.background.cancel.is_cancelled();
                if !wanted || !claim(&upstream) {
                    return;
                }
            }
        });
    }

    /// Fires when the upstream's own background work must stop.
    fn cancelled(&self) -> &CancellationToken {
        &self.background.cancel
    }

    /// Select the backends for a request; the selection keeps the snapshot it was made on.
    pub(crate) fn select(self: &Arc<Self>, facts: &balance::RequestFacts<'_>) -> Selection {
        let membership = self.membership();
        let settings = self.settings();
        let decision = balance::route(facts, &settings.policy, &membership.set, SystemTime::now(), &mut rand::rng());
        let counters = &self.affinity;
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
        Selection::new(self.clone(), membership, settings, decision)
    }

    /// Current members and retired (still draining) backends.
    pub(crate) fn all_backends(&self) -> Vec<Arc<BackendHandle>> {
        let mut all = self.membership().backends.clone();
        all.extend(self.members.lock().retired.iter().cloned());
        all
    }

    pub(crate) fn backend(&self, id: &str) -> Option<Arc<BackendHandle>> {
        self.all_backends().into_iter().find(|b| &**b.id() == id)
    }

    /// Operator drain: sticky until [`Upstream::undrain`].
    pub(crate) fn drain(self: &Arc<Self>, backend: &Arc<BackendHandle>) {
        backend.state().health.admin_drained = true;
        self.refresh(backend);
    }

    pub(crate) fn undrain(self: &Arc<Self>, backend: &Arc<BackendHandle>) {
        backend.state().health.admin_drained = false;
        self.refresh(backend);
    }

    fn on_check(self: &Arc<Self>, backend: &Arc<BackendHandle>, outcome: health::CheckOutcome) {
        let Some(policy) = self.settings().config.health_check.clone() else { return };
        if let health::CheckOutcome::Failed(why) = &outcome {
            tracing::debug!(upstream = %self.name, backend = %backend.id(), reason = %why, "health check failed");
        }
        backend.state().health.on_check(outcome, &policy);
        self.refresh(backend);
    }

    /// A request to `backend` failed the way passive health counts (see [`Failure`]).
    pub(crate) fn on_failure(self: &Arc<Self>, backend: &Arc<BackendHandle>, failure: Failure) {
        if failure == Failure::Connect {
            backend.metrics().connect_failures.inc();
        }
        let passive = self.settings().config.passive.clone();
        let ejected_until = backend.state().health.on_failure(Instant::now(), &passive);
        self.refresh(backend);
        if let Some(until) = ejected_until {
            tracing::warn!(upstream = %self.name, backend = %backend.id(), last = failure.as_str(), for_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64, "backend ejected after consecutive failures");
            let (upstream, backend) = (self.clone(), backend.clone());
            self.deps.tasks.spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => upstream.refresh(&backend),
                    _ = upstream.cancelled().cancelled() => {}
                }
            });
        }
    }

    /// `backend` answered a request.
    pub(crate) fn on_answer(&self, backend: &BackendHandle) {
        backend.state().health.on_answer(Instant::now());
    }

    /// Recompute a backend's availability from its health, record the change (state, metrics,
    /// the first drain round) and report it.
    fn refresh(self: &Arc<Self>, backend: &Arc<BackendHandle>) {
        let drain_timeout = self.settings().config.drain.timeout;
        let (old, new) = {
            // The state lock serialises concurrent refreshes of one backend, and whoever reads
            // the status sees the availability and its drain round change together.
            let mut state = backend.state();
            let new = state.health.availability(Instant::now());
            let old = backend.live().set_availability(new);
            if old != new {
                state.status.availability = new;
                state.status.since = SystemTime::now();
                state.status.drain = (new == Availability::Draining && !self.cancelled().is_cancelled()).then(|| {
                    // Recorded here rather than when the drain task runs, so whoever caused the
                    // drain (an admin request) already sees its progress.
                    DrainProgress::begin(DrainReason::of(&state.health), drain_timeout, backend.tunnels().len())
                });
            }
            (old, new)
        };
        if old == new {
            return;
        }
        self.deps.metrics.state_change(&self.name, backend.id(), Some(old.as_str()), new.as_str());
        tracing::info!(upstream = %self.name, backend = %backend.id(), from = old.as_str(), to = new.as_str(), "backend state changed");
        if new != Availability::Active {
            // Pooled connections are not reused on a backend that takes no new sessions.
            backend.pool().clear();
        }
        self.report(Event::Changed { upstream: self.clone(), backend: backend.clone(), from: old, to: new });
    }

    fn report(&self, event: Event) {
        // The receiver is gone only once the proxy shuts down, when nothing reacts anyway.
        let _ = self.deps.events.send(event);
    }

    /// A retired backend finished draining: forget it.
    pub(crate) fn forget_retired(&self, backend: &Arc<BackendHandle>) {
        self.members.lock().retired.retain(|b| !Arc::ptr_eq(b, backend));
    }

    /// The proxy is shutting down: stop checks, discovery and timers, and begin no new drain
    /// rounds (every tunnel is being closed anyway).
    pub(crate) fn stop(&self) {
        self.background.cancel.cancel();
    }

    /// Drop every idle pooled connection (nothing will send another request).
    pub(crate) fn clear_pools(&self) {
        for backend in self.all_backends() {
            backend.pool().clear();
        }
    }
}

/// The sticky-cookie key: from the `key_env` variable, or random per process (with a warning,
/// since replicas then reject each other's cookies). `previous` keeps a random key across
/// reloads, so a reload does not invalidate every cookie.
fn cookie_key_for(
    config: &UpstreamConfig,
    previous: Option<(&Option<String>, &CookieKey)>,
    env: &Env,
) -> (Option<String>, CookieKey) {
    let Some(var) = config.affinity.cookie.as_ref().and_then(|c| c.key_env.clone()) else {
        if let Some((None, key)) = previous {
            return (None, key.clone());
        }
        return (None, CookieKey::random());
    };
    match env(&var).map(|v| CookieKey::from_bytes(v.as_bytes())) {
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

fn settings_for(config: &UpstreamConfig, key: &CookieKey) -> Settings {
    let policy = AffinityPolicy::new(&config.affinity, key.clone()).unwrap_or_else(|e| {
        // Config validation rejects what the policy cannot render; keep routing without the
        // cookie rather than fail if something slipped through.
        tracing::error!(upstream = %config.name, error = %e, "sticky cookie disabled");
        let mut affinity = config.affinity.clone();
        affinity.cookie = None;
        AffinityPolicy::new(&affinity, key.clone()).expect("a policy without a cookie has nothing to reject")
    });
    Settings { config: config.clone(), policy }
}

fn build_membership(backends: Vec<Arc<BackendHandle>>, config: &UpstreamConfig, key: &CookieKey) -> Membership {
    let members = backends
        .iter()
        .map(|b| Member { id: BackendId::new(b.id().clone()), weight: b.weight(), live: b.live().clone() })
        .collect();
    Membership { set: BackendSet::new(members, &config.affinity.hash, key), backends }
}
