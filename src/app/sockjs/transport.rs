//! The SockJS transports: receiving requests (`xhr` polling, `xhr_streaming`, `eventsource`,
//! `htmlfile`) attach to a session and write its frames, `xhr_send` hands the client's
//! messages to it, and `websocket` does both over one WebSocket.
//!
//! A receiving request for an unknown session creates it and starts its STOMP session on the
//! instance's session tracker, so shutdown drains it like any WebSocket session.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::task::TaskTracker;

use super::frame::{self, Wrap};
use super::session::{SockLink, SockSession, Take};
use super::{Kind, NO_CACHE};
use crate::app::http::{Body, text, websocket_handshake, ws_config};
use crate::app::instance::Instance;
use crate::app::session::{self, Link};

/// Chunks buffered between a streaming receiver and its response body.
const STREAM_CHUNKS: usize = 16;
/// How long an `xhr_send` may wait for the STOMP session to take its messages.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn serve(
    inst: Arc<Instance>,
    req: Request<Incoming>,
    kind: Kind,
    id: String,
    user: Option<String>,
    sessions: &TaskTracker,
) -> Response<Body> {
    match kind {
        Kind::XhrSend => send(inst, req, &id).await,
        Kind::WebSocket => websocket(inst, req, user, sessions),
        Kind::Xhr => {
            let (session, _) = open(&inst, &id, user, sessions);
            poll(&inst, &session).await
        }
        Kind::XhrStreaming | Kind::EventSource | Kind::HtmlFile => {
            let callback = match kind {
                Kind::HtmlFile => match callback(req.uri().query()) {
                    Ok(c) => Some(c),
                    Err(r) => return *r,
                },
                _ => None,
            };
            let (session, _) = open(&inst, &id, user, sessions);
            stream(&inst, session, kind, callback, sessions)
        }
    }
}

/// The session `id`, created (with its STOMP session) when new.
fn open(inst: &Arc<Instance>, id: &str, user: Option<String>, sessions: &TaskTracker) -> (Arc<SockSession>, bool) {
    let (session, link) = inst.sockjs.get_or_create(id);
    let created = link.is_some();
    if let Some(link) = link {
        start_stomp(inst.clone(), link, user, sessions, true);
    }
    (session, created)
}

/// Runs the STOMP session of a SockJS session; once it ends and the client saw the close
/// frame (or the disconnect delay passed), the session is forgotten.
fn start_stomp(inst: Arc<Instance>, link: SockLink, user: Option<String>, sessions: &TaskTracker, registered: bool) {
    let session = link.session.clone();
    let delay = inst.settings.sockjs.disconnect_delay;
    sessions.spawn(async move {
        session::serve(inst.clone(), Link::SockJs { link, disconnect_delay: delay }, user).await;
        session.close_delivered(delay).await;
        if registered {
            inst.sockjs.remove(&session);
        }
    });
}

fn response(content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
    r
}

const JS: &str = "application/javascript;charset=UTF-8";

/// `xhr`: one request, the frames due (waiting up to a heartbeat for some), then done.
async fn poll(inst: &Instance, session: &Arc<SockSession>) -> Response<Body> {
    let Ok(_attached) = session.attach() else {
        return response(JS, crate::app::http::full(Wrap::Newline.frame(&another_connection())));
    };
    loop {
        match session.take_frames() {
            Take::Frames(frames) => {
                let body: String = frames.iter().map(|f| Wrap::Newline.frame(f)).collect();
                return response(JS, crate::app::http::full(body));
            }
            Take::Empty => {
                if !session.wait_for_frames(inst.settings.sockjs.heartbeat).await {
                    return response(JS, crate::app::http::full(Wrap::Newline.frame(frame::HEARTBEAT)));
                }
            }
        }
    }
}

fn another_connection() -> String {
    frame::close(2010, "Another connection still open")
}

/// `xhr_streaming`, `eventsource`, `htmlfile`: a response that stays open and carries frames
/// as they come, ended after the stream limit (the client then opens the next one) or with
/// the close frame.
fn stream(
    inst: &Instance,
    session: Arc<SockSession>,
    kind: Kind,
    callback: Option<String>,
    tasks: &TaskTracker,
) -> Response<Body> {
    let (wrap, prelude, content_type) = match kind {
        Kind::EventSource => {
            (Wrap::EventSource, frame::EVENTSOURCE_PRELUDE.to_owned(), "text/event-stream;charset=UTF-8")
        }
        Kind::HtmlFile => {
            (Wrap::HtmlFile, frame::htmlfile_prelude(callback.as_deref().unwrap_or("c")), "text/html;charset=UTF-8")
        }
        _ => (Wrap::Newline, frame::xhr_streaming_prelude(), JS),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_CHUNKS);
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    }));
    let heartbeat = inst.settings.sockjs.heartbeat;
    let limit = inst.settings.sockjs.stream_limit;
    tasks.spawn(async move {
        let send = |s: String| tx.send(Bytes::from(s));
        if send(prelude).await.is_err() {
            return;
        }
        let Ok(_attached) = session.attach() else {
            let _ = send(wrap.frame(&another_connection())).await;
            return;
        };
        let mut sent = 0usize;
        loop {
            match session.take_frames() {
                Take::Frames(frames) => {
                    let closed = session.is_closed();
                    for f in frames {
                        let chunk = wrap.frame(&f);
                        sent += chunk.len();
                        if send(chunk).await.is_err() {
                            return;
                        }
                    }
                    if closed || sent >= limit {
                        return;
                    }
                }
                Take::Empty => {
                    if !session.wait_for_frames(heartbeat).await && send(wrap.frame(frame::HEARTBEAT)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    response(content_type, body.boxed_unsync())
}

/// The `c` query parameter of `htmlfile`, validated.
fn callback(query: Option<&str>) -> Result<String, Box<Response<Body>>> {
    let c =
        query.and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "c").map(|(_, v)| v.into_owned()));
    match c {
        None => Err(Box::new(error(StatusCode::INTERNAL_SERVER_ERROR, "\"callback\" parameter required"))),
        Some(c) if !frame::is_valid_callback(&c) => {
            Err(Box::new(error(StatusCode::INTERNAL_SERVER_ERROR, "invalid \"callback\" parameter")))
        }
        Some(c) => Ok(c),
    }
}

fn error(code: StatusCode, message: &str) -> Response<Body> {
    text(code, "text/plain;charset=UTF-8", message.to_owned())
}

/// `xhr_send`: the client's messages for an existing session.
async fn send(inst: Arc<Instance>, req: Request<Incoming>, id: &str) -> Response<Body> {
    let Some(session) = inst.sockjs.get(id) else {
        return crate::app::http::status(StatusCode::NOT_FOUND);
    };
    // A batch may carry several frames (stompjs and sockjs-client both batch).
    let limit = inst.settings.limits.max_frame_bytes.saturating_mul(4).max(256 * 1024);
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "payload too large"),
    };
    let messages = match frame::decode_messages(&body) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    if session.is_closed() {
        return crate::app::http::status(StatusCode::NOT_FOUND);
    }
    match tokio::time::timeout(SEND_TIMEOUT, session.receive(messages)).await {
        Ok(Ok(())) => {
            let mut r = crate::app::http::status(StatusCode::NO_CONTENT);
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain;charset=UTF-8"));
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
            r
        }
        _ => crate::app::http::status(StatusCode::NOT_FOUND),
    }
}

/// `websocket`: SockJS frames as WebSocket messages, one session per connection.
fn websocket(
    inst: Arc<Instance>,
    req: Request<Incoming>,
    user: Option<String>,
    sessions: &TaskTracker,
) -> Response<Body> {
    let response = match websocket_handshake(req.headers(), false) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let config = ws_config(inst.settings.limits.max_frame_bytes);
    let heartbeat = inst.settings.sockjs.heartbeat;
    let tasks = sessions.clone();
    sessions.spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(event = "upgrade_failed", error = %e);
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        let id = format!("ws-{:016x}", rand::random::<u64>());
        let (session, link) = SockSession::new(id);
        start_stomp(inst, link, user, &tasks, false);
        pump(ws, &session, heartbeat).await;
    });
    response
}

/// Moves frames between `session` and the WebSocket until either side closes.
async fn pump<S>(mut ws: WebSocketStream<S>, session: &Arc<SockSession>, heartbeat: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(_attached) = session.attach() else { return };
    loop {
        if let Take::Frames(frames) = session.take_frames() {
            let closed = session.is_closed();
            for f in frames {
                if ws.feed(Message::text(f)).await.is_err() {
                    session.client_gone();
                    return;
                }
            }
            if ws.flush().await.is_err() {
                session.client_gone();
                return;
            }
            if closed {
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    let _ = ws.close(None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                return;
            }
        }
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => match frame::decode_messages(t.as_bytes()) {
                    Ok(messages) => {
                        if session.receive(messages).await.is_err() {
                            session.client_gone();
                            return;
                        }
                    }
                    // A client that breaks the framing cannot be answered in it.
                    Err(_) => {
                        session.client_gone();
                        let _ = ws.close(None).await;
                        return;
                    }
                },
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    session.client_gone();
                    return;
                }
            },
            woke = session.wait_for_frames(heartbeat) => {
                if !woke && ws.send(Message::text(frame::HEARTBEAT)).await.is_err() {
                    session.client_gone();
                    return;
                }
            }
        }
    }
}
