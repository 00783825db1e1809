//! Moving bytes between the two ends of an upgraded connection.
//!
//! Memory is the point of this design. A tunnel is one task that waits for *readiness* on both
//! sockets and reads into a buffer on the stack of a synchronous function, so an idle tunnel
//! holds no buffer at all (`tokio::io::copy_bidirectional` keeps two 8 KiB buffers per tunnel
//! forever). Bytes are copied to the heap only when the destination cannot take them at once,
//! and that copy is freed as soon as it is written.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::registry::TunnelControl;

/// Stack buffer per read: one TLS record's worth of plaintext.
const READ_CHUNK: usize = 16 * 1024;
/// Reads per direction before yielding, so one busy tunnel cannot starve the others on its
/// worker thread.
const READS_PER_TURN: usize = 16;

/// One end of a tunnel.
pub enum Side {
    Plain(TcpStream),
    /// Boxed: a rustls connection is large and most tunnels are plain.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Streams a client connection may be, recovered from hyper after an upgrade.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn into_side(self) -> Side;
}

impl ClientStream for TcpStream {
    fn into_side(self) -> Side {
        Side::Plain(self)
    }
}

impl ClientStream for TlsStream<TcpStream> {
    fn into_side(self) -> Side {
        Side::Tls(Box::new(self))
    }
}

/// Run a poll function once, without a task: `Pending` becomes `WouldBlock`. The caller waits
/// for socket readiness itself, which is what makes idle tunnels cheap.
fn poll_now<T>(f: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>) -> io::Result<T> {
    let mut cx = Context::from_waker(Waker::noop());
    match f(&mut cx) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl Side {
    fn tcp(&self) -> &TcpStream {
        match self {
            Side::Plain(s) => s,
            Side::Tls(s) => s.get_ref().0,
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self, Side::Tls(_))
    }

    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Side::Plain(s) => s.try_read(buf),
            Side::Tls(s) => poll_now(|cx| {
                let mut rb = ReadBuf::new(buf);
                Pin::new(&mut **s)
                    .poll_read(cx, &mut rb)
                    .map_ok(|()| rb.filled().len())
            }),
        }
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Side::Plain(s) => s.try_write(buf),
            Side::Tls(s) => poll_now(|cx| Pin::new(&mut **s).poll_write(cx, buf)),
        }
    }

    /// Push out ciphertext rustls still holds; plain sockets hold nothing.
    fn try_flush(&mut self) -> io::Result<()> {
        match self {
            Side::Plain(_) => Ok(()),
            Side::Tls(s) => poll_now(|cx| Pin::new(&mut **s).poll_flush(cx)),
        }
    }

    /// Half-close: no more bytes will be written to this end. Best effort: a peer that is
    /// already gone makes this fail, and the tunnel ends on its next read or write anyway.
    fn shutdown_write(&mut self) {
        let _ = match self {
            Side::Plain(s) => poll_now(|cx| Pin::new(s).poll_shutdown(cx)),
            Side::Tls(s) => poll_now(|cx| Pin::new(&mut **s).poll_shutdown(cx)),
        };
    }
}

/// One direction of a tunnel.
#[derive(Default)]
struct Flow {
    /// Bytes read but not yet accepted by the destination. Empty, and unallocated, except
    /// under backpressure.
    pending: Vec<u8>,
    written: usize,
    /// The destination (TLS) may hold ciphertext not yet on the wire.
    needs_flush: bool,
    /// The source may have bytes without a new readiness event: at the start, after we stopped
    /// reading because of backpressure, and whenever rustls may hold decrypted plaintext.
    may_read: bool,
    /// The source reached end of stream and the destination's write side was shut.
    eof: bool,
    bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Waiting for the source to become readable.
    WaitRead,
    /// Waiting for the destination to become writable.
    WaitWrite,
    /// Source ended and everything was delivered.
    Done,
    /// Made progress and has more to do: yield, then pump again.
    Again,
}

impl Flow {
    fn new(already_read: &[u8]) -> Self {
        Self {
            pending: already_read.to_vec(),
            may_read: true,
            ..Self::default()
        }
    }

    /// Move as many bytes as possible without waiting. Returns what to wait for next and
    /// whether any byte was read.
    fn pump(&mut self, src: &mut Side, dst: &mut Side) -> io::Result<(Step, bool)> {
        let mut moved = false;
        for _ in 0..READS_PER_TURN {
            if !self.flush_pending(dst)? {
                return Ok((Step::WaitWrite, moved));
            }
            if self.eof {
                return Ok((Step::Done, moved));
            }
            if !self.may_read {
                return Ok((Step::WaitRead, moved));
            }
            let mut buf = [0u8; READ_CHUNK];
            match src.try_read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    dst.shutdown_write();
                    return Ok((Step::Done, moved));
                }
                Ok(n) => {
                    moved = true;
                    self.bytes += n as u64;
                    self.write_or_keep(dst, &buf[..n])?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.may_read = false;
                    return Ok((Step::WaitRead, moved));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((Step::Again, moved))
    }

    /// Write what the destination takes now; keep the rest in `pending`.
    fn write_or_keep(&mut self, dst: &mut Side, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match dst.try_write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if dst.is_tls() {
            self.needs_flush = true;
        }
        if !data.is_empty() {
            self.pending.extend_from_slice(data);
        }
        Ok(())
    }

    /// Returns true once nothing is left to deliver.
    fn flush_pending(&mut self, dst: &mut Side) -> io::Result<bool> {
        while self.written < self.pending.len() {
            match dst.try_write(&self.pending[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if !self.pending.is_empty() {
            // Give the memory back: idle tunnels must hold no buffers.
            self.pending = Vec::new();
            self.written = 0;
            if dst.is_tls() {
                self.needs_flush = true;
            }
        }
        if self.needs_flush {
            match dst.try_flush() {
                Ok(()) => self.needs_flush = false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    ClientClosed,
    BackendClosed,
    IdleTimeout,
    /// A close was requested through the tunnel's control (drain, shutdown, rebalance).
    CloseRequested,
    Error,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::BackendClosed => "backend_closed",
            End::IdleTimeout => "idle_timeout",
            End::CloseRequested => "close_requested",
            End::Error => "error",
        }
    }
}

/// What a finished tunnel reports.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub end: End,
    /// Client -> backend.
    pub bytes_up: u64,
    /// Backend -> client.
    pub bytes_down: u64,
}

enum Wake {
    Readable(io::Result<()>, bool),
    Writable(io::Result<()>),
    Close,
    Idle,
}

/// Join `client` and `backend` byte for byte until both directions end (half-closes are
/// passed on), either side fails, nothing moves for `idle`, or `control` asks for a close.
/// `client_early` / `backend_early` are bytes hyper had already read past the HTTP exchange.
pub async fn relay(
    mut client: Side,
    mut backend: Side,
    client_early: &[u8],
    backend_early: &[u8],
    control: &TunnelControl,
    idle: Duration,
) -> Report {
    let mut up = Flow::new(client_early);
    let mut down = Flow::new(backend_early);
    let mut last_activity = Instant::now();
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let mut first_eof: Option<End> = None;

    let end = loop {
        let (s_up, moved_up) = match up.pump(&mut client, &mut backend) {
            Ok(r) => r,
            Err(_) => break End::Error,
        };
        let (s_down, moved_down) = match down.pump(&mut backend, &mut client) {
            Ok(r) => r,
            Err(_) => break End::Error,
        };
        if moved_up || moved_down {
            last_activity = Instant::now();
        }
        if s_up == Step::Done && first_eof.is_none() {
            first_eof = Some(End::ClientClosed);
        }
        if s_down == Step::Done && first_eof.is_none() {
            first_eof = Some(End::BackendClosed);
        }
        if s_up == Step::Done && s_down == Step::Done {
            break first_eof.unwrap_or(End::ClientClosed);
        }
        if s_up == Step::Again || s_down == Step::Again {
            tokio::task::yield_now().await;
            continue;
        }

        let wake = tokio::select! {
            biased;
            _ = control.closed() => Wake::Close,
            r = client.tcp().readable(), if s_up == Step::WaitRead => Wake::Readable(r, true),
            r = backend.tcp().readable(), if s_down == Step::WaitRead => Wake::Readable(r, false),
            r = backend.tcp().writable(), if s_up == Step::WaitWrite => Wake::Writable(r),
            r = client.tcp().writable(), if s_down == Step::WaitWrite => Wake::Writable(r),
            _ = &mut idle_timer => Wake::Idle,
        };
        match wake {
            Wake::Readable(Ok(()), is_up) => {
                if is_up {
                    up.may_read = true;
                } else {
                    down.may_read = true;
                }
            }
            // Writability needs no flag: the next pump retries the pending bytes.
            Wake::Writable(Ok(())) => {}
            Wake::Readable(Err(_), _) | Wake::Writable(Err(_)) => break End::Error,
            Wake::Close => break End::CloseRequested,
            Wake::Idle => {
                if last_activity.elapsed() >= idle {
                    break End::IdleTimeout;
                }
                idle_timer.as_mut().reset((last_activity + idle).into());
            }
        }
    };
    Report {
        end,
        bytes_up: up.bytes,
        bytes_down: down.bytes,
    }
}
