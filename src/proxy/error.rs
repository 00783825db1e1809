//! Why a request was answered by tether itself: [`ProxyError`], and the one place it becomes
//! a response and a log line.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::body::ClientBody;
use super::exchange::Exchange;
use super::headers::Malformed;
use crate::auth::AuthError;
use crate::report::Chain;

/// Everything on the request path that ends in an answer from tether rather than a backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// The request is ambiguous or invalid; it never reaches a backend, and the connection
    /// closes (its framing cannot be trusted).
    #[error("bad request: {0}")]
    Malformed(#[from] Malformed),
    #[error("no route for this host and path")]
    NoRoute,
    /// The route's verifier refused the request's token (or found none where one is required).
    #[error("{0}")]
    Unauthorized(AuthError),
    /// A WebSocket upgrade from a page of an origin the route does not allow.
    #[error("origin not allowed")]
    Origin,
    /// A request for another host than the one its TLS connection was set up for.
    #[error("misdirected request: this connection serves another host")]
    Misdirected,
    /// `limits.max_in_flight` requests and tunnels are in flight already.
    #[error("overloaded: too many requests in flight, retry shortly")]
    Overloaded,
    /// No backend of the upstream takes new sessions.
    #[error("no backend available")]
    NoBackend,
    /// Every candidate refused the connection (each failure was logged where it happened).
    #[error("bad gateway")]
    Unreachable,
    /// The backend failed after the request was sent; nothing is retried once bytes left.
    #[error("bad gateway")]
    BackendFailed(#[source] hyper::Error),
    /// The client's request body broke off (its connection failed or lied about the length).
    #[error("bad request: the request body broke off")]
    BodyFailed,
    /// The client stopped sending its request body for `timeouts.body_read`.
    #[error("request timeout: the request body stopped arriving")]
    BodyStalled(Duration),
    /// No response head within `timeouts.request`.
    #[error("gateway timeout")]
    BackendTimeout(Duration),
}

impl ProxyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::Malformed(_) | ProxyError::BodyFailed => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ProxyError::Origin => StatusCode::FORBIDDEN,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::NoBackend | ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Unreachable | ProxyError::BackendFailed(_) => StatusCode::BAD_GATEWAY,
            ProxyError::BackendTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyStalled(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The connection must not carry another request after this answer.
    fn closes_connection(&self) -> bool {
        matches!(self, ProxyError::Malformed(_) | ProxyError::BodyStalled(_) | ProxyError::BodyFailed)
    }

    /// The answer: a short plain-text body that never names a backend address. The failure is
    /// logged here, once, with what `ex` knows (upstream, backend).
    pub(crate) fn into_response(self, mut ex: Exchange) -> Response<ClientBody> {
        let upstream = ex.upstream.as_deref().unwrap_or("");
        let backend = ex.backend.as_ref().map_or("", |b| &**b.id());
        match &self {
            ProxyError::BackendFailed(e) => {
                tracing::warn!(upstream, backend, error = %Chain(e), "backend request failed");
            }
            ProxyError::BackendTimeout(timeout) => {
                tracing::warn!(
                    upstream,
                    backend,
                    timeout_ms = timeout.as_millis() as u64,
                    "backend response timed out"
                );
            }
            ProxyError::BodyStalled(waited) => tracing::info!(
                client = %ex.client(),
                upstream,
                waited_ms = waited.as_millis() as u64,
                "request body stalled"
            ),
            ProxyError::Malformed(problem) => tracing::debug!(client = %ex.client(), %problem, "malformed request"),
            ProxyError::Unauthorized(reason) => tracing::debug!(client = %ex.client(), %reason, "token refused"),
            ProxyError::Origin => tracing::debug!(client = %ex.client(), "WebSocket origin refused"),
            ProxyError::NoRoute
            | ProxyError::NoBackend
            | ProxyError::Unreachable
            | ProxyError::Misdirected
            | ProxyError::Overloaded
            | ProxyError::BodyFailed => {}
        }
        let status = self.status();
        ex.status = status.as_u16();
        let close = self.closes_connection();
        let (body, content_type, challenge) = match &self {
            ProxyError::Unauthorized(reason) => {
                // RFC 6750 3.1: no error code when the request had no token at all.
                let (error, challenge) = match reason {
                    AuthError::Missing => ("missing_token", "Bearer".to_owned()),
                    other => {
                        ("invalid_token", format!("Bearer error=\"invalid_token\", error_description=\"{other}\""))
                    }
                };
                let body = serde_json::json!({ "error": error, "reason": reason.to_string() }).to_string();
                (body, "application/json", Some(challenge))
            }
            other => (format!("{other}\n"), "text/plain; charset=utf-8", None),
        };
        let mut resp = Response::new(ClientBody::full(body, Some(ex)));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(challenge) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        if close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if matches!(self, ProxyError::Overloaded) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_its_status() {
        assert_eq!(ProxyError::Malformed(Malformed::ManyHosts).status(), StatusCode::BAD_REQUEST);
        assert_eq!(ProxyError::NoRoute.status(), StatusCode::NOT_FOUND);
        assert_eq!(ProxyError::NoBackend.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ProxyError::Unreachable.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(ProxyError::BackendTimeout(Duration::from_secs(1)).status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(ProxyError::Malformed(Malformed::ManyHosts).closes_connection());
        assert!(!ProxyError::NoBackend.closes_connection());
    }

    #[test]
    fn bodies_say_what_happened_without_addresses() {
        assert_eq!(ProxyError::Malformed(Malformed::ManyHosts).to_string(), "bad request: several Host headers");
        assert_eq!(ProxyError::NoRoute.to_string(), "no route for this host and path");
        assert_eq!(ProxyError::Unreachable.to_string(), "bad gateway");
    }
}
