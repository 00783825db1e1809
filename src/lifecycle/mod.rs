//! Lifecycle: draining, rebalancing and shutdown decisions over time.
//!
//! Owns: when things end (which tunnel is closed when, how long a drain may take). Must not:
//! move bytes or touch sockets itself; the relays and listeners act on what it decides, and
//! every decision takes the current `Instant` as an argument instead of reading the clock.

pub mod schedule;
