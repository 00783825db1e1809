//! tether: a Layer-7 reverse proxy and sticky-session load balancer for WebSocket-heavy
//! services, with a bundled reference STOMP-over-WebSocket backend.
//!
//! # Layout
//! - [`config`]: YAML -> validated, typed [`config::Config`] (the only place config is parsed).
//! - [`balance`]: the pure routing decision: backend set and hash ring, affinity keys, signed
//!   sticky cookie, bounded loads, fallbacks ([`balance::route`]).
//! - [`server`]: listeners, TLS, accept loop, per-connection timeouts; hands requests to `proxy`.
//! - [`proxy`]: the request path: routing, header rules, forwarding, starting tunnels.
//! - [`upstream`]: backends at run time: connection pools, counters, membership.
//! - [`tunnel`]: WebSocket tunnels after the upgrade: the byte relay, the open-tunnel registry,
//!   and [`tunnel::frames`], which tracks frame boundaries so a Close can be injected between
//!   frames.
//! - [`lifecycle`]: drain, rebalance and shutdown timing; [`lifecycle::schedule`] spreads or
//!   rate-limits graceful closes (pure, `Instant` passed in).
//!
//! A request flows `server::listener` -> `proxy::ConnService` -> `proxy::routes` ->
//! `upstream` (candidates, pooled connection) -> backend, and the response streams back through
//! `proxy::body::ClientBody`; a WebSocket upgrade ends in `tunnel::relay`.

pub mod admin;
pub mod balance;
pub mod config;
pub mod lifecycle;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod tunnel;
pub mod upstream;
