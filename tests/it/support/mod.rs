//! Test harness: real servers and clients on 127.0.0.1:0.
#![allow(dead_code)]

pub mod admin;
pub mod app;
pub mod app_process;
pub mod check;
pub mod deploy_files;
pub mod echo;
pub mod gated;
pub mod http;
pub mod http_client;
pub mod prom;
pub mod proxy;
pub mod reconnecting_client;
pub mod redis;
pub mod resolver;
pub mod stomp_client;
pub mod tls;
pub mod ws;
pub mod ws_stream;

use std::time::Duration;

/// Generous bound for anything a test waits for: the machine is small and often busy.
pub const WAIT: Duration = Duration::from_secs(20);

/// Await `fut`, failing the test with `what` if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}
