//! tether: a Layer-7 reverse proxy and sticky-session load balancer for WebSocket-heavy
//! services, with a bundled reference STOMP-over-WebSocket backend.
//!
//! # Layout
//! - [`config`]: YAML -> validated, typed [`config::Config`] (the only place config is parsed).
//! - [`balance`]: the pure routing decision: backend set and hash ring, affinity keys, signed
//!   sticky cookie, bounded loads, fallbacks ([`balance::route`]).
//!
//! The map grows with the crate; every module's `//!` says what it owns and what it must not do.

pub mod balance;
pub mod config;
