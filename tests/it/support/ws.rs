//! WebSocket clients through the proxy, for the echo backend's `/ws` (greets with
//! `hello from <id>`, then echoes).

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::within;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Open `ws://addr/ws` with extra request headers; returns the socket and the id of the
/// backend that greeted it.
pub async fn open(addr: SocketAddr, headers: &[(&str, &str)]) -> (Ws, String) {
    let mut request = format!("ws://{addr}/ws").into_client_request().expect("ws request");
    for (k, v) in headers {
        request
            .headers_mut()
            .insert(http::HeaderName::from_bytes(k.as_bytes()).expect("header name"), v.parse().expect("header value"));
    }
    let (mut ws, _) = within("WebSocket handshake", tokio_tungstenite::connect_async(request))
        .await
        .unwrap_or_else(|e| panic!("WebSocket handshake through {addr} failed: {e}"));
    let backend = match within("greeting", ws.next()).await {
        Some(Ok(Message::Text(text))) => {
            text.strip_prefix("hello from ").unwrap_or_else(|| panic!("unexpected greeting {text:?}")).to_owned()
        }
        other => panic!("expected a greeting, got {other:?}"),
    };
    (ws, backend)
}

/// Send `text` and expect exactly it back as the next message: a Close, an error or the end
/// of the stream fails the test.
pub async fn echo(ws: &mut Ws, text: &str) {
    within("send", ws.send(Message::text(text))).await.unwrap_or_else(|e| panic!("send {text:?} failed: {e}"));
    match within("echo", ws.next()).await {
        Some(Ok(Message::Text(got))) => assert_eq!(got.as_str(), text, "echo"),
        other => panic!("expected the echo of {text:?}, got {other:?}"),
    }
}

/// Wait for the proxy's Close; returns its code. Answers it like a browser, then waits for the
/// stream to end.
pub async fn expect_close(ws: &mut Ws) -> u16 {
    let code = match within("a Close frame", ws.next()).await {
        Some(Ok(Message::Close(Some(frame)))) => u16::from(frame.code),
        other => panic!("expected a Close frame with a code, got {other:?}"),
    };
    let _ = ws.close(None).await;
    while let Some(Ok(_)) = within("the stream to end after the Close", ws.next()).await {}
    code
}
