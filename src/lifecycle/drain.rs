//! Draining a backend: no new sessions (that is its availability), then, after
//! `drain.timeout`, a graceful Close for every tunnel still open, spread evenly over
//! `drain.close_spread` so clients do not reconnect in one burst.
//!
//! One drain for every cause (admin, readiness 503, removal from config or DNS): [`run`],
//! started when a backend's availability becomes `Draining` and cancelled when it stops being
//! so (undrain, ready again). A drain that finds nothing left reports the backend drained; if
//! new sessions reach it later (panic mode) it starts over. Waiting is signalled, never
//! polled: the backend wakes its drain when its last request or tunnel ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::schedule::CloseSchedule;
use crate::tunnel::registry::TunnelControl;
use crate::upstream::{BackendHandle, Upstream};

enum Wait {
    Idle,
    Deadline,
    Cancelled,
}

/// Wait until nothing is left on `backend`, `deadline` passes, or `cancel` fires.
async fn until_idle(backend: &BackendHandle, deadline: Option<Instant>, cancel: &CancellationToken) -> Wait {
    let deadline = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        if backend.is_idle() {
            return Wait::Idle;
        }
        tokio::select! {
            // A pending signal is kept, so an end that raced with the check above is seen.
            _ = backend.activity() => {}
            _ = &mut deadline => return Wait::Deadline,
            _ = cancel.cancelled() => return Wait::Cancelled,
        }
    }
}

/// Drain `backend` until cancelled, or until it is drained and was removed. `cancel` is
/// cancelled when the drain ends, however it ends.
pub(crate) async fn run(upstream: Arc<Upstream>, backend: Arc<BackendHandle>, cancel: CancellationToken) {
    drain(&upstream, &backend, &cancel).await;
    cancel.cancel();
}

async fn drain(upstream: &Arc<Upstream>, backend: &Arc<BackendHandle>, cancel: &CancellationToken) {
    let name = upstream.name().clone();
    let Some(round) = backend.drain_round() else { return };
    let reason = round.reason;
    let mut deadline = round.deadline_at;
    backend.metrics().drains_started.inc();
    tracing::info!(upstream = %name, backend = %backend.id(), reason = reason.as_str(), tunnels = backend.tunnels().len(), "backend draining");
    loop {
        match until_idle(backend, Some(deadline), cancel).await {
            Wait::Cancelled => return,
            Wait::Idle => {}
            Wait::Deadline => {
                let config = upstream.settings().config.drain.clone();
                let tunnels = backend.tunnels().snapshot();
                tracing::info!(upstream = %name, backend = %backend.id(), tunnels = tunnels.len(), spread_ms = config.close_spread.as_millis() as u64, "drain timeout: closing remaining tunnels");
                let sent = close_spread(&tunnels, config.close_spread, config.close_code, cancel, |n| {
                    backend.count_closes_sent(n);
                })
                .await;
                if !sent {
                    return;
                }
                if let Wait::Cancelled = until_idle(backend, None, cancel).await {
                    return;
                }
            }
        }
        backend.metrics().drains_finished.inc();
        tracing::info!(upstream = %name, backend = %backend.id(), "backend drained");
        if backend.is_removed() {
            upstream.forget_retired(backend);
            return;
        }
        // Still draining: wait for anything new to land here (panic mode), then drain again.
        loop {
            tokio::select! {
                _ = backend.activity() => {}
                _ = cancel.cancelled() => return,
            }
            if !backend.is_idle() {
                break;
            }
        }
        deadline = backend.begin_drain_round(reason, upstream.settings().config.drain.timeout);
    }
}

/// Ask `tunnels` to close with `code`, evenly over `spread`. Returns false if cancelled.
pub(crate) async fn close_spread(
    tunnels: &[Arc<TunnelControl>],
    spread: Duration,
    code: u16,
    cancel: &CancellationToken,
    mut on_sent: impl FnMut(usize),
) -> bool {
    let mut schedule = CloseSchedule::spread(Instant::now(), spread, tunnels.len());
    close_on_schedule(tunnels, &mut schedule, code, cancel, &mut on_sent).await
}

pub(crate) async fn close_on_schedule(
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
pub(crate) fn close_all(upstream: &Arc<Upstream>, tasks: &TaskTracker) {
    let config = upstream.settings().config.drain.clone();
    let tunnels: Vec<Arc<TunnelControl>> =
        upstream.all_backends().iter().flat_map(|b| b.tunnels().snapshot()).collect();
    if tunnels.is_empty() {
        return;
    }
    tracing::info!(upstream = %upstream.name(), tunnels = tunnels.len(), "shutdown: closing tunnels");
    tasks.spawn(async move {
        let never = CancellationToken::new();
        close_spread(&tunnels, config.close_spread, config.close_code, &never, |_| {}).await;
    });
}
