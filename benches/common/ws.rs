//! A lean WebSocket client for load: raw RFC 6455 framing over a TCP (or TLS) stream, no
//! per-message allocation. One closed-loop echo costs the client one write (a pre-masked
//! 22-byte frame) and one read (the 18-byte unmasked echo), so it is far cheaper than any proxy
//! hop; [`echo_load`] straight at the backend shows how much headroom it has.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Payload size of every echoed message.
pub const PAYLOAD: usize = 16;
/// Client frame: FIN+binary, MASK|len, 4-byte mask, payload.
const CLIENT_FRAME: usize = 2 + 4 + PAYLOAD;
/// Server frame: FIN+binary, len, payload (servers do not mask).
const SERVER_FRAME: usize = 2 + PAYLOAD;

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connect to `addr` (through TLS when `tls` is given, SNI `localhost`) and complete the
/// WebSocket handshake on `/ws`.
pub async fn connect(addr: SocketAddr, tls: Option<&TlsConnector>) -> Result<Stream, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut stream = match tls {
        None => Stream::Plain(tcp),
        Some(connector) => {
            let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
            Stream::Tls(Box::new(connector.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?))
        }
    };
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: localhost:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        addr.port()
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("handshake write: {e}"))?;
    stream.flush().await.map_err(|e| format!("handshake flush: {e}"))?;
    // Nothing is sent by the server after its 101 until we send a frame, so the head is all
    // that can arrive.
    let mut head = [0u8; 2048];
    let mut len = 0;
    loop {
        let n = stream.read(&mut head[len..]).await.map_err(|e| format!("handshake read: {e}"))?;
        if n == 0 {
            return Err(format!("connection closed during the handshake: {:?}", String::from_utf8_lossy(&head[..len])));
        }
        len += n;
        if head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if len == head.len() {
            return Err("handshake answer too long".to_owned());
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(format!("no 101: {:?}", String::from_utf8_lossy(&head[..len.min(200)])));
    }
    Ok(stream)
}

/// A masked binary client frame carrying `payload`.
fn client_frame(payload: &[u8; PAYLOAD], mask: [u8; 4]) -> [u8; CLIENT_FRAME] {
    let mut frame = [0u8; CLIENT_FRAME];
    frame[0] = 0x82;
    frame[1] = 0x80 | PAYLOAD as u8;
    frame[2..6].copy_from_slice(&mask);
    for (i, b) in payload.iter().enumerate() {
        frame[6 + i] = b ^ mask[i % 4];
    }
    frame
}

const MESSAGE: &[u8; PAYLOAD] = b"0123456789abcdef";

/// Read buffer of the echo loop: larger than one echo, so a read returns less than asked and
/// tokio knows the socket is drained (no extra `read` that would only return EAGAIN).
const REPLY_BUF: usize = 64;

/// One message there and back, checking the echo.
async fn echo(stream: &mut Stream, frame: &[u8; CLIENT_FRAME], reply: &mut [u8; REPLY_BUF]) -> Result<(), String> {
    stream.write_all(frame).await.map_err(|e| format!("write: {e}"))?;
    let mut len = 0;
    while len < SERVER_FRAME {
        match stream.read(&mut reply[len..]).await {
            Ok(0) => return Err("connection closed".to_owned()),
            Ok(n) => len += n,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    // One message is in flight per connection, so nothing follows the echo.
    if len != SERVER_FRAME || reply[0] != 0x82 || reply[1] as usize != PAYLOAD || &reply[2..SERVER_FRAME] != MESSAGE {
        return Err(format!("unexpected echo frame {:?}", &reply[..len]));
    }
    Ok(())
}

/// Open `n` tunnels to `addr` (`concurrency` handshakes at a time), exchange one message on each
/// and keep them open. Bounded by `limit`.
pub async fn open_tunnels(
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
    n: usize,
    concurrency: usize,
    limit: Duration,
) -> Result<Vec<Stream>, String> {
    tokio::time::timeout(limit, async {
        let mut open = Vec::with_capacity(n);
        while open.len() < n {
            let batch = (n - open.len()).min(concurrency.max(1));
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..batch {
                let tls = tls.cloned();
                set.spawn(async move {
                    let mut stream = connect(addr, tls.as_ref()).await?;
                    let frame = client_frame(MESSAGE, [1, 2, 3, 4]);
                    echo(&mut stream, &frame, &mut [0; REPLY_BUF]).await?;
                    Ok::<_, String>(stream)
                });
            }
            while let Some(result) = set.join_next().await {
                open.push(result.map_err(|e| e.to_string())??);
            }
        }
        Ok(open)
    })
    .await
    .map_err(|_| format!("{n} tunnels to {addr} not open within {limit:?}"))?
}

/// What [`echo_load`] measured over its window.
pub struct EchoRun<T> {
    /// Echoes completed inside the window.
    pub messages: u64,
    pub seconds: f64,
    /// `sample()` at the start and at the end of the window.
    pub before: T,
    pub after: T,
}

/// Closed-loop echo load on one thread: `connections` WebSockets to `addr`, each sending a
/// 16-byte message as soon as the previous one came back. After `warmup`, `sample` is called,
/// messages are counted for `window`, and `sample` is called again. Bounded: the whole run
/// ends within `warmup + window + 30 s`.
pub fn echo_load<T>(
    addr: SocketAddr,
    connections: usize,
    warmup: Duration,
    window: Duration,
    sample: impl Fn() -> T,
) -> Result<EchoRun<T>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let streams = open_tunnels(addr, None, connections, 64, Duration::from_secs(20)).await?;
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, mut stream) in streams.into_iter().enumerate() {
            let (count, stop) = (count.clone(), stop.clone());
            tasks.spawn(async move {
                let frame = client_frame(MESSAGE, (i as u32).wrapping_mul(2_654_435_761).to_be_bytes());
                let mut reply = [0u8; REPLY_BUF];
                while !stop.load(Ordering::Relaxed) {
                    echo(&mut stream, &frame, &mut reply).await?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, String>(())
            });
        }
        let failed = |tasks: &mut tokio::task::JoinSet<Result<(), String>>| {
            // A task that already ended early has failed.
            tasks.try_join_next().map(|r| r.map_err(|e| e.to_string()).and_then(|r| r).err().unwrap_or_default())
        };
        tokio::time::sleep(warmup).await;
        if let Some(e) = failed(&mut tasks) {
            return Err(format!("echo failed during warm-up: {e}"));
        }
        let before = sample();
        let (start, first) = (Instant::now(), count.load(Ordering::Relaxed));
        tokio::time::sleep(window).await;
        let (messages, seconds) = (count.load(Ordering::Relaxed) - first, start.elapsed().as_secs_f64());
        let after = sample();
        stop.store(true, Ordering::Relaxed);
        let drained = tokio::time::timeout(Duration::from_secs(30), async {
            let mut error = None;
            while let Some(result) = tasks.join_next().await {
                if let Err(e) = result.map_err(|e| e.to_string()).and_then(|r| r) {
                    error.get_or_insert(e);
                }
            }
            error
        })
        .await;
        match drained {
            Ok(None) => Ok(EchoRun { messages, seconds, before, after }),
            Ok(Some(e)) => Err(format!("echo failed: {e}")),
            Err(_) => Err("echo connections did not finish within 30 s".to_owned()),
        }
    })
}
