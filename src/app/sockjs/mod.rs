//! SockJS 0.3.3 on `/ws`, as Spring's `DefaultSockJsService` serves it: `GET /ws/info`, the
//! greeting at `/ws`, the raw WebSocket at `/ws/websocket`, and per session
//! `/ws/{server}/{session}/{transport}` with `websocket`, `xhr_streaming`, `xhr` (polling),
//! `xhr_send`, `eventsource` and `htmlfile`. STOMP runs unchanged on top: each SockJS session
//! carries one STOMP session (`session::Link::SockJs`).
//!
//! Layout: [`frame`] is the pure wire format, [`session`] one SockJS session and the registry,
//! `transport` the HTTP and WebSocket handlers. This module routes a request to them and owns
//! what every response shares (the origin check, CORS, caching, the session cookie). It must
//! not parse STOMP.
//!
//! Origins, as Spring checks them: `/info` and every transport refuse a page of a foreign
//! origin (not `--allowed-origin`) with 403 and no CORS headers; CORS answers echo only an
//! allowed origin; requests without `Origin` pass (and get `*`).
//!
//! Not served: the iframe transports (`/ws/iframe.html`) and JSONP, which exist for browsers
//! without CORS; sockjs-client picks another transport when they answer 404.

pub(crate) mod frame;
pub(crate) mod session;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use super::http::{Body, forbidden_origin, header_user, status, text};
use super::instance::Instance;
use super::trust::{OriginVerdict, Peer};

/// Default interval of `h` frames on an idle receiving connection.
pub(crate) const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(25);
/// Default time a session survives without a receiver (polling between requests, a streaming
/// client reconnecting) before it counts as gone.
pub(crate) const DEFAULT_DISCONNECT_DELAY: Duration = Duration::from_secs(5);
/// Default bytes a streaming response carries before it is ended and the client opens the
/// next one, so that browsers do not keep a whole session's traffic in memory.
pub(crate) const DEFAULT_STREAM_LIMIT: usize = 128 * 1024;
/// Name of the session cookie set when `cookie_needed` (what servlet containers call it, and
/// what load balancers are configured to stick on).
pub(crate) const SESSION_COOKIE: &str = "JSESSIONID";

/// SockJS knobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SockJsSettings {
    pub(crate) heartbeat: Duration,
    pub(crate) disconnect_delay: Duration,
    pub(crate) stream_limit: usize,
    /// `cookie_needed` in `/info`, and whether transports set the session cookie.
    pub(crate) cookie_needed: bool,
}

impl Default for SockJsSettings {
    fn default() -> Self {
        SockJsSettings {
            heartbeat: DEFAULT_HEARTBEAT,
            disconnect_delay: DEFAULT_DISCONNECT_DELAY,
            stream_limit: DEFAULT_STREAM_LIMIT,
            cookie_needed: true,
        }
    }
}

/// A transport of `/ws/{server}/{session}/{transport}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    WebSocket,
    Xhr,
    XhrSend,
    XhrStreaming,
    EventSource,
    HtmlFile,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "websocket" => Kind::WebSocket,
            "xhr" => Kind::Xhr,
            "xhr_send" => Kind::XhrSend,
            "xhr_streaming" => Kind::XhrStreaming,
            "eventsource" => Kind::EventSource,
            "htmlfile" => Kind::HtmlFile,
            _ => return None,
        })
    }

    /// The method the transport uses (besides CORS preflight).
    fn method(self) -> Method {
        match self {
            Kind::Xhr | Kind::XhrSend | Kind::XhrStreaming => Method::POST,
            Kind::WebSocket | Kind::EventSource | Kind::HtmlFile => Method::GET,
        }
    }

    /// Receiving HTTP transports set the session cookie (as Spring does).
    fn sends_cookie(self) -> bool {
        matches!(self, Kind::Xhr | Kind::XhrStreaming | Kind::EventSource | Kind::HtmlFile)
    }
}

/// Where a path under `/ws` leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// `/ws` or `/ws/`: the greeting (or, with an upgrade, the raw STOMP WebSocket).
    Base,
    Info,
    /// `/ws/websocket`: STOMP over a plain WebSocket, no SockJS framing.
    RawWebSocket,
    Transport {
        session: &'a str,
        kind: Kind,
    },
    NotFound,
}

/// Routes `path` (the request path, starting with `/ws`). Server and session ids must be
/// non-empty and contain no `.` (the protocol's rule, which keeps `info` and `iframe.html`
/// apart from ids).
pub(crate) fn route(path: &str) -> Route<'_> {
    let Some(rest) = path.strip_prefix("/ws") else {
        return Route::NotFound;
    };
    match rest {
        "" | "/" => return Route::Base,
        "/info" => return Route::Info,
        "/websocket" => return Route::RawWebSocket,
        _ => {}
    }
    let mut parts = rest.trim_start_matches('/').split('/');
    let (Some(server), Some(session), Some(transport), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::NotFound;
    };
    let valid = |id: &str| !id.is_empty() && !id.contains('.');
    match Kind::parse(transport) {
        Some(kind) if valid(server) && valid(session) => Route::Transport { session, kind },
        _ => Route::NotFound,
    }
}

/// Serves one request under `/ws` (the raw WebSocket at `/ws` itself is `http`'s).
pub(crate) async fn serve(
    inst: Arc<Instance>,
    req: Request<Incoming>,
    peer: Peer,
    sessions: &TaskTracker,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let origin = inst.settings.trust.origins.check(req.headers(), peer);
    let route = route(&path);
    if origin == OriginVerdict::Refused && matches!(route, Route::Info | Route::Transport { .. }) {
        return forbidden_origin();
    }
    let mut response = match route {
        Route::Base if method == Method::GET || method == Method::HEAD => {
            text(StatusCode::OK, "text/plain;charset=UTF-8", "Welcome to SockJS!\n")
        }
        Route::Info if method == Method::GET || method == Method::HEAD => info(&inst),
        Route::Info if method == Method::OPTIONS => preflight(req.headers(), &origin, "OPTIONS, GET"),
        Route::Base | Route::Info => status(StatusCode::METHOD_NOT_ALLOWED),
        Route::RawWebSocket if method == Method::GET => return super::http::upgrade(inst, req, peer, sessions),
        Route::RawWebSocket => status(StatusCode::METHOD_NOT_ALLOWED),
        Route::Transport { kind, .. } if method == Method::OPTIONS && kind.method() == Method::POST => {
            preflight(req.headers(), &origin, "OPTIONS, POST")
        }
        Route::Transport { kind, .. } if method != kind.method() => status(StatusCode::NOT_FOUND),
        Route::Transport { session, kind } => {
            let session = session.to_owned();
            let cookie =
                (inst.settings.sockjs.cookie_needed && kind.sends_cookie()).then(|| session_cookie(req.headers()));
            match header_user(&inst, req.headers(), peer) {
                Err(()) => text(StatusCode::BAD_REQUEST, "text/plain;charset=UTF-8", "invalid user header\n"),
                Ok(user) => {
                    let mut r = transport::serve(inst, req, kind, session, user, sessions).await;
                    if let Some(cookie) = cookie
                        && let Ok(v) = HeaderValue::from_str(&cookie)
                    {
                        r.headers_mut().append(header::SET_COOKIE, v);
                    }
                    r
                }
            }
        }
        Route::NotFound => status(StatusCode::NOT_FOUND),
    };
    add_cors(response.headers_mut(), &origin);
    response
}

fn info(inst: &Instance) -> Response<Body> {
    let body = serde_json::json!({
        "entropy": rand::random::<u32>(),
        "origins": ["*:*"],
        "cookie_needed": inst.settings.sockjs.cookie_needed,
        "websocket": true,
    });
    let mut r = text(StatusCode::OK, "application/json;charset=UTF-8", body.to_string());
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
    r
}

/// What SockJS requires of every dynamic answer: never cached.
pub(crate) const NO_CACHE: &str = "no-store, no-cache, must-revalidate, max-age=0";

/// A year, as the protocol asks for preflight and cacheable answers.
const ONE_YEAR_SECS: u64 = 31_536_000;

/// An answer to a CORS preflight.
fn preflight(headers: &HeaderMap, origin: &OriginVerdict, methods: &'static str) -> Response<Body> {
    let mut r = status(StatusCode::NO_CONTENT);
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(methods));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(ONE_YEAR_SECS));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000"));
    if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    add_cors(h, origin);
    r
}

/// CORS with credentials, as SockJS requires: an allowed `Origin` is echoed (a wildcard is not
/// allowed with credentials); without one, `*`; a refused one gets nothing.
fn add_cors(h: &mut HeaderMap, origin: &OriginVerdict) {
    if h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        return;
    }
    match origin {
        OriginVerdict::Allowed(o) if o.as_bytes() != b"null" => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        OriginVerdict::Absent => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        }
        OriginVerdict::Allowed(_) | OriginVerdict::Refused => {}
    }
}

/// `JSESSIONID=...;Path=/`: the client's own value when it has one, else a fresh random one
/// (a constant would pin every client to one backend behind a load balancer sticking on it).
fn session_cookie(headers: &HeaderMap) -> String {
    let existing = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == SESSION_COOKIE && is_cookie_value(value))
        .map(|(_, value)| value.to_owned());
    let value = existing.unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    format!("{SESSION_COOKIE}={value};Path=/")
}

fn is_cookie_value(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 256
        && v.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_the_protocols_endpoints() {
        assert_eq!(route("/ws"), Route::Base);
        assert_eq!(route("/ws/"), Route::Base);
        assert_eq!(route("/ws/info"), Route::Info);
        assert_eq!(route("/ws/websocket"), Route::RawWebSocket);
        assert_eq!(route("/ws/000/abc/xhr"), Route::Transport { session: "abc", kind: Kind::Xhr });
        assert_eq!(route("/ws/1/s/xhr_send"), Route::Transport { session: "s", kind: Kind::XhrSend });
        assert_eq!(route("/ws/1/s/xhr_streaming"), Route::Transport { session: "s", kind: Kind::XhrStreaming });
        assert_eq!(route("/ws/1/s/eventsource"), Route::Transport { session: "s", kind: Kind::EventSource });
        assert_eq!(route("/ws/1/s/htmlfile"), Route::Transport { session: "s", kind: Kind::HtmlFile });
        assert_eq!(route("/ws/1/s/websocket"), Route::Transport { session: "s", kind: Kind::WebSocket });
        for bad in [
            "/ws/iframe.html",
            "/ws/1/s/jsonp",
            "/ws/1/s/nope",
            "/ws/1.2/s/xhr",
            "/ws/1/s.x/xhr",
            "/ws//s/xhr",
            "/ws/1//xhr",
            "/ws/1/s/xhr/",
            "/ws/1/s",
            "/wsx/1/s/xhr",
            "/other",
        ] {
            assert_eq!(route(bad), Route::NotFound, "{bad}");
        }
    }

    #[test]
    fn cors_echoes_an_allowed_origin_with_credentials_and_nothing_else() {
        let mut h = HeaderMap::new();
        add_cors(&mut h, &OriginVerdict::Allowed(HeaderValue::from_static("https://shop.example")));
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://shop.example");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        let mut h = HeaderMap::new();
        add_cors(&mut h, &OriginVerdict::Absent);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
        let mut h = HeaderMap::new();
        add_cors(&mut h, &OriginVerdict::Refused);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn the_session_cookie_keeps_the_clients_value_or_gets_a_random_one() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; JSESSIONID=abc123"));
        assert_eq!(session_cookie(&h), "JSESSIONID=abc123;Path=/");
        let a = session_cookie(&HeaderMap::new());
        let b = session_cookie(&HeaderMap::new());
        assert!(a.starts_with("JSESSIONID=") && a.ends_with(";Path=/"), "{a}");
        assert_ne!(a, b);
        h.insert(header::COOKIE, HeaderValue::from_static("JSESSIONID=\"x\""));
        assert_ne!(session_cookie(&h), "JSESSIONID=\"x\";Path=/");
    }
}
