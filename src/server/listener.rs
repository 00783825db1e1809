//! Serving client connections: the connection limit, the TLS handshake, HTTP/1.1 vs HTTP/2
//! selection, and the per-connection `idle` / `header_read` watchdog.
//!
//! Must not: look at requests (that is `proxy`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Timeouts;
use crate::downstream::{Action, ClientConn, ConnIo, ConnState, Endpoints, Limits, Protocol, watchdog};
use crate::metrics::{Metrics, TimeoutKind};
use crate::proxy::{ConnService, Proxy};
use crate::tunnel::relay::ClientStream;

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// HTTP/2 streams a client may reset before tether accepted them, at once.
const MAX_PENDING_RESETS: usize = 20;
/// HTTP/2 streams tether may have to reset for a client's protocol errors over a connection's life.
const MAX_ERROR_RESETS: usize = 1024;

/// Sent to a client over `limits.max_connections` before closing it.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 34\r\nconnection: close\r\n\r\ntoo many connections, retry later\n";

/// One listener's settings. TLS settings are swapped in place when a reload re-reads the
/// certificates; connections already open keep the settings they started with.
pub(super) struct ListenerState {
    pub(super) name: Arc<str>,
    pub(super) tls: Option<ArcSwap<TlsSettings>>,
    pub(super) open: Gauge,
    pub(super) refused: Counter,
}

/// A TLS listener's settings, swapped whole by a reload.
pub(super) struct TlsSettings {
    pub(super) config: Arc<rustls::ServerConfig>,
    /// Several certificates: a request must name the host its connection's SNI named (else
    /// 421), since a connection set up for one name must not serve another's.
    pub(super) several_certificates: bool,
}

/// Whether a client connection is TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Plain,
    Tls,
}

/// Accept until `stop`; each connection is served on a task owned by `conns`, and finishes
/// gracefully when `conns_stop` fires.
pub(super) async fn accept(
    listener: TcpListener,
    state: Arc<ListenerState>,
    proxy: Arc<Proxy>,
    slots: Arc<Semaphore>,
    stop: CancellationToken,
    conns_stop: CancellationToken,
    conns: TaskTracker,
) {
    let name = state.name.clone();
    crate::accept::run(listener, &name, stop, conns, |stream, peer| match slots.clone().try_acquire_owned() {
        Ok(permit) => Some(serve_conn(stream, peer, state.clone(), proxy.clone(), permit, conns_stop.clone())),
        Err(_) => {
            state.refused.inc();
            refuse(stream, state.tls.is_some());
            None
        }
    })
    .await;
}

/// Over the connection limit: a plain client gets a 503 it can read; a TLS client only a
/// close, since answering would need a handshake we are refusing to afford.
fn refuse(stream: TcpStream, is_tls: bool) {
    tracing::warn!("connection refused: limits.max_connections reached");
    if !is_tls {
        let _ = stream.try_write(OVERLOADED);
    }
}

async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<ListenerState>,
    proxy: Arc<Proxy>,
    permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else { return };
    let timeouts = proxy.config().timeouts.clone();
    state.open.inc();
    let _open = OpenConn(&state.open);
    match &state.tls {
        Some(tls) => {
            let settings = tls.load_full();
            let tls =
                match tokio::time::timeout(timeouts.header_read, crate::tls::accept(stream, settings.config.clone()))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let protocol = if tls.alpn_protocol() == Some(b"h2") { Protocol::Http2 } else { Protocol::Http1 };
            let sni = tls
                .server_name()
                .filter(|_| settings.several_certificates)
                .map(|name| name.trim_end_matches('.').to_ascii_lowercase().into());
            let conn = Conn { peer, local, protocol, transport: Transport::Tls, prefix: Vec::new(), sni };
            serve_http(tls, conn, &state, proxy, permit, &timeouts, shutdown).await;
        }
        None => {
            let mut stream = stream;
            let (prefix, protocol) = match tokio::time::timeout(timeouts.header_read, read_preface(&mut stream)).await {
                Ok(Ok(found)) => found,
                Ok(Err(_)) | Err(_) => return,
            };
            let conn = Conn { peer, local, protocol, transport: Transport::Plain, prefix, sni: None };
            serve_http(stream, conn, &state, proxy, permit, &timeouts, shutdown).await;
        }
    }
}

/// What the accept side learned about a connection before hyper takes it.
struct Conn {
    peer: SocketAddr,
    local: SocketAddr,
    protocol: Protocol,
    transport: Transport,
    /// Bytes already read while telling HTTP/2 from HTTP/1, replayed to hyper.
    prefix: Vec<u8>,
    /// The SNI name every request on the connection must name (TLS with several certificates).
    sni: Option<Box<str>>,
}

/// Decrements the open-connections gauge when the connection task ends, however it ends.
struct OpenConn<'a>(&'a Gauge);

impl Drop for OpenConn<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Read just enough of a plain connection to tell HTTP/2 prior knowledge (RFC 9113 3.3) from
/// HTTP/1: bytes are read until they stop matching the preface, and replayed to hyper.
async fn read_preface(stream: &mut TcpStream) -> io::Result<(Vec<u8>, Protocol)> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    while n < buf.len() {
        let read = stream.read(&mut buf[n..]).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        n += read;
        if buf[..n] != H2_PREFACE[..n] {
            return Ok((buf[..n].to_vec(), Protocol::Http1));
        }
    }
    Ok((buf.to_vec(), Protocol::Http2))
}

async fn serve_http<S: ClientStream>(
    stream: S,
    conn: Conn,
    state: &ListenerState,
    proxy: Arc<Proxy>,
    permit: OwnedSemaphorePermit,
    timeouts: &Timeouts,
    shutdown: CancellationToken,
) {
    let limits = &proxy.config().limits;
    let (max_header_bytes, max_streams) = (limits.max_header_bytes, limits.max_streams_per_connection);
    let metrics = proxy.metrics().clone();
    let conn_state = Arc::new(ConnState::new(conn.protocol));
    let client = Arc::new(ClientConn::new(
        Endpoints { peer: conn.peer, local: conn.local, is_tls: conn.transport == Transport::Tls, sni: conn.sni },
        state.name.clone(),
        conn_state.clone(),
        permit,
        proxy.metrics().clone(),
    ));
    let io = TokioIo::new(ConnIo::with_prefix(stream, conn_state.clone(), conn.prefix));
    let service = ConnService::<S>::new(proxy, client);
    match conn.protocol {
        Protocol::Http2 => {
            let conn = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
                .max_concurrent_streams(max_streams)
                // Streams a client opens and resets before they are served (rapid reset), and
                // streams tether had to reset for the client's errors, are bounded per
                // connection: past these, the connection gets GOAWAY (ENHANCE_YOUR_CALM).
                .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
                .max_local_error_reset_streams(MAX_ERROR_RESETS)
                .serve_connection(io, service);
            watch(conn, &conn_state, timeouts, &metrics, &shutdown).await;
        }
        Protocol::Http1 => {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                // Replaced by the watchdog below; see `downstream::conn`.
                .header_read_timeout(None)
                .max_buf_size(max_header_bytes)
                .serve_connection(io, service)
                .with_upgrades();
            watch(conn, &conn_state, timeouts, &metrics, &shutdown).await;
        }
    }
}

/// A hyper connection that can be asked to finish gracefully.
trait Graceful: Future<Output = hyper::Result<()>> {
    fn begin_graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, B, S> Graceful for http1::UpgradeableConnection<I, S>
where
    Self: Future<Output = hyper::Result<()>>,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn begin_graceful_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, B, S, E> Graceful for http2::Connection<I, S, E>
where
    Self: Future<Output = hyper::Result<()>>,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn begin_graceful_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Drive `conn`, enforcing `idle` (no request in flight), `header_read` (a head that started
/// arriving must complete) and `send` (a client must take the response), and finishing
/// gracefully on shutdown.
async fn watch<C: Graceful>(
    conn: C,
    state: &ConnState,
    timeouts: &Timeouts,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) {
    tokio::pin!(conn);
    let mut closing = false;
    let limits = Limits { idle: timeouts.idle, header_read: timeouts.header_read, send: timeouts.send };
    loop {
        let (phase, since) = state.phase();
        let (action, next_check) = watchdog(phase, since, state.stalled_since(), std::time::Instant::now(), limits);
        match action {
            Action::DropSlowHead => {
                metrics.timeout(TimeoutKind::HeaderRead);
                return;
            }
            Action::DropStalled => {
                metrics.timeout(TimeoutKind::Send);
                return;
            }
            Action::CloseIdle if !closing => {
                closing = true;
                conn.as_mut().begin_graceful_shutdown();
            }
            _ => {}
        }
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(Instant::from_std(next_check)) => {}
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().begin_graceful_shutdown();
            }
        }
    }
}
