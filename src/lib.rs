//! tether: a Layer-7 reverse proxy and sticky-session load balancer for WebSocket-heavy
//! services, with a bundled reference STOMP-over-WebSocket backend.
//!
//! # Layout
//! - [`config`]: YAML -> validated, typed [`config::Config`] (the only place config is parsed).
//! - [`tunnel`]: upgraded WebSocket connections; [`tunnel::frames`] tracks frame boundaries so a
//!   Close can be injected between frames.
//! - [`lifecycle`]: drain, rebalance and shutdown timing; [`lifecycle::schedule`] spreads or
//!   rate-limits graceful closes (pure, `Instant` passed in).
//!
//! The map grows with the crate; every module's `//!` says what it owns and what it must not do.

pub mod config;
pub mod lifecycle;
pub mod tunnel;
