//! Lifecycle of backends and of the proxy: drains, rebalancing, and their timing.
//!
//! Owns: when tunnels are asked to close ([`drain`], [`rebalance`]) and the pure schedules that
//! space those closes out ([`schedule`]). Must not: move bytes (the tunnel relay writes the
//! Close frames) or decide availability (that is `upstream::health`).

pub mod drain;
pub mod rebalance;
pub mod schedule;
