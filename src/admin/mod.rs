//! The admin listener: probes, Prometheus metrics, the JSON admin API and the status page.
//!
//! Owns: answering operators. Must not: change anything except through the upstream's own
//! operations (`drain`, `undrain`) and the reload entry point.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::Proxy;

mod api;
mod page;

/// Admin API bodies are tiny (reload takes none); refuse anything bigger.
const MAX_BODY: usize = 64 * 1024;

/// Process-wide facts the probes report.
#[derive(Debug)]
pub struct Probe {
    /// False once shutdown began: `/readyz` answers 503 so load balancers stop sending.
    ready: AtomicBool,
}

impl Default for Probe {
    fn default() -> Self {
        Self { ready: AtomicBool::new(true) }
    }
}

impl Probe {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_not_ready(&self) {
        self.ready.store(false, Ordering::Release);
    }
}

/// Something that can reload the configuration (the server implements it).
pub trait Reloader: Send + Sync {
    /// Re-read and apply the config file: the new generation, or every problem found (and
    /// the running config stays).
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send + '_>>;
}

pub struct Admin {
    pub proxy: Arc<Proxy>,
    pub probe: Arc<Probe>,
    /// The bearer token `/admin/*` requires, read from `admin.token_env` at startup.
    pub token: Option<String>,
    pub reloader: Arc<dyn Reloader>,
}

/// Serve the admin API on `listener` until `stop`.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken, tasks: TaskTracker) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let admin = admin.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn).await;
                }
            }
        });
    }
}

type Reply = Response<Full<Bytes>>;

pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    resp
}

fn error(status: StatusCode, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

impl Admin {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().map(str::to_owned);
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();

        match (&method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => return json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
            (&Method::GET, ["readyz"]) => {
                return if self.probe.is_ready() {
                    json(StatusCode::OK, &serde_json::json!({ "status": "ready" }))
                } else {
                    json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({ "status": "shutting down" }))
                };
            }
            (&Method::GET, ["metrics"]) => {
                let mut resp = text(StatusCode::OK, self.proxy.metrics().encode());
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                return resp;
            }
            (&Method::GET, [""]) => return page::status_page(),
            _ => {}
        }

        if segments.first() != Some(&"admin") {
            return error(StatusCode::NOT_FOUND, "no such endpoint");
        }
        if !self.authorized(&req) {
            tracing::warn!(%peer, %path, "admin request without a valid token");
            let mut resp = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return resp;
        }
        // No endpoint uses a body; read a bounded amount so the connection stays usable.
        if http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await.is_err() {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }

        match (&method, &segments[1..]) {
            (&Method::GET, ["upstreams"]) => json(StatusCode::OK, &api::upstreams(&self.proxy)),
            (&Method::GET, ["upstreams", name]) => match api::upstream(&self.proxy, name) {
                Some(v) => json(StatusCode::OK, &v),
                None => error(StatusCode::NOT_FOUND, "no such upstream"),
            },
            (&Method::GET, ["upstreams", name, "route"]) => {
                let key = query.as_deref().and_then(|q| {
                    form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "key").map(|(_, v)| v.into_owned())
                });
                let Some(key) = key.filter(|k| !k.is_empty()) else {
                    return error(StatusCode::BAD_REQUEST, "the key query parameter is required");
                };
                match api::route(&self.proxy, name, &key) {
                    Some(v) => json(StatusCode::OK, &v),
                    None => error(StatusCode::NOT_FOUND, "no such upstream"),
                }
            }
            (&Method::POST, ["upstreams", name, "backends", id, action @ ("drain" | "undrain")]) => {
                match api::set_drain(&self.proxy, name, id, *action == "drain") {
                    Some(v) => {
                        tracing::info!(%peer, upstream = %name, backend = %id, action, "admin request");
                        json(StatusCode::OK, &v)
                    }
                    None => error(StatusCode::NOT_FOUND, "no such upstream or backend"),
                }
            }
            (&Method::POST, ["reload"]) => match self.reloader.reload().await {
                Ok(generation) => {
                    json(StatusCode::OK, &serde_json::json!({ "result": "ok", "generation": generation }))
                }
                Err(problems) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &serde_json::json!({ "result": "error", "errors": problems }),
                ),
            },
            (&Method::GET, ["config"]) => {
                let rt = self.proxy.runtime();
                let mut resp = text(StatusCode::OK, rt.config.source.text.clone());
                resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/yaml"));
                resp
            }
            (_, ["upstreams", ..] | ["reload"] | ["config"]) => {
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
        }
    }

    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let Some(token) = &self.token else { return true };
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .unwrap_or("");
        subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), token.as_bytes()).into()
    }
}
