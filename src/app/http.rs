//! The HTTP surface of an instance: routing, probes, `/whoami`, `/publish`, `/metrics`, the demo
//! page (and `tether demo`'s `/login`), and the WebSocket upgrade handshake for `/ws` and
//! `/ws/websocket` (answered here, then handed to `session`); everything else under `/ws` is
//! SockJS (`sockjs`). The identity header counts only from a trusted peer, and upgrades from
//! foreign page origins are refused (`trust` decides both).
//!
//! It turns requests into calls on `Instance` and results into responses; it must not hold
//! STOMP state or decide fan-out.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::broker::{BrokerKind, Envelope, Health};
use super::hub::is_valid_user_id;
use super::instance::{Instance, unix_ms};
use super::metrics::Source;
use super::session::{self, Link};
use super::sockjs;
use super::trust::{OriginVerdict, Peer};

/// STOMP-over-WebSocket subprotocols we accept (stompjs offers them in this order).
pub(crate) const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// Bound on reading a request head; a client idling before sending one is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open keep-alive HTTP connections get to finish once shutdown stops the listener.
const HTTP_GRACE: Duration = Duration::from_secs(5);

const PAGE_HTML: &str = include_str!("page.html");
const PAGE_JS: &str = include_str!("page.js");

/// Which listener a connection arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Surface {
    /// The public listener. `operator_routes`: `/publish` and `/metrics` are served here too
    /// (no `--internal-listen`).
    Main { operator_routes: bool },
    /// `--internal-listen`: `/publish`, `/metrics` and the probes, never exposed by the proxy.
    Internal,
}

impl Surface {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Surface::Main { .. } => "main",
            Surface::Internal => "internal",
        }
    }
}

/// Every response body: whole (`full`) or streamed (SockJS streaming transports).
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// Serves one TCP connection (HTTP/1.1 with upgrades) until it ends or `stop` asks it to wind
/// down; WebSocket sessions it upgrades are spawned on `sessions`.
pub(crate) async fn serve_connection(
    inst: Arc<Instance>,
    stream: TcpStream,
    peer: Peer,
    surface: Surface,
    sessions: TaskTracker,
    stop: CancellationToken,
) {
    let svc = hyper::service::service_fn(move |req| {
        let inst = inst.clone();
        let sessions = sessions.clone();
        async move { Ok::<_, Infallible>(route(inst, req, peer, surface, &sessions).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Some(HEADER_READ_TIMEOUT))
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(event = "http_connection_error", error = %e);
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(HTTP_GRACE, conn).await;
        }
    }
}

async fn route(
    inst: Arc<Instance>,
    req: Request<Incoming>,
    peer: Peer,
    surface: Surface,
    sessions: &TaskTracker,
) -> Response<Body> {
    let main = matches!(surface, Surface::Main { .. });
    let operator = matches!(surface, Surface::Internal | Surface::Main { operator_routes: true });
    let method = req.method().clone();
    match req.uri().path() {
        "/" if main => only(&method, Method::GET, || text(StatusCode::OK, "text/html; charset=utf-8", PAGE_HTML)),
        "/page.js" if main => {
            only(&method, Method::GET, || text(StatusCode::OK, "text/javascript; charset=utf-8", PAGE_JS))
        }
        "/ws" if main && method == Method::GET && wants_websocket(req.headers()) => upgrade(inst, req, peer, sessions),
        path if main && (path == "/ws" || path.starts_with("/ws/")) => sockjs::serve(inst, req, peer, sessions).await,
        "/whoami" if main => only(&method, Method::GET, || {
            let user = header_user(&inst, req.headers(), peer).ok().flatten();
            json(StatusCode::OK, serde_json::json!({ "instance": &*inst.id, "user": user }))
        }),
        "/login" if main && inst.settings.trust.demo_login.is_some() => {
            only(&method, Method::GET, || login(&inst, req.uri().query()))
        }
        "/logout" if main && inst.settings.trust.demo_login.is_some() => only(&method, Method::GET, || {
            let mut r = json(StatusCode::OK, serde_json::json!({ "user": null }));
            set_cookie(&mut r, &super::login::cookie(None));
            r
        }),
        "/healthz" => only(&method, Method::GET, || health(&inst)),
        "/readyz" => only(&method, Method::GET, || {
            if inst.is_shutting_down() {
                json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "ready": false, "reason": "shutting down" }))
            } else {
                json(StatusCode::OK, serde_json::json!({ "ready": true }))
            }
        }),
        "/metrics" if operator => only(&method, Method::GET, || {
            text(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", inst.metrics.encode())
        }),
        "/publish" if operator => {
            if method != Method::POST {
                return status(StatusCode::METHOD_NOT_ALLOWED);
            }
            publish(inst, req).await
        }
        _ => status(StatusCode::NOT_FOUND),
    }
}

fn health(inst: &Instance) -> Response<Body> {
    let (broker, redis) = match (inst.broker_kind(), inst.broker_health()) {
        (Some(BrokerKind::Redis), Health::Up) => ("redis", "up"),
        (Some(BrokerKind::Redis), Health::Slow) => ("redis", "slow"),
        (Some(BrokerKind::Redis), Health::Down) => ("redis", "down"),
        _ => ("local", "disabled"),
    };
    // A Redis outage is reported here but is not a failure of this process: local delivery
    // still works, and failing probes fleet-wide on a Redis blip would take the site down.
    json(
        StatusCode::OK,
        serde_json::json!({
            "status": "ok",
            "instance": &*inst.id,
            "broker": broker,
            "redis": redis,
            "sessions": inst.session_count(),
            "sockjs_sessions": inst.sockjs.len(),
            "subscriptions": inst.subscription_count(),
            "shutting_down": inst.is_shutting_down(),
        }),
    )
}

async fn publish(inst: Arc<Instance>, req: Request<Incoming>) -> Response<Body> {
    let destination = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "destination").map(|(_, v)| v.into_owned())
    });
    let Some(destination) = destination.filter(|d| !d.is_empty()) else {
        return json(StatusCode::BAD_REQUEST, serde_json::json!({ "error": "missing ?destination=" }));
    };
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let limit = inst.settings.limits.max_frame_bytes;
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({ "error": format!("body larger than {limit} bytes") }),
            );
        }
        Err(_) => return status(StatusCode::BAD_REQUEST),
    };
    let id = inst.next_message_id();
    let envelope = Envelope {
        origin: inst.nonce,
        instance: inst.id.clone(),
        id: id.clone(),
        destination,
        sender: None,
        content_type,
        headers: Vec::new(),
        body,
        published_at_ms: unix_ms(),
        stream_id: None,
    };
    let ack = inst.publish(envelope, Source::Http);
    match tokio::time::timeout(inst.settings.confirm_timeout, ack).await {
        Ok(Ok(())) => json(StatusCode::ACCEPTED, serde_json::json!({ "id": &*id })),
        Ok(Err(e)) => json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "error": e.to_string(), "id": &*id })),
        Err(_) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": "broker confirmation timed out", "id": &*id }),
        ),
    }
}

/// `/login?user=NAME` (`tether demo` only): a demo token for NAME in the cookie the proxy
/// verifies on the WebSocket upgrade.
fn login(inst: &Instance, query: Option<&str>) -> Response<Body> {
    let Some(demo) = &inst.settings.trust.demo_login else {
        return status(StatusCode::NOT_FOUND);
    };
    let user = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "user").map(|(_, v)| v.trim().to_owned())
    });
    let Some(user) = user.filter(|u| is_valid_user_id(u)) else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "give ?user=NAME (up to 128 bytes, no '/' or control characters)" }),
        );
    };
    match demo.mint(&user, jsonwebtoken::get_current_timestamp()) {
        Ok(token) => {
            let ttl = super::login::TOKEN_TTL.as_secs();
            let mut r = json(StatusCode::OK, serde_json::json!({ "user": user, "expires_in": ttl }));
            set_cookie(&mut r, &super::login::cookie(Some(&token)));
            r
        }
        Err(e) => {
            tracing::warn!(event = "demo_login_failed", error = %crate::report::Chain(&e));
            status(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

fn set_cookie(r: &mut Response<Body>, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The user the identity header of a request names: Ok(None) when absent, or when the peer is
/// not a trusted proxy (then the header is ignored, and counted); Err when a trusted peer sent
/// one that is unusable.
pub(crate) fn header_user(inst: &Instance, headers: &HeaderMap, peer: Peer) -> Result<Option<String>, ()> {
    let Some(value) = headers.get(&inst.settings.user_header) else {
        return Ok(None);
    };
    if !peer.trusted {
        inst.untrusted_identity_header(peer.ip);
        return Ok(None);
    }
    match value.to_str() {
        Ok(s) if is_valid_user_id(s) => Ok(Some(s.to_owned())),
        _ => Err(()),
    }
}

/// 403 for a page of a foreign origin (no CORS headers: the page learns nothing).
pub(crate) fn forbidden_origin() -> Response<Body> {
    text(StatusCode::FORBIDDEN, "text/plain; charset=utf-8", "origin not allowed\n")
}

/// `Connection` lists the `upgrade` token and `Upgrade` names websocket (both case-insensitive).
pub(crate) fn wants_websocket(headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
    };
    has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket")
}

/// The first subprotocol the client offered that we speak.
pub(crate) fn choose_subprotocol(headers: &HeaderMap) -> Option<&'static str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .find_map(|offered| SUBPROTOCOLS.into_iter().find(|p| offered.trim().eq_ignore_ascii_case(p)))
}

/// Checks a WebSocket upgrade request and builds the 101 answer; Err is the refusal to send
/// instead. With `stomp`, the first STOMP subprotocol offered is chosen.
pub(crate) fn websocket_handshake(headers: &HeaderMap, stomp: bool) -> Result<Response<Body>, Box<Response<Body>>> {
    if !wants_websocket(headers) {
        let mut r =
            text(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", "Can \"Upgrade\" only to \"WebSocket\".");
        r.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return Err(Box::new(r));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        let mut r = status(StatusCode::UPGRADE_REQUIRED);
        r.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return Err(Box::new(r));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Box::new(status(StatusCode::BAD_REQUEST)));
    };
    let accept = derive_accept_key(key.as_bytes());
    let protocol = if stomp { choose_subprotocol(headers) } else { None };
    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    Ok(r)
}

/// STOMP over a plain WebSocket (`/ws`, `/ws/websocket`).
pub(crate) fn upgrade(
    inst: Arc<Instance>,
    req: Request<Incoming>,
    peer: Peer,
    sessions: &TaskTracker,
) -> Response<Body> {
    if inst.settings.trust.origins.check(req.headers(), peer) == OriginVerdict::Refused {
        return forbidden_origin();
    }
    let response = match websocket_handshake(req.headers(), true) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let Ok(user) = header_user(&inst, req.headers(), peer) else {
        return json(StatusCode::BAD_REQUEST, serde_json::json!({ "error": "invalid user header" }));
    };
    let config = ws_config(inst.settings.limits.max_frame_bytes);
    sessions.spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
                session::serve(inst, Link::WebSocket(Box::new(ws)), user).await;
            }
            Err(e) => tracing::debug!(event = "upgrade_failed", error = %e),
        }
    });
    response
}

/// Per-connection socket buffers. tungstenite's 128 KiB defaults cost ~140 KiB of RSS per idle
/// connection; chat-sized traffic needs a few KiB, and larger frames just take more reads.
const WS_READ_BUFFER: usize = 8 * 1024;
const WS_WRITE_BUFFER: usize = 8 * 1024;

/// WebSocket limits: a message may carry several frames (stompjs batches), so allow a few
/// frames' worth; the STOMP decoder enforces the per-frame limit with a proper ERROR.
pub(crate) fn ws_config(max_frame_bytes: usize) -> WebSocketConfig {
    let max_message = (max_frame_bytes * 4).max(256 * 1024);
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

fn only(method: &Method, allowed: Method, f: impl FnOnce() -> Response<Body>) -> Response<Body> {
    if *method == allowed || (allowed == Method::GET && *method == Method::HEAD) {
        f()
    } else {
        status(StatusCode::METHOD_NOT_ALLOWED)
    }
}

pub(crate) fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::default());
    *r.status_mut() = code;
    r
}

pub(crate) fn text(code: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json(code: StatusCode, value: serde_json::Value) -> Response<Body> {
    text(code, "application/json", value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(header::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_first_offered_supported_subprotocol_wins() {
        let h = headers(&[("sec-websocket-protocol", "v12.stomp, v11.stomp, v10.stomp")]);
        assert_eq!(choose_subprotocol(&h), Some("v12.stomp"));
        let h = headers(&[("sec-websocket-protocol", "mqtt"), ("sec-websocket-protocol", "v11.stomp, v12.stomp")]);
        assert_eq!(choose_subprotocol(&h), Some("v11.stomp"));
        assert_eq!(choose_subprotocol(&headers(&[("sec-websocket-protocol", "mqtt")])), None);
        assert_eq!(choose_subprotocol(&HeaderMap::new()), None);
    }

    #[test]
    fn upgrade_detection_reads_token_lists() {
        assert!(wants_websocket(&headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")])));
        assert!(!wants_websocket(&headers(&[("upgrade", "websocket")])));
        assert!(!wants_websocket(&headers(&[("connection", "upgrade"), ("upgrade", "h2c")])));
    }
}
