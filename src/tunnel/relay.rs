//! Moving bytes between the two ends of an upgraded connection.
//!
//! Memory is the point of this design. A tunnel is one task that waits for *readiness* on both
//! sockets and reads, in a synchronous function, into a buffer its worker thread shares with
//! every other tunnel, so an idle tunnel holds no buffer at all (`tokio::io::copy_bidirectional` keeps two 8 KiB buffers per tunnel
//! forever). Bytes are copied to the heap only when the destination cannot take them at once,
//! and that copy is freed as soon as it is written.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::frames::{self, FrameTracker};
use super::registry::TunnelControl;
use crate::tls::TlsStream;

/// Bytes per read: one TLS record's worth of plaintext.
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// The read buffer of every tunnel on this thread. A read and the writes it feeds never
    /// span an await, so one buffer serves all of them, and no tunnel holds one while idle.
    static READ_BUF: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}
/// Reads per direction before yielding, so one busy tunnel cannot starve the others on its
/// worker thread.
const READS_PER_TURN: usize = 16;
/// How long a graceful close waits for the frames in flight to end and for both peers to answer
/// our Close frames before it cuts the connection. A frame can be arbitrarily long, so this must
/// be bounded; a few seconds finish any reasonable frame on a live connection.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The reason text sent with a Close the proxy was asked for (drain, shutdown, rebalance).
const DRAIN_REASON: &str = "tether: backend draining";
/// The code and reason sent to the peer still there when the other one failed or stopped
/// reading (RFC 6455 7.4.1: 1011, an unexpected condition).
const LOST_CODE: u16 = 1011;
const BACKEND_LOST: &str = "tether: backend connection lost";
const CLIENT_STALLED: &str = "tether: client stopped reading";
const BACKEND_STALLED: &str = "tether: backend stopped reading";

/// The tunnel's clocks.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Nothing moved in either direction for this long: the tunnel ends.
    pub idle: Duration,
    /// A destination took none of the bytes waiting for it for this long: it is treated as gone.
    pub send: Duration,
}

/// One end of a tunnel.
pub enum Side {
    /// Plain TCP.
    Plain(TcpStream),
    /// Boxed: a rustls connection is large and most tunnels are plain.
    Tls(Box<TlsStream>),
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

impl ClientStream for TlsStream {
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
            Side::Tls(s) => s.tcp(),
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self, Side::Tls(_))
    }

    /// Read what is there now. Through `poll_read`, not `TcpStream::try_read`: a read that
    /// comes back short has emptied the socket, and `poll_read` then clears its readiness, so
    /// the next read waits for new bytes instead of costing a system call that finds none.
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        poll_now(|cx| {
            let mut rb = ReadBuf::new(buf);
            let polled = match self {
                Side::Plain(s) => Pin::new(s).poll_read(cx, &mut rb),
                Side::Tls(s) => Pin::new(&mut **s).poll_read(cx, &mut rb),
            };
            polled.map_ok(|()| rb.filled().len())
        })
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

/// A socket failure, by the end it happened on.
#[derive(Debug)]
enum Fault {
    /// Reading the flow's source failed.
    Source,
    /// Writing to the flow's destination failed.
    Destination,
}

/// One direction of a tunnel.
struct Flow {
    /// Bytes read but not yet accepted by the destination: `None` except under backpressure
    /// (boxed, so a tunnel that never meets backpressure carries one pointer, not a buffer's
    /// bookkeeping).
    pending: Option<Box<Backlog>>,
    /// The destination (TLS) may hold ciphertext not yet on the wire.
    needs_flush: bool,
    /// The source may have bytes without a new readiness event: at the start, after we stopped
    /// reading because of backpressure, and whenever rustls may hold decrypted plaintext.
    may_read: bool,
    /// The source reached end of stream (or is gone): once `pending` is delivered, the
    /// destination's write side is shut.
    eof: bool,
    /// The destination's write side was shut.
    shut: bool,
    /// Since when the destination has refused bytes waiting for it; `None` while it takes them.
    blocked_since: Option<Instant>,
    bytes: u64,
    /// Frame boundaries of the bytes forwarded in this direction.
    frames: FrameTracker,
    closing: Closing,
    /// Frames towards a backend must be masked (RFC 6455 5.1).
    direction: Direction,
    /// The source sent a Close after ours went out (or ended its stream).
    answered: bool,
}

/// Bytes a destination has not taken yet.
struct Backlog {
    bytes: Vec<u8>,
    /// How many of `bytes` went out already.
    written: usize,
}

impl Backlog {
    fn new(bytes: &[u8]) -> Box<Self> {
        Box::new(Self { bytes: bytes.to_vec(), written: 0 })
    }
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
    /// The backend's stream ended without a Close frame: it died or broke the protocol.
    Lost,
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
            pending: None,
            needs_flush: false,
            may_read: true,
            eof: false,
            shut: false,
            blocked_since: None,
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
            self.pending = Some(Backlog::new(already_read));
        }
        self
    }

    /// Start a graceful close of this direction: the Close goes out now if the stream is
    /// between frames, otherwise once the frame in flight has been forwarded.
    fn begin_close(&mut self, dst: &mut Side, code: u16) -> Result<(), Fault> {
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
            self.inject_close(dst, code, DRAIN_REASON)?;
        }
        Ok(())
    }

    fn inject_close(&mut self, dst: &mut Side, code: u16, reason: &str) -> Result<(), Fault> {
        let mask = (self.direction == Direction::Up).then(rand::random::<[u8; 4]>);
        let frame = frames::close_frame(code, reason, mask);
        self.closing = Closing::Sent;
        self.write_or_keep(dst, frame.as_ref())
    }

    /// The source is gone (failed, ended without a Close, or stopped reading): tell the
    /// destination with a Close `LOST_CODE` if the stream is between frames and nobody is
    /// closing yet, then shut its write side once everything is delivered. Mid-frame, a Close
    /// would corrupt the stream, so the destination sees the connection end instead. Returns
    /// whether a Close was written.
    fn lose_source(&mut self, dst: &mut Side, reason: &str) -> Result<bool, Fault> {
        let told = self.closing == Closing::No && !self.frames.close_seen() && self.frames.is_at_boundary();
        if told {
            self.inject_close(dst, LOST_CODE, reason)?;
        }
        self.eof = true;
        self.answered = true;
        self.may_read = false;
        Ok(told)
    }

    /// The destination is gone: what was waiting for it is dropped, and the source is read
    /// only to see its answer to the Close it was sent (or its end).
    fn lose_destination(&mut self) {
        self.pending = None;
        self.needs_flush = false;
        self.blocked_since = None;
        self.closing = Closing::Sent;
    }

    /// Move as many bytes as possible without waiting. Returns what to wait for next and
    /// whether any byte was read.
    fn pump(&mut self, src: &mut Side, dst: &mut Side) -> Result<(Step, bool), Fault> {
        READ_BUF.with_borrow_mut(|buf| self.pump_with(src, dst, buf))
    }

    fn pump_with(&mut self, src: &mut Side, dst: &mut Side, buf: &mut [u8]) -> Result<(Step, bool), Fault> {
        let mut moved = false;
        for _ in 0..READS_PER_TURN {
            if !self.flush_pending(dst)? {
                return Ok((Step::WaitWrite, moved));
            }
            if self.eof {
                if !self.shut {
                    self.shut = true;
                    dst.shutdown_write();
                }
                return Ok((Step::Done, moved));
            }
            if !self.may_read {
                return Ok((Step::WaitRead, moved));
            }
            match src.try_read(buf) {
                Ok(0) if self.is_backend_lost() => return Ok((Step::Lost, moved)),
                Ok(0) => {
                    self.eof = true;
                    self.answered = true;
                    // Shut once the loop comes back round with nothing left to deliver.
                    continue;
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
                Err(_) if self.direction == Direction::Down && self.closing == Closing::No => {
                    return Ok((Step::Lost, moved));
                }
                Err(_) => return Err(Fault::Source),
            }
        }
        Ok((Step::Again, moved))
    }

    /// The backend's stream ended without its Close frame while nobody was closing: the
    /// backend died (or broke the protocol) and the client has not been told.
    fn is_backend_lost(&self) -> bool {
        self.direction == Direction::Down && self.closing == Closing::No && !self.frames.close_seen()
    }

    /// Forward freshly read bytes, honouring a close in progress.
    fn forward(&mut self, dst: &mut Side, data: &[u8]) -> Result<(), Fault> {
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
                    self.inject_close(dst, code, DRAIN_REASON)?;
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
    fn write_or_keep(&mut self, dst: &mut Side, mut data: &[u8]) -> Result<(), Fault> {
        if let Some(backlog) = &mut self.pending {
            // Order matters: never overtake bytes still waiting.
            backlog.bytes.extend_from_slice(data);
            return Ok(());
        }
        while !data.is_empty() {
            match dst.try_write(data) {
                Ok(0) => return Err(Fault::Destination),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Fault::Destination),
            }
        }
        if dst.is_tls() {
            self.needs_flush = true;
        }
        if !data.is_empty() {
            self.pending = Some(Backlog::new(data));
            self.blocked_since.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    /// Returns true once nothing is left to deliver.
    fn flush_pending(&mut self, dst: &mut Side) -> Result<bool, Fault> {
        if let Some(backlog) = &mut self.pending {
            while backlog.written < backlog.bytes.len() {
                match dst.try_write(&backlog.bytes[backlog.written..]) {
                    Ok(0) => return Err(Fault::Destination),
                    Ok(n) => {
                        backlog.written += n;
                        // Progress: the destination's clock starts again.
                        self.blocked_since = Some(Instant::now());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.blocked_since.get_or_insert_with(Instant::now);
                        return Ok(false);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Err(Fault::Destination),
                }
            }
            // Give the memory back: idle tunnels must hold no buffers.
            self.pending = None;
            if dst.is_tls() {
                self.needs_flush = true;
            }
        }
        if self.needs_flush {
            match dst.try_flush() {
                Ok(()) => self.needs_flush = false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked_since.get_or_insert_with(Instant::now);
                    return Ok(false);
                }
                Err(_) => return Err(Fault::Destination),
            }
        }
        self.blocked_since = None;
        Ok(true)
    }

    /// Our Close is out and the source answered with its own (or hung up).
    fn is_closed(&self) -> bool {
        self.closing == Closing::Sent && self.answered && self.pending.is_none() && !self.needs_flush
    }
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client ended its side first.
    ClientClosed,
    /// The backend ended its side first.
    BackendClosed,
    /// The backend's connection failed, or ended without a Close frame: the client was sent a
    /// Close 1011 where the stream was between frames.
    BackendLost,
    /// A peer took no bytes for `timeouts.send`: its connection was dropped, and the other
    /// peer sent a Close 1011 where its stream was between frames.
    SendTimeout,
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
            End::BackendLost => "backend_lost",
            End::SendTimeout => "send_timeout",
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
/// passed on), either side fails, nothing moves for `timeouts.idle`, or `control` asks for a
/// close. `client_early` / `backend_early` are bytes hyper had already read past the HTTP
/// exchange. They are copied out (when there are any) and dropped before relaying starts: they
/// share an allocation with hyper's read buffer, which would otherwise stay alive for the
/// tunnel's life.
///
/// A requested close is graceful: each direction is followed frame by frame, so the Close
/// (unmasked to the client, masked to the backend) is written between frames, never inside
/// one; after it nothing more is forwarded, and the tunnel ends once both peers answered with
/// their own Close, or after [`CLOSE_GRACE`].
///
/// A peer that is gone is handled the same way from the other side: when the backend's
/// connection fails or ends without a Close frame, or a peer takes no bytes for
/// `timeouts.send`, the other peer gets a Close 1011 if its stream is between frames (else its
/// connection just ends), and the tunnel waits up to [`CLOSE_GRACE`] for its answer.
pub fn relay<'a>(
    mut client: Side,
    mut backend: Side,
    client_early: bytes::Bytes,
    backend_early: bytes::Bytes,
    control: &'a TunnelControl,
    timeouts: &'a Timeouts,
) -> impl Future<Output = Report> + Send + 'a {
    let mut up = Flow::new(&client_early, Direction::Up);
    let mut down = Flow::new(&backend_early, Direction::Down);
    drop((client_early, backend_early));
    // A block rather than an `async fn`: its captures are stored once, where an async fn's
    // arguments take room both as arguments and as the locals they are moved into, and an
    // idle tunnel costs what its task holds.
    async move {
        let mut last_activity = Instant::now();
        let timer = tokio::time::sleep(timeouts.idle);
        tokio::pin!(timer);
        let mut first_eof: Option<End> = None;
        let mut close_deadline: Option<Instant> = None;
        let mut close_code = None;
        // Why the tunnel is ending, when a peer was lost rather than closed.
        let mut lost: Option<End> = None;
        // A peer that is gone is neither read nor written again.
        let (mut client_gone, mut backend_gone) = (false, false);
        // Once one side ended its stream, the other has CLOSE_GRACE to end its own: a WebSocket
        // has nothing to say after the other side hung up, and a peer that keeps the connection
        // half open must not hold the tunnel until the idle timeout.
        let mut linger_deadline: Option<Instant> = None;

        let end = loop {
            let (s_up, moved_up) = match up.pump(&mut client, &mut backend) {
                Ok(r) => r,
                Err(Fault::Destination) if !backend_gone => {
                    // The backend failed under a write: the client is told like for any lost backend.
                    (Step::Lost, false)
                }
                Err(_) => break End::Error,
            };
            let (s_down, moved_down) = match down.pump(&mut backend, &mut client) {
                Ok(r) => r,
                Err(_) => break End::Error,
            };
            if moved_up || moved_down {
                last_activity = Instant::now();
            }
            if s_up == Step::Lost || s_down == Step::Lost {
                // The backend is gone: tell the client (between frames), stop writing to the backend.
                backend_gone = true;
                up.lose_destination();
                match down.lose_source(&mut client, BACKEND_LOST) {
                    Ok(true) => close_code = Some(LOST_CODE),
                    Ok(false) => {}
                    Err(_) => break End::Error,
                }
                lost.get_or_insert(End::BackendLost);
                let deadline = Instant::now() + CLOSE_GRACE;
                close_deadline = Some(deadline);
                timer.as_mut().reset(deadline.into());
                continue;
            }
            if close_deadline.is_some() && up.is_closed() && down.is_closed() {
                break lost.unwrap_or(End::ClosedByProxy);
            }
            if s_up == Step::Done && first_eof.is_none() {
                first_eof = Some(End::ClientClosed);
            }
            if s_down == Step::Done && first_eof.is_none() {
                first_eof = Some(End::BackendClosed);
            }
            if s_up == Step::Done && s_down == Step::Done {
                break match (lost, close_deadline) {
                    (Some(end), _) => end,
                    (None, Some(_)) => End::ClosedByProxy,
                    (None, None) => first_eof.unwrap_or(End::ClientClosed),
                };
            }
            if first_eof.is_some() && close_deadline.is_none() && linger_deadline.is_none() {
                let deadline = Instant::now() + CLOSE_GRACE;
                linger_deadline = Some(deadline);
                if deadline < timer.deadline().into_std() {
                    timer.as_mut().reset(deadline.into());
                }
            }
            if s_up == Step::Again || s_down == Step::Again {
                tokio::task::yield_now().await;
                continue;
            }
            // A destination that just started refusing bytes brings the timer forward.
            if close_deadline.is_none()
                && let Some(since) = blocked_since(&up, &down)
                && since + timeouts.send < timer.deadline().into_std()
            {
                timer.as_mut().reset((since + timeouts.send).into());
            }

            // One poll function over everything the tunnel waits for: it keeps no waiter nodes of
            // its own (readiness wakers live in the sockets' registrations), which keeps the task,
            // i.e. the memory of an idle tunnel, small.
            let closing = close_deadline.is_some();
            // Moved in: the waiting closure is part of every idle tunnel's state, and a copy of
            // a flag is smaller than a reference to it.
            let (client_ref, backend_ref, mut idle_timer) = (&client, &backend, timer.as_mut());
            let wake = std::future::poll_fn(move |cx| {
                if !closing && control.poll_close_requested(cx).is_ready() {
                    return Poll::Ready(Wake::Close);
                }
                if s_up == Step::WaitRead
                    && !client_gone
                    && let Poll::Ready(r) = client_ref.tcp().poll_read_ready(cx)
                {
                    return Poll::Ready(Wake::Readable(r, Direction::Up));
                }
                if s_down == Step::WaitRead
                    && !backend_gone
                    && let Poll::Ready(r) = backend_ref.tcp().poll_read_ready(cx)
                {
                    return Poll::Ready(Wake::Readable(r, Direction::Down));
                }
                if s_up == Step::WaitWrite
                    && let Poll::Ready(r) = backend_ref.tcp().poll_write_ready(cx)
                {
                    return Poll::Ready(Wake::Writable(r));
                }
                if s_down == Step::WaitWrite
                    && let Poll::Ready(r) = client_ref.tcp().poll_write_ready(cx)
                {
                    return Poll::Ready(Wake::Writable(r));
                }
                if idle_timer.as_mut().poll(cx).is_ready() {
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
                Wake::Timer => {
                    let now = Instant::now();
                    if let (Some(deadline), None) = (linger_deadline, close_deadline)
                        && now >= deadline
                    {
                        break first_eof.unwrap_or(End::ClientClosed);
                    }
                    if let Some(deadline) = close_deadline {
                        if now >= deadline {
                            break lost.unwrap_or(End::CloseTimedOut);
                        }
                        timer.as_mut().reset(deadline.into());
                        continue;
                    }
                    let stalled = |flow: &Flow| flow.blocked_since.is_some_and(|at| now >= at + timeouts.send);
                    let told = if stalled(&down) {
                        // The client stopped reading: drop what waits for it, tell the backend.
                        client_gone = true;
                        down.lose_destination();
                        up.lose_source(&mut backend, CLIENT_STALLED)
                    } else if stalled(&up) {
                        backend_gone = true;
                        up.lose_destination();
                        down.lose_source(&mut client, BACKEND_STALLED)
                    } else {
                        if now >= last_activity + timeouts.idle {
                            break End::IdleTimeout;
                        }
                        let mut next = last_activity + timeouts.idle;
                        if let Some(since) = blocked_since(&up, &down) {
                            next = next.min(since + timeouts.send);
                        }
                        if let Some(deadline) = linger_deadline {
                            next = next.min(deadline);
                        }
                        timer.as_mut().reset(next.into());
                        continue;
                    };
                    match told {
                        Ok(true) => close_code = Some(LOST_CODE),
                        Ok(false) => {}
                        Err(_) => break End::Error,
                    }
                    lost = Some(End::SendTimeout);
                    let deadline = now + CLOSE_GRACE;
                    close_deadline = Some(deadline);
                    timer.as_mut().reset(deadline.into());
                }
            }
        };
        if matches!(end, End::ClosedByProxy | End::CloseTimedOut) {
            client.shutdown_write();
            backend.shutdown_write();
        }
        Report { end, bytes_up: up.bytes, bytes_down: down.bytes, close_code }
    }
}

/// The earliest moment a destination started refusing bytes that still wait for it.
fn blocked_since(up: &Flow, down: &Flow) -> Option<Instant> {
    match (up.blocked_since, down.blocked_since) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
