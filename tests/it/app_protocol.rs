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

    // A transaction id already open is an error; the receipt is named.
    let mut c = StompClient::connect(&a.ws_url()).await;
    c.send_frame(&Frame::new(Command::Begin).header("transaction", "t").header("receipt", "b1")).await;
    c.expect_receipt("b1").await;
    c.send_frame(&Frame::new(Command::Begin).header("transaction", "t").header("receipt", "b2")).await;
    let (close, frames) = c.expect_close(WAIT).await;
    assert_eq!(frames[0].command, Command::Error);
    assert_eq!(frames[0].get("receipt-id"), Some("b2"));
    assert_eq!(frames[0].get("message"), Some("transaction \"t\" is already open"));
    assert_eq!(close_code(&close), Some(1002));

    // A SUBSCRIBE id may not be reused on one connection.
    let mut c = StompClient::connect(&a.ws_url()).await;
    c.subscribe("/topic/1", "dup").await;
    c.send_frame(&Frame::new(Command::Subscribe).header("id", "dup").header("destination", "/topic/2")).await;
    let (_, frames) = c.expect_close(WAIT).await;
    assert_eq!(frames[0].command, Command::Error);
    a.shutdown().await;
}

fn subscribe_with_ack(id: &str, destination: &str, ack: &str, receipt: &str) -> Frame {
    Frame::new(Command::Subscribe)
        .header("id", id)
        .header("destination", destination)
        .header("ack", ack)
        .header("receipt", receipt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_acks_are_cumulative_individual_acks_are_not_and_unknown_ids_are_errors() {
    let a = TestApp::builder().spawn().await;
    let mut c = StompClient::connect(&a.ws_url()).await;
    c.send_frame(&subscribe_with_ack("cum", "/topic/ack.c", "client", "s1")).await;
    c.expect_receipt("s1").await;
    c.send_frame(&subscribe_with_ack("ind", "/topic/ack.i", "client-individual", "s2")).await;
    c.expect_receipt("s2").await;
    c.subscribe("/topic/ack.a", "auto").await;
    for (dest, body) in [("/topic/ack.c", "c1"), ("/topic/ack.c", "c2"), ("/topic/ack.i", "i1"), ("/topic/ack.i", "i2")]
    {
        c.send(dest, body).await;
    }
    c.send("/topic/ack.a", "a1").await;
    let mut ack_ids = Vec::new();
    for expected in ["c1", "c2", "i1", "i2"] {
        let m = c.next_message().await;
        assert_eq!(&m.body[..], expected.as_bytes());
        ack_ids.push(m.get("ack").expect("client-acknowledged messages carry an ack header").to_owned());
    }
    assert_eq!(c.next_message().await.get("ack"), None, "auto messages carry no ack header");
    // ACK of c2 also settles c1 (cumulative); i2 settles only itself; NACK is accepted.
    c.send_frame(&Frame::new(Command::Ack).header("id", ack_ids[1].clone()).header("receipt", "a1")).await;
    c.expect_receipt("a1").await;
    c.send_frame(&Frame::new(Command::Nack).header("id", ack_ids[3].clone()).header("receipt", "a2")).await;
    c.expect_receipt("a2").await;
    c.send_frame(&Frame::new(Command::Ack).header("id", ack_ids[2].clone()).header("receipt", "a3")).await;
    c.expect_receipt("a3").await;
    let metrics = http_client::get(a.addr, "/metrics").await.body;
    assert!(metrics.lines().any(|l| l == "tether_backend_acks_total 2"), "{metrics}");
    assert!(metrics.lines().any(|l| l == "tether_backend_nacks_total 1"), "{metrics}");
    // c1 was settled by the cumulative ACK: acknowledging it again is an error.
    c.send_frame(&Frame::new(Command::Ack).header("id", ack_ids[0].clone()).header("receipt", "a4")).await;
    let (close, frames) = c.expect_close(WAIT).await;
    assert_eq!(frames[0].command, Command::Error);
    assert_eq!(frames[0].get("receipt-id"), Some("a4"));
    assert_eq!(close_code(&close), Some(1002));

    // An id never delivered to this session.
    let mut c = StompClient::connect(&a.ws_url()).await;
    c.send_frame(&Frame::new(Command::Ack).header("id", "1")).await;
    let (_, frames) = c.expect_close(WAIT).await;
    assert_eq!(frames[0].command, Command::Error);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_are_bounded() {
    let a = TestApp::builder().max_unacked(3).spawn().await;
    let mut c = StompClient::connect(&a.ws_url()).await;
    c.send_frame(&subscribe_with_ack("s", "/topic/unacked", "client", "s")).await;
    c.expect_receipt("s").await;
    for i in 0..4 {
        c.send("/topic/unacked", &i.to_string()).await;
    }
    let (_, frames) = c.expect_close(WAIT).await;
    assert_eq!(frames.len(), 4, "{frames:?}");
    assert!(frames[..3].iter().all(|f| f.command == Command::Message));
    assert_eq!(frames[3].command, Command::Error);
    assert_eq!(frames[3].get("message"), Some("slow consumer"));
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_hold_sends_and_acks_until_commit_and_drop_them_on_abort() {
    let a = TestApp::builder().spawn().await;
    let mut c = StompClient::connect(&a.ws_url()).await;
    c.send_frame(&subscribe_with_ack("s", "/topic/tx", "client-individual", "s")).await;
    c.expect_receipt("s").await;
    let send = |body: &str, tx: &str| {
        Frame::new(Command::Send).header("destination", "/topic/tx").header("transaction", tx).body(body.to_owned())
    };
    c.send_frame(&Frame::new(Command::Begin).header("transaction", "t1")).await;
    c.send_frame(&Frame::new(Command::Begin).header("transaction", "t2")).await;
    c.send_frame(&send("held-1", "t1")).await;
    c.send_frame(&send("dropped", "t2")).await;
    c.send_frame(&send("held-2", "t1").header("receipt", "in-tx")).await;
    // Held, not delivered: the receipt comes first and no MESSAGE with it.
    c.expect_receipt("in-tx").await;
    c.send_frame(&Frame::new(Command::Abort).header("transaction", "t2")).await;
    c.send_frame(&Frame::new(Command::Commit).header("transaction", "t1").header("receipt", "commit")).await;
    c.expect_receipt("commit").await;
    let m1 = c.next_message().await;
    let m2 = c.next_message().await;
    assert_eq!((&m1.body[..], &m2.body[..]), (&b"held-1"[..], &b"held-2"[..]));
    // An ACK in a transaction takes effect at COMMIT; before that the message is pending.
    c.send_frame(&Frame::new(Command::Begin).header("transaction", "t3")).await;
    let ack = |m: &Frame| Frame::new(Command::Ack).header("id", m.get("ack").unwrap()).header("transaction", "t3");
    c.send_frame(&ack(&m1)).await;
    c.send_frame(&Frame::new(Command::Abort).header("transaction", "t3")).await;
    c.send_frame(&Frame::new(Command::Ack).header("id", m1.get("ack").unwrap()).header("receipt", "acked")).await;
    c.expect_receipt("acked").await;
    // Unknown transactions are errors.
    c.send_frame(&Frame::new(Command::Commit).header("transaction", "t1").header("receipt", "again")).await;
    let (_, frames) = c.expect_close(WAIT).await;
    assert_eq!(frames[0].command, Command::Error, "{frames:?}");
    assert_eq!(frames[0].get("message"), Some("no open transaction \"t1\""));
    assert_eq!(frames[0].get("receipt-id"), Some("again"));
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_come_in_frame_order_and_disconnect_aborts_and_closes_normally() {
    let a = TestApp::builder().spawn().await;
    let mut c = StompClient::connect(&a.ws_url()).await;
    c.send_frame(&Frame::new(Command::Subscribe).header("id", "s").header("destination", "/t").header("receipt", "1"))
        .await;
    c.send_frame(&Frame::new(Command::Begin).header("transaction", "open").header("receipt", "2")).await;
    c.expect_receipt("1").await;
    c.expect_receipt("2").await;
    c.disconnect().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_surface_answers_probes_whoami_and_refuses_plain_gets_on_ws() {
    let a = TestApp::builder().id("app-x").spawn().await;
    // A plain GET of the endpoint is SockJS's greeting.
    let r = http_client::get(a.addr, "/ws").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "Welcome to SockJS!\n"));

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_follows_the_receipt_of_its_unsubscribe_even_when_the_id_is_reused() {
    const FLOOD: usize = 4000;
    // Room for twice the flood (each message well under 512 bytes): the queue never overflows.
    let a = TestApp::builder().outbound_queue_bytes(2 * FLOOD * 512).spawn().await;
    let mut c = StompClient::connect(&a.ws_url()).await;
    c.subscribe("/topic/room.a", "room").await;
    let mut publisher = StompClient::connect(&a.ws_url()).await;
    // A flood to room a, in one WebSocket message, so deliveries are queued for `room` while
    // the client switches rooms.
    let mut flood = String::new();
    for i in 0..FLOOD {
        let f = Frame::new(Command::Send).header("destination", "/topic/room.a").body(format!("a{i}"));
        flood.push_str(std::str::from_utf8(&stomp::to_bytes(&f, Version::V1_2)).unwrap());
    }
    publisher.send_raw(Message::text(flood)).await;
    // Leave room a and join room b under the same subscription id, at once.
    let switch = [
        Frame::new(Command::Unsubscribe).header("id", "room").header("receipt", "left"),
        Frame::new(Command::Subscribe)
            .header("id", "room")
            .header("destination", "/topic/room.b")
            .header("receipt", "joined"),
    ]
    .iter()
    .map(|f| String::from_utf8(stomp::to_bytes(f, Version::V1_2)).unwrap())
    .collect::<String>();
    c.send_raw(Message::text(switch)).await;
    loop {
        let f = c.next_frame().await;
        if f.command == Command::Receipt {
            assert_eq!(f.get("receipt-id"), Some("left"));
            break;
        }
        assert_eq!(f.get("destination"), Some("/topic/room.a"), "{f:?}");
    }
    c.expect_receipt("joined").await;
    publisher.send("/topic/room.b", "b0").await;
    let m = c.next_message().await;
    assert_eq!((m.get("destination"), m.get("subscription")), (Some("/topic/room.b"), Some("room")), "{m:?}");
    assert_eq!(&m.body[..], b"b0", "nothing of room a after the RECEIPT of its UNSUBSCRIBE");
    a.shutdown().await;
}
