//! tether: a Layer-7 reverse proxy and sticky-session load balancer for WebSocket-heavy
//! services, with a bundled reference STOMP-over-WebSocket backend.
//!
//! # Layout
//! - [`config`]: YAML -> validated, typed [`config::Config`] (the only place config is parsed).
//! - [`server`]: the running proxy process: listeners, TLS, accept loop, per-connection
//!   timeouts, live reload, the shutdown sequence; hands requests to `proxy`.
//! - [`proxy`]: the request path: routing, header rules, forwarding, starting tunnels.
//! - [`balance`]: the pure routing decision: backend set and hash ring, affinity keys, signed
//!   sticky cookie, bounded loads, fallbacks ([`balance::route`]).
//! - [`upstream`]: backends at run time: membership, connection pools, health (active checks,
//!   passive ejection), DNS discovery.
//! - [`tunnel`]: WebSocket tunnels after the upgrade: the byte relay, the open-tunnel registry,
//!   and [`tunnel::frames`], which tracks frame boundaries so a Close can be injected between
//!   frames.
//! - [`lifecycle`]: drains and rebalancing; [`lifecycle::schedule`] spreads or rate-limits
//!   graceful closes (pure, `Instant` passed in).
//! - [`admin`]: the admin listener: probes, JSON API, status page, Prometheus metrics.
//! - [`metrics`]: the Prometheus registry and every metric family.
//! - [`demo`]: `tether demo`, the proxy and two reference backends in one process.
//! - [`backend`]: `tether backend`, the reference STOMP-over-WebSocket app: codec, sessions,
//!   hub, broker (Redis | in-process), probes, metrics, graceful shutdown.
//!
//! A request flows `server::listener` -> `proxy::ConnService` -> `proxy::routes` ->
//! `upstream::Upstream::route` (a `balance` decision) -> pooled backend connection, and the
//! response streams back through `proxy::body::ClientBody`; a WebSocket upgrade ends in
//! `tunnel::relay`.

pub mod admin;
#[cfg(feature = "app")]
pub mod app;
pub mod balance;
pub mod config;
#[cfg(feature = "app")]
pub mod demo;
pub mod lifecycle;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod tunnel;
pub mod upstream;
