//! A WebSocket tunnel from the moment both sides answered the upgrade to its end: taking the
//! sockets back from hyper, relaying, and the bookkeeping when it ends (counters, access log).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::OwnedSemaphorePermit;

use super::access_log::{AccessLog, TunnelRecord};
use crate::downstream::ConnIo;
use crate::metrics::{Metrics, TimeoutKind};
use crate::tunnel::registry::Registration;
use crate::tunnel::relay::{self, ClientStream, Side};
use crate::upstream::{BackendHandle, Load, Upstream};

/// How long an upgraded tunnel may take to be handed over by hyper on both sides.
const UPGRADE_HANDOVER: Duration = Duration::from_secs(10);

/// A WebSocket tunnel between its upgrade and its end.
pub(super) struct Tunnel {
    pub(super) registration: Registration,
    /// The backend's load unit, held for the tunnel's lifetime.
    pub(super) load: Load,
    /// The client connection's slot under `limits.max_connections`.
    pub(super) permit: Option<OwnedSemaphorePermit>,
    /// The tunnel's place under `limits.max_in_flight`.
    pub(super) slot: Option<OwnedSemaphorePermit>,
    pub(super) client: SocketAddr,
    pub(super) listener: Arc<str>,
    pub(super) host: Option<Box<str>>,
    pub(super) path_and_query: Box<str>,
    pub(super) upstream: Arc<Upstream>,
    pub(super) backend: Arc<BackendHandle>,
    pub(super) timeouts: relay::Timeouts,
    pub(super) log: Arc<AccessLog>,
    pub(super) metrics: Arc<Metrics>,
}

impl Tunnel {
    /// The tunnel's task. A block rather than an `async fn`: its captures are stored once, where
    /// an async fn's arguments take room twice, and an idle tunnel costs what its task holds.
    #[allow(clippy::manual_async_fn)]
    pub(super) fn run<S: ClientStream>(self, client: OnUpgrade, backend: OnUpgrade) -> impl Future<Output = ()> + Send {
        async move {
            let started = Instant::now();
            let metrics = self.backend.metrics();
            // The sockets are taken back inside a block, so that nothing of the handover
            // (moved-from locals keep their room until their scope ends) stays in the task
            // while it relays.
            let relaying = {
                // Boxed: the handover's futures are large and done with once the relay starts.
                let handover =
                    Box::pin(tokio::time::timeout(UPGRADE_HANDOVER, async { tokio::join!(client, backend) })).await;
                let Ok((Ok(client), Ok(backend))) = handover else {
                    tracing::debug!(backend = %self.backend.id(), "upgrade was not completed on both sides");
                    return;
                };
                let (client, client_early) = match client.downcast::<TokioIo<ConnIo<S>>>() {
                    Ok(parts) => (parts.io.into_inner().into_inner().into_side(), parts.read_buf),
                    Err(_) => {
                        tracing::error!("upgraded client connection has an unexpected type");
                        return;
                    }
                };
                let (backend_io, backend_early) = match backend.downcast::<TokioIo<tokio::net::TcpStream>>() {
                    Ok(parts) => (Side::Plain(parts.io.into_inner()), parts.read_buf),
                    Err(_) => {
                        tracing::error!("upgraded backend connection has an unexpected type");
                        return;
                    }
                };
                metrics.tunnels_open.inc();
                metrics.tunnels_total.inc();
                relay::relay(
                    client,
                    backend_io,
                    client_early,
                    backend_early,
                    self.registration.control(),
                    &self.timeouts,
                )
            };
            let report = relaying.await;
            metrics.tunnels_open.dec();
            metrics.bytes_in.inc_by(report.bytes_up);
            metrics.bytes_out.inc_by(report.bytes_down);
            let lifetime = started.elapsed();
            metrics.tunnel_lifetime.observe(lifetime.as_secs_f64());
            if report.end == relay::End::SendTimeout {
                self.metrics.timeout(TimeoutKind::Send);
            }
            if let Some(code) = report.close_code {
                self.metrics.close_sent(self.upstream.name(), code);
            }
            self.log.tunnel(&TunnelRecord {
                client: self.client,
                listener: &self.listener,
                host: self.host.as_deref(),
                path_and_query: &self.path_and_query,
                upstream: self.upstream.name(),
                backend: self.backend.id(),
                bytes_in: report.bytes_up,
                bytes_out: report.bytes_down,
                lifetime,
                end: report.end.as_str(),
            });
            drop((self.load, self.permit, self.slot, self.registration));
        }
    }
}
