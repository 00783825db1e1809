//! STOMP over WebSocket at the wire: subprotocol and version negotiation, frames split across
//! and batched within WebSocket messages, escaping and NUL bodies end to end, receipts, and
//! errors (malformed, oversized, out-of-order) that close only the offending session.

use tether::app::stomp::{self, Command, Frame, Version};
use tokio_tungstenite::tungstenite::Message;

use crate::support::WAIT;
use crate::support::app::TestApp;
use crate::support::http_client;
use crate::support::stomp_client::{ConnectOptions, StompClient};

fn close_code(c: &Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> Option<u16> {
    c.as_ref().map(|c| u16::from(c.code))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_gets_an_error_and_closes_only_that_session() {
    let a = TestApp::builder().spawn().await;
    let mut victim = StompClient::connect(&a.ws_url()).await;
    let mut bystander = StompClient::connect(&a.ws_url()).await;
    bystander.subscribe("/topic/p", "s").await;

    victim.send_raw(Message::text("BOGUS\n\n\0")).await;
    let (close, frames) = victim.expect_close(WAIT).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].command, Command::Error);
    assert_eq!(frames[0].get("message"), Some("malformed frame"));
    assert_eq!(close_code(&close), Some(1002));

    bystander.send("/topic/p", "still here").await;
    assert_eq!(bystander.next_body().await, "still here");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_refused() {
    let a = TestApp::builder().max_frame_bytes(16 * 1024).spawn().await;
    let mut c = StompClient::connect(&a.ws_url()).await;
    c.subscribe("/topic/big", "s").await;
    // Just under the limit passes intact.
    let fits = "x".repeat(16 * 1024 - 200);
    c.send("/topic/big", &fits).await;
    assert_eq!(c.next_body().await, fits);
    // Over it, split across messages so no single WebSocket message is large: refused anyway.
    let frame = Frame::new(Command::Send).header("destination", "/topic/big").body("y".repeat(20 * 1024));
    let bytes = stomp::to_bytes(&frame, Version::V1_2);
    for chunk in bytes.chunks(4096) {
        c.send_raw(Message::binary(chunk.to_vec())).await;
    }
    let (close, frames) = c.expect_close(WAIT).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].command, Command::Error);
    assert_eq!(frames[0].get("message"), Some("frame too large"));
    assert_eq!(close_code(&close), Some(1009));
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_split_across_and_batched_within_websocket_messages() {
    let a = TestApp::builder().spawn().await;
    let (mut ws, protocol) = crate::support::stomp_client::open_ws(&a.ws_url(), &ConnectOptions::default()).await;
    assert_eq!(protocol.as_deref(), Some("v12.stomp"));
    use futures_util::{SinkExt as _, StreamExt as _};

    // CONNECT and SUBSCRIBE (with receipt) in one message, with heart-beat EOLs around them.
    ws.send(Message::text(
        "\nCONNECT\naccept-version:1.2\nhost:x\n\n\0\r\nSUBSCRIBE\nid:0\ndestination:/topic/a\\cb\nreceipt:r\n\n\0\n",
    ))
    .await
    .unwrap();
    // A SEND with an escaped header and a NUL-containing body, split mid-header and mid-body.
    let send = b"SEND\ndestination:/topic/a\\cb\nx-note:line1\\nline2\\\\\ncontent-length:7\n\nab\0cd\0e\0";
    for part in [&send[..10], &send[10..50], &send[50..63], &send[63..]] {
        ws.send(Message::binary(part.to_vec())).await.unwrap();
    }

    let mut decoder = stomp::Decoder::new(stomp::Limits::default());
    let mut frames = Vec::new();
    while frames.len() < 3 {
        let msg = tokio::time::timeout(WAIT, ws.next()).await.expect("frame in time").expect("open").expect("ok");
        decoder.push(&msg.into_data());
        while let Some(item) = decoder.next_item().unwrap() {
            if let stomp::Item::Frame(f) = item {
                frames.push(f);
            }
        }
    }
    assert_eq!(frames[0].command, Command::Connected);
    assert_eq!(frames[0].get("version"), Some("1.2"));
    assert_eq!(frames[1].command, Command::Receipt);
    assert_eq!(frames[1].get("receipt-id"), Some("r"));
    let m = &frames[2];
    assert_eq!(m.command, Command::Message);
    assert_eq!(m.get("destination"), Some("/topic/a:b"));
    assert_eq!(m.get("x-note"), Some("line1\nline2\\"));
    assert_eq!(&m.body[..], b"ab\0cd\0e");
    assert_eq!(m.get("content-length"), Some("7"));
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocol_and_version_are_negotiated() {
    let a = TestApp::builder().spawn().await;
    let opts = ConnectOptions {
        subprotocols: Some("v11.stomp, v12.stomp".into()),
        accept_version: "1.0,1.1".into(),
        ..ConnectOptions::default()
    };
    let c = StompClient::connect_with(&a.ws_url(), opts).await;
    assert_eq!(c.protocol.as_deref(), Some("v11.stomp"));
    assert_eq!(c.connected.get("version"), Some("1.1"));
    assert!(c.connected.get("session").is_some());
    assert!(c.connected.get("server").is_some_and(|s| s.starts_with("tether/")));

    // No subprotocol offered at all still works, as STOMP 1.2.
    let opts = ConnectOptions { subprotocols: None, ..ConnectOptions::default() };
    let mut c = StompClient::connect_with(&a.ws_url(), opts).await;
    assert_eq!(c.protocol, None);
    assert_eq!(c.connected.get("version"), Some("1.2"));
    c.subscribe("/topic/v", "s").await;

    // No common version: ERROR listing ours, then close.
    let (mut ws, _) = crate::support::stomp_client::open_ws(&a.ws_url(), &ConnectOptions::default()).await;
    use futures_util::{SinkExt as _, StreamExt as _};
    ws.send(Message::text("CONNECT\naccept-version:2.0\n\n\0")).await.unwrap();
    let msg = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    let text = msg.into_text().unwrap();
    assert!(text.starts_with("ERROR\n"), "{text}");
    assert!(text.contains("\nversion:1.0,1.1,1.2\n"), "{text}");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_out_of_place_are_errors() {
    let a = TestApp::builder().spawn().await;
    // Anything before CONNECT.
    let (mut ws, _) = crate::support::stomp_client::open_ws(&a.ws_url(), &ConnectOptions::default()).await;
    use futures_util::{SinkExt as _, StreamExt as _};
    ws.send(Message::text("SEND\ndestination:/q\n\nx\0")).await.unwrap();
    let msg = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    let text = msg.into_text().unwrap();
    assert!(text.starts_with("ERROR\n") && text.contains("message:expected CONNECT, got SEND"), "{text}");

    // Transactions are refused rather than silently ignored; the receipt is named.
    let mut c = StompClient::connect(&a.ws_url()).await;
    c.send_frame(&Frame::new(Command::Begin).header("transaction", "t").header("receipt", "b")).await;
    let (close, frames) = c.expect_close(WAIT).await;
    assert_eq!(frames[0].command, Command::Error);
    assert_eq!(frames[0].get("receipt-id"), Some("b"));
    assert_eq!(close_code(&close), Some(1002));

    // A SUBSCRIBE id may not be reused on one connection.
    let mut c = StompClient::connect(&a.ws_url()).await;
    c.subscribe("/topic/1", "dup").await;
    c.send_frame(&Frame::new(Command::Subscribe).header("id", "dup").header("destination", "/topic/2")).await;
    let (_, frames) = c.expect_close(WAIT).await;
    assert_eq!(frames[0].command, Command::Error);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_are_receipted_and_disconnect_closes_normally() {
    let a = TestApp::builder().spawn().await;
    let mut c = StompClient::connect(&a.ws_url()).await;
    c.send_frame(&Frame::new(Command::Ack).header("id", "m1").header("receipt", "ack-1")).await;
    c.expect_receipt("ack-1").await;
    c.send_frame(&Frame::new(Command::Nack).header("id", "m2").header("receipt", "nack-1")).await;
    c.expect_receipt("nack-1").await;
    // Receipts come back in frame order even when earlier ones wait on the broker.
    c.send_frame(&Frame::new(Command::Subscribe).header("id", "s").header("destination", "/t").header("receipt", "1"))
        .await;
    c.send_frame(&Frame::new(Command::Ack).header("id", "m3").header("receipt", "2")).await;
    c.expect_receipt("1").await;
    c.expect_receipt("2").await;
    c.disconnect().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_surface_answers_probes_whoami_and_refuses_plain_gets_on_ws() {
    let a = TestApp::builder().id("app-x").spawn().await;
    let r = http_client::get(a.addr, "/ws").await;
    assert_eq!(r.status, 426);
    assert_eq!(r.headers.get("upgrade").map(|v| v.as_bytes()), Some(&b"websocket"[..]));

    let r = http_client::request(a.addr, http::Method::GET, "/whoami", &[("x-user-id", "dana")], "").await;
    assert_eq!(r.json(), serde_json::json!({ "instance": "app-x", "user": "dana" }));
    let r = http_client::get(a.addr, "/whoami").await;
    assert_eq!(r.json(), serde_json::json!({ "instance": "app-x", "user": null }));

    let h = a.health().await;
    assert_eq!(h["status"], "ok");
    assert_eq!(h["broker"], "local");
    assert_eq!(http_client::get(a.addr, "/readyz").await.status, 200);

    let page = http_client::get(a.addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<script src=\"/page.js\">"), "page must load our own script");
    assert!(!page.body.contains("http://") && !page.body.contains("https://"), "no external assets");
    let js = http_client::get(a.addr, "/page.js").await;
    assert_eq!(js.status, 200);
    assert!(js.body.contains("v12.stomp"));
    assert_eq!(http_client::get(a.addr, "/nope").await.status, 404);

    // An upgrade with an unusable user header is refused before any session starts.
    let r = http_client::request(
        a.addr,
        http::Method::GET,
        "/ws",
        &[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("x-user-id", "a/b"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 400);
    a.shutdown().await;
}
