//! Client connections: what the accept side and the request path share about one connection.
//!
//! Owns: [`ClientConn`] (the facts every request on a connection needs), [`conn::ConnState`]
//! and [`conn::ConnIo`] (phases of the connection, read from the bytes hyper reads, which the
//! `idle` / `header_read` watchdog turns into timeouts) and [`sniff`] (framing facts hyper
//! normalises away). Must not: accept connections (that is `server`) or interpret requests
//! (that is `proxy`).

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use parking_lot::Mutex;
use tokio::sync::OwnedSemaphorePermit;

use crate::metrics::Metrics;

pub(crate) mod conn;
pub(crate) mod sniff;

pub(crate) use conn::{Action, ConnIo, ConnState, Limits, watchdog};

/// The HTTP version a client connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

/// Where a client connection runs between.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    pub(crate) peer: SocketAddr,
    /// The listener's address the client connected to.
    pub(crate) local: SocketAddr,
    pub(crate) is_tls: bool,
    /// On a TLS listener with several certificates, the SNI name the connection was set up
    /// for: every request on it must name that host.
    pub(crate) sni: Option<Box<str>>,
}

/// Facts about one client connection, shared by its requests.
pub(crate) struct ClientConn {
    pub(crate) peer: SocketAddr,
    pub(crate) listener: Arc<str>,
    pub(crate) is_tls: bool,
    pub(crate) sni: Option<Box<str>>,
    pub(crate) state: Arc<ConnState>,
    /// The client's IP address as header text (an IPv4-mapped address written as IPv4) and the
    /// port it connected to, rendered once for the forwarding headers of every request.
    pub(crate) peer_text: HeaderValue,
    pub(crate) port_text: HeaderValue,
    /// The connection's slot under `limits.max_connections`; a WebSocket tunnel takes it over
    /// when the HTTP connection is handed to it.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    pub(crate) metrics: Arc<Metrics>,
}

impl ClientConn {
    pub(crate) fn new(
        endpoints: Endpoints,
        listener: Arc<str>,
        state: Arc<ConnState>,
        permit: OwnedSemaphorePermit,
        metrics: Arc<Metrics>,
    ) -> Self {
        let Endpoints { peer, local, is_tls, sni } = endpoints;
        let peer_text = header_text(peer.ip().to_canonical().to_string());
        let port_text = HeaderValue::from(local.port());
        Self { peer, listener, is_tls, sni, state, peer_text, port_text, permit: Mutex::new(Some(permit)), metrics }
    }

    /// The connection slot, for a tunnel that outlives the HTTP connection.
    pub(crate) fn take_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permit.lock().take()
    }
}

/// `text` as a header value: the text of an IP address always is one.
fn header_text(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}
