//! The relay's graceful close: a Close lands between frames on both sides, even while the
//! backend streams large and fragmented messages, and both close handshakes complete.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tether::tunnel::registry::{TunnelControl, TunnelRegistry};
use tether::tunnel::relay::{self, End, Side};
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

impl Relay {
    async fn start() -> Self {
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
                Duration::from_secs(60),
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
