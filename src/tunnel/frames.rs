//! WebSocket frame boundaries on a tunnelled byte stream (RFC 6455 section 5.2).
//!
//! Owns: following ONE direction of an upgraded connection header by header
//! ([`FrameTracker`]), so the relay knows where the frame in flight ends and can write a Close
//! there, and encoding that Close ([`close_frame`]). Must not: copy, unmask or inspect payload
//! bytes (they may be masked or compressed and are none of our business), allocate, do I/O,
//! read clocks, or panic on any byte sequence. A misbehaving peer only produces odd headers;
//! tracking simply continues on whatever the bytes say.
//!
//! # Where a Close may be injected
//! At a *frame* boundary, not a message boundary. RFC 6455 section 5.4 lets control frames
//! (Close included) sit between the fragments of a fragmented message, so a Close written at
//! any frame boundary is legal; the receiver drops the unfinished message when the Close
//! arrives. Waiting for a message boundary instead could wait forever on a peer that streams
//! one endless fragmented message. A single frame can still be arbitrarily long (up to 2^64 - 1
//! bytes), so the relay must bound its wait for a boundary with its own deadline.
//!
//! # Masking
//! Frames towards a server MUST be masked and frames towards a client MUST NOT be (RFC 6455
//! section 5.1): [`close_frame`] takes the 4-byte key for the backend direction. The relay
//! draws it from a strong RNG, as section 5.3 requires the key to be unpredictable.

use std::fmt;

/// Frame opcodes (RFC 6455 section 5.2). Values 3-7 and 11-15 are reserved; the tracker reports
/// them like any other, since it follows lengths and never judges a peer.
pub mod opcode {
    /// A later fragment of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// The first fragment of a text message.
    pub const TEXT: u8 = 0x1;
    /// The first fragment of a binary message.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// Control frames (Close, Ping, Pong) carry at most this many payload bytes and are never
/// fragmented (RFC 6455 section 5.5), so a relay may buffer one whole.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The longest header: 2 fixed bytes, an 8-byte extended length and a 4-byte masking key.
pub(crate) const MAX_HEADER_LEN: usize = 14;

/// A Close payload is a 2-byte status code followed by the reason, within the control limit.
pub(crate) const MAX_CLOSE_REASON_LEN: usize = MAX_CONTROL_PAYLOAD - 2;

/// The longest Close frame [`close_frame`] produces: masked header plus a full payload.
pub(crate) const MAX_CLOSE_FRAME_LEN: usize = 2 + 4 + MAX_CONTROL_PAYLOAD;

const FIN: u8 = 0x80;
const MASK: u8 = 0x80;
const LEN7: u8 = 0x7F;
/// `len7` values that announce a 16-bit or 64-bit extended length.
const LEN7_U16: u8 = 126;
const LEN7_U64: u8 = 127;

/// One decoded frame header. The masking key itself is skipped with the payload: nobody
/// downstream of the tracker needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// Last frame of its message.
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits (RSV1 = 0b100; set by permessage-deflate).
    pub rsv: u8,
    /// See [`opcode`]; 0..=15.
    pub opcode: u8,
    /// The payload is masked (client to server).
    pub masked: bool,
    /// As announced by the peer; not checked against anything (a garbage stream can announce
    /// `u64::MAX`, which is just a very long payload).
    pub payload_len: u64,
}

impl FrameHeader {
    /// Close, Ping, Pong and the reserved 0xB-0xF: the opcodes with the high bit set.
    pub const fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// A Close frame.
    pub const fn is_close(&self) -> bool {
        self.opcode == opcode::CLOSE
    }

    /// True when this control frame breaks RFC 6455 section 5.5 (fragmented, or more than
    /// [`MAX_CONTROL_PAYLOAD`] bytes). Always false for data frames. The relay may use it to
    /// refuse to buffer a "control" frame whole.
    pub const fn is_oversized_control(&self) -> bool {
        self.is_control() && (!self.fin || self.payload_len > MAX_CONTROL_PAYLOAD as u64)
    }
}

/// Tracks frame boundaries in one direction of a WebSocket byte stream.
///
/// Feed it every byte forwarded in that direction, in order, through [`FrameTracker::advance`]
/// (split anywhere: a header may arrive one byte at a time). It keeps a fixed 24-byte state and
/// never allocates, so one per direction per tunnel is free.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameTracker {
    /// Payload bytes of the current frame still to pass. Invariant: non-zero only when
    /// `partial_len == 0` (a payload starts only once its header is complete).
    remaining: u64,
    /// The header bytes seen so far; only `partial[..partial_len]` is meaningful.
    partial: [u8; MAX_HEADER_LEN],
    /// Invariant: `< header_len(partial[1])` once it is >= 2, because a completed header is
    /// decoded and cleared at once.
    partial_len: u8,
    close_seen: bool,
}

impl FrameTracker {
    /// A tracker at the start of a stream, which is a frame boundary.
    pub const fn new() -> Self {
        Self { remaining: 0, partial: [0; MAX_HEADER_LEN], partial_len: 0, close_seen: false }
    }

    /// Account for `bytes` being forwarded. Calls `on_header` for every frame header completed
    /// within them, in stream order (the relay watches for the peer's Close this way).
    pub fn advance(&mut self, mut bytes: &[u8], mut on_header: impl FnMut(FrameHeader)) {
        // Bounded: every step consumes at least one byte (see `step`).
        while !bytes.is_empty() {
            let (used, header) = self.step(bytes);
            bytes = bytes.get(used..).unwrap_or_default();
            if let Some(header) = header {
                on_header(header);
            }
        }
    }

    /// True when the next byte would start a new frame header (also at the very start).
    pub const fn is_at_boundary(&self) -> bool {
        self.remaining == 0 && self.partial_len == 0
    }

    /// The smallest `n <= bytes.len()` such that, after advancing by `bytes[..n]`, the tracker
    /// would be at a frame boundary: `Some(0)` when it already is, `None` when no boundary falls
    /// within `bytes`. Does not change the tracker. This is where the relay cuts a buffer to
    /// write a Close: forward `bytes[..n]`, advance by it, then write the Close.
    pub(crate) fn next_boundary_within(&self, bytes: &[u8]) -> Option<usize> {
        let mut probe = *self;
        let mut used = 0;
        // Bounded: every step consumes at least one byte, so at most bytes.len() + 1 rounds.
        loop {
            if probe.is_at_boundary() {
                return Some(used);
            }
            let rest = bytes.get(used..).unwrap_or_default();
            if rest.is_empty() {
                return None;
            }
            used += probe.step(rest).0;
        }
    }

    /// True once the header of a Close frame has passed in this direction. An endpoint sends
    /// at most one Close (RFC 6455 section 5.5.1), so the relay must not inject a second one
    /// after the peer's own.
    pub(crate) const fn close_seen(&self) -> bool {
        self.close_seen
    }

    /// Consume a non-empty prefix of non-empty `bytes` that ends no later than the next phase
    /// change (end of a payload or of a header), returning its length and the header it
    /// completed, if any. Boundaries can therefore only fall between steps.
    fn step(&mut self, bytes: &[u8]) -> (usize, Option<FrameHeader>) {
        if self.remaining > 0 {
            // A remaining count above usize::MAX is longer than any slice.
            let used = usize::try_from(self.remaining).map_or(bytes.len(), |r| r.min(bytes.len()));
            self.remaining -= used as u64;
            return (used, None);
        }
        if self.partial_len == 0 {
            // Fast path: the whole header is in `bytes`, nothing to buffer.
            if let Some(&second) = bytes.get(1) {
                let len = header_len(second);
                if let Some(head) = bytes.get(..len) {
                    let header = decode(head);
                    self.begin_payload(&header);
                    return (len, Some(header));
                }
            }
        }
        let have = usize::from(self.partial_len);
        let want = if have < 2 { 2 } else { header_len(self.partial[1]) };
        // `want > have` by the `partial_len` invariant, so at least one byte is taken.
        let take = (want - have).min(bytes.len());
        self.partial[have..have + take].copy_from_slice(&bytes[..take]);
        let have = have + take;
        if have >= 2 && have == header_len(self.partial[1]) {
            let header = decode(&self.partial[..have]);
            // Cleared (not just truncated) so equal trackers compare equal.
            (self.partial, self.partial_len) = ([0; MAX_HEADER_LEN], 0);
            self.begin_payload(&header);
            return (take, Some(header));
        }
        self.partial_len = have as u8; // <= MAX_HEADER_LEN
        (take, None)
    }

    fn begin_payload(&mut self, header: &FrameHeader) {
        self.remaining = header.payload_len;
        self.close_seen |= header.is_close();
    }
}

/// Header length implied by the second header byte (MASK | len7).
const fn header_len(second: u8) -> usize {
    let extended = match second & LEN7 {
        LEN7_U16 => 2,
        LEN7_U64 => 8,
        _ => 0,
    };
    let key = if second & MASK != 0 { 4 } else { 0 };
    2 + extended + key
}

/// Decode a complete header. Caller guarantees `head.len() == header_len(head[1])`; the
/// extended length is then present, and any value (even with the top bit set, which the RFC
/// forbids) is taken as announced.
fn decode(head: &[u8]) -> FrameHeader {
    let (first, second) = (head[0], head[1]);
    let payload_len = match second & LEN7 {
        LEN7_U16 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        LEN7_U64 => {
            let mut be = [0; 8];
            be.copy_from_slice(&head[2..10]);
            u64::from_be_bytes(be)
        }
        len => u64::from(len),
    };
    FrameHeader {
        fin: first & FIN != 0,
        rsv: (first >> 4) & 0b111,
        opcode: first & 0x0F,
        masked: second & MASK != 0,
        payload_len,
    }
}

/// An encoded Close frame in a fixed buffer; `as_ref()` gives the bytes to write.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct CloseFrame {
    bytes: [u8; MAX_CLOSE_FRAME_LEN],
    len: u8,
}

impl AsRef<[u8]> for CloseFrame {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for CloseFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CloseFrame").field(&self.as_ref()).finish()
    }
}

/// Encode a Close frame with status `code` and `reason`, cut to [`MAX_CLOSE_REASON_LEN`] bytes
/// on a char boundary so the payload stays valid UTF-8 within the control-frame limit. Pass
/// `mask: Some(key)` towards a backend (client-to-server frames must be masked) and `None`
/// towards a client. `code` should satisfy [`is_sendable_close_code`] (config guarantees
/// 1001 or 1012); it is written as given.
pub(crate) fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> CloseFrame {
    let reason = reason.as_bytes();
    let reason = &reason[..reason.len().min(MAX_CLOSE_REASON_LEN)];
    let reason = match std::str::from_utf8(reason) {
        Ok(_) => reason,
        // Only a char cut by the limit can fail; keep what precedes it.
        Err(cut) => &reason[..cut.valid_up_to()],
    };
    let payload_len = 2 + reason.len(); // <= MAX_CONTROL_PAYLOAD

    let mut bytes = [0; MAX_CLOSE_FRAME_LEN];
    bytes[0] = FIN | opcode::CLOSE;
    bytes[1] = payload_len as u8 | if mask.is_some() { MASK } else { 0 };
    let mut at = 2;
    if let Some(key) = mask {
        bytes[2..6].copy_from_slice(&key);
        at = 6;
    }
    let payload = &mut bytes[at..at + payload_len];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..].copy_from_slice(reason);
    if let Some(key) = mask {
        for (byte, k) in payload.iter_mut().zip(key.iter().cycle()) {
            *byte ^= k;
        }
    }
    CloseFrame {
        bytes,
        len: (at + payload_len) as u8, // <= MAX_CLOSE_FRAME_LEN
    }
}

/// Codes an endpoint may put in a Close frame: 1000-1003 and 1007-1013 (RFC 6455 section 7.4.1
/// plus IANA's 1012 restart and 1013 try-again), and 3000-4999 for registered and private use.
/// 1004 is reserved, 1005/1006/1015 must never be sent, and 1014 is left out because common
/// clients (tungstenite among them) still fail the connection on it.
pub const fn is_sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

#[cfg(test)]
mod tests;
