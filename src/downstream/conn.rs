//! One client connection's I/O wrapper and its phases.
//!
//! Owns: [`ConnIo`], which counts bytes and notices when a request head starts and ends, and
//! [`ConnState`], shared with the request handler, which says whether the connection is idle,
//! reading a head, or serving requests. The accept loop turns those phases into the `idle` and
//! `header_read` timeouts. hyper's own `header_read_timeout` is not used because it also runs
//! while a keep-alive connection waits for its next request, which would make `idle` no longer
//! than `header_read`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Protocol;
use super::sniff::HeadSniffer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No request in flight and no byte of the next one seen: the `idle` timeout applies.
    Idle,
    /// Bytes of a request head are arriving: the `header_read` timeout applies.
    Head,
    /// At least one request is being served: no connection-level timeout.
    Busy,
}

/// What a connection's watchdog must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Nothing,
    /// No request for `idle`: finish the connection gracefully.
    CloseIdle,
    /// A head started arriving `header_read` ago and is still not complete (slowloris): drop
    /// the connection; nothing useful can be answered.
    DropSlowHead,
    /// Response bytes have waited `send` for the client to take them (it stopped reading):
    /// drop the connection.
    DropStalled,
}

/// The timeouts a connection's watchdog enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) idle: Duration,
    pub(crate) header_read: Duration,
    pub(crate) send: Duration,
}

/// The connection policy, pure: what to do at `now` for a connection that entered `phase` at
/// `since` and whose response bytes have waited for the client since `stalled` (if they do),
/// and when to look again. Phases change without waking the watchdog, so it looks again at
/// least every `header_read`.
pub(crate) fn watchdog(
    phase: Phase,
    since: Instant,
    stalled: Option<Instant>,
    now: Instant,
    limits: Limits,
) -> (Action, Instant) {
    let waited = now.saturating_duration_since(since);
    let stuck = stalled.map(|at| (at, now.saturating_duration_since(at)));
    let action = match phase {
        _ if stuck.is_some_and(|(_, waited)| waited >= limits.send) => Action::DropStalled,
        Phase::Head if waited >= limits.header_read => Action::DropSlowHead,
        Phase::Idle if waited >= limits.idle => Action::CloseIdle,
        _ => Action::Nothing,
    };
    let mut deadline = now + limits.header_read;
    if action == Action::Nothing {
        match phase {
            Phase::Idle => deadline = deadline.min(since + limits.idle),
            Phase::Head => deadline = deadline.min(since + limits.header_read),
            Phase::Busy => {}
        }
        if let Some((at, _)) = stuck {
            deadline = deadline.min(at + limits.send);
        }
    }
    (action, deadline)
}

/// Shared between the connection's I/O, its request handler and its timeout watchdog.
#[derive(Debug)]
pub(crate) struct ConnState {
    epoch: Instant,
    phase: AtomicU8,
    /// Milliseconds after `epoch` when `phase` last changed.
    phase_since_ms: AtomicU64,
    in_flight: AtomicU32,
    length_conflict: AtomicBool,
    /// Response frames handed to hyper that it has not come back for yet: hyper asks a body
    /// for its next frame once it wrote (HTTP/1.1) or queued within the flow-control window
    /// (HTTP/2) the previous one, so a frame it keeps means the client stopped reading.
    handed: AtomicU32,
    /// Milliseconds after `epoch` of the last progress of handed frames (or 0 for none).
    handed_since_ms: AtomicU64,
    /// 1 + milliseconds after `epoch` since when the socket refuses writes (0: it takes them):
    /// a client that stopped reading, caught even when hyper holds the last frame itself.
    write_blocked_ms: AtomicU64,
    /// HTTP/2 has no "head being read" phase: frames of other streams flow at any time.
    is_http1: bool,
}

impl ConnState {
    pub(crate) fn new(protocol: Protocol) -> Self {
        Self {
            epoch: Instant::now(),
            phase: AtomicU8::new(Phase::Idle as u8),
            phase_since_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            length_conflict: AtomicBool::new(false),
            handed: AtomicU32::new(0),
            handed_since_ms: AtomicU64::new(0),
            write_blocked_ms: AtomicU64::new(0),
            is_http1: protocol == Protocol::Http1,
        }
    }

    /// A response body handed hyper a frame.
    pub(crate) fn frame_handed(&self) {
        self.handed_since_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
        self.handed.fetch_add(1, Ordering::AcqRel);
    }

    /// hyper came back to a body that had handed it a frame (or the body ended): progress.
    pub(crate) fn frame_taken(&self) {
        self.handed_since_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
        self.handed.fetch_sub(1, Ordering::AcqRel);
    }

    /// Since when response bytes have waited for the client without progress, if they do:
    /// frames handed to hyper, or a socket that refuses writes.
    pub(crate) fn stalled_since(&self) -> Option<Instant> {
        let handed = (self.handed.load(Ordering::Acquire) > 0)
            .then(|| self.epoch + Duration::from_millis(self.handed_since_ms.load(Ordering::Acquire)));
        let blocked = match self.write_blocked_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(self.epoch + Duration::from_millis(ms - 1)),
        };
        match (handed, blocked) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A write to the client's socket: `Pending` starts the clock, bytes taken stop it.
    fn on_write<T>(&self, polled: &Poll<io::Result<T>>, wrote: impl Fn(&T) -> bool) {
        match polled {
            Poll::Pending => {
                if self.write_blocked_ms.load(Ordering::Acquire) == 0 {
                    self.write_blocked_ms.store(self.epoch.elapsed().as_millis() as u64 + 1, Ordering::Release);
                }
            }
            Poll::Ready(Ok(v)) if wrote(v) => self.write_blocked_ms.store(0, Ordering::Release),
            Poll::Ready(_) => {}
        }
    }

    pub(crate) fn phase(&self) -> (Phase, Instant) {
        let phase = match self.phase.load(Ordering::Acquire) {
            0 => Phase::Idle,
            1 => Phase::Head,
            _ => Phase::Busy,
        };
        let since = self.epoch + Duration::from_millis(self.phase_since_ms.load(Ordering::Acquire));
        (phase, since)
    }

    fn set_phase(&self, phase: Phase) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.phase_since_ms.store(ms, Ordering::Release);
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// A request head was parsed and handed to the proxy.
    pub(crate) fn is_http1(&self) -> bool {
        self.is_http1
    }

    pub(crate) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.set_phase(Phase::Busy);
    }

    /// A response was fully written (or abandoned).
    pub(crate) fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.set_phase(Phase::Idle);
        }
    }

    /// Whether the head of the request just parsed carried both Content-Length and
    /// Transfer-Encoding (see [`super::sniff`]); reading clears it.
    pub(crate) fn take_length_conflict(&self) -> bool {
        self.length_conflict.swap(false, Ordering::AcqRel)
    }

    fn on_bytes_read(&self, sniffer: &mut HeadSniffer, bytes: &[u8]) {
        if !self.is_http1 || bytes.is_empty() {
            return;
        }
        let (phase, _) = self.phase();
        // Pipelined heads that arrive while a request is in flight are not scanned: hyper still
        // normalises them, so the backend never sees an ambiguous request either way.
        if phase == Phase::Busy {
            return;
        }
        if phase == Phase::Idle {
            self.set_phase(Phase::Head);
        }
        if let Some((_, facts)) = sniffer.feed(bytes)
            && facts.is_length_conflict()
        {
            self.length_conflict.store(true, Ordering::Release);
        }
    }
}

/// The client stream as hyper sees it.
pub(crate) struct ConnIo<S> {
    inner: S,
    state: Arc<ConnState>,
    sniffer: HeadSniffer,
    /// Bytes read before hyper took over (while telling HTTP/2 from HTTP/1), replayed first.
    prefix: Vec<u8>,
    prefix_read: usize,
}

impl<S> ConnIo<S> {
    pub(crate) fn with_prefix(inner: S, state: Arc<ConnState>, prefix: Vec<u8>) -> Self {
        Self { inner, state, sniffer: HeadSniffer::new(), prefix, prefix_read: 0 }
    }

    /// The stream, once hyper hands it back after a WebSocket upgrade.
    pub(crate) fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ConnIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if this.prefix_read < this.prefix.len() {
            let n = (this.prefix.len() - this.prefix_read).min(buf.remaining());
            buf.put_slice(&this.prefix[this.prefix_read..this.prefix_read + n]);
            this.prefix_read += n;
            if this.prefix_read == this.prefix.len() {
                this.prefix = Vec::new();
                this.prefix_read = 0;
            }
            this.state.on_bytes_read(&mut this.sniffer, &buf.filled()[before..]);
            return Poll::Ready(Ok(()));
        }
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let new = &buf.filled()[before..];
            this.state.on_bytes_read(&mut this.sniffer, new);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ConnIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.state.on_write(&polled, |n| *n > 0);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.state.on_write(&polled, |n| *n > 0);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.state.on_write(&polled, |()| true);
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_bytes_and_requests() {
        let state = ConnState::new(Protocol::Http1);
        let mut sniffer = HeadSniffer::new();
        assert_eq!(state.phase().0, Phase::Idle);
        state.on_bytes_read(&mut sniffer, b"GET / HTTP/1.1\r\n");
        assert_eq!(state.phase().0, Phase::Head);
        state.on_bytes_read(&mut sniffer, b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        state.request_started();
        assert_eq!(state.phase().0, Phase::Busy);
        assert!(state.take_length_conflict());
        assert!(!state.take_length_conflict());
        state.request_finished();
        assert_eq!(state.phase().0, Phase::Idle);
    }

    #[test]
    fn the_watchdog_closes_idle_connections_after_idle_slow_heads_after_header_read_and_stalled_readers_after_send() {
        let t0 = Instant::now();
        let limits = Limits {
            idle: Duration::from_secs(90),
            header_read: Duration::from_secs(10),
            send: Duration::from_secs(30),
        };
        let at = |s: u64| t0 + Duration::from_secs(s);
        let dog = |phase, now, stalled| watchdog(phase, t0, stalled, now, limits);
        // Idle for 5 s: nothing yet, look again at the header_read recheck.
        assert_eq!(dog(Phase::Idle, at(5), None), (Action::Nothing, at(15)));
        // Idle deadline closer than the recheck: wake exactly then.
        assert_eq!(dog(Phase::Idle, at(85), None), (Action::Nothing, at(90)));
        assert_eq!(dog(Phase::Idle, at(90), None), (Action::CloseIdle, at(100)));
        // A head that started at t0 has until t0 + header_read, and no longer.
        assert_eq!(dog(Phase::Head, at(3), None), (Action::Nothing, at(10)));
        assert_eq!(dog(Phase::Head, at(10), None), (Action::DropSlowHead, at(20)));
        // A busy connection whose client takes its bytes is not timed out by the watchdog
        // (the request timeout applies to the backend).
        assert_eq!(dog(Phase::Busy, at(1000), None), (Action::Nothing, at(1010)));
        // A keep-alive connection waiting longer than header_read is not a slow head.
        assert_eq!(dog(Phase::Idle, at(60), None).0, Action::Nothing);
        // Response bytes waiting since 995 s: wake at 995 + send, drop then.
        assert_eq!(dog(Phase::Busy, at(1000), Some(at(995))), (Action::Nothing, at(1010)));
        assert_eq!(dog(Phase::Busy, at(1020), Some(at(995))), (Action::Nothing, at(1025)));
        assert_eq!(dog(Phase::Busy, at(1025), Some(at(995))), (Action::DropStalled, at(1035)));
    }

    #[test]
    fn http2_connections_have_no_head_phase() {
        let state = ConnState::new(Protocol::Http2);
        let mut sniffer = HeadSniffer::new();
        state.on_bytes_read(&mut sniffer, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert_eq!(state.phase().0, Phase::Idle);
        state.request_started();
        state.request_started();
        state.request_finished();
        assert_eq!(state.phase().0, Phase::Busy);
        state.request_finished();
        assert_eq!(state.phase().0, Phase::Idle);
    }
}
