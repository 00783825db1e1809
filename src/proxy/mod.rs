//! The proxy's request path: one hyper service per client connection.
//!
//! Owns: turning a client request into a backend request (headers, routing, retries before
//! any byte is sent), relaying the response, starting WebSocket tunnels, and the config
//! snapshot requests run on (swapped whole by a reload). Must not: parse config, accept
//! connections, or pick a backend itself (it asks the upstream for a selection).

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::auth::Verifiers;
use crate::balance;
use crate::config::{Config, Env, HeaderRules, Timeouts, TokenSource};
use crate::downstream::ClientConn;
use crate::lifecycle::Lifecycle;
use crate::log_writer::LogWriter;
use crate::metrics::{ListenerLabels, Metrics, TimeoutKind};
use crate::report::Chain;
use crate::tunnel::relay::{self, ClientStream};
use crate::upstream::body::{BodyError, UpstreamBody};
use crate::upstream::pool::{self, Purpose, Sender};
use crate::upstream::{BackendHandle, Candidate, Failure, Resolve, Selection, Start, Upstream, UpstreamDeps};

pub(crate) mod access_log;
mod body;
mod error;
mod exchange;
mod forwarding;
pub(crate) mod headers;
pub(crate) mod origin;
pub(crate) mod path;
mod query;
pub(crate) mod routes;
mod tunnel;

use access_log::AccessLog;
pub(crate) use body::ClientBody;
use error::ProxyError;
use exchange::Exchange;
use routes::{Route, RouteTable};

/// Response header naming the backend that served a request, when `debug.backend_header` is on.
const X_TETHER_BACKEND: header::HeaderName = header::HeaderName::from_static("x-tether-backend");

/// Headers the forwarding rules may add to a request.
const FORWARDING_HEADERS: usize = 6;

/// Attempts on one backend when pooled connections turn out to be dead before the request is
/// written; each such attempt is safe because nothing reached the backend.
const ATTEMPTS_PER_BACKEND: usize = 3;

/// Everything a request needs that a reload replaces as a whole.
pub(crate) struct Snapshot {
    pub(crate) config: Arc<Config>,
    routes: RouteTable,
    verifiers: Verifiers,
    pub(crate) upstreams: HashMap<Arc<str>, Arc<Upstream>>,
    access_log: Arc<AccessLog>,
    /// 1 at start, +1 per applied reload.
    pub(crate) generation: u64,
}

/// The proxy shared by all listeners.
pub struct Proxy {
    snapshot: ArcSwap<Snapshot>,
    /// Places for requests and tunnels across all connections (`limits.max_in_flight`).
    in_flight: Arc<Semaphore>,
    deps: Arc<UpstreamDeps>,
    lifecycle: Lifecycle,
    /// Where JSON access log lines are written directly, when the process has a log writer.
    log_writer: Option<LogWriter>,
}

impl Snapshot {
    /// Everything requests need from `config`; secrets come from `env`.
    fn new(
        config: Arc<Config>,
        upstreams: HashMap<Arc<str>, Arc<Upstream>>,
        env: &Env,
        log_writer: Option<&LogWriter>,
        generation: u64,
    ) -> Self {
        let verifiers = Verifiers::new(&config.auth, env.as_ref());
        Self {
            routes: RouteTable::new(&config.routes, &verifiers),
            access_log: Arc::new(AccessLog::new(&config.access_log, verifiers.token_query_names(), log_writer)),
            verifiers,
            upstreams,
            config,
            generation,
        }
    }
}

impl Proxy {
    pub(crate) fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        resolver: Arc<dyn Resolve>,
        env: Env,
        max_in_flight: usize,
        log_writer: Option<LogWriter>,
    ) -> Arc<Self> {
        let tasks = TaskTracker::new();
        let (lifecycle, events) = Lifecycle::start(&tasks, metrics.clone());
        let deps = Arc::new(UpstreamDeps { tasks, metrics, resolver, events, env });
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let upstream = Upstream::start(u, deps.clone(), Start::Initial);
                (upstream.name().clone(), upstream)
            })
            .collect();
        deps.metrics.config_generation.set(1);
        let snapshot = Snapshot::new(config, upstreams, &deps.env, log_writer.as_ref(), 1);
        let in_flight = Arc::new(Semaphore::new(max_in_flight));
        Arc::new(Self { snapshot: ArcSwap::from_pointee(snapshot), in_flight, deps, lifecycle, log_writer })
    }

    /// Swap in a new validated config: upstreams are updated in place (their backends, pools
    /// and tunnels carry over), added ones start, removed ones drain. Requests already in
    /// flight finish on the snapshot they started with; no connection is closed by this.
    /// Returns the new generation.
    pub(crate) fn apply(&self, config: Arc<Config>) -> u64 {
        let old = self.snapshot();
        let mut upstreams = HashMap::new();
        for u in &config.upstreams {
            let upstream = match old.upstreams.get(u.name.as_str()) {
                Some(existing) => {
                    existing.apply(u);
                    existing.clone()
                }
                None => Upstream::start(u, self.deps.clone(), Start::Reloaded),
            };
            upstreams.insert(upstream.name().clone(), upstream);
        }
        for (name, upstream) in &old.upstreams {
            if !upstreams.contains_key(name) {
                upstream.retire();
            }
        }
        let generation = old.generation + 1;
        self.snapshot.store(Arc::new(Snapshot::new(
            config,
            upstreams,
            &self.deps.env,
            self.log_writer.as_ref(),
            generation,
        )));
        self.deps.metrics.config_generation.set(generation as i64);
        generation
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The configuration requests run on now.
    pub fn config(&self) -> Arc<Config> {
        self.snapshot.load().config.clone()
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.deps.metrics
    }

    /// Shutdown: every tunnel closes gracefully and background work stops; then `tasks()`
    /// (tunnels, backend connections, drains) can be waited for.
    pub(crate) fn close_tunnels(&self) {
        let snapshot = self.snapshot();
        self.lifecycle.shutdown(snapshot.upstreams.values());
        self.deps.tasks.close();
    }

    /// No client connection is left to send a request: idle pooled backend connections would
    /// only keep their driver tasks (and the shutdown) waiting.
    pub(crate) fn clear_pools(&self) {
        for upstream in self.snapshot().upstreams.values() {
            upstream.clear_pools();
        }
    }

    /// Tunnels, backend connections and every upstream's background work.
    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.deps.tasks
    }

    /// The Prometheus text exposition of every metric (what `/metrics` answers).
    pub fn metrics_text(&self) -> String {
        self.deps.metrics.encode()
    }

    /// The backend `key` goes to now in `upstream` (what `/admin/upstreams/{name}/route` says).
    pub fn home_of(&self, upstream: &str, key: &str) -> Option<String> {
        let membership = self.snapshot().upstreams.get(upstream)?.membership();
        let i = membership.set.home_of(key)?;
        membership.backends.get(i).map(|b| b.id().to_string())
    }

    /// What each member of `upstream` carries now, in membership order.
    pub fn loads(&self, upstream: &str) -> Vec<BackendLoad> {
        let Some(upstream) = self.snapshot().upstreams.get(upstream).cloned() else { return Vec::new() };
        upstream
            .membership()
            .backends
            .iter()
            .map(|b| BackendLoad { id: b.id().to_string(), load: b.live().load(), tunnels: b.tunnels().len() })
            .collect()
    }

    /// Drain a backend as `POST /admin/upstreams/{name}/backends/{id}/drain` does; false when
    /// there is no such upstream or backend.
    pub fn drain(&self, upstream: &str, backend: &str) -> bool {
        let snapshot = self.snapshot();
        let Some(upstream) = snapshot.upstreams.get(upstream) else { return false };
        let Some(backend) = upstream.backend(backend) else { return false };
        upstream.drain(&backend);
        true
    }

    /// A place under `limits.max_in_flight`, if one is free.
    fn take_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.in_flight.clone().try_acquire_owned().ok()
    }

    /// One request, from its head to the response head. This and the steps it awaits are
    /// functions returning `async` blocks rather than `async fn`s: an `async fn` keeps its
    /// arguments twice in its future, and these futures are built and moved for every request.
    #[allow(clippy::manual_async_fn)]
    fn handle<S: ClientStream>(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: Arc<ClientConn>,
        slot: Option<OwnedSemaphorePermit>,
    ) -> impl Future<Output = Response<ClientBody>> {
        async move {
            conn.state.request_started();
            let snapshot = self.snapshot();
            let raw_host = raw_host(&req);
            let path_and_query: Box<str> = req.uri().path_and_query().map_or("/", |p| p.as_str()).into();
            let ex = Exchange::new(
                conn.clone(),
                req.method().clone(),
                raw_host.as_deref().map(Into::into),
                path_and_query,
                snapshot.access_log.clone(),
                slot,
            );
            if ex.slot.is_none() {
                self.deps
                    .metrics
                    .in_flight_refused
                    .get_or_create(&ListenerLabels { listener: conn.listener.clone() })
                    .inc();
                return ProxyError::Overloaded.into_response(ex);
            }
            let framing = if conn.state.take_length_conflict() {
                headers::Framing::LengthConflict
            } else {
                headers::Framing::Clean
            };
            let host = match headers::check_request(&req, framing) {
                Ok(host) => host,
                Err(e) => return ProxyError::from(e).into_response(ex),
            };
            if let (Some(sni), Some(host)) = (&conn.sni, &host)
                && **sni != **host
            {
                return ProxyError::Misdirected.into_response(ex);
            }
            let normal = match path::normalize(req.uri().path()) {
                Ok(normal) => normal,
                Err(e) => return ProxyError::from(headers::Malformed::from(e)).into_response(ex),
            };
            let Some(route) = snapshot.routes.find(host.as_deref(), &normal.path) else {
                return ProxyError::NoRoute.into_response(ex);
            };
            if normal.has_encoded_slash && !route.config.allow_encoded_slash {
                let e = headers::Malformed::from(path::PathError::EncodedSlash);
                let mut resp = ProxyError::from(e).into_response(ex);
                headers::apply_rules(resp.headers_mut(), &route.config.response_headers);
                return resp;
            }
            // The backend gets the path its route was chosen by.
            if let std::borrow::Cow::Owned(normalised) = normal.path {
                let target = match req.uri().query() {
                    Some(query) => format!("{normalised}?{query}"),
                    None => normalised,
                };
                if let Ok(uri) = target.parse::<Uri>() {
                    *req.uri_mut() = uri;
                }
            }
            let mut resp = self.on_route::<S>(req, &conn, &snapshot, route, raw_host, ex).await;
            headers::apply_rules(resp.headers_mut(), &route.config.response_headers);
            resp
        }
    }

    /// A request that matched `route`: check what the route demands, then forward it or open
    /// its tunnel.
    #[allow(clippy::manual_async_fn)]
    fn on_route<S: ClientStream>(
        &self,
        mut req: Request<Incoming>,
        conn: &Arc<ClientConn>,
        snapshot: &Snapshot,
        route: &Route,
        raw_host: Option<String>,
        mut ex: Exchange,
    ) -> impl Future<Output = Response<ClientBody>> {
        async move {
            let Some(upstream) = snapshot.upstreams.get(route.config.upstream.as_str()) else {
                return ProxyError::NoRoute.into_response(ex);
            };
            ex.set_upstream(upstream);
            let websocket = headers::wants_websocket(&req);
            if websocket && let Some(page) = req.headers().get(header::ORIGIN) {
                let own = raw_host.as_deref().and_then(|host| origin::Origin::of_request(conn.is_tls, host));
                if !origin::is_allowed(page, own.as_ref(), &route.config.websocket.allowed_origins) {
                    return ProxyError::Origin.into_response(ex);
                }
            }
            let verified = match &route.verifier {
                Some(verifier) => match verifier.verify_request(req.headers(), req.uri().query()) {
                    Ok(verified) => verified,
                    Err(e) => {
                        self.deps.metrics.auth_rejected(verifier.name(), e.label());
                        return ProxyError::Unauthorized(e).into_response(ex);
                    }
                },
                None => None,
            };
            let facts = balance::RequestFacts {
                headers: req.headers(),
                query: req.uri().query(),
                path: req.uri().path(),
                verified: verified.as_ref().map(|v| &v.claims),
            };
            let selection = upstream.select(&facts);
            let headers = req.headers_mut();
            selection.strip_cookie(headers);
            // Identity headers are written by verifiers only: a client-sent copy never passes.
            headers::remove_all(headers, snapshot.verifiers.identity_headers());
            if let (Some(verified), Some(verifier)) = (&verified, &route.verifier) {
                headers.insert(verifier.identity_header().clone(), verified.identity.clone());
                let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
                if let TokenSource::Query(name) = &verified.from
                    && let Some(stripped) = query::without(target, name)
                    && let Ok(uri) = stripped.parse::<Uri>()
                {
                    // The token stays at the edge: the backend and the access log see the URL without it.
                    *req.uri_mut() = uri;
                    ex.path_and_query = stripped.into();
                }
            }
            let rules = &route.config.request_headers;
            let result = if websocket {
                // Boxed, like a new connection below: the rarely taken branches would otherwise make
                // every request's future (built, then moved, per request) as large as the largest.
                Box::pin(self.open_tunnel::<S>(req, conn, selection, &mut ex, snapshot, raw_host, rules)).await
            } else {
                self.forward(req, conn, selection, &mut ex, snapshot, raw_host, rules).await
            };
            match result {
                Ok((answer, reusable)) => respond(answer, reusable, ex, snapshot),
                Err(e) => e.into_response(ex),
            }
        }
    }

    #[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
    fn forward(
        &self,
        req: Request<Incoming>,
        conn: &ClientConn,
        mut selection: Selection,
        ex: &mut Exchange,
        snapshot: &Snapshot,
        raw_host: Option<String>,
        rules: &HeaderRules,
    ) -> impl Future<Output = Result<(Answer, Option<Sender>), ProxyError>> {
        async move {
            let timeouts = &snapshot.config.timeouts;
            let counted = ex.bytes_in.clone();
            let patience = timeouts.body_read;
            let mut request = Some(upstream_request(req, conn, snapshot, raw_host.as_deref(), rules, |b| {
                UpstreamBody::new(b, counted, patience)
            }));
            while let Some(candidate) = selection.next() {
                for _ in 0..ATTEMPTS_PER_BACKEND {
                    let mut sender = match candidate.backend.pool().take() {
                        Some(sender) => sender,
                        None => {
                            match Box::pin(self.connect(
                                &selection,
                                &candidate.backend,
                                timeouts,
                                Purpose::Requests,
                                ex,
                            ))
                            .await
                            {
                                Some(sender) => sender,
                                None => break,
                            }
                        }
                    };
                    // A pooled connection is usually ready at once; only one that is not needs a clock.
                    if !sender.is_ready()
                        && !matches!(tokio::time::timeout(timeouts.connect, sender.ready()).await, Ok(Ok(())))
                    {
                        continue;
                    }
                    let Some(req) = request.take() else { break };
                    match tokio::time::timeout(timeouts.request, sender.try_send_request(req)).await {
                        Ok(Ok(resp)) => {
                            selection.upstream().on_answer(&candidate.backend);
                            selection.report();
                            let answer = Answer::new(resp, &selection, candidate, conn.is_tls, ex);
                            return Ok((answer, Some(sender)));
                        }
                        Ok(Err(mut e)) => match e.take_message() {
                            // Nothing reached the backend: safe to try again.
                            Some(req) => request = Some(req),
                            None => {
                                let e = e.into_error();
                                let failed = match body_error(&e) {
                                    // The client's body failed, not the backend.
                                    Some(BodyError::Stalled(waited)) => {
                                        self.deps.metrics.timeout(TimeoutKind::BodyRead);
                                        ProxyError::BodyStalled(*waited)
                                    }
                                    Some(BodyError::Client(_)) => ProxyError::BodyFailed,
                                    None => {
                                        selection.upstream().on_failure(&candidate.backend, Failure::BadResponse);
                                        ProxyError::BackendFailed(e)
                                    }
                                };
                                ex.backend = Some(candidate.backend);
                                return Err(failed);
                            }
                        },
                        Err(_) => {
                            selection.upstream().on_failure(&candidate.backend, Failure::Timeout);
                            ex.backend = Some(candidate.backend);
                            return Err(ProxyError::BackendTimeout(timeouts.request));
                        }
                    }
                }
            }
            selection.report();
            Err(no_backend(ex))
        }
    }

    /// A new connection to `backend`, its outcome counted for passive health. A failure (nothing
    /// was sent) is remembered in `ex` for the 502 that follows if no other candidate answers.
    async fn connect(
        &self,
        selection: &Selection,
        backend: &Arc<BackendHandle>,
        timeouts: &Timeouts,
        purpose: Purpose,
        ex: &mut Exchange,
    ) -> Option<Sender> {
        let upstream = selection.upstream();
        match pool::connect_http1(&backend.address(), timeouts.connect, &self.deps.tasks, purpose).await {
            Ok(sender) => Some(sender),
            Err(e) => {
                tracing::warn!(upstream = %upstream.name(), backend = %backend.id(), error = %Chain(&e), "backend connect failed");
                upstream.on_failure(backend, Failure::Connect);
                ex.backend = Some(backend.clone());
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn open_tunnel<S: ClientStream>(
        &self,
        mut req: Request<Incoming>,
        conn: &Arc<ClientConn>,
        mut selection: Selection,
        ex: &mut Exchange,
        snapshot: &Snapshot,
        raw_host: Option<String>,
        rules: &HeaderRules,
    ) -> Result<(Answer, Option<Sender>), ProxyError> {
        let timeouts = &snapshot.config.timeouts;
        let client_upgrade = hyper::upgrade::on(&mut req);
        let mut request = upstream_request(req, conn, snapshot, raw_host.as_deref(), rules, |_| UpstreamBody::empty());
        headers::set_websocket_upgrade(request.headers_mut());
        let mut request = Some(request);
        while let Some(candidate) = selection.next() {
            let Some(mut sender) = self.connect(&selection, &candidate.backend, timeouts, Purpose::Upgrade, ex).await
            else {
                continue;
            };
            selection.report();
            let Some(request) = request.take() else { break };
            let mut resp = match tokio::time::timeout(timeouts.request, sender.send_request(request)).await {
                Ok(Ok(resp)) => {
                    selection.upstream().on_answer(&candidate.backend);
                    resp
                }
                Ok(Err(e)) => {
                    selection.upstream().on_failure(&candidate.backend, Failure::BadResponse);
                    ex.backend = Some(candidate.backend);
                    return Err(ProxyError::BackendFailed(e));
                }
                Err(_) => {
                    selection.upstream().on_failure(&candidate.backend, Failure::Timeout);
                    ex.backend = Some(candidate.backend);
                    return Err(ProxyError::BackendTimeout(timeouts.request));
                }
            };
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS || !headers::confirms_websocket(resp.headers()) {
                // Refused upgrade: relay it as an ordinary response; the connection is not reused.
                return Ok((Answer::new(resp, &selection, candidate, conn.is_tls, ex), None));
            }
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            let cookie = selection.pin(&candidate, conn.is_tls);
            let Candidate { backend, load, .. } = candidate;
            let tunnel = tunnel::Tunnel {
                registration: backend.tunnels().register(selection.shared_key()),
                load,
                permit: conn.take_permit(),
                slot: ex.slot.take(),
                client: conn.peer,
                listener: conn.listener.clone(),
                host: ex.host.clone(),
                path_and_query: ex.path_and_query.clone(),
                upstream: selection.upstream().clone(),
                backend: backend.clone(),
                timeouts: relay::Timeouts { idle: timeouts.tunnel_idle, send: timeouts.send },
                log: snapshot.access_log.clone(),
                metrics: self.deps.metrics.clone(),
            };
            self.deps.tasks.spawn(tunnel.run::<S>(client_upgrade, backend_upgrade));
            ex.backend = Some(backend);
            return Ok((Answer { resp, cookie }, None));
        }
        selection.report();
        Err(no_backend(ex))
    }
}

/// What a backend carries at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendLoad {
    pub(crate) id: String,
    /// Requests in flight plus open tunnels (the load bounded loads count).
    pub load: u32,
    /// Open tunnels.
    pub tunnels: usize,
}

/// A backend's response head and the pin it earns, before it is relayed.
struct Answer {
    resp: Response<Incoming>,
    cookie: Option<HeaderValue>,
}

impl Answer {
    /// `resp` served by `candidate`: the exchange keeps the backend's load until the response
    /// ends, and the client is pinned to the backend if a pin is due.
    fn new(
        resp: Response<Incoming>,
        selection: &Selection,
        candidate: Candidate,
        is_tls: bool,
        ex: &mut Exchange,
    ) -> Self {
        let cookie = selection.pin(&candidate, is_tls);
        ex.backend = Some(candidate.backend);
        ex.load = Some(candidate.load);
        Self { resp, cookie }
    }
}

/// Every candidate failed to connect (502: `ex.backend` names the last one tried), or there was
/// none to try (503).
fn no_backend(ex: &Exchange) -> ProxyError {
    if ex.backend.is_some() { ProxyError::Unreachable } else { ProxyError::NoBackend }
}

/// The Host the client asked for, as sent: the URI authority (HTTP/2, absolute-form) or the
/// Host header.
fn raw_host<B>(req: &Request<B>) -> Option<String> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.as_str().to_owned());
    }
    req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned)
}

/// The request body's own failure behind a failed exchange, when it was the body that failed.
fn body_error(e: &hyper::Error) -> Option<&BodyError> {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(body) = cause.downcast_ref::<BodyError>() {
            return Some(body);
        }
        source = cause.source();
    }
    None
}

/// The request as the backend sees it: origin-form HTTP/1.1, hop-by-hop headers removed,
/// cookies in one header, `Host` preserved (taken from the authority for HTTP/2), `X-Forwarded-*` set.
fn upstream_request(
    req: Request<Incoming>,
    conn: &ClientConn,
    snapshot: &Snapshot,
    raw_host: Option<&str>,
    rules: &HeaderRules,
    body: impl FnOnce(Incoming) -> UpstreamBody,
) -> Request<UpstreamBody> {
    let (mut parts, incoming) = req.into_parts();
    // Room for the forwarding headers, so the map grows at most once.
    parts.headers.reserve(FORWARDING_HEADERS);
    headers::remove_hop_by_hop(&mut parts.headers);
    headers::remove_request_only(&mut parts.headers);
    headers::join_cookies(&mut parts.headers);
    forwarding::set_forwarding(
        &mut parts.headers,
        forwarding::ClientFacts {
            peer: conn.peer.ip(),
            peer_text: &conn.peer_text,
            is_tls: conn.is_tls,
            host: raw_host,
            port: &conn.port_text,
        },
        &snapshot.config.trusted_proxies,
        snapshot.config.forwarded_headers,
    );
    // Usually the Host header is already the host asked for; only an authority-form request
    // (HTTP/2, absolute-form) needs it written.
    if let Some(raw) = raw_host
        && parts.headers.get(header::HOST).is_none_or(|h| h.as_bytes() != raw.as_bytes())
        && let Ok(host) = HeaderValue::from_str(raw)
    {
        parts.headers.insert(header::HOST, host);
    }
    headers::apply_rules(&mut parts.headers, rules);
    let origin_form = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = origin_form.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, body(incoming))
}

/// The backend's answer as the client sees it.
fn respond(answer: Answer, reusable: Option<Sender>, mut ex: Exchange, snapshot: &Snapshot) -> Response<ClientBody> {
    let Answer { resp, cookie } = answer;
    let (mut parts, body) = resp.into_parts();
    let upgrade = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    headers::remove_hop_by_hop(&mut parts.headers);
    if upgrade {
        headers::set_websocket_upgrade(&mut parts.headers);
    }
    if snapshot.config.debug.backend_header
        && let Some(backend) = &ex.backend
        && let Ok(v) = HeaderValue::from_str(backend.id())
    {
        parts.headers.insert(X_TETHER_BACKEND, v);
    }
    if let Some(cookie) = cookie {
        parts.headers.append(header::SET_COOKIE, cookie);
    }
    parts.version = Version::HTTP_11;
    ex.status = parts.status.as_u16();
    ex.reusable = reusable;
    Response::from_parts(parts, ClientBody::upstream(body, ex))
}

/// The hyper service of one client connection; `S` is the connection's stream type, needed to
/// take the socket back from hyper when a WebSocket upgrade completes.
pub(crate) struct ConnService<S> {
    proxy: Arc<Proxy>,
    conn: Arc<ClientConn>,
    _stream: PhantomData<fn() -> S>,
}

impl<S> ConnService<S> {
    pub(crate) fn new(proxy: Arc<Proxy>, conn: Arc<ClientConn>) -> Self {
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
    /// Only ever `REFUSED_STREAM`, which hyper sends as the stream's reset: an HTTP/2 request
    /// over `limits.max_in_flight` was not processed and may be retried (RFC 9113 8.7).
    type Error = h2::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ClientBody>, h2::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let proxy = self.proxy.clone();
        let conn = self.conn.clone();
        let slot = proxy.take_slot();
        if slot.is_none() && !conn.state.is_http1() {
            let labels = ListenerLabels { listener: conn.listener.clone() };
            proxy.deps.metrics.in_flight_refused.get_or_create(&labels).inc();
            return Box::pin(std::future::ready(Err(h2::Error::from(h2::Reason::REFUSED_STREAM))));
        }
        // HTTP/1.1 has no way to refuse a request unprocessed: it gets a 503 with Retry-After.
        Box::pin(async move { Ok(proxy.handle::<S>(req, conn, slot).await) })
    }
}
