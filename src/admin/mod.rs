//! The admin listener: probes, Prometheus metrics, the JSON admin API and the status page.
//!
//! Owns: answering operators, and the two things it needs from the process, expressed as
//! [`Readiness`] and the [`Reloader`] port (implemented by `server`). Must not: change anything
//! except through the upstream's own operations (`drain`, `undrain`) and the reloader.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ReloadError;
use crate::proxy::Proxy;

pub(crate) mod api;
mod guard;
mod page;

/// Admin API bodies are tiny (reload takes none); refuse anything bigger.
const MAX_BODY: usize = 64 * 1024;
/// A slow admin client gets this long to send its request head.
const HEADER_READ: Duration = Duration::from_secs(10);
/// On shutdown, an admin connection gets this long to finish the request it is serving.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Whether the process wants new traffic: false once shutdown began, so `/readyz` answers 503
/// and load balancers stop sending.
#[derive(Debug)]
pub(crate) struct Readiness(AtomicBool);

impl Default for Readiness {
    fn default() -> Self {
        Self(AtomicBool::new(true))
    }
}

impl Readiness {
    pub(crate) fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    pub(crate) fn set_not_ready(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Something that can reload the configuration (the server implements it).
pub(crate) trait Reloader: Send + Sync {
    /// Re-read and apply the config file: the new generation, or why the running config stays.
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<u64, ReloadError>> + Send + '_>>;
}

/// Everything the admin listener answers from.
pub(crate) struct Admin {
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) readiness: Arc<Readiness>,
    /// The bearer token `/admin/*` requires, read from `admin.token_env` at startup.
    pub(crate) token: Option<String>,
    pub(crate) reloader: Arc<dyn Reloader>,
    /// Host names accepted besides IP literals and `localhost` (lowercase).
    pub(crate) allowed_hosts: Vec<String>,
    /// `/metrics` answers without the token.
    pub(crate) metrics_public: bool,
    /// Failed token attempts not logged yet, per client address.
    pub(crate) failures: parking_lot::Mutex<guard::Failures>,
}

/// Why an admin request was not served.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error("no such endpoint")]
    NoEndpoint,
    #[error("no such upstream")]
    NoUpstream,
    #[error("no such upstream or backend")]
    NoBackend,
    #[error("method not allowed")]
    Method,
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("the key query parameter is required")]
    MissingKey,
    #[error("this admin listener does not answer for that host")]
    Host,
    #[error("cross-origin requests cannot change anything here")]
    CrossOrigin,
}

impl AdminError {
    fn into_reply(self) -> Reply {
        let status = match self {
            AdminError::NoEndpoint | AdminError::NoUpstream | AdminError::NoBackend => StatusCode::NOT_FOUND,
            AdminError::Method => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::MissingKey => StatusCode::BAD_REQUEST,
            AdminError::Host => StatusCode::MISDIRECTED_REQUEST,
            AdminError::CrossOrigin => StatusCode::FORBIDDEN,
        };
        let mut resp = json(status, &serde_json::json!({ "error": self.to_string() }));
        if matches!(self, AdminError::Unauthorized) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Serve the admin API on `listener` until `stop`; connections are owned by `tasks`.
pub(crate) async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken, tasks: TaskTracker) {
    let conn_stop = stop.clone();
    crate::accept::run(listener, "admin", stop, tasks, move |stream, peer| {
        let admin = admin.clone();
        let stop = conn_stop.clone();
        Some(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
                }
            }
        })
    })
    .await;
}

type Reply = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    resp
}

impl Admin {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        self.answer(req, peer).await.unwrap_or_else(AdminError::into_reply)
    }

    async fn answer(&self, req: Request<Incoming>, peer: SocketAddr) -> Result<Reply, AdminError> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().map(str::to_owned);
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // A page on another site must not reach us by rebinding its own name to our address,
        // nor make the operator's browser change anything here.
        if !guard::is_allowed_host(req.headers(), req.uri(), &self.allowed_hosts) {
            return Err(AdminError::Host);
        }
        if guard::is_cross_origin_write(&method, req.headers()) {
            tracing::warn!(%peer, %path, "admin: cross-origin state-changing request refused");
            return Err(AdminError::CrossOrigin);
        }
        if segments.as_slice() == ["metrics"] && !self.metrics_public && !self.authorized(&req, peer) {
            return Err(AdminError::Unauthorized);
        }

        match (&method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => return Ok(json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))),
            (&Method::GET, ["readyz"]) => {
                return Ok(if self.readiness.is_ready() {
                    json(StatusCode::OK, &serde_json::json!({ "status": "ready" }))
                } else {
                    json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({ "status": "shutting down" }))
                });
            }
            (&Method::GET, ["metrics"]) => {
                let mut resp = text(StatusCode::OK, self.proxy.metrics().encode());
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                return Ok(resp);
            }
            (&Method::GET, [""]) => return Ok(page::status_page()),
            _ => {}
        }

        if segments.first() != Some(&"admin") {
            return Err(AdminError::NoEndpoint);
        }
        if !self.authorized(&req, peer) {
            return Err(AdminError::Unauthorized);
        }
        // No endpoint uses a body; read a bounded amount so the connection stays usable.
        if http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await.is_err() {
            return Err(AdminError::BodyTooLarge);
        }

        match (&method, &segments[1..]) {
            (&Method::GET, ["upstreams"]) => Ok(json(StatusCode::OK, &api::upstreams(&self.proxy))),
            (&Method::GET, ["upstreams", name]) => {
                api::upstream(&self.proxy, name).map(|v| json(StatusCode::OK, &v)).ok_or(AdminError::NoUpstream)
            }
            (&Method::GET, ["upstreams", name, "route"]) => {
                let key = query.as_deref().and_then(|q| {
                    form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "key").map(|(_, v)| v.into_owned())
                });
                let key = key.filter(|k| !k.is_empty()).ok_or(AdminError::MissingKey)?;
                api::route(&self.proxy, name, &key).map(|v| json(StatusCode::OK, &v)).ok_or(AdminError::NoUpstream)
            }
            (&Method::POST, ["upstreams", name, "backends", id, action @ ("drain" | "undrain")]) => {
                let action = if *action == "drain" { api::DrainAction::Drain } else { api::DrainAction::Undrain };
                let v = api::set_drain(&self.proxy, name, id, action).ok_or(AdminError::NoBackend)?;
                tracing::info!(%peer, upstream = %name, backend = %id, action = action.as_str(), "admin request");
                Ok(json(StatusCode::OK, &v))
            }
            (&Method::POST, ["reload"]) => Ok(match self.reloader.reload().await {
                Ok(generation) => {
                    json(StatusCode::OK, &serde_json::json!({ "result": "ok", "generation": generation }))
                }
                Err(problems) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &serde_json::json!({ "result": "error", "errors": crate::report::Chain(&problems).to_string() }),
                ),
            }),
            (&Method::GET, ["config"]) => {
                let mut resp = text(StatusCode::OK, self.proxy.config().source.text.clone());
                resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/yaml"));
                Ok(resp)
            }
            (_, ["upstreams", ..] | ["reload"] | ["config"]) => Err(AdminError::Method),
            _ => Err(AdminError::NoEndpoint),
        }
    }

    /// The request carries the admin token (always true without one). A failure is logged at
    /// most once per second per client address, with how many there were.
    fn authorized<B>(&self, req: &Request<B>, peer: SocketAddr) -> bool {
        let Some(token) = &self.token else { return true };
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token.trim());
        let ok: bool = subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), token.as_bytes()).into();
        if !ok && let Some(failed) = self.failures.lock().record(peer.ip(), std::time::Instant::now()) {
            tracing::warn!(client = %peer.ip(), failed, path = req.uri().path(), "admin requests without a valid token");
        }
        ok
    }
}
