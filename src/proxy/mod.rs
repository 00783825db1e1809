//! The proxy's request path: one hyper service per client connection.
//!
//! Owns: turning a client request into a backend request (headers, routing, retries before
//! any byte is sent), relaying the response, and starting WebSocket tunnels. Must not: parse
//! config, accept connections, or pick a backend itself (it asks the upstream for candidates).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::server::conn::{ConnIo, ConnState};
use crate::tunnel::relay::{self, ClientStream, Side};
use crate::upstream::pool::{self, Sender};
use crate::upstream::{Backend, Upstream};

pub mod access_log;
pub mod body;
pub mod exchange;
pub mod headers;
pub mod routes;

use access_log::{AccessLog, TunnelRecord};
use body::{ClientBody, UpstreamBody};
use exchange::Exchange;
use routes::RouteTable;

/// Response header naming the backend that served a request, when `debug.backend_header` is on.
pub const X_TETHER_BACKEND: header::HeaderName =
    header::HeaderName::from_static("x-tether-backend");

/// Attempts on one backend when pooled connections turn out to be dead before the request is
/// written; each such attempt is safe because nothing reached the backend.
const ATTEMPTS_PER_BACKEND: usize = 3;
/// How long an upgraded tunnel may take to be handed over by hyper on both sides.
const UPGRADE_HANDOVER: Duration = Duration::from_secs(10);

/// Facts about one client connection, shared by its requests.
pub struct ClientConn {
    pub peer: SocketAddr,
    pub listener: Arc<str>,
    pub is_tls: bool,
    pub state: Arc<ConnState>,
    /// The connection's slot under `limits.max_connections`; a WebSocket tunnel takes it over
    /// when the HTTP connection is handed to it.
    pub permit: Mutex<Option<OwnedSemaphorePermit>>,
}

/// Everything a request needs that a reload replaces as a whole.
pub struct Runtime {
    pub config: Arc<Config>,
    pub routes: RouteTable,
    pub upstreams: HashMap<Arc<str>, Arc<Upstream>>,
    pub access_log: Arc<AccessLog>,
}

impl Runtime {
    pub fn new(config: Arc<Config>) -> Self {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let upstream = Arc::new(Upstream::new(u));
                (upstream.name.clone(), upstream)
            })
            .collect();
        Self {
            routes: RouteTable::new(&config.routes),
            access_log: Arc::new(AccessLog::new(&config.access_log)),
            upstreams,
            config,
        }
    }
}

/// The proxy shared by all listeners.
pub struct Proxy {
    runtime: ArcSwap<Runtime>,
    /// Tunnels and backend connection drivers.
    tasks: TaskTracker,
}

impl Proxy {
    pub fn new(runtime: Runtime) -> Arc<Self> {
        Arc::new(Self {
            runtime: ArcSwap::from_pointee(runtime),
            tasks: TaskTracker::new(),
        })
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    async fn handle<S: ClientStream>(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<ClientConn>,
    ) -> Response<ClientBody> {
        conn.state.request_started();
        let rt = self.runtime();
        let raw_host = raw_host(&req);
        let host = raw_host
            .as_deref()
            .and_then(|h| headers::host_name(h.as_bytes()));
        let path_and_query: Box<str> = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .into();
        let mut ex = Exchange::new(
            conn.clone(),
            req.method().clone(),
            raw_host.as_deref().map(Into::into),
            path_and_query,
            rt.access_log.clone(),
        );

        if let Err(problem) = headers::check_request(&req, conn.state.take_length_conflict()) {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("bad request: {problem}"),
                ex,
                true,
            );
        }
        let Some(upstream) = rt
            .routes
            .find(host.as_deref(), req.uri().path())
            .and_then(|name| rt.upstreams.get(name))
        else {
            return error_response(
                StatusCode::NOT_FOUND,
                "no route for this host and path",
                ex,
                false,
            );
        };
        let upstream = upstream.clone();
        ex.upstream = Some(upstream.name.clone());

        if headers::wants_websocket(&req) {
            self.open_tunnel::<S>(req, conn, &upstream, ex, &rt, raw_host)
                .await
        } else {
            self.forward(req, &conn, &upstream, ex, &rt, raw_host).await
        }
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        conn: &ClientConn,
        upstream: &Upstream,
        mut ex: Exchange,
        rt: &Runtime,
        raw_host: Option<String>,
    ) -> Response<ClientBody> {
        let timeouts = &rt.config.timeouts;
        let counted = ex.bytes_in.clone();
        let mut request = Some(upstream_request(req, conn, rt, raw_host.as_deref(), |b| {
            UpstreamBody::new(b, counted)
        }));
        let candidates = upstream.candidates();
        if candidates.is_empty() {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no backend available",
                ex,
                false,
            );
        }
        for backend in candidates {
            for _ in 0..ATTEMPTS_PER_BACKEND {
                let mut sender = match backend.pool.take() {
                    Some(sender) => sender,
                    None => match pool::connect_http1(
                        &backend.address,
                        timeouts.connect,
                        &self.tasks,
                        false,
                    )
                    .await
                    {
                        Ok(sender) => sender,
                        Err(e) => {
                            backend
                                .stats
                                .failures
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::warn!(upstream = %upstream.name, backend = %backend.id, error = %error_chain(&e), "backend connect failed");
                            break;
                        }
                    },
                };
                if !matches!(
                    tokio::time::timeout(timeouts.connect, sender.ready()).await,
                    Ok(Ok(()))
                ) {
                    continue;
                }
                let Some(req) = request.take() else { break };
                match tokio::time::timeout(timeouts.request, sender.try_send_request(req)).await {
                    Ok(Ok(resp)) => return respond(resp, Some(sender), backend, ex, rt),
                    Ok(Err(mut e)) => match e.take_message() {
                        // Nothing reached the backend: safe to try again.
                        Some(req) => request = Some(req),
                        None => {
                            tracing::warn!(upstream = %upstream.name, backend = %backend.id, error = %error_chain(e.error()), "backend request failed");
                            ex.backend = Some(backend);
                            return error_response(
                                StatusCode::BAD_GATEWAY,
                                "bad gateway",
                                ex,
                                false,
                            );
                        }
                    },
                    Err(_) => {
                        tracing::warn!(upstream = %upstream.name, backend = %backend.id, timeout = ?timeouts.request, "backend response timed out");
                        ex.backend = Some(backend);
                        return error_response(
                            StatusCode::GATEWAY_TIMEOUT,
                            "gateway timeout",
                            ex,
                            false,
                        );
                    }
                }
            }
        }
        error_response(StatusCode::BAD_GATEWAY, "bad gateway", ex, false)
    }

    async fn open_tunnel<S: ClientStream>(
        &self,
        mut req: Request<Incoming>,
        conn: Arc<ClientConn>,
        upstream: &Upstream,
        mut ex: Exchange,
        rt: &Runtime,
        raw_host: Option<String>,
    ) -> Response<ClientBody> {
        let timeouts = &rt.config.timeouts;
        let client_upgrade = hyper::upgrade::on(&mut req);
        let mut request = upstream_request(req, &conn, rt, raw_host.as_deref(), |_| {
            UpstreamBody::empty()
        });
        headers::set_websocket_upgrade(request.headers_mut());
        let mut request = Some(request);

        for backend in upstream.candidates() {
            let mut sender = match pool::connect_http1(
                &backend.address,
                timeouts.connect,
                &self.tasks,
                true,
            )
            .await
            {
                Ok(sender) => sender,
                Err(e) => {
                    backend
                        .stats
                        .failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(upstream = %upstream.name, backend = %backend.id, error = %error_chain(&e), "backend connect failed");
                    continue;
                }
            };
            let Some(request) = request.take() else { break };
            let mut resp = match tokio::time::timeout(
                timeouts.request,
                sender.send_request(request),
            )
            .await
            {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => {
                    tracing::warn!(upstream = %upstream.name, backend = %backend.id, error = %error_chain(&e), "backend upgrade request failed");
                    ex.backend = Some(backend);
                    return error_response(StatusCode::BAD_GATEWAY, "bad gateway", ex, false);
                }
                Err(_) => {
                    ex.backend = Some(backend);
                    return error_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        "gateway timeout",
                        ex,
                        false,
                    );
                }
            };
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS
                || !headers::confirms_websocket(resp.headers())
            {
                // Refused upgrade: relay it as an ordinary response; the connection is not reused.
                return respond(resp, None, backend, ex, rt);
            }
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            let tunnel = Tunnel {
                registration: backend.tunnels.register(None),
                permit: conn.permit.lock().unwrap_or_else(|e| e.into_inner()).take(),
                client: conn.peer,
                listener: conn.listener.clone(),
                host: ex.host.clone(),
                path_and_query: ex.path_and_query.clone(),
                upstream: upstream.name.clone(),
                backend: backend.clone(),
                idle: timeouts.tunnel_idle,
                log: rt.access_log.clone(),
            };
            self.tasks
                .spawn(tunnel.run::<S>(client_upgrade, backend_upgrade));
            return respond(resp, None, backend, ex, rt);
        }
        error_response(StatusCode::BAD_GATEWAY, "bad gateway", ex, false)
    }
}

/// A WebSocket tunnel between its upgrade and its end.
struct Tunnel {
    registration: crate::tunnel::registry::Registration,
    permit: Option<OwnedSemaphorePermit>,
    client: SocketAddr,
    listener: Arc<str>,
    host: Option<Box<str>>,
    path_and_query: Box<str>,
    upstream: Arc<str>,
    backend: Arc<Backend>,
    idle: Duration,
    log: Arc<AccessLog>,
}

impl Tunnel {
    async fn run<S: ClientStream>(
        self,
        client: hyper::upgrade::OnUpgrade,
        backend: hyper::upgrade::OnUpgrade,
    ) {
        let started = Instant::now();
        let handover =
            tokio::time::timeout(UPGRADE_HANDOVER, async { tokio::join!(client, backend) }).await;
        let Ok((Ok(client), Ok(backend))) = handover else {
            tracing::debug!(backend = %self.backend.id, "upgrade was not completed on both sides");
            return;
        };
        let (client, client_early) = match client.downcast::<TokioIo<ConnIo<S>>>() {
            Ok(parts) => (
                parts.io.into_inner().into_inner().into_side(),
                parts.read_buf,
            ),
            Err(_) => {
                tracing::error!("upgraded client connection has an unexpected type");
                return;
            }
        };
        let (backend_io, backend_early) = match backend.downcast::<TokioIo<tokio::net::TcpStream>>()
        {
            Ok(parts) => (Side::Plain(parts.io.into_inner()), parts.read_buf),
            Err(_) => {
                tracing::error!("upgraded backend connection has an unexpected type");
                return;
            }
        };
        let report = relay::relay(
            client,
            backend_io,
            &client_early,
            &backend_early,
            self.registration.control(),
            self.idle,
        )
        .await;
        drop((client_early, backend_early));
        self.backend
            .stats
            .bytes_in
            .fetch_add(report.bytes_up, std::sync::atomic::Ordering::Relaxed);
        self.backend
            .stats
            .bytes_out
            .fetch_add(report.bytes_down, std::sync::atomic::Ordering::Relaxed);
        self.log.tunnel(&TunnelRecord {
            client: self.client,
            listener: &self.listener,
            host: self.host.as_deref(),
            path_and_query: &self.path_and_query,
            upstream: &self.upstream,
            backend: &self.backend.id,
            bytes_in: report.bytes_up,
            bytes_out: report.bytes_down,
            lifetime: started.elapsed(),
            end: report.end.as_str(),
        });
        drop(self.permit);
    }
}

/// The Host the client asked for, as sent: the URI authority (HTTP/2, absolute-form) or the
/// Host header.
fn raw_host<B>(req: &Request<B>) -> Option<String> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.as_str().to_owned());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
}

/// The request as the backend sees it: origin-form HTTP/1.1, hop-by-hop headers removed,
/// `Host` preserved (taken from the authority for HTTP/2), `X-Forwarded-*` set.
fn upstream_request(
    req: Request<Incoming>,
    conn: &ClientConn,
    rt: &Runtime,
    raw_host: Option<&str>,
    body: impl FnOnce(Incoming) -> UpstreamBody,
) -> Request<UpstreamBody> {
    let (mut parts, incoming) = req.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    headers::remove_request_only(&mut parts.headers);
    headers::set_forwarded(
        &mut parts.headers,
        headers::ClientFacts {
            peer: conn.peer.ip(),
            is_tls: conn.is_tls,
            host: raw_host,
        },
        &rt.config.trusted_proxies,
    );
    if let Some(host) = raw_host.and_then(|h| HeaderValue::from_str(h).ok()) {
        parts.headers.insert(header::HOST, host);
    }
    let origin_form = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = origin_form
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, body(incoming))
}

fn respond(
    resp: Response<Incoming>,
    reusable: Option<Sender>,
    backend: Arc<Backend>,
    mut ex: Exchange,
    rt: &Runtime,
) -> Response<ClientBody> {
    let (mut parts, body) = resp.into_parts();
    let upgrade = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    headers::remove_hop_by_hop(&mut parts.headers);
    if upgrade {
        headers::set_websocket_upgrade(&mut parts.headers);
    }
    if rt.config.debug.backend_header
        && let Ok(v) = HeaderValue::from_str(&backend.id)
    {
        parts.headers.insert(X_TETHER_BACKEND, v);
    }
    parts.version = Version::HTTP_11;
    backend
        .stats
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ex.status = parts.status.as_u16();
    ex.backend = Some(backend);
    ex.reusable = reusable;
    Response::from_parts(parts, ClientBody::upstream(body, ex))
}

/// A small plain-text answer produced by the proxy itself. Never names a backend address.
fn error_response(
    status: StatusCode,
    message: &str,
    mut ex: Exchange,
    close: bool,
) -> Response<ClientBody> {
    ex.status = status.as_u16();
    let mut resp = Response::new(ClientBody::full(format!("{message}\n"), Some(ex)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// `error: cause: cause` on one line, for logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The hyper service of one client connection; `S` is the connection's stream type, needed to
/// take the socket back from hyper when a WebSocket upgrade completes.
pub struct ConnService<S> {
    proxy: Arc<Proxy>,
    conn: Arc<ClientConn>,
    _stream: PhantomData<fn() -> S>,
}

impl<S> ConnService<S> {
    pub fn new(proxy: Arc<Proxy>, conn: Arc<ClientConn>) -> Self {
        Self {
            proxy,
            conn,
            _stream: PhantomData,
        }
    }
}

impl<S> Clone for ConnService<S> {
    fn clone(&self) -> Self {
        Self {
            proxy: self.proxy.clone(),
            conn: self.conn.clone(),
            _stream: PhantomData,
        }
    }
}

impl<S: ClientStream> hyper::service::Service<Request<Incoming>> for ConnService<S> {
    type Response = Response<ClientBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ClientBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let proxy = self.proxy.clone();
        let conn = self.conn.clone();
        Box::pin(async move { Ok(proxy.handle::<S>(req, conn).await) })
    }
}
