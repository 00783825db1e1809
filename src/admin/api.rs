//! JSON documents of the admin API.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::balance::Availability;
use crate::proxy::Proxy;
use crate::upstream::health::CheckOutcome;
use crate::upstream::{BackendHandle, Upstream};

/// What an operator asks of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrainAction {
    Drain,
    Undrain,
}

impl DrainAction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DrainAction::Drain => "drain",
            DrainAction::Undrain => "undrain",
        }
    }
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn backend_json(upstream: &Upstream, backend: &BackendHandle) -> Value {
    let status = backend.status();
    let health = backend.health();
    let check = match &health.last_check {
        None => json!(null),
        Some(CheckOutcome::Healthy) => json!({ "result": "healthy" }),
        Some(CheckOutcome::NotReady) => json!({ "result": "not_ready" }),
        Some(CheckOutcome::Failed(why)) => json!({ "result": "failed", "error": why }),
    };
    let in_membership = upstream.membership().backends.iter().any(|b| std::ptr::eq(&**b, backend));
    let drain = status.drain.as_ref().filter(|_| status.availability == Availability::Draining).map(|d| {
        json!({
            "reason": d.reason.as_str(),
            "started_ms": unix_millis(d.started),
            "deadline_ms": unix_millis(d.deadline),
            "tunnels_at_start": d.tunnels_at_start,
            "tunnels_left": backend.tunnels().len(),
            "closes_sent": d.closes_sent,
        })
    });
    json!({
        "id": &**backend.id(),
        "address": backend.address().to_string(),
        "weight": backend.weight(),
        "source": backend.source().as_str(),
        "member": in_membership,
        "state": backend.state_name(),
        "state_since_ms": unix_millis(status.since),
        "tunnels": backend.tunnels().len(),
        "active_requests": backend.active_requests(),
        "pins": backend.pins(),
        "health": {
            "admin_drained": health.admin_drained,
            "last_check": check,
            "ejected": health.ejected_until().is_some_and(|t| t > std::time::Instant::now()),
        },
        "totals": {
            "requests": backend.metrics().requests_total(),
            "errors_5xx": backend.metrics().errors_total(),
            "tunnels": backend.metrics().tunnels_total.get(),
            "connect_failures": backend.metrics().connect_failures.get(),
            "bytes_in": backend.metrics().bytes_in.get(),
            "bytes_out": backend.metrics().bytes_out.get(),
        },
        "drain": drain,
    })
}

fn upstream_json(upstream: &Upstream) -> Value {
    let backends: Vec<Value> = upstream.all_backends().iter().map(|b| backend_json(upstream, b)).collect();
    json!({ "name": &**upstream.name(), "backends": backends })
}

/// Which proxy replica answers. Replicas share nothing but their config (and the cookie key),
/// so every figure this one reports, here and on `/metrics`, is its own.
fn replica() -> Value {
    json!({ "hostname": gethostname::gethostname().to_string_lossy(), "pid": std::process::id() })
}

pub(crate) fn upstreams(proxy: &Proxy) -> Value {
    let rt = proxy.snapshot();
    // Config order, not hash order.
    let list: Vec<Value> = rt
        .config
        .upstreams
        .iter()
        .filter_map(|u| rt.upstreams.get(u.name.as_str()))
        .map(|u| upstream_json(u))
        .collect();
    json!({ "replica": replica(), "generation": rt.generation, "upstreams": list })
}

pub(crate) fn upstream(proxy: &Proxy, name: &str) -> Option<Value> {
    proxy.snapshot().upstreams.get(name).map(|u| upstream_json(u))
}

/// Where `key` goes now, and its whole ring order.
pub(crate) fn route(proxy: &Proxy, name: &str, key: &str) -> Option<Value> {
    let rt = proxy.snapshot();
    let upstream = rt.upstreams.get(name)?;
    let membership = upstream.membership();
    let id = |i: usize| membership.backends.get(i).map(|b| b.id().to_string());
    let candidates: Vec<String> = membership.set.ring_order(key).filter_map(id).collect();
    let backend = membership.set.home_of(key).and_then(id);
    Some(json!({
        "upstream": name,
        "key": key,
        "backend": backend,
        "reason": "key",
        "candidates": candidates,
    }))
}

pub(crate) fn set_drain(proxy: &Proxy, name: &str, id: &str, action: DrainAction) -> Option<Value> {
    let rt = proxy.snapshot();
    let upstream = rt.upstreams.get(name)?;
    let backend = upstream.backend(id)?;
    match action {
        DrainAction::Drain => upstream.drain(&backend),
        DrainAction::Undrain => upstream.undrain(&backend),
    }
    Some(backend_json(upstream, &backend))
}
