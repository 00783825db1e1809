//! One request/response exchange, from the parsed head to the last body byte.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::Method;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::OwnedSemaphorePermit;

use super::access_log::{AccessLog, RequestRecord};
use crate::downstream::ClientConn;
use crate::upstream::pool::Sender;
use crate::upstream::{BackendHandle, Load, Upstream};

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Read to its end: the backend connection may be reused.
    Complete,
    /// Abandoned or failed: the backend connection is in an unknown state.
    CutShort,
}

/// Everything that must happen when a request ends, however it ends: the access log line,
/// backend counters, returning the backend connection to its pool (only after a complete
/// body), and telling the client connection it is idle again. Runs exactly once, on
/// [`Exchange::finish`] or on drop.
pub(crate) struct Exchange {
    started: Instant,
    client: Arc<ClientConn>,
    method: Method,
    pub(crate) host: Option<Box<str>>,
    pub(crate) path_and_query: Box<str>,
    pub(crate) status: u16,
    /// Request body bytes sent upstream (shared with the upstream body that counts them).
    pub(crate) bytes_in: Arc<AtomicU64>,
    pub(crate) upstream: Option<Arc<str>>,
    pub(crate) backend: Option<Arc<BackendHandle>>,
    /// The backend connection, reusable once the response body was read to its end.
    pub(crate) reusable: Option<Sender>,
    /// The backend's load unit, released when the response ends.
    pub(crate) load: Option<Load>,
    /// The request's place under `limits.max_in_flight`, held until the response ends (a
    /// tunnel takes it over).
    pub(crate) slot: Option<OwnedSemaphorePermit>,
    latency: Option<Histogram>,
    /// Set with the upstream: counts a request that ends without a backend.
    log: Arc<AccessLog>,
    finished: bool,
}

impl Exchange {
    pub(crate) fn new(
        client: Arc<ClientConn>,
        method: Method,
        host: Option<Box<str>>,
        path_and_query: Box<str>,
        log: Arc<AccessLog>,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            started: Instant::now(),
            client,
            method,
            host,
            path_and_query,
            status: 0,
            bytes_in: Arc::default(),
            upstream: None,
            backend: None,
            reusable: None,
            load: None,
            slot,
            latency: None,
            log,
            finished: false,
        }
    }

    pub(crate) fn set_upstream(&mut self, upstream: &Upstream) {
        self.upstream = Some(upstream.name().clone());
        self.latency = Some(upstream.latency().clone());
    }

    pub(crate) fn client(&self) -> std::net::SocketAddr {
        self.client.peer
    }

    pub(crate) fn conn_state(&self) -> &Arc<crate::downstream::ConnState> {
        &self.client.state
    }

    /// The response body ended after `bytes_out` bytes, read to its end or not.
    pub(crate) fn finish(mut self, bytes_out: u64, ending: Ending) {
        self.run(bytes_out, ending);
    }

    fn run(&mut self, bytes_out: u64, ending: Ending) {
        let complete = ending == Ending::Complete;
        if self.finished {
            return;
        }
        self.finished = true;
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        if let Some(backend) = &self.backend {
            let metrics = backend.metrics();
            metrics.request(self.status);
            metrics.bytes_in.inc_by(bytes_in);
            metrics.bytes_out.inc_by(bytes_out);
            if let (true, Some(sender)) = (complete, self.reusable.take()) {
                backend.pool().put(sender);
            }
        } else if self.status != 0 {
            let metrics = &self.client.metrics;
            match &self.upstream {
                Some(upstream) => metrics.request_without_backend(upstream, self.status),
                None => metrics.rejected(&self.client.listener, self.status),
            }
        }
        self.load = None;
        if let Some(latency) = &self.latency {
            latency.observe(self.started.elapsed().as_secs_f64());
        }
        self.client.state.request_finished();
        self.log.request(&RequestRecord {
            client: self.client.peer,
            listener: &self.client.listener,
            method: self.method.as_str(),
            host: self.host.as_deref(),
            path_and_query: &self.path_and_query,
            status: self.status,
            bytes_in,
            bytes_out,
            duration: self.started.elapsed(),
            upstream: self.upstream.as_deref(),
            backend: self.backend.as_ref().map(|b| &**b.id()),
            complete,
        });
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.run(0, Ending::CutShort);
    }
}
