//! Moving bytes between the two ends of an upgraded connection.
//!
//! Memory is the point of this design. A tunnel is one task that waits for *readiness* on both
//! sockets and reads into a buffer on the stack of a synchronous function, so an idle tunnel
//! holds no buffer at all (`tokio::io::copy_bidirectional` keeps two 8 KiB buffers per tunnel
//! forever). Bytes are copied to the heap only when the destination cannot take them at once,
//! and that copy is freed as soon as it is written.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::frames::{self, FrameTracker};
use super::registry::TunnelControl;

/// Stack buffer per read: one TLS record's worth of plaintext.
const READ_CHUNK: usize = 16 * 1024;
/// Reads per direction before yielding, so one busy tunnel cannot starve the others on its
/// worker thread.
const READS_PER_TURN: usize = 16;
/// How long a graceful close waits for the frames in flight to end and for both peers to answer
/// our Close frames before it cuts the connection. A frame can be arbitrarily long, so this must
/// be bounded; a few seconds finish any reasonable frame on a live connection.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The reason text sent with a proxy-initiated Close.
const CLOSE_REASON: &str = "tether: backend draining";

/// One end of a tunnel.
pub enum Side {
    /// Plain TCP.
    Plain(TcpStream),
    /// Boxed: a rustls connection is large and most tunnels are plain.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Streams a client connection may be, recovered from hyper after an upgrade.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
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
                Pin::new(&mut **s).poll_read(cx, &mut rb).map_ok(|()| rb.filled().len())
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

/// Where a direction stands in a proxy-initiated close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// Not closing: forward everything.
    No,
    /// Write a Close with this code at the next frame boundary, then stop forwarding.
    At(u16),
    /// Our Close went out (or the source had already sent its own): from now on the source's
    /// bytes are read only to see its Close answer, and are not forwarded.
    Sent,
}

/// One direction of a tunnel.
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
    /// Frame boundaries of the bytes forwarded in this direction.
    frames: FrameTracker,
    closing: Closing,
    /// Frames towards a backend must be masked (RFC 6455 5.1).
    direction: Direction,
    /// The source sent a Close after ours went out (or ended its stream).
    answered: bool,
}

/// Which way a flow carries bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to backend.
    Up,
    /// Backend to client.
    Down,
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
    fn new(already_read: &[u8], direction: Direction) -> Self {
        Self {
            pending: Vec::new(),
            written: 0,
            needs_flush: false,
            may_read: true,
            eof: false,
            bytes: 0,
            frames: FrameTracker::new(),
            closing: Closing::No,
            direction,
            answered: false,
        }
        .with_early(already_read)
    }

    fn with_early(mut self, already_read: &[u8]) -> Self {
        if !already_read.is_empty() {
            self.frames.advance(already_read, |_| {});
            self.bytes = already_read.len() as u64;
            self.pending = already_read.to_vec();
        }
        self
    }

    /// Start a graceful close of this direction: the Close goes out now if the stream is
    /// between frames, otherwise once the frame in flight has been forwarded.
    fn begin_close(&mut self, dst: &mut Side, code: u16) -> io::Result<()> {
        if self.closing != Closing::No {
            return Ok(());
        }
        if self.frames.close_seen() || self.eof {
            // The peer is already closing on its own; a second Close would break the protocol.
            self.closing = Closing::Sent;
            self.answered = self.eof;
            return Ok(());
        }
        self.closing = Closing::At(code);
        if self.frames.is_at_boundary() {
            self.inject_close(dst, code)?;
        }
        Ok(())
    }

    fn inject_close(&mut self, dst: &mut Side, code: u16) -> io::Result<()> {
        let mask = (self.direction == Direction::Up).then(rand::random::<[u8; 4]>);
        let frame = frames::close_frame(code, CLOSE_REASON, mask);
        self.closing = Closing::Sent;
        self.write_or_keep(dst, frame.as_ref())
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
                    self.answered = true;
                    dst.shutdown_write();
                    return Ok((Step::Done, moved));
                }
                Ok(n) => {
                    moved = true;
                    self.bytes += n as u64;
                    self.forward(dst, &buf[..n])?;
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

    /// Forward freshly read bytes, honouring a close in progress.
    fn forward(&mut self, dst: &mut Side, data: &[u8]) -> io::Result<()> {
        match self.closing {
            Closing::No => {
                self.frames.advance(data, |_| {});
                self.write_or_keep(dst, data)
            }
            Closing::At(code) => match self.frames.next_boundary_within(data) {
                Some(cut) => {
                    let (head, rest) = data.split_at(cut);
                    self.frames.advance(head, |_| {});
                    self.write_or_keep(dst, head)?;
                    self.inject_close(dst, code)?;
                    self.watch_for_answer(rest);
                    Ok(())
                }
                None => {
                    self.frames.advance(data, |_| {});
                    self.write_or_keep(dst, data)
                }
            },
            Closing::Sent => {
                self.watch_for_answer(data);
                Ok(())
            }
        }
    }

    /// After our Close: the source's bytes are dropped, but its Close is noted.
    fn watch_for_answer(&mut self, data: &[u8]) {
        let mut answered = self.answered;
        self.frames.advance(data, |header| answered |= header.is_close());
        self.answered = answered;
    }

    /// Write what the destination takes now; keep the rest in `pending`.
    fn write_or_keep(&mut self, dst: &mut Side, mut data: &[u8]) -> io::Result<()> {
        if !self.pending.is_empty() {
            // Order matters: never overtake bytes still waiting.
            self.pending.extend_from_slice(data);
            return Ok(());
        }
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

    /// Our Close is out and the source answered with its own (or hung up).
    fn is_closed(&self) -> bool {
        self.closing == Closing::Sent && self.answered && self.pending.is_empty() && !self.needs_flush
    }
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client ended its side first.
    ClientClosed,
    /// The backend ended its side first.
    BackendClosed,
    /// Nothing moved for `tunnel_idle`.
    IdleTimeout,
    /// Closed gracefully at the proxy's request (drain, shutdown, rebalance), with the close
    /// handshake completed on both sides.
    ClosedByProxy,
    /// A close was requested but a peer did not finish its frame or answer in time.
    CloseTimedOut,
    /// A socket failed.
    Error,
}

impl End {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::BackendClosed => "backend_closed",
            End::IdleTimeout => "idle_timeout",
            End::ClosedByProxy => "closed_by_proxy",
            End::CloseTimedOut => "close_timed_out",
            End::Error => "error",
        }
    }
}

/// What a finished tunnel reports.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Why the tunnel ended.
    pub end: End,
    /// Client -> backend.
    pub(crate) bytes_up: u64,
    /// Backend -> client.
    pub(crate) bytes_down: u64,
    /// The close code sent to both peers, when the proxy closed the tunnel.
    pub close_code: Option<u16>,
}

enum Wake {
    Readable(io::Result<()>, Direction),
    Writable(io::Result<()>),
    Close,
    Timer,
}

/// Join `client` and `backend` byte for byte until both directions end (half-closes are
/// passed on), either side fails, nothing moves for `idle`, or `control` asks for a close.
/// `client_early` / `backend_early` are bytes hyper had already read past the HTTP exchange.
/// They are copied out (when there are any) and dropped before relaying starts: they share an
/// allocation with hyper's read buffer, which would otherwise stay alive for the tunnel's life.
///
/// A requested close is graceful: each direction is followed frame by frame, so the Close
/// (unmasked to the client, masked to the backend) is written between frames, never inside
/// one; after it nothing more is forwarded, and the tunnel ends once both peers answered with
/// their own Close, or after [`CLOSE_GRACE`].
pub async fn relay(
    mut client: Side,
    mut backend: Side,
    client_early: bytes::Bytes,
    backend_early: bytes::Bytes,
    control: &TunnelControl,
    idle: Duration,
) -> Report {
    let mut up = Flow::new(&client_early, Direction::Up);
    let mut down = Flow::new(&backend_early, Direction::Down);
    drop((client_early, backend_early));
    let mut last_activity = Instant::now();
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    let mut first_eof: Option<End> = None;
    let mut close_deadline: Option<Instant> = None;
    let mut close_code = None;

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
        if close_deadline.is_some() && up.is_closed() && down.is_closed() {
            break End::ClosedByProxy;
        }
        if s_up == Step::Done && first_eof.is_none() {
            first_eof = Some(End::ClientClosed);
        }
        if s_down == Step::Done && first_eof.is_none() {
            first_eof = Some(End::BackendClosed);
        }
        if s_up == Step::Done && s_down == Step::Done {
            break if close_deadline.is_some() { End::ClosedByProxy } else { first_eof.unwrap_or(End::ClientClosed) };
        }
        if s_up == Step::Again || s_down == Step::Again {
            tokio::task::yield_now().await;
            continue;
        }

        // One poll function over everything the tunnel waits for: it keeps no waiter nodes of
        // its own (readiness wakers live in the sockets' registrations), which keeps the task,
        // i.e. the memory of an idle tunnel, small.
        let closing = close_deadline.is_some();
        let wake = std::future::poll_fn(|cx| {
            if !closing && control.poll_close_requested(cx).is_ready() {
                return Poll::Ready(Wake::Close);
            }
            if s_up == Step::WaitRead
                && let Poll::Ready(r) = client.tcp().poll_read_ready(cx)
            {
                return Poll::Ready(Wake::Readable(r, Direction::Up));
            }
            if s_down == Step::WaitRead
                && let Poll::Ready(r) = backend.tcp().poll_read_ready(cx)
            {
                return Poll::Ready(Wake::Readable(r, Direction::Down));
            }
            if s_up == Step::WaitWrite
                && let Poll::Ready(r) = backend.tcp().poll_write_ready(cx)
            {
                return Poll::Ready(Wake::Writable(r));
            }
            if s_down == Step::WaitWrite
                && let Poll::Ready(r) = client.tcp().poll_write_ready(cx)
            {
                return Poll::Ready(Wake::Writable(r));
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Timer);
            }
            Poll::Pending
        })
        .await;
        match wake {
            Wake::Readable(Ok(()), Direction::Up) => up.may_read = true,
            Wake::Readable(Ok(()), Direction::Down) => down.may_read = true,
            // Writability needs no flag: the next pump retries the pending bytes.
            Wake::Writable(Ok(())) => {}
            Wake::Readable(Err(_), _) | Wake::Writable(Err(_)) => break End::Error,
            Wake::Close => {
                let code = control.close_requested().unwrap_or(1001);
                close_code = Some(code);
                let deadline = Instant::now() + CLOSE_GRACE;
                close_deadline = Some(deadline);
                timer.as_mut().reset(deadline.into());
                if down.begin_close(&mut client, code).is_err() || up.begin_close(&mut backend, code).is_err() {
                    break End::Error;
                }
            }
            Wake::Timer => match close_deadline {
                Some(deadline) if Instant::now() >= deadline => break End::CloseTimedOut,
                Some(deadline) => timer.as_mut().reset(deadline.into()),
                None if last_activity.elapsed() >= idle => break End::IdleTimeout,
                None => timer.as_mut().reset((last_activity + idle).into()),
            },
        }
    };
    if matches!(end, End::ClosedByProxy | End::CloseTimedOut) {
        client.shutdown_write();
        backend.shutdown_write();
    }
    Report { end, bytes_up: up.bytes, bytes_down: down.bytes, close_code }
}
