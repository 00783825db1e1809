//! DNS discovery: every A/AAAA record of `discovery.dns` is a backend (a compose service scaled
//! to N, or a Kubernetes headless Service). Re-resolved every `interval`; a record that
//! disappears drains its backend, a new one joins after a healthy check, and a failed lookup
//! keeps the last good set.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use super::{Singleton, Upstream};
use crate::config::BackendAddress;

/// Looks names up. The system resolver in production; tests inject their own.
pub trait Resolve: Send + Sync + 'static {
    /// The addresses `host` resolves to, with `port`.
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;
}

/// The operating system's resolver (getaddrinfo, so /etc/hosts and the search domains of
/// compose and Kubernetes apply).
#[derive(Debug, Default)]
pub(crate) struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// Start discovery for `upstream` if its config has a `discovery` section (once; the task
/// follows config changes and ends when the section goes away).
pub(super) fn spawn(upstream: &Arc<Upstream>) {
    upstream.keep_one(Singleton::Discovery, |c| c.discovery.is_some(), |u| async move { run(&u).await });
}

async fn run(upstream: &Arc<Upstream>) {
    loop {
        let Some(discovery) = upstream.settings().config.discovery.clone() else { return };
        let next = tokio::time::Instant::now() + discovery.interval;
        let lookup = upstream.deps.resolver.resolve(&discovery.dns.host, discovery.dns.port);
        let answer = tokio::select! {
            answer = lookup => answer,
            _ = upstream.cancelled().cancelled() => return,
        };
        match answer {
            Ok(addrs) if !addrs.is_empty() => {
                upstream.set_discovered(addrs.into_iter().map(backend_address).collect());
            }
            Ok(_) => {
                tracing::warn!(upstream = %upstream.name(), name = %discovery.dns, "discovery: no records; keeping the last good set")
            }
            Err(e) => {
                tracing::warn!(upstream = %upstream.name(), name = %discovery.dns, error = %e, "discovery: lookup failed; keeping the last good set")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = upstream.cancelled().cancelled() => return,
        }
    }
}

fn backend_address(addr: SocketAddr) -> BackendAddress {
    BackendAddress { host: addr.ip().to_canonical().to_string(), port: addr.port() }
}
