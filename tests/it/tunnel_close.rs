//! The relay's graceful close: a Close lands between frames on both sides, even while the
//! backend streams large and fragmented messages, and both close handshakes complete. A peer
//! that dies or stops reading is closed the same way from the other side, with 1011.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tether::tunnel::registry::{TunnelControl, TunnelRegistry};
use tether::tunnel::relay::{self, End, Side, Timeouts};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

use crate::support::within;

/// A connected pair of TCP streams on loopback.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (a.unwrap(), b.unwrap().0)
}

/// Payload of message `seq`: its number then a pattern, so corruption or truncation shows.
fn payload(seq: u32, len: usize) -> Vec<u8> {
    let mut p = seq.to_be_bytes().to_vec();
    p.extend((0..len).map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8));
    p
}

/// A relay between two loopback connection pairs: the test plays the client on `client_tcp`
/// and the backend on `backend_tcp`; the tunnel is registered in `registry` while it runs.
struct Relay {
    client_tcp: TcpStream,
    backend_tcp: TcpStream,
    registry: Arc<TunnelRegistry>,
    control: Arc<TunnelControl>,
    task: tokio::task::JoinHandle<relay::Report>,
}

/// Timeouts that never fire within a test.
const PATIENT: Timeouts = Timeouts { idle: Duration::from_secs(60), send: Duration::from_secs(60) };

impl Relay {
    async fn start() -> Self {
        Self::start_with(PATIENT).await
    }

    async fn start_with(timeouts: Timeouts) -> Self {
        let (client_tcp, proxy_client) = pair().await;
        let (proxy_backend, backend_tcp) = pair().await;
        let registry = Arc::new(TunnelRegistry::new(Arc::default()));
        let registration = registry.register(None);
        let control = registration.control().clone();
        let task = tokio::spawn(async move {
            let report = relay::relay(
                Side::Plain(proxy_client),
                Side::Plain(proxy_backend),
                bytes::Bytes::new(),
                bytes::Bytes::new(),
                registration.control(),
                &timeouts,
            )
            .await;
            drop(registration);
            report
        });
        Self { client_tcp, backend_tcp, registry, control, task }
    }
}

fn raw_frame(opcode: OpCode, fin: bool, data: Vec<u8>) -> Message {
    let header = FrameHeader { is_final: fin, opcode, ..FrameHeader::default() };
    Message::Frame(Frame::from_payload(header, data.into()))
}

/// An idle tunnel's memory is mostly its task's state, and the relay is most of that: it must
/// stay small (two flows, the idle timer, both sockets), with no buffer in it.
#[tokio::test]
async fn an_idle_relay_holds_at_most_512_bytes_of_state() {
    let (client, proxy_client) = pair().await;
    let (proxy_backend, backend) = pair().await;
    let registry = Arc::new(TunnelRegistry::new(Arc::default()));
    let registration = registry.register(None);
    let relaying = relay::relay(
        Side::Plain(proxy_client),
        Side::Plain(proxy_backend),
        bytes::Bytes::new(),
        bytes::Bytes::new(),
        registration.control(),
        &PATIENT,
    );
    let size = std::mem::size_of_val(&relaying);
    assert!(size <= 512, "the relay future takes {size} bytes");
    drop((relaying, client, backend));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_close_lands_between_frames_on_both_sides() {
    let Relay { client_tcp, backend_tcp, registry, control, task: relay_task } = Relay::start().await;

    // The backend streams until it sees a Close: alternately one 300 KiB binary message and
    // one text message fragmented into three frames.
    let backend = WebSocketStream::from_raw_socket(backend_tcp, Role::Server, None).await;
    let (mut sink, mut stream) = backend.split();
    let backend_task = tokio::spawn(async move {
        let mut seq = 0u32;
        loop {
            let sending = async {
                if seq.is_multiple_of(2) {
                    sink.send(Message::binary(payload(seq, 300 * 1024))).await
                } else {
                    let body = payload(seq, 3 * 40 * 1024);
                    let parts: Vec<Vec<u8>> = body.chunks(40 * 1024 + 2).map(<[u8]>::to_vec).collect();
                    let last = parts.len() - 1;
                    for (i, part) in parts.into_iter().enumerate() {
                        let opcode = if i == 0 { OpCode::Data(Data::Binary) } else { OpCode::Data(Data::Continue) };
                        sink.feed(raw_frame(opcode, i == last, part)).await?;
                    }
                    sink.flush().await
                }
            };
            tokio::select! {
                sent = sending => {
                    if sent.is_err() {
                        return None;
                    }
                    seq += 1;
                }
                msg = stream.next() => {
                    return match msg {
                        Some(Ok(Message::Close(frame))) => {
                            // tungstenite answers the Close itself; let it flush.
                            let _ = sink.close().await;
                            frame.map(|f| u16::from(f.code))
                        }
                        _ => None,
                    };
                }
            }
        }
    });

    let mut client = WebSocketStream::from_raw_socket(client_tcp, Role::Client, None).await;
    let mut received = 0u32;
    let close_code = within("messages, then a Close", async {
        loop {
            match client.next().await {
                Some(Ok(Message::Binary(data))) => {
                    let seq = u32::from_be_bytes(data[..4].try_into().unwrap());
                    let len = if seq.is_multiple_of(2) { 300 * 1024 } else { 3 * 40 * 1024 };
                    assert_eq!(seq, received, "messages arrive in order, none lost before the Close");
                    assert_eq!(&data[..], &payload(seq, len)[..], "message {seq} intact");
                    received += 1;
                    if received == 5 {
                        control.request_close(1012);
                    }
                }
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(other)) => panic!("unexpected message {other:?}"),
                Some(Err(e)) => panic!("the client saw a broken stream: {e}"),
                None => panic!("stream ended without a Close frame"),
            }
        }
    })
    .await;
    assert_eq!(close_code, Some(1012));
    assert!(received >= 5);
    // Answer the Close like a browser does; then the stream ends.
    let _ = client.close(None).await;
    while let Some(Ok(_)) = within("client stream end", client.next()).await {}

    let backend_close = within("backend task", backend_task).await.unwrap();
    assert_eq!(backend_close, Some(1012), "the backend got a (masked) Close with the same code");
    let report = within("relay end", relay_task).await.unwrap();
    assert_eq!(report.end, End::ClosedByProxy);
    assert_eq!(report.close_code, Some(1012));
    assert!(registry.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_closes_at_once_and_a_silent_peer_is_cut_after_the_grace() {
    let Relay { client_tcp, backend_tcp, control, task: relay_task, .. } = Relay::start().await;
    let mut client = WebSocketStream::from_raw_socket(client_tcp, Role::Client, None).await;
    // The backend never answers: it holds the socket without reading.
    let _silent_backend = backend_tcp;
    control.request_close(1001);
    match within("Close frame", client.next()).await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a Close frame, got {other:?}"),
    }
    let _ = client.close(None).await;
    let report = within("relay end", relay_task).await.unwrap();
    assert_eq!(report.end, End::CloseTimedOut, "the backend never answered its Close");
}

/// The next Close frame `ws` receives (messages before it are skipped), or `None` if the
/// stream ends or breaks without one.
async fn next_close(ws: &mut WebSocketStream<TcpStream>) -> Option<(u16, String)> {
    within("a Close frame or the end of the stream", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_dies_between_frames_leaves_the_client_a_close_1011() {
    let Relay { client_tcp, backend_tcp, task: relay_task, .. } = Relay::start().await;
    let mut backend = WebSocketStream::from_raw_socket(backend_tcp, Role::Server, None).await;
    for seq in 0..3 {
        backend.send(Message::binary(payload(seq, 1000))).await.unwrap();
    }
    // The process dies: its socket closes with no Close frame.
    drop(backend);

    let mut client = WebSocketStream::from_raw_socket(client_tcp, Role::Client, None).await;
    for seq in 0..3 {
        match within("a message", client.next()).await {
            Some(Ok(Message::Binary(data))) => assert_eq!(&data[..], &payload(seq, 1000)[..]),
            other => panic!("expected message {seq}, got {other:?}"),
        }
    }
    let (code, reason) = next_close(&mut client).await.expect("a Close frame after the messages");
    assert_eq!(code, 1011);
    assert_eq!(reason, "tether: backend connection lost");
    // The client answers; the tunnel ends as a lost backend.
    let _ = client.close(None).await;
    let report = within("relay end", relay_task).await.unwrap();
    assert_eq!(report.end, End::BackendLost);
    assert_eq!(report.close_code, Some(1011));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_dies_inside_a_frame_ends_the_client_connection_without_a_close() {
    use tokio::io::AsyncWriteExt;
    let Relay { client_tcp, mut backend_tcp, task: relay_task, .. } = Relay::start().await;
    // A binary frame announcing 1000 payload bytes, of which 10 arrive before the backend dies.
    backend_tcp.write_all(&[0x82, 0x7e, 0x03, 0xe8]).await.unwrap();
    backend_tcp.write_all(&[7u8; 10]).await.unwrap();
    drop(backend_tcp);

    let mut client = WebSocketStream::from_raw_socket(client_tcp, Role::Client, None).await;
    // A Close here would land inside the frame and corrupt it: the stream just ends.
    assert_eq!(next_close(&mut client).await, None);
    let report = within("relay end", relay_task).await.unwrap();
    assert_eq!(report.end, End::BackendLost);
    assert_eq!(report.close_code, None);
}

/// Send 64 KiB messages on `ws` (at most 1,024 of them: 64 MiB) until a Close arrives, within
/// the suite's wait for `what`. Returns the Close's code and reason, and the sending half.
async fn flood_until_close(
    ws: WebSocketStream<TcpStream>,
    what: &str,
) -> (Option<(u16, String)>, futures_util::stream::SplitSink<WebSocketStream<TcpStream>, Message>) {
    let (mut sink, mut stream) = ws.split();
    let close = within(what, async {
        let mut sent = 0;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(Ok(Message::Close(frame))) => return frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    Some(Ok(_)) => {}
                    other => panic!("expected a Close, got {other:?}"),
                },
                r = sink.send(Message::binary(vec![1u8; 64 * 1024])), if sent < 1024 => {
                    r.expect("send");
                    sent += 1;
                }
            }
        }
    })
    .await;
    (close, sink)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_after_the_send_timeout_and_the_backend_gets_1011() {
    let timeouts = Timeouts { idle: Duration::from_secs(60), send: Duration::from_millis(300) };
    let Relay { client_tcp, backend_tcp, task: relay_task, .. } = Relay::start_with(timeouts).await;
    // The client never reads a byte.
    let _stalled_client = client_tcp;
    let backend = WebSocketStream::from_raw_socket(backend_tcp, Role::Server, None).await;
    let (close, mut sink) = flood_until_close(backend, "the backend to receive a Close").await;
    assert_eq!(close, Some((1011, "tether: client stopped reading".to_owned())));
    let _ = sink.close().await;
    let report = within("relay end", relay_task).await.unwrap();
    assert_eq!(report.end, End::SendTimeout);
    assert_eq!(report.close_code, Some(1011));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_reading_is_dropped_after_the_send_timeout_and_the_client_gets_1011() {
    let timeouts = Timeouts { idle: Duration::from_secs(60), send: Duration::from_millis(300) };
    let Relay { client_tcp, backend_tcp, task: relay_task, .. } = Relay::start_with(timeouts).await;
    // The backend never reads a byte.
    let _stalled_backend = backend_tcp;
    let client = WebSocketStream::from_raw_socket(client_tcp, Role::Client, None).await;
    let (close, mut sink) = flood_until_close(client, "the client to receive a Close").await;
    assert_eq!(close, Some((1011, "tether: backend stopped reading".to_owned())));
    let _ = sink.close().await;
    let report = within("relay end", relay_task).await.unwrap();
    assert_eq!(report.end, End::SendTimeout);
    assert_eq!(report.close_code, Some(1011));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_a_finished_tunnel_half_open_is_let_go_after_the_grace() {
    let Relay { client_tcp, backend_tcp, task: relay_task, .. } = Relay::start().await;
    let mut backend = WebSocketStream::from_raw_socket(backend_tcp, Role::Server, None).await;
    // The backend closes properly: Close frame, then its end of the connection.
    backend.send(Message::Close(None)).await.expect("close");
    drop(backend);
    // The client reads the Close but neither answers nor hangs up.
    let mut client = WebSocketStream::from_raw_socket(client_tcp, Role::Client, None).await;
    assert!(matches!(within("the Close", client.next()).await, Some(Ok(Message::Close(None)))));
    let started = std::time::Instant::now();
    let report = within("relay end", relay_task).await.unwrap();
    assert_eq!(report.end, End::BackendClosed);
    assert!(started.elapsed() <= relay::CLOSE_GRACE + Duration::from_secs(2), "let go after the grace");
    drop(client);
}
