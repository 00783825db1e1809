//! Rebalancing after scale-out: when a backend becomes active (undrained, recovered, added),
//! tunnels whose affinity key now belongs to another backend, or that sit above a backend's
//! bounded load, are closed gracefully at no more than `rebalance.max_closes_per_second`, so
//! their clients reconnect to where they now belong. Off unless `rebalance.enabled`.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::drain::close_on_schedule;
use super::schedule::CloseSchedule;
use crate::balance::Availability;
use crate::metrics::{Metrics, UpstreamLabels};
use crate::tunnel::registry::TunnelControl;
use crate::upstream::{Membership, Upstream};

/// Close the misplaced tunnels of `upstream`, paced, until done or cancelled.
pub(crate) async fn run(upstream: Arc<Upstream>, metrics: Arc<Metrics>, cancel: CancellationToken) {
    let settings = upstream.settings();
    let config = &settings.config;
    let victims = misplaced(&upstream.membership(), settings.policy.balance_factor());
    if victims.is_empty() {
        return;
    }
    tracing::info!(upstream = %upstream.name(), tunnels = victims.len(), per_second = config.rebalance.max_closes_per_second, "rebalancing: closing misplaced tunnels");
    let mut schedule =
        CloseSchedule::rate_limited(Instant::now(), config.rebalance.max_closes_per_second, victims.len());
    let counter = metrics.rebalance_closes.get_or_create_owned(&UpstreamLabels { upstream: upstream.name().clone() });
    close_on_schedule(&victims, &mut schedule, config.drain.close_code, &cancel, &mut |n| {
        counter.inc_by(n as u64);
    })
    .await;
}

/// The tunnels to move: keyed tunnels whose key's home is another backend, then, with bounded
/// loads, the newest tunnels of any backend holding more than its share.
fn misplaced(membership: &Membership, balance_factor: Option<f64>) -> Vec<Arc<TunnelControl>> {
    let mut victims = Vec::new();
    let mut staying: Vec<Vec<Arc<TunnelControl>>> = Vec::with_capacity(membership.backends.len());
    for (i, backend) in membership.backends.iter().enumerate() {
        let mut here = Vec::new();
        for tunnel in backend.tunnels().snapshot() {
            match tunnel.key() {
                Some(key) if membership.set.home_of(key).is_some_and(|home| home != i) => victims.push(tunnel),
                _ => here.push(tunnel),
            }
        }
        staying.push(here);
    }
    if let Some(factor) = balance_factor {
        let usable = membership.backends.iter().filter(|b| b.availability() == Availability::Active).count().max(1);
        let total: usize = staying.iter().map(Vec::len).sum();
        let bound = (factor * total as f64 / usable as f64).ceil() as usize;
        for here in &mut staying {
            if here.len() > bound {
                // Oldest first in the snapshot: the newest are the ones to move.
                victims.extend(here.split_off(bound));
            }
        }
    }
    victims
}
