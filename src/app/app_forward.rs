//! Application destinations: a SEND to `/app/...` is POSTed to `--app-url` + the destination
//! (the `@MessageMapping` half of a Spring STOMP app), and the application's 2xx JSON answer
//! `{"destination": ..., "body": ...}` is what gets published (the `convertAndSend` half).
//!
//! The request carries the SEND body as is, its `content-type`, the session's verified user in
//! the `--user-header`, the STOMP session id in `X-Stomp-Session`, and each user header of the
//! frame as `X-Stomp-Header-{name}`. Plain HTTP/1.1, one connection per request. Parsing the
//! answer is pure ([`parse_answer`]); this module must not publish or touch sessions.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;

use super::stomp::Frame;

/// Prefix of the destinations handled by the application.
pub(crate) const APP_PREFIX: &str = "/app/";
/// Largest answer read from the application.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// SEND headers not passed on as `X-Stomp-Header-*` (the request says them otherwise).
const NOT_FORWARDED: [&str; 5] = ["destination", "content-length", "content-type", "receipt", "transaction"];

/// What the application asked to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Publish {
    pub(crate) destination: String,
    pub(crate) content_type: String,
    pub(crate) body: Bytes,
}

/// Why a SEND to `/app/...` could not be handled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("the application is unreachable: {0}")]
    Unreachable(String),
    #[error("the application did not answer in time")]
    Timeout,
    #[error("the application answered {0}")]
    Status(u16),
    #[error("the application's answer is not {{\"destination\": ..., \"body\": ...}}: {0}")]
    BadAnswer(String),
}

/// Whether `destination` is an application destination.
pub(crate) fn is_app_destination(destination: &str) -> bool {
    destination.starts_with(APP_PREFIX)
}

/// The URL a SEND to `destination` is POSTed to.
pub(crate) fn target(base: &Uri, destination: &str) -> Result<Uri, ForwardError> {
    let base = base.to_string();
    format!("{}{destination}", base.trim_end_matches('/'))
        .parse()
        .map_err(|_| ForwardError::Unreachable(format!("invalid URL for {destination:?}")))
}

/// The application's answer: nothing to publish (2xx with an empty body), or a message.
pub(crate) fn parse_answer(status: StatusCode, body: &[u8]) -> Result<Option<Publish>, ForwardError> {
    if !status.is_success() {
        return Err(ForwardError::Status(status.as_u16()));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        destination: String,
        body: serde_json::Value,
    }
    let answer: Answer = serde_json::from_slice(body).map_err(|e| ForwardError::BadAnswer(e.to_string()))?;
    if !answer.destination.starts_with('/') || is_app_destination(&answer.destination) {
        return Err(ForwardError::BadAnswer(format!(
            "destination {:?} must start with '/' and not be an application destination",
            answer.destination
        )));
    }
    let (content_type, body) = match answer.body {
        serde_json::Value::String(s) => ("text/plain;charset=UTF-8", Bytes::from(s)),
        serde_json::Value::Null => return Err(ForwardError::BadAnswer("\"body\" is null".into())),
        other => ("application/json", Bytes::from(other.to_string())),
    };
    Ok(Some(Publish { destination: answer.destination, content_type: content_type.to_owned(), body }))
}

/// POSTs `frame` (a SEND to `/app/...`) and parses the answer.
pub(crate) async fn forward(
    base: &Uri,
    user_header: &HeaderName,
    user: Option<&str>,
    session: &str,
    frame: &Frame,
    timeout: Duration,
) -> Result<Option<Publish>, ForwardError> {
    let destination = frame.get("destination").unwrap_or_default();
    let uri = target(base, destination)?;
    let mut req = Request::builder().method(Method::POST).uri(uri.clone());
    let headers = req.headers_mut().expect("a fresh builder has headers");
    let content_type = frame.get("content-type").unwrap_or("text/plain;charset=UTF-8");
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Some(host) = uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
        headers.insert(header::HOST, host);
    }
    if let Some(v) = user.and_then(|u| HeaderValue::from_str(u).ok()) {
        headers.insert(user_header.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(session) {
        headers.insert("x-stomp-session", v);
    }
    for (name, value) in frame.headers.iter().filter(|(n, _)| !NOT_FORWARDED.contains(&n.as_str())) {
        let name = HeaderName::from_bytes(format!("x-stomp-header-{name}").as_bytes());
        if let (Ok(name), Ok(value)) = (name, HeaderValue::from_str(value)) {
            headers.append(name, value);
        }
    }
    let req = req.body(Full::new(frame.body.clone())).map_err(|e| ForwardError::Unreachable(e.to_string()))?;
    match tokio::time::timeout(timeout, exchange(&uri, req)).await {
        Ok(Ok((status, body))) => parse_answer(status, &body),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ForwardError::Timeout),
    }
}

async fn exchange(uri: &Uri, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), ForwardError> {
    let unreachable = |e: &dyn std::fmt::Display| ForwardError::Unreachable(e.to_string());
    let host = uri.host().ok_or_else(|| unreachable(&"no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let stream =
        tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await.map_err(|e| unreachable(&e))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unreachable(&e))?;
    // The connection is driven here, alongside the request, so nothing outlives this call.
    let request = async {
        let response = sender.send_request(req).await.map_err(|e| unreachable(&e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| ForwardError::BadAnswer(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::pin!(conn);
    tokio::pin!(request);
    tokio::select! {
        r = &mut request => r,
        c = &mut conn => match c {
            Err(e) => Err(unreachable(&e)),
            Ok(()) => request.await,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_messages() {
        let ok = StatusCode::OK;
        let p = parse_answer(ok, br#"{"destination":"/sub/auction/1","body":{"bid":5}}"#).unwrap().unwrap();
        assert_eq!(p.destination, "/sub/auction/1");
        assert_eq!(p.content_type, "application/json");
        assert_eq!(p.body, Bytes::from_static(br#"{"bid":5}"#));
        let p =
            parse_answer(StatusCode::CREATED, br#"{"destination":"/user/bob/queue/x","body":"hi"}"#).unwrap().unwrap();
        assert_eq!((p.content_type.as_str(), &p.body[..]), ("text/plain;charset=UTF-8", &b"hi"[..]));
        assert_eq!(parse_answer(StatusCode::NO_CONTENT, b""), Ok(None));
        assert_eq!(parse_answer(ok, b"  \n"), Ok(None));
    }

    #[test]
    fn refusals_and_bad_answers_are_errors() {
        assert_eq!(parse_answer(StatusCode::FORBIDDEN, b""), Err(ForwardError::Status(403)));
        assert_eq!(parse_answer(StatusCode::INTERNAL_SERVER_ERROR, b"{}"), Err(ForwardError::Status(500)));
        for bad in [
            &b"not json"[..],
            br#"{"body":"x"}"#,
            br#"{"destination":"/t"}"#,
            br#"{"destination":"/t","body":null}"#,
            br#"{"destination":"t","body":"x"}"#,
            br#"{"destination":"/app/loop","body":"x"}"#,
        ] {
            assert!(matches!(parse_answer(StatusCode::OK, bad), Err(ForwardError::BadAnswer(_))), "{bad:?}");
        }
    }

    #[test]
    fn the_destination_is_appended_to_the_base_url() {
        let base: Uri = "http://127.0.0.1:8080".parse().unwrap();
        assert_eq!(target(&base, "/app/bid").unwrap(), "http://127.0.0.1:8080/app/bid");
        let base: Uri = "http://h:1/api/".parse().unwrap();
        assert_eq!(target(&base, "/app/x").unwrap(), "http://h:1/api/app/x");
        assert!(is_app_destination("/app/bid"));
        assert!(!is_app_destination("/application"));
        assert!(!is_app_destination("/topic/app/x"));
    }
}
