//! tether: a Layer-7 reverse proxy and sticky-session load balancer for WebSocket-heavy
//! services, with a bundled reference STOMP-over-WebSocket application.
//!
//! # Layout
//! Rooms, lowest first. A room may use the rooms above it in this list, never one below
//! (`tests/layering.rs` fails the build of the suite when that changes):
//!
//! - [`config`]: YAML -> validated, typed [`config::Config`] (the only place config is parsed).
//! - [`metrics`]: the Prometheus registry and every metric family of the proxy.
//! - [`report`]: errors in log lines (one line, every cause).
//! - [`log_writer`]: the bounded, batching writer every log line goes through to stderr.
//! - [`accept`]: the one accept loop every listener runs, and the `listening` line.
//! - [`tls`]: TLS termination: server settings, certificates by SNI, and the connection type
//!   that holds no buffer while idle.
//! - [`balance`]: the pure routing decision: backend set and hash ring, affinity keys, signed
//!   sticky cookie, bounded loads, fallbacks ([`balance::route`]).
//! - [`auth`]: verified identity: JWT verifiers, where tokens are found, why one is refused.
//! - [`tunnel`]: WebSocket tunnels after the upgrade: the byte relay, the open-tunnel registry,
//!   and [`tunnel::frames`], which tracks frame boundaries so a Close can be injected between
//!   frames.
//! - [`upstream`]: backends at run time ([`upstream::BackendHandle`]): membership, connection
//!   pools, health (active checks, passive ejection), DNS discovery; reports availability
//!   changes as events.
//! - [`lifecycle`]: reacts to those events: drains and rebalancing, and the pure schedules that
//!   space graceful closes out.
//! - [`downstream`]: client connections: the facts and phases the accept side and the request
//!   path share.
//! - [`proxy`]: the request path: routing, header rules, forwarding, starting tunnels, and the
//!   one error type that becomes tether's own answers.
//! - [`admin`]: the admin listener: probes, JSON API, status page, metrics.
//! - [`server`]: the running process: listeners, TLS, per-connection timeouts, live reload,
//!   the shutdown sequence; starts the admin listener.
//! - [`app`] (feature `app`, on by default): `tether backend`, the reference STOMP-over-WebSocket
//!   application: codec, sessions (WebSocket or SockJS), who a session is (CONNECT tokens
//!   through [`auth`], the identity header from trusted proxies only) and which pages may open
//!   one, hub, broker (Redis | in-process), mapped Redis channels, `/app` forwarding, probes,
//!   metrics.
//! - [`demo`] (feature `app`): `tether demo`, the proxy and two app instances in one process,
//!   with a demo login whose tokens the proxy verifies.
//! - [`fuzzing`]: entry points for the cargo-fuzz targets in `fuzz/` and for the corpus replay
//!   test: each takes arbitrary bytes, must never panic, and checks the invariants of what it
//!   drives.
//!
//! # The request path
//! `server::listener` accepts and hands the connection to hyper with a `proxy::ConnService`;
//! `proxy` checks the head, finds the upstream (`proxy::routes`), asks it for an
//! `upstream::Route` (a `balance` decision over the current membership), and forwards over a
//! pooled backend connection; the response streams back through `proxy::ClientBody`. A
//! WebSocket upgrade ends in `tunnel::relay`, registered with its backend so `lifecycle` can
//! close it at a frame boundary.
//!
//! # Conventions
//! Downstream is the client side, upstream the backend side; a *backend* is a server an
//! upstream forwards to, the *app* is the reference application. Locks are `parking_lot`
//! mutexes (a panic while holding one does not poison it: the state they guard is valid after
//! every statement) and are never held across an `.await`.

#![warn(missing_docs)]

pub mod accept;
pub mod admin;
#[cfg(feature = "app")]
pub mod app;
pub mod auth;
pub mod balance;
pub mod config;
#[cfg(feature = "app")]
pub mod demo;
pub mod downstream;
pub mod fuzzing;
pub mod lifecycle;
pub mod log_writer;
pub mod metrics;
pub mod proxy;
pub mod report;
pub mod server;
pub mod tls;
pub mod tunnel;
pub mod upstream;
