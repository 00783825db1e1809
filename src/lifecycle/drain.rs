//! Draining a backend: no new sessions (that is its availability), then, after
//! `drain.timeout`, a graceful Close for every tunnel still open, spread evenly over
//! `drain.close_spread` so clients do not reconnect in one burst.
//!
//! One drain entry point for every cause (admin, readiness 503, removal from config or DNS):
//! [`start`], called when a backend's availability becomes `Draining`; [`cancel`] when it stops
//! being so (undrain, ready again). A drain that finds nothing left reports the backend drained;
//! if new sessions reach it later (panic mode) it starts over.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::schedule::CloseSchedule;
use crate::tunnel::registry::TunnelControl;
use crate::upstream::{Backend, DrainProgress, Upstream};

/// How often a drain looks whether anything is left on its backend. Cheap (two atomic loads)
/// and only while draining.
const POLL: Duration = Duration::from_millis(50);

pub fn start(upstream: &Arc<Upstream>, backend: &Arc<Backend>, reason: &'static str) {
    if upstream.is_shutting_down() {
        // Every tunnel is being closed already; a drain timer would only hold the exit back.
        return;
    }
    let cancel = {
        let mut slot = backend.drain_task.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return;
        }
        let cancel = CancellationToken::new();
        *slot = Some(cancel.clone());
        cancel
    };
    backend.metrics.drains_started.inc();
    tracing::info!(upstream = %upstream.name, backend = %backend.id, reason, tunnels = backend.tunnels.len(), "backend draining");
    // Recorded before the task runs, so whoever caused the drain (an admin request) already
    // sees its progress.
    let deadline = begin(upstream, backend, reason);
    let (upstream, backend) = (upstream.clone(), backend.clone());
    let tasks = upstream.ctx.tasks.clone();
    tasks.spawn(run(upstream, backend, reason, cancel, deadline));
}

/// Record the start of a drain round on `backend`; returns when its tunnels get their Close.
fn begin(upstream: &Upstream, backend: &Backend, reason: &'static str) -> Instant {
    let timeout = upstream.config().drain.timeout;
    let started = SystemTime::now();
    backend.lock_status().drain = Some(DrainProgress {
        started,
        reason,
        deadline: started + timeout,
        tunnels_at_start: backend.tunnels.len(),
        closes_sent: 0,
    });
    Instant::now() + timeout
}

pub fn cancel(backend: &Backend) {
    if let Some(token) = backend.drain_task.lock().unwrap_or_else(|e| e.into_inner()).take() {
        token.cancel();
    }
}

enum Wait {
    Idle,
    Deadline,
    Cancelled,
}

async fn wait_idle(backend: &Backend, deadline: Option<Instant>, cancel: &CancellationToken) -> Wait {
    loop {
        if backend.is_idle() {
            return Wait::Idle;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Wait::Deadline;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = cancel.cancelled() => return Wait::Cancelled,
        }
    }
}

async fn run(
    upstream: Arc<Upstream>,
    backend: Arc<Backend>,
    reason: &'static str,
    cancel: CancellationToken,
    mut deadline: Instant,
) {
    loop {
        match wait_idle(&backend, Some(deadline), &cancel).await {
            Wait::Cancelled => return,
            Wait::Idle => {}
            Wait::Deadline => {
                let config = upstream.config().drain.clone();
                let tunnels = backend.tunnels.snapshot();
                tracing::info!(upstream = %upstream.name, backend = %backend.id, tunnels = tunnels.len(), spread_ms = config.close_spread.as_millis() as u64, "drain timeout: closing remaining tunnels");
                let sent = close_spread(&tunnels, config.close_spread, config.close_code, &cancel, |n| {
                    if let Some(drain) = backend.lock_status().drain.as_mut() {
                        drain.closes_sent += n;
                    }
                })
                .await;
                if !sent {
                    return;
                }
                if let Wait::Cancelled = wait_idle(&backend, None, &cancel).await {
                    return;
                }
            }
        }
        backend.metrics.drains_finished.inc();
        tracing::info!(upstream = %upstream.name, backend = %backend.id, "backend drained");
        if backend.lock_health().removed {
            upstream.forget_retired(&backend);
            cancel.cancel();
            return;
        }
        // Still draining: wait for anything new to land here (panic mode), then drain again.
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = cancel.cancelled() => return,
            }
            if !backend.is_idle() {
                break;
            }
        }
        deadline = begin(&upstream, &backend, reason);
    }
}

/// Ask `tunnels` to close with `code`, evenly over `spread`. Returns false if cancelled.
pub async fn close_spread(
    tunnels: &[Arc<TunnelControl>],
    spread: Duration,
    code: u16,
    cancel: &CancellationToken,
    mut on_sent: impl FnMut(usize),
) -> bool {
    let mut schedule = CloseSchedule::spread(Instant::now(), spread, tunnels.len());
    close_on_schedule(tunnels, &mut schedule, code, cancel, &mut on_sent).await
}

pub async fn close_on_schedule(
    tunnels: &[Arc<TunnelControl>],
    schedule: &mut CloseSchedule,
    code: u16,
    cancel: &CancellationToken,
    on_sent: &mut impl FnMut(usize),
) -> bool {
    while let Some(next) = schedule.next_due() {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = cancel.cancelled() => return false,
        }
        let due = schedule.due(Instant::now());
        let n = due.len();
        for i in due {
            tunnels[i].request_close(code);
        }
        on_sent(n);
    }
    true
}

/// Proxy shutdown: every tunnel of `upstream` gets a graceful Close now, spread over
/// `drain.close_spread` (no `drain.timeout` wait).
pub fn close_all(upstream: &Arc<Upstream>) {
    let config = upstream.config().drain.clone();
    let tunnels: Vec<Arc<TunnelControl>> = upstream.all_backends().iter().flat_map(|b| b.tunnels.snapshot()).collect();
    if tunnels.is_empty() {
        return;
    }
    tracing::info!(upstream = %upstream.name, tunnels = tunnels.len(), "shutdown: closing tunnels");
    let tasks = upstream.ctx.tasks.clone();
    tasks.spawn(async move {
        let never = CancellationToken::new();
        close_spread(&tunnels, config.close_spread, config.close_code, &never, |_| {}).await;
    });
}
