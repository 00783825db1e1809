//! The subscribers: a lean STOMP-over-WebSocket client whose clock is the kernel's. Every socket
//! has `SO_TIMESTAMPNS` on, and every read is a `recvmsg(2)` that also returns the
//! `CLOCK_REALTIME` instant at which the kernel received the newest segment of the bytes read.
//! A delivery's latency is that instant minus the publisher's send instant (also
//! `CLOCK_REALTIME`, in the body), so however late this client gets round to reading a socket,
//! the figure is the system's, not the client's. (When one read returns several segments, all
//! its messages get the newest one's stamp: an over-estimate, never an under-estimate. Here a
//! subscriber gets one message per publish to its destination, so that is rare.)
//!
//! Per message the client costs one `recvmsg` (a short read clears the socket's readiness, so
//! no `EAGAIN` read follows) and a scan of ~200 bytes: no allocation once a connection's buffers have
//! grown. Its CPU per delivery is reported next to the backend's and the proxy's.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::io::Write as _;

use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// `SO_TIMESTAMPNS` (the "old" option number, whose control message carries a `struct timespec`:
/// 64-bit fields on 64-bit targets). 35 on x86, x86-64, ARM, AArch64 and RISC-V (asm-generic).
#[cfg(any(
    target_arch = "x86",
    target_arch = "x86_64",
    target_arch = "arm",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
const SO_TIMESTAMPNS: libc::c_int = 35;
const SCM_TIMESTAMPNS: libc::c_int = SO_TIMESTAMPNS;

/// Bytes read per `recvmsg`.
const READ_BUF: usize = 4096;

/// Now, `CLOCK_REALTIME`, nanoseconds since the epoch (the publishers' clock too).
pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// One subscriber connection: the socket and the bytes received but not yet parsed.
pub struct Conn {
    /// Registered with the subscribers' runtime directly (not as a tokio `TcpStream`) so that a
    /// read shorter than the buffer can clear readiness itself, saving the `EAGAIN` read.
    stream: AsyncFd<std::net::TcpStream>,
    /// Raw WebSocket bytes not yet forming a whole frame.
    ws: Vec<u8>,
    /// STOMP bytes (WebSocket payloads) not yet forming a whole frame.
    stomp: Vec<u8>,
    /// The subscription id in use (`None` before the first SUBSCRIBE).
    subscription: Option<u32>,
    receipts: u32,
}

/// What one read produced.
enum Frame {
    Message { subscription: u32, body: (usize, usize) },
    Receipt(String),
    Connected,
    Error(String),
    Other,
}

fn enable_timestamps(stream: &std::net::TcpStream) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `recvmsg(2)` (non-blocking) into `buf`: the byte count and the kernel's receive stamp.
fn recv_stamped(fd: libc::c_int, buf: &mut [u8]) -> io::Result<(usize, Option<i64>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // Room for one cmsg carrying a timespec, 8-byte aligned.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; every pointer in it refers to locals that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: fd is an open socket; msg describes valid, writable buffers.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled in, within
    // msg_controllen; the payload of SCM_TIMESTAMPNS is a timespec (read unaligned).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == SCM_TIMESTAMPNS {
                let t: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                stamp = Some(t.tv_sec as i64 * 1_000_000_000 + t.tv_nsec as i64);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, stamp))
}

/// A masked client text frame carrying `payload` (the mask is fixed: this client is no browser
/// and the server only has to unmask).
fn client_frame(payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x81);
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&MASK);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    f
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
}

impl Conn {
    /// Connect to `addr`, upgrade `/ws` to a STOMP WebSocket, CONNECT (heart-beats off, so the
    /// only traffic is the benchmark's) and wait for CONNECTED.
    pub async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        // Still non-blocking after into_std.
        let stream = stream.into_std().map_err(|e| e.to_string())?;
        enable_timestamps(&stream).map_err(|e| format!("SO_TIMESTAMPNS: {e}"))?;
        // SAFETY: a std TcpStream owns its descriptor, open until the AsyncFd drops it, and
        // always reports that same descriptor.
        let stream = unsafe { AsyncFd::register(stream) }.map_err(|e| e.to_string())?;
        let mut conn = Conn { stream, ws: Vec::new(), stomp: Vec::new(), subscription: None, receipts: 0 };
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: v12.stomp\r\n\r\n"
        );
        conn.write_all(request.as_bytes()).await.map_err(|e| format!("handshake: {e}"))?;
        let head_end = loop {
            if let Some(i) = conn.ws.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if conn.ws.len() > 8192 {
                return Err("handshake answer too long".into());
            }
            conn.fill().await?;
        };
        if !conn.ws.starts_with(b"HTTP/1.1 101") {
            return Err(format!("no 101: {}", String::from_utf8_lossy(&conn.ws[..head_end.min(300)])));
        }
        conn.ws.drain(..head_end);
        conn.send(b"CONNECT\naccept-version:1.2\nhost:localhost\nheart-beat:0,0\n\n\0").await?;
        loop {
            let (frame, len) = conn.next_frame().await?;
            conn.stomp.drain(..len);
            match frame {
                Frame::Connected => return Ok(conn),
                Frame::Error(e) => return Err(format!("ERROR instead of CONNECTED: {e}")),
                _ => {}
            }
        }
    }

    async fn send(&mut self, stomp: &[u8]) -> Result<(), String> {
        self.write_all(&client_frame(stomp)).await.map_err(|e| format!("write: {e}"))
    }

    async fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let mut guard = self.stream.writable().await?;
            match guard.try_io(|s| s.get_ref().write(bytes)) {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// One `recvmsg` (waiting for readiness) appended to `self.ws`; returns the kernel stamp.
    async fn fill(&mut self) -> Result<Option<i64>, String> {
        let mut buf = [0u8; READ_BUF];
        loop {
            let mut guard = self.stream.readable().await.map_err(|e| format!("readable: {e}"))?;
            match guard.try_io(|s| recv_stamped(s.as_raw_fd(), &mut buf)) {
                Ok(Ok((0, _))) => return Err("connection closed".into()),
                Ok(Ok((n, stamp))) => {
                    // A short read drained the socket (as tokio's own TcpStream assumes).
                    if n < buf.len() {
                        guard.clear_ready();
                    }
                    self.ws.extend_from_slice(&buf[..n]);
                    return Ok(stamp);
                }
                Ok(Err(e)) => return Err(format!("recvmsg: {e}")),
                Err(_would_block) => continue,
            }
        }
    }

    /// Move every whole WebSocket frame's payload from `self.ws` to `self.stomp`.
    fn unframe(&mut self) -> Result<(), String> {
        let mut at = 0;
        loop {
            let b = &self.ws[at..];
            if b.len() < 2 {
                break;
            }
            let (len, start) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize, 10),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if b[1] & 0x80 != 0 {
                return Err("masked frame from the server".into());
            }
            if b.len() < start + len {
                break;
            }
            match b[0] & 0x0f {
                0x0..=0x2 => self.stomp.extend_from_slice(&b[start..start + len]),
                0x8 => return Err("WebSocket closed by the server".into()),
                _ => {} // ping/pong: none expected (heart-beats are off)
            }
            at += start + len;
        }
        self.ws.drain(..at);
        Ok(())
    }

    /// The next whole STOMP frame at the front of `self.stomp`, and its length (to drain).
    fn parse(&self) -> Result<Option<(Frame, usize)>, String> {
        let b = &self.stomp;
        // Heart-beat EOLs between frames.
        let skip = b.iter().take_while(|c| **c == b'\n' || **c == b'\r').count();
        let Some(head_len) = b[skip..].windows(2).position(|w| w == b"\n\n") else { return Ok(None) };
        let head = std::str::from_utf8(&b[skip..skip + head_len]).map_err(|_| "frame head is not UTF-8")?;
        let body_start = skip + head_len + 2;
        let body_end = match header(head, "content-length") {
            Some(n) => body_start + n.parse::<usize>().map_err(|_| "bad content-length")?,
            None => match b[body_start..].iter().position(|c| *c == 0) {
                Some(i) => body_start + i,
                None => return Ok(None),
            },
        };
        if b.len() <= body_end {
            return Ok(None);
        }
        let command = head.lines().next().unwrap_or_default();
        let frame = match command {
            "MESSAGE" => {
                let subscription = header(head, "subscription").and_then(|s| s.parse().ok()).unwrap_or(u32::MAX);
                Frame::Message { subscription, body: (body_start, body_end) }
            }
            "RECEIPT" => Frame::Receipt(header(head, "receipt-id").unwrap_or_default().to_owned()),
            "CONNECTED" => Frame::Connected,
            "ERROR" => Frame::Error(format!(
                "{}: {}",
                header(head, "message").unwrap_or_default(),
                String::from_utf8_lossy(&b[body_start..body_end])
            )),
            _ => Frame::Other,
        };
        Ok(Some((frame, body_end + 1)))
    }

    /// Read until one whole STOMP frame is there; returns it with the stamp of the read that
    /// completed it (None when it was already buffered: then the previous read's stamp holds).
    async fn next_frame(&mut self) -> Result<(Frame, usize), String> {
        loop {
            if let Some(found) = self.parse()? {
                return Ok(found);
            }
            self.fill().await?;
            self.unframe()?;
        }
    }
}

/// What a subscriber is to do in one scenario.
#[derive(Clone, Copy)]
pub struct Plan {
    /// Names the scenario's destinations, so no two scenarios share one.
    pub scenario: &'static str,
    pub subscription: u32,
    pub destination: u32,
    /// Messages with a sequence number below this are warm-up: counted, not timed.
    pub timed_from: u32,
}

pub fn destination_name(scenario: &str, d: u32) -> String {
    format!("/sub/fanout/{scenario}/{d}")
}

/// The message body the publishers send: `destination sequence sent-at-ns`.
pub fn body(destination: u32, seq: u32, sent_ns: i64) -> String {
    format!("{destination} {seq} {sent_ns}")
}

fn parse_body(b: &[u8]) -> Option<(u32, u32, i64)> {
    let s = std::str::from_utf8(b).ok()?;
    let mut it = s.split(' ');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// One subscriber's record of a scenario.
#[derive(Default)]
pub struct Tally {
    /// How many times each sequence number arrived.
    pub seen: Vec<u8>,
    /// Latency of timed deliveries, µs (kernel receive stamp − publisher's send stamp).
    pub latency_us: Vec<u32>,
    /// How long timed deliveries sat in the socket before this client read them, µs.
    pub read_lag_us: Vec<u32>,
    /// MESSAGEs of this subscription naming another destination (must stay 0).
    pub misrouted: u64,
    /// Reads that came without a kernel stamp (must stay 0).
    pub unstamped: u64,
}

/// Shared counters of one scenario.
#[derive(Default)]
pub struct Progress {
    /// Subscribers whose SUBSCRIBE is receipted.
    pub subscribed: AtomicUsize,
    /// First deliveries (duplicates not counted), across all subscribers.
    pub delivered: AtomicU64,
}

/// Subscribe `conn` per `plan` (dropping its previous subscription), signal `progress`, then
/// record deliveries until `stop`. Returns the connection for the next scenario.
pub async fn run(
    mut conn: Conn,
    plan: Plan,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> Result<(Conn, Tally), String> {
    let mut frames = String::new();
    if let Some(old) = conn.subscription {
        frames.push_str(&format!("UNSUBSCRIBE\nid:{old}\n\n\0"));
    }
    conn.receipts += 1;
    let receipt = format!("s{}", conn.receipts);
    frames.push_str(&format!(
        "SUBSCRIBE\nid:{}\ndestination:{}\nreceipt:{receipt}\n\n\0",
        plan.subscription,
        destination_name(plan.scenario, plan.destination)
    ));
    conn.subscription = Some(plan.subscription);
    // One WebSocket frame may carry several STOMP frames.
    conn.send(frames.as_bytes()).await?;
    loop {
        let (frame, len) = conn.next_frame().await?;
        conn.stomp.drain(..len);
        match frame {
            Frame::Receipt(r) if r == receipt => break,
            Frame::Error(e) => return Err(format!("ERROR after SUBSCRIBE: {e}")),
            _ => {} // MESSAGEs of the previous subscription, still in flight
        }
    }
    progress.subscribed.fetch_add(1, Ordering::AcqRel);
    let mut tally = Tally::default();
    // Frames already buffered with the RECEIPT came before any timed publish: no stamp needed.
    let (mut stamp, mut read_at): (Option<i64>, i64) = (None, 0);
    loop {
        conn.unframe()?;
        while let Some((frame, len)) = conn.parse()? {
            if let Frame::Message { subscription, body } = &frame
                && *subscription == plan.subscription
            {
                match parse_body(&conn.stomp[body.0..body.1]) {
                    Some((d, seq, sent)) if d == plan.destination => {
                        let slot = seq as usize;
                        if tally.seen.len() <= slot {
                            tally.seen.resize(slot + 1, 0);
                        }
                        tally.seen[slot] = tally.seen[slot].saturating_add(1);
                        if tally.seen[slot] == 1 {
                            progress.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        if seq >= plan.timed_from
                            && let Some(at) = stamp
                        {
                            tally.latency_us.push(((at - sent).max(0) / 1000) as u32);
                            tally.read_lag_us.push(((read_at - at).max(0) / 1000) as u32);
                        }
                    }
                    _ => tally.misrouted += 1,
                }
            } else if let Frame::Error(e) = frame {
                return Err(format!("ERROR: {e}"));
            }
            conn.stomp.drain(..len);
        }
        stamp = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok((conn, tally)),
            r = conn.fill() => r?,
        };
        read_at = now_ns();
        if stamp.is_none() {
            tally.unstamped += 1;
        }
    }
}

/// Open `n` connections to the targets (connection `i` to `targets[i % targets.len()]`),
/// `concurrency` at a time, all within `limit`.
pub async fn open_all(
    targets: &[SocketAddr],
    n: usize,
    concurrency: usize,
    limit: Duration,
) -> Result<Vec<Conn>, String> {
    let targets = targets.to_vec();
    tokio::time::timeout(limit, async move {
        let gate = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let (gate, addr) = (gate.clone(), targets[i % targets.len()]);
            set.spawn(async move {
                let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
                Conn::open(addr).await.map(|c| (i, c))
            });
        }
        let mut conns: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
        while let Some(r) = set.join_next().await {
            let (i, c) = r.map_err(|e| e.to_string())??;
            conns[i] = Some(c);
        }
        Ok(conns.into_iter().flatten().collect())
    })
    .await
    .map_err(|_| format!("{n} subscribers not connected within {limit:?}"))?
}
