//! Keep-alive HTTP/1.1 connections to one backend, and connecting new ones.
//!
//! Owns: the idle connections of one backend. A connection goes back only after its response
//! body was read to the end (hyper then makes it ready for the next request); one that is
//! closed, or idle longer than [`POOL_IDLE`], is discarded on the way out. Must not: decide
//! which backend to use or retry anything.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use super::body::UpstreamBody;
use crate::config::BackendAddress;

/// Idle connections kept per backend. Enough for bursts; beyond it connections close rather
/// than pile up against a backend's own limits.
const MAX_IDLE: usize = 256;
/// Below common backend keep-alive timeouts (nginx 75 s, Spring/Tomcat 60 s), so tether usually
/// closes first instead of racing the backend's close. Backends with shorter timeouts (Node's
/// 5 s) close first; hyper notices the FIN and such a connection is discarded, and one found
/// dead before the request was written is retried by the proxy.
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(30);

pub(crate) type Sender = http1::SendRequest<UpstreamBody>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("cannot resolve {0}")]
    Resolve(String, #[source] std::io::Error),
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error("connect to {0} timed out")]
    Timeout(String),
    #[error("connect to {0} failed")]
    Refused(String, #[source] std::io::Error),
    #[error("HTTP handshake with {0} failed")]
    Handshake(String, #[source] hyper::Error),
}

/// Idle connections, oldest at the front: `put` appends, `take` reuses the most recent (its
/// socket is the least likely to have been closed by the backend), and expired ones are cut
/// from the front, so neither walks the whole list.
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<VecDeque<(Sender, Instant)>>,
}

impl Pool {
    /// The most recently used idle connection that is still open, if any.
    pub(crate) fn take(&self) -> Option<Sender> {
        let now = Instant::now();
        let mut idle = self.idle.lock();
        while let Some((sender, since)) = idle.pop_back() {
            if !sender.is_closed() && now.duration_since(since) < POOL_IDLE {
                return Some(sender);
            }
        }
        None
    }

    pub(crate) fn put(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock();
        while idle.front().is_some_and(|(s, since)| s.is_closed() || now.duration_since(*since) >= POOL_IDLE) {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back((sender, now));
        }
    }

    /// Drop every idle connection (the backend is draining or gone).
    pub(crate) fn clear(&self) {
        self.idle.lock().clear();
    }
}

/// Resolve and connect, trying each resolved address in turn, all within `timeout`.
pub(crate) async fn connect_tcp(address: &BackendAddress, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let text = address.to_string();
    let attempt = async {
        let addrs: Vec<SocketAddr> = match address.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, address.port)],
            Err(_) => tokio::net::lookup_host((address.host.as_str(), address.port))
                .await
                .map_err(|e| ConnectError::Resolve(text.clone(), e))?
                .collect(),
        };
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Small WebSocket frames and request heads must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => ConnectError::Refused(text.clone(), e),
            None => ConnectError::NoAddress(text.clone()),
        })
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or_else(|_| Err(ConnectError::Timeout(text.clone())))
}

/// What a new backend connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Requests, then back to the pool.
    Requests,
    /// One WebSocket upgrade: the socket is handed over after a `101`.
    Upgrade,
}

/// A new HTTP/1.1 connection. Its driver task is owned by `tasks`.
pub(crate) async fn connect_http1(
    address: &BackendAddress,
    timeout: Duration,
    tasks: &TaskTracker,
    purpose: Purpose,
) -> Result<Sender, ConnectError> {
    let stream = connect_tcp(address, timeout).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ConnectError::Handshake(address.to_string(), e))?;
    if purpose == Purpose::Upgrade {
        tasks.spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
    } else {
        tasks.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
    }
    Ok(sender)
}
