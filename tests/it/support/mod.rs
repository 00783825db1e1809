//! Test harness: real servers and clients on 127.0.0.1:0.
//!
//! - [`config::Yaml`] builds tether configs; [`proxy::TestProxy`] runs the proxy in-process and
//!   [`proxy::ProxyProcess`] as the real binary, both from `TestProxy::builder()`.
//! - [`app::TestApp`] runs the reference STOMP application in-process, [`app_process::AppProcess`]
//!   as `tether backend`.
//! - Backends behind the proxy: [`echo::EchoBackend`], [`ws_stream::StreamBackend`],
//!   [`gated::GatedBackend`].
//! - [`admin::AdminClient`] talks to the admin listener.
//! - Waiting: [`within`] bounds a future, [`eventually`] polls a condition; both give up after
//!   [`WAIT`]. Tests wait for events, never for time, unless time itself is under test.
#![allow(dead_code)]

pub mod admin;
pub mod app;
pub mod app_process;
pub mod check;
pub mod config;
pub mod deploy_files;
pub mod echo;
pub mod gated;
pub mod h2_frames;
pub mod http;
pub mod http_client;
pub mod jwt;
pub mod node;
pub mod process;
pub mod prom;
pub mod proxy;
pub mod reconnecting_client;
pub mod redis;
pub mod redis_cluster;
pub mod resolver;
pub mod server_runtime;
pub mod stomp_client;
pub mod tls;
pub mod ws;
pub mod ws_stream;

use std::time::Duration;

/// Generous bound for anything a test waits for: the machine is small and often busy.
pub const WAIT: Duration = Duration::from_secs(20);

/// How often [`eventually`] looks again.
pub const POLL: Duration = Duration::from_millis(20);

/// Await `fut`, failing the test with `what` if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Poll `probe` every [`POLL`] until it yields `Some`, failing the test with `what` after
/// [`WAIT`].
pub async fn eventually<T>(what: &str, probe: impl AsyncFnMut() -> Option<T>) -> T {
    eventually_within(what, WAIT, probe).await
}

/// [`eventually`] with a bound of `limit` (for a test whose bound is part of what it checks).
pub async fn eventually_within<T>(what: &str, limit: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        // The thing waited for has no event to await: look again shortly.
        tokio::time::sleep(POLL).await;
    }
}

/// Poll `condition` until it holds (see [`eventually`]).
pub async fn until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    eventually(what, async || condition().await.then_some(())).await
}
