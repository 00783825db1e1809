//! Lifecycle of backends and of the proxy's tunnels: drains, rebalancing, and their timing.
//!
//! Owns: when tunnels are asked to close. A [`Lifecycle`] task receives every availability
//! change the upstreams report ([`crate::upstream::Event`]) and drives the lower rooms: a
//! backend that becomes `Draining` gets a [`drain`], one that stops draining has it cancelled,
//! one that becomes `Active` may trigger a [`rebalance`]. [`schedule`] spaces closes out (pure).
//! Must not: move bytes (the tunnel relay writes the Close frames) or decide availability
//! (that is `upstream::health`).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::Availability;
use crate::metrics::Metrics;
use crate::upstream::{BackendHandle, Event, Upstream};

pub(crate) mod drain;
pub(crate) mod rebalance;
pub(crate) mod schedule;

/// Handle on the lifecycle task.
pub(crate) struct Lifecycle {
    tasks: TaskTracker,
    /// Ends the lifecycle task: every drain and rebalance under way is cancelled.
    stop: CancellationToken,
}

impl Lifecycle {
    /// Start the task that reacts to the events sent on the returned sender. It and every
    /// drain or rebalance it starts are owned by `tasks`.
    pub(crate) fn start(tasks: &TaskTracker, metrics: Arc<Metrics>) -> (Self, UnboundedSender<Event>) {
        let (events, inbox) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let supervisor =
            Supervisor { tasks: tasks.clone(), metrics, drains: HashMap::new(), rebalances: HashMap::new() };
        tasks.spawn(supervisor.run(inbox, stop.clone()));
        (Self { tasks: tasks.clone(), stop }, events)
    }

    /// Proxy shutdown: stop reacting to changes, cancel every drain and rebalance, stop each
    /// upstream's checks and discovery, and close every tunnel gracefully now, spread over its
    /// upstream's `drain.close_spread` (no `drain.timeout` wait).
    pub(crate) fn shutdown<'a>(&self, upstreams: impl IntoIterator<Item = &'a Arc<Upstream>>) {
        self.stop.cancel();
        for upstream in upstreams {
            upstream.stop();
            drain::close_all(upstream, &self.tasks);
        }
    }
}

/// The lifecycle task's state: what runs on which backend. Only this task touches it.
struct Supervisor {
    tasks: TaskTracker,
    metrics: Arc<Metrics>,
    /// Drains under way, by backend (the handle is kept so its address cannot be reused).
    drains: HashMap<usize, (Arc<BackendHandle>, CancellationToken)>,
    /// Rebalances under way, by upstream.
    rebalances: HashMap<usize, (Arc<Upstream>, CancellationToken)>,
}

impl Supervisor {
    async fn run(mut self, mut inbox: UnboundedReceiver<Event>, stop: CancellationToken) {
        loop {
            let event = tokio::select! {
                event = inbox.recv() => event,
                _ = stop.cancelled() => None,
            };
            let Some(event) = event else { break };
            self.on(event);
        }
        let drains = self.drains.drain().map(|(_, (_, token))| token);
        let rebalances = self.rebalances.drain().map(|(_, (_, token))| token);
        for token in drains.chain(rebalances) {
            token.cancel();
        }
    }

    fn on(&mut self, event: Event) {
        // Drains that ended by themselves (a removed backend, forgotten) leave a cancelled
        // token behind.
        self.drains.retain(|_, (_, token)| !token.is_cancelled());
        self.rebalances.retain(|_, (_, token)| !token.is_cancelled());
        match event {
            Event::Changed { upstream, backend, from, to } => {
                if to == Availability::Draining {
                    self.start_drain(&upstream, &backend);
                } else if from == Availability::Draining {
                    self.cancel_drain(&backend);
                }
                if to == Availability::Active && upstream.settings().config.rebalance.enabled {
                    self.start_rebalance(&upstream);
                }
            }
            Event::Joined { upstream } => {
                if upstream.settings().config.rebalance.enabled {
                    self.start_rebalance(&upstream);
                }
            }
        }
    }

    fn start_drain(&mut self, upstream: &Arc<Upstream>, backend: &Arc<BackendHandle>) {
        let key = Arc::as_ptr(backend) as usize;
        if self.drains.contains_key(&key) {
            return;
        }
        let cancel = CancellationToken::new();
        self.drains.insert(key, (backend.clone(), cancel.clone()));
        self.tasks.spawn(drain::run(upstream.clone(), backend.clone(), cancel));
    }

    fn cancel_drain(&mut self, backend: &Arc<BackendHandle>) {
        if let Some((_, token)) = self.drains.remove(&(Arc::as_ptr(backend) as usize)) {
            token.cancel();
        }
    }

    /// Start a rebalance of `upstream`, replacing one still under way (its choice of tunnels
    /// is stale now that membership changed again).
    fn start_rebalance(&mut self, upstream: &Arc<Upstream>) {
        let cancel = CancellationToken::new();
        let key = Arc::as_ptr(upstream) as usize;
        if let Some((_, old)) = self.rebalances.insert(key, (upstream.clone(), cancel.clone())) {
            old.cancel();
        }
        self.tasks.spawn(rebalance::run(upstream.clone(), self.metrics.clone(), cancel));
    }
}
