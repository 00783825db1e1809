//! tether: a Layer-7 reverse proxy and sticky-session load balancer for WebSocket-heavy
//! services, with a bundled reference STOMP-over-WebSocket backend.
//!
//! # Layout
//! - [`config`]: YAML -> validated, typed [`config::Config`] (the only place config is parsed).
//! - [`backend`]: `tether backend`, the reference STOMP-over-WebSocket app: codec, sessions,
//!   hub, broker (Redis | in-process), probes, metrics, graceful shutdown.
//!
//! The map grows with the crate; every module's `//!` says what it owns and what it must not do.

pub mod backend;
pub mod config;
