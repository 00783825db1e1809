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
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::TaskTracker;

use crate::balance::{self, AffinityPolicy, Decision, LoadGuard};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::conn::{ConnIo, ConnState};
use crate::tunnel::relay::{self, ClientStream, Side};
use crate::upstream::discovery::Resolve;
use crate::upstream::pool::{self, Sender};
use crate::upstream::{Backend, Ctx, Membership, Upstream};

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
pub const X_TETHER_BACKEND: header::HeaderName = header::HeaderName::from_static("x-tether-backend");

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
    pub metrics: Arc<Metrics>,
}

/// Everything a request needs that a reload replaces as a whole.
pub struct Runtime {
    pub config: Arc<Config>,
    pub routes: RouteTable,
    pub upstreams: HashMap<Arc<str>, Arc<Upstream>>,
    pub access_log: Arc<AccessLog>,
    /// 1 at start, +1 per applied reload.
    pub generation: u64,
}

/// The proxy shared by all listeners.
pub struct Proxy {
    runtime: ArcSwap<Runtime>,
    ctx: Arc<Ctx>,
}

/// Where one request is going: the decision and the snapshot it was made on.
struct Target {
    upstream: Arc<Upstream>,
    membership: Arc<Membership>,
    policy: Arc<AffinityPolicy>,
    decision: Decision,
}

impl Target {
    /// The next backend to try, with its load reserved.
    fn next(&mut self) -> Option<(usize, Arc<Backend>, LoadGuard)> {
        let (i, guard) = self.decision.next_candidate(&self.membership.set)?;
        let backend = self.membership.backends.get(i)?.clone();
        Some((i, backend, guard))
    }

    /// Count what the decision did, once a backend was chosen (or none could be).
    fn report(&self) {
        let skips = self.decision.bounded_skips();
        if skips > 0 {
            self.upstream.affinity_counters.bounded_load_skip.inc_by(u64::from(skips));
        }
    }

    /// The `Set-Cookie` pinning the client to member `served`, when one is due.
    fn pin(&self, served: usize, backend: &Backend, is_tls: bool) -> Option<HeaderValue> {
        let cookie = self.decision.set_cookie(&self.policy, &self.membership.set, served, SystemTime::now(), is_tls)?;
        backend.pins.fetch_add(1, Ordering::Relaxed);
        Some(cookie)
    }
}

impl Proxy {
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>, resolver: Arc<dyn Resolve>) -> Arc<Self> {
        let ctx = Arc::new(Ctx { tasks: TaskTracker::new(), metrics, resolver });
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let upstream = Upstream::start(u, ctx.clone(), false);
                (upstream.name.clone(), upstream)
            })
            .collect();
        ctx.metrics.config_generation.set(1);
        let runtime = Runtime {
            routes: RouteTable::new(&config.routes),
            access_log: Arc::new(AccessLog::new(&config.access_log)),
            upstreams,
            config,
            generation: 1,
        };
        Arc::new(Self { runtime: ArcSwap::from_pointee(runtime), ctx })
    }

    /// Swap in a new validated config: upstreams are updated in place (their backends, pools
    /// and tunnels carry over), added ones start, removed ones drain. Requests already in
    /// flight finish on the snapshot they started with; no connection is closed by this.
    /// Returns the new generation.
    pub fn apply(&self, config: Arc<Config>) -> u64 {
        let old = self.runtime();
        let mut upstreams = HashMap::new();
        for u in &config.upstreams {
            let upstream = match old.upstreams.get(u.name.as_str()) {
                Some(existing) => {
                    existing.apply(u);
                    existing.clone()
                }
                None => Upstream::start(u, self.ctx.clone(), true),
            };
            upstreams.insert(upstream.name.clone(), upstream);
        }
        for (name, upstream) in &old.upstreams {
            if !upstreams.contains_key(name) {
                upstream.retire();
            }
        }
        let generation = old.generation + 1;
        self.runtime.store(Arc::new(Runtime {
            routes: RouteTable::new(&config.routes),
            access_log: Arc::new(AccessLog::new(&config.access_log)),
            upstreams,
            config,
            generation,
        }));
        self.ctx.metrics.config_generation.set(generation as i64);
        generation
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Tunnels, backend connections and every upstream's background work.
    pub fn tasks(&self) -> &TaskTracker {
        &self.ctx.tasks
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.ctx.metrics
    }

    async fn handle<S: ClientStream>(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: Arc<ClientConn>,
    ) -> Response<ClientBody> {
        conn.state.request_started();
        let rt = self.runtime();
        let raw_host = raw_host(&req);
        let path_and_query: Box<str> = req.uri().path_and_query().map_or("/", |p| p.as_str()).into();
        let mut ex = Exchange::new(
            conn.clone(),
            req.method().clone(),
            raw_host.as_deref().map(Into::into),
            path_and_query,
            rt.access_log.clone(),
        );

        let host = match headers::check_request(&req, conn.state.take_length_conflict()) {
            Ok(host) => host,
            Err(problem) => {
                return error_response(StatusCode::BAD_REQUEST, &format!("bad request: {problem}"), ex, true);
            }
        };
        let Some(upstream) = rt.routes.find(host.as_deref(), req.uri().path()).and_then(|name| rt.upstreams.get(name))
        else {
            return error_response(StatusCode::NOT_FOUND, "no route for this host and path", ex, false);
        };
        ex.set_upstream(upstream);

        let facts = balance::RequestFacts { headers: req.headers(), query: req.uri().query(), is_tls: conn.is_tls };
        let (membership, policy, decision) = upstream.route(&facts);
        // Our cookie is ours: the backend never sees it.
        balance::strip_sticky_cookie(&policy, req.headers_mut());
        let target = Target { upstream: upstream.clone(), membership, policy, decision };

        if headers::wants_websocket(&req) {
            self.open_tunnel::<S>(req, conn, target, ex, &rt, raw_host).await
        } else {
            self.forward(req, &conn, target, ex, &rt, raw_host).await
        }
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        conn: &ClientConn,
        mut target: Target,
        mut ex: Exchange,
        rt: &Runtime,
        raw_host: Option<String>,
    ) -> Response<ClientBody> {
        let timeouts = &rt.config.timeouts;
        let counted = ex.bytes_in.clone();
        let mut request = Some(upstream_request(req, conn, rt, raw_host.as_deref(), |b| UpstreamBody::new(b, counted)));
        let upstream = target.upstream.clone();
        while let Some((index, backend, guard)) = target.next() {
            for _ in 0..ATTEMPTS_PER_BACKEND {
                let mut sender = match backend.pool.take() {
                    Some(sender) => sender,
                    None => match self.connect(&upstream, &backend, timeouts, false, &mut ex).await {
                        Some(sender) => sender,
                        None => break,
                    },
                };
                if !matches!(tokio::time::timeout(timeouts.connect, sender.ready()).await, Ok(Ok(()))) {
                    continue;
                }
                let Some(req) = request.take() else { break };
                match tokio::time::timeout(timeouts.request, sender.try_send_request(req)).await {
                    Ok(Ok(resp)) => {
                        target.report();
                        ex.guard = Some(guard);
                        let cookie = target.pin(index, &backend, conn.is_tls);
                        return respond(resp, Some(sender), backend, ex, rt, cookie);
                    }
                    Ok(Err(mut e)) => match e.take_message() {
                        // Nothing reached the backend: safe to try again.
                        Some(req) => request = Some(req),
                        None => {
                            tracing::warn!(upstream = %upstream.name, backend = %backend.id, error = %error_chain(e.error()), "backend request failed");
                            ex.backend = Some(backend);
                            return error_response(StatusCode::BAD_GATEWAY, "bad gateway", ex, false);
                        }
                    },
                    Err(_) => {
                        tracing::warn!(upstream = %upstream.name, backend = %backend.id, timeout = ?timeouts.request, "backend response timed out");
                        ex.backend = Some(backend);
                        return error_response(StatusCode::GATEWAY_TIMEOUT, "gateway timeout", ex, false);
                    }
                }
            }
            drop(guard);
        }
        target.report();
        no_backend(ex)
    }

    /// A new connection to `backend`, its outcome counted for passive health. A failure (nothing
    /// was sent) is remembered in `ex` for the 502 that follows if no other candidate answers.
    async fn connect(
        &self,
        upstream: &Arc<Upstream>,
        backend: &Arc<Backend>,
        timeouts: &crate::config::Timeouts,
        upgrades: bool,
        ex: &mut Exchange,
    ) -> Option<Sender> {
        match pool::connect_http1(&backend.address(), timeouts.connect, &self.ctx.tasks, upgrades).await {
            Ok(sender) => {
                upstream.on_connect_success(backend);
                Some(sender)
            }
            Err(e) => {
                tracing::warn!(upstream = %upstream.name, backend = %backend.id, error = %error_chain(&e), "backend connect failed");
                upstream.on_connect_failure(backend);
                ex.backend = Some(backend.clone());
                None
            }
        }
    }

    async fn open_tunnel<S: ClientStream>(
        &self,
        mut req: Request<Incoming>,
        conn: Arc<ClientConn>,
        mut target: Target,
        mut ex: Exchange,
        rt: &Runtime,
        raw_host: Option<String>,
    ) -> Response<ClientBody> {
        let timeouts = &rt.config.timeouts;
        let client_upgrade = hyper::upgrade::on(&mut req);
        let mut request = upstream_request(req, &conn, rt, raw_host.as_deref(), |_| UpstreamBody::empty());
        headers::set_websocket_upgrade(request.headers_mut());
        let mut request = Some(request);
        let upstream = target.upstream.clone();

        while let Some((index, backend, guard)) = target.next() {
            let Some(mut sender) = self.connect(&upstream, &backend, timeouts, true, &mut ex).await else {
                continue;
            };
            target.report();
            let Some(request) = request.take() else { break };
            let mut resp = match tokio::time::timeout(timeouts.request, sender.send_request(request)).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => {
                    tracing::warn!(upstream = %upstream.name, backend = %backend.id, error = %error_chain(&e), "backend upgrade request failed");
                    ex.backend = Some(backend);
                    return error_response(StatusCode::BAD_GATEWAY, "bad gateway", ex, false);
                }
                Err(_) => {
                    ex.backend = Some(backend);
                    return error_response(StatusCode::GATEWAY_TIMEOUT, "gateway timeout", ex, false);
                }
            };
            let cookie = target.pin(index, &backend, conn.is_tls);
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS || !headers::confirms_websocket(resp.headers()) {
                // Refused upgrade: relay it as an ordinary response; the connection is not reused.
                ex.guard = Some(guard);
                return respond(resp, None, backend, ex, rt, cookie);
            }
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            let tunnel = Tunnel {
                registration: backend.tunnels.register(target.decision.shared_key()),
                guard,
                permit: conn.permit.lock().unwrap_or_else(|e| e.into_inner()).take(),
                client: conn.peer,
                listener: conn.listener.clone(),
                host: ex.host.clone(),
                path_and_query: ex.path_and_query.clone(),
                upstream: upstream.clone(),
                backend: backend.clone(),
                idle: timeouts.tunnel_idle,
                log: rt.access_log.clone(),
            };
            self.ctx.tasks.spawn(tunnel.run::<S>(client_upgrade, backend_upgrade));
            return respond(resp, None, backend, ex, rt, cookie);
        }
        target.report();
        no_backend(ex)
    }
}

/// Every candidate failed (502: `ex.backend` names the last one tried), or there was none to
/// try (503).
fn no_backend(ex: Exchange) -> Response<ClientBody> {
    if ex.backend.is_some() {
        error_response(StatusCode::BAD_GATEWAY, "bad gateway", ex, false)
    } else {
        error_response(StatusCode::SERVICE_UNAVAILABLE, "no backend available", ex, false)
    }
}

/// A WebSocket tunnel between its upgrade and its end.
struct Tunnel {
    registration: crate::tunnel::registry::Registration,
    /// The backend's load unit, held for the tunnel's lifetime.
    guard: LoadGuard,
    permit: Option<OwnedSemaphorePermit>,
    client: SocketAddr,
    listener: Arc<str>,
    host: Option<Box<str>>,
    path_and_query: Box<str>,
    upstream: Arc<Upstream>,
    backend: Arc<Backend>,
    idle: Duration,
    log: Arc<AccessLog>,
}

impl Tunnel {
    async fn run<S: ClientStream>(self, client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade) {
        let started = Instant::now();
        let handover = tokio::time::timeout(UPGRADE_HANDOVER, async { tokio::join!(client, backend) }).await;
        let Ok((Ok(client), Ok(backend))) = handover else {
            tracing::debug!(backend = %self.backend.id, "upgrade was not completed on both sides");
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
        let metrics = &self.backend.metrics;
        metrics.tunnels_open.inc();
        metrics.tunnels_total.inc();
        let report =
            relay::relay(client, backend_io, client_early, backend_early, self.registration.control(), self.idle).await;
        metrics.tunnels_open.dec();
        metrics.bytes_in.inc_by(report.bytes_up);
        metrics.bytes_out.inc_by(report.bytes_down);
        let lifetime = started.elapsed();
        metrics.tunnel_lifetime.observe(lifetime.as_secs_f64());
        if let Some(code) = report.close_code {
            self.upstream.ctx.metrics.close_sent(&self.upstream.name, code);
        }
        self.log.tunnel(&TunnelRecord {
            client: self.client,
            listener: &self.listener,
            host: self.host.as_deref(),
            path_and_query: &self.path_and_query,
            upstream: &self.upstream.name,
            backend: &self.backend.id,
            bytes_in: report.bytes_up,
            bytes_out: report.bytes_down,
            lifetime,
            end: report.end.as_str(),
        });
        drop((self.guard, self.permit, self.registration));
    }
}

/// The Host the client asked for, as sent: the URI authority (HTTP/2, absolute-form) or the
/// Host header.
fn raw_host<B>(req: &Request<B>) -> Option<String> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.as_str().to_owned());
    }
    req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned)
}

/// The request as the backend sees it: origin-form HTTP/1.1, hop-by-hop headers removed,
/// cookies in one header, `Host` preserved (taken from the authority for HTTP/2), `X-Forwarded-*` set.
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
    headers::join_cookies(&mut parts.headers);
    headers::set_forwarded(
        &mut parts.headers,
        headers::ClientFacts { peer: conn.peer.ip(), is_tls: conn.is_tls, host: raw_host },
        &rt.config.trusted_proxies,
    );
    if let Some(host) = raw_host.and_then(|h| HeaderValue::from_str(h).ok()) {
        parts.headers.insert(header::HOST, host);
    }
    let origin_form = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = origin_form.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, body(incoming))
}

fn respond(
    resp: Response<Incoming>,
    reusable: Option<Sender>,
    backend: Arc<Backend>,
    mut ex: Exchange,
    rt: &Runtime,
    cookie: Option<HeaderValue>,
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
    if let Some(cookie) = cookie {
        parts.headers.append(header::SET_COOKIE, cookie);
    }
    parts.version = Version::HTTP_11;
    ex.status = parts.status.as_u16();
    ex.backend = Some(backend);
    ex.reusable = reusable;
    Response::from_parts(parts, ClientBody::upstream(body, ex))
}

/// A small plain-text answer produced by the proxy itself. Never names a backend address.
fn error_response(status: StatusCode, message: &str, mut ex: Exchange, close: bool) -> Response<ClientBody> {
    ex.status = status.as_u16();
    let mut resp = Response::new(ClientBody::full(format!("{message}\n"), Some(ex)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
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
        Self { proxy, conn, _stream: PhantomData }
    }
}

impl<S> Clone for ConnService<S> {
    fn clone(&self) -> Self {
        Self { proxy: self.proxy.clone(), conn: self.conn.clone(), _stream: PhantomData }
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
