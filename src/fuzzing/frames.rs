//! `frames`: the WebSocket frame tracker ([`crate::tunnel::frames::FrameTracker`]) and the
//! Close frames the relay injects ([`crate::tunnel::frames::close_frame`]).
//!
//! Input: a seed byte for the split points, a Close code (2 bytes), a mask flag and key (1 + 4
//! bytes), a reason length (1 byte) and reason, then the stream.
//!
//! Invariants:
//! - fed at once, in seeded chunks, or one byte at a time, the tracker reports the headers a
//!   straightforward reference decoder finds, is at a boundary after exactly the offsets
//!   where the reference has one, ends in the same state, and `close_seen` says whether a
//!   Close header passed;
//! - at the start of every seeded chunk, `next_boundary_within` names the reference's next
//!   boundary (or none within the rest of the stream) without changing the tracker;
//! - a Close frame from `close_frame` is one complete control frame: FIN, opcode Close,
//!   masked exactly when a key is given, at most 125 payload bytes, and its unmasked payload is
//!   the code followed by the longest prefix of the reason that fits and is whole UTF-8.

use super::input::{Input, chunks};
use crate::tunnel::frames::{
    FrameHeader, FrameTracker, MAX_CLOSE_REASON_LEN, MAX_CONTROL_PAYLOAD, close_frame, opcode,
};

/// See the module doc.
pub fn frames(data: &[u8]) {
    let mut input = Input::new(data);
    let seed = input.byte();
    let code = input.u16();
    let mask = (input.byte() & 1 == 1).then(|| {
        let mut key = [0u8; 4];
        key.iter_mut().for_each(|b| *b = input.byte());
        key
    });
    let reason_len = usize::from(input.byte());
    let reason = String::from_utf8_lossy(input.bytes(reason_len)).into_owned();
    let stream = input.rest();

    check_stream(stream, seed);
    check_close_frame(code, &reason, mask);
}

/// What a reference decoder finds in a whole stream.
struct Reference {
    headers: Vec<FrameHeader>,
    /// Offsets at which the stream is between frames, ascending (0 always is).
    boundaries: Vec<usize>,
}

/// Frame by frame, RFC 6455 section 5.2: two bytes, the extended length the 7-bit length
/// announces, the masking key the mask bit announces, then the payload.
fn reference(stream: &[u8]) -> Reference {
    let mut headers = Vec::new();
    let mut boundaries = vec![0];
    let mut at = 0usize;
    while let (Some(&first), Some(&second)) = (stream.get(at), stream.get(at + 1)) {
        let (extended, len7) = match second & 0x7F {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let masked = second & 0x80 != 0;
        let header_len = 2 + extended + if masked { 4 } else { 0 };
        let Some(head) = stream.get(at..at + header_len) else { break };
        let payload_len =
            len7.unwrap_or_else(|| head[2..2 + extended].iter().fold(0u64, |v, &b| (v << 8) | u64::from(b)));
        headers.push(FrameHeader {
            fin: first & 0x80 != 0,
            rsv: (first >> 4) & 7,
            opcode: first & 0x0F,
            masked,
            payload_len,
        });
        let left = (stream.len() - at - header_len) as u64;
        if payload_len > left {
            break;
        }
        at += header_len + payload_len as usize;
        boundaries.push(at);
    }
    Reference { headers, boundaries }
}

fn check_stream(stream: &[u8], seed: u8) {
    let expected = reference(stream);
    let is_boundary = |offset: usize| expected.boundaries.binary_search(&offset).is_ok();
    let next_boundary = |offset: usize| expected.boundaries.iter().find(|&&b| b >= offset).map(|&b| b - offset);

    let mut whole = FrameTracker::new();
    let mut seen = Vec::new();
    whole.advance(stream, |h| seen.push(h));
    assert_eq!(seen, expected.headers, "headers differ from the reference, stream fed at once");
    assert_eq!(whole.is_at_boundary(), is_boundary(stream.len()), "boundary state at the end");
    assert_eq!(whole.close_seen(), expected.headers.iter().any(FrameHeader::is_close));

    for (what, pieces) in [("seeded chunks", chunks(stream, u64::from(seed))), ("bytes", stream.chunks(1).collect())] {
        let mut tracker = FrameTracker::new();
        let mut seen = Vec::new();
        let mut offset = 0;
        for (i, piece) in pieces.iter().enumerate() {
            // Probing is O(rest of the stream): only at seeded chunk starts, not per byte.
            if what == "seeded chunks" || i == 0 {
                let before = tracker;
                assert_eq!(
                    tracker.next_boundary_within(&stream[offset..]),
                    next_boundary(offset),
                    "next boundary from offset {offset}"
                );
                assert_eq!(tracker, before, "next_boundary_within changed the tracker");
            }
            tracker.advance(piece, |h| seen.push(h));
            offset += piece.len();
            assert_eq!(tracker.is_at_boundary(), is_boundary(offset), "boundary state at offset {offset}, {what}");
        }
        assert_eq!(seen, expected.headers, "headers differ from the reference, stream fed in {what}");
        assert_eq!(tracker, whole, "final state differs from the stream fed at once, fed in {what}");
    }

    for header in &expected.headers {
        let oversized = header.is_control() && (!header.fin || header.payload_len > MAX_CONTROL_PAYLOAD as u64);
        assert_eq!(header.is_oversized_control(), oversized, "{header:?}");
    }
}

fn check_close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) {
    let frame = close_frame(code, reason, mask);
    let bytes = frame.as_ref();
    let mut tracker = FrameTracker::new();
    let mut seen = Vec::new();
    tracker.advance(bytes, |h| seen.push(h));
    let [header] = seen[..] else { panic!("a Close frame read as {} headers: {seen:?}", seen.len()) };
    assert!(tracker.is_at_boundary() && tracker.close_seen(), "a Close frame is not one whole Close");
    assert!(header.fin && header.opcode == opcode::CLOSE && header.rsv == 0, "{header:?}");
    assert_eq!(header.masked, mask.is_some(), "masking towards the wrong side");
    assert!(!header.is_oversized_control(), "an oversized Close: {header:?}");

    let header_len = if mask.is_some() { 6 } else { 2 };
    let mut payload = bytes[header_len..].to_vec();
    assert_eq!(payload.len() as u64, header.payload_len);
    if let Some(key) = mask {
        payload.iter_mut().zip(key.iter().cycle()).for_each(|(b, k)| *b ^= k);
    }
    assert_eq!(payload[..2], code.to_be_bytes(), "the status code");
    let sent = std::str::from_utf8(&payload[2..]).expect("a Close reason is UTF-8");
    assert!(reason.starts_with(sent), "the reason sent is not a prefix of the reason");
    let longest = reason.floor_char_boundary(MAX_CLOSE_REASON_LEN);
    assert_eq!(sent.len(), longest, "the reason was cut shorter than needed");
}
