//! What a STOMP session talks over: a WebSocket (`/ws`, `/ws/websocket`), or a SockJS session
//! whose frames travel over any SockJS transport. The session sees bytes in and frames out
//! either way.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::app::message::OutFrame;
use crate::app::sockjs::session::SockLink;

/// A write (one batch of frames) that cannot complete this long means the peer is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the closing handshake (final frame, Close, peer's Close) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The transport under one STOMP session.
pub(crate) enum Link {
    WebSocket(Box<WebSocketStream<TokioIo<Upgraded>>>),
    SockJs { link: SockLink, disconnect_delay: Duration },
}

/// What arrived.
pub(crate) enum Incoming {
    Data(Bytes),
    /// A WebSocket message over the size limit.
    TooLarge(String),
    /// The peer started the closing handshake.
    Closed,
    /// The transport failed or the client went away.
    Gone,
    /// Nothing for STOMP (ping, pong).
    Nothing,
}

impl Link {
    pub(crate) async fn recv(&mut self) -> Incoming {
        match self {
            Link::WebSocket(ws) => match ws.next().await {
                None => Incoming::Gone,
                Some(Err(WsError::Capacity(e))) => Incoming::TooLarge(e.to_string()),
                Some(Err(_)) => Incoming::Gone,
                Some(Ok(Message::Text(t))) => Incoming::Data(Bytes::from(t)),
                Some(Ok(Message::Binary(b))) => Incoming::Data(b),
                Some(Ok(Message::Close(_))) => Incoming::Closed,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Incoming::Nothing,
            },
            Link::SockJs { link, disconnect_delay } => {
                tokio::select! {
                    batch = link.inbound.recv() => match batch {
                        Some(messages) => Incoming::Data(Bytes::from(messages.concat())),
                        None => Incoming::Gone,
                    },
                    _ = link.session.expired(*disconnect_delay) => Incoming::Gone,
                }
            }
        }
    }

    /// Writes encoded STOMP frames (or heart-beat EOLs), in order.
    pub(crate) async fn send(&mut self, frames: Vec<OutFrame>) -> Result<(), ()> {
        match self {
            Link::WebSocket(ws) => {
                let io = async move {
                    for f in frames {
                        ws.feed(ws_message(f)).await?;
                    }
                    ws.flush().await
                };
                match tokio::time::timeout(WRITE_TIMEOUT, io).await {
                    Ok(Ok(())) => Ok(()),
                    _ => Err(()),
                }
            }
            // SockJS carries text only: a body that is not UTF-8 cannot travel intact.
            Link::SockJs { link, .. } => {
                let messages = frames.into_iter().map(text_or_lossy).collect();
                link.session.push(messages, WRITE_TIMEOUT).await
            }
        }
    }

    /// Ends the session: a last frame, then the close (`None`: the peer closed first).
    pub(crate) async fn close(&mut self, last: Option<OutFrame>, close: Option<(CloseCode, &str)>) {
        match self {
            Link::WebSocket(ws) => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async move {
                    if let Some(frame) = last {
                        let _ = ws.feed(ws_message(frame)).await;
                    }
                    let close = close.map(|(code, reason)| CloseFrame { code, reason: reason.to_owned().into() });
                    // After a peer's Close this flushes tungstenite's queued reply instead.
                    let _ = WebSocketStream::close(&mut **ws, close).await;
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
            }
            Link::SockJs { link, .. } => {
                let (code, reason) = close.map_or((1000, "Normal closure"), |(c, r)| (u16::from(c), r));
                let last = last.map(text_or_lossy);
                link.session.close(code, reason, last);
            }
        }
    }

    /// The transport is gone: nothing can be sent, but a SockJS session still tells later
    /// requests that it is closed.
    pub(crate) fn abandon(&mut self) {
        if let Link::SockJs { link, .. } = self {
            link.session.close(3000, "Go away!", None);
        }
    }
}

/// A text message when the frame is UTF-8 (STOMP frames usually are), else a binary one. The
/// frame says which: nothing is validated again here, once per subscriber.
fn ws_message(frame: OutFrame) -> Message {
    let (bytes, utf8) = frame.into_parts();
    let bytes = Bytes::from(bytes);
    if utf8 {
        // SAFETY: `OutFrame::utf8` is only set for bytes known to be UTF-8 (checked once, or
        // assembled from strings and an already-checked body: `message::Prepared`).
        Message::Text(unsafe { Utf8Bytes::from_bytes_unchecked(bytes) })
    } else {
        Message::Binary(bytes)
    }
}

/// SockJS carries text only: a frame that is not UTF-8 cannot travel intact.
fn text_or_lossy(frame: OutFrame) -> String {
    let (bytes, utf8) = frame.into_parts();
    if utf8 {
        // SAFETY: as in `ws_message`.
        unsafe { String::from_utf8_unchecked(bytes) }
    } else {
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
