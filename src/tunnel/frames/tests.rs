use std::io::{Cursor, Read, Write};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader as TFrameHeader, FrameSocket};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::ProtocolError};

use super::*;

/// Feed `bytes` in one call and collect the headers reported.
fn headers_of(tracker: &mut FrameTracker, bytes: &[u8]) -> Vec<FrameHeader> {
    let mut seen = Vec::new();
    tracker.advance(bytes, |h| seen.push(h));
    seen
}

fn header(fin: bool, opcode: u8, masked: bool, payload_len: u64) -> FrameHeader {
    FrameHeader { fin, rsv: 0, opcode, masked, payload_len }
}

/// Feeding `stream` whole, and one byte at a time, must both report `expected` and end at a
/// boundary; byte by byte, the tracker must be at a boundary exactly at `boundaries`.
fn check_stream(stream: &[u8], expected: &[FrameHeader], boundaries: &[usize]) {
    let mut whole = FrameTracker::new();
    assert_eq!(headers_of(&mut whole, stream), expected);
    assert!(whole.is_at_boundary());

    let mut bytewise = FrameTracker::new();
    let mut seen = Vec::new();
    assert!(bytewise.is_at_boundary());
    for (i, byte) in stream.iter().enumerate() {
        bytewise.advance(std::slice::from_ref(byte), |h| seen.push(h));
        assert_eq!(bytewise.is_at_boundary(), boundaries.contains(&(i + 1)), "after byte {}", i + 1);
    }
    assert_eq!(seen, expected);
}

#[test]
fn seven_bit_unmasked_text_frame() {
    let mut stream = vec![0x81, 0x05];
    stream.extend_from_slice(b"hello");
    check_stream(&stream, &[header(true, opcode::TEXT, false, 5)], &[7]);
}

#[test]
fn seven_bit_masked_frame_skips_the_key_and_payload() {
    // Key and payload bytes that look like headers must not be read as headers.
    let mut stream = vec![0x82, 0x80 | 0x03, 0x81, 0x7F, 0x88, 0x00];
    stream.extend_from_slice(&[0x89, 0x7E, 0xFF]);
    check_stream(&stream, &[header(true, opcode::BINARY, true, 3)], &[9]);
}

#[test]
fn sixteen_bit_lengths_at_the_form_edges() {
    for len in [126u64, 127, 65535] {
        let mut stream = vec![0x82, 126];
        stream.extend_from_slice(&(len as u16).to_be_bytes());
        stream.resize(4 + len as usize, 0x81);
        check_stream(&stream, &[header(true, opcode::BINARY, false, len)], &[stream.len()]);
    }
}

#[test]
fn sixty_four_bit_length_masked() {
    let len = 65536u64;
    let mut stream = vec![0x02, 0x80 | 127];
    stream.extend_from_slice(&len.to_be_bytes());
    stream.extend_from_slice(&[1, 2, 3, 4]);
    stream.resize(14 + len as usize, 0x88);
    let mut tracker = FrameTracker::new();
    assert_eq!(headers_of(&mut tracker, &stream[..14]), [header(false, opcode::BINARY, true, len)]);
    assert!(!tracker.is_at_boundary());
    assert_eq!(tracker.next_boundary_within(&stream[14..]), Some(65536));
    assert_eq!(tracker.next_boundary_within(&stream[14..100]), None);
    assert!(headers_of(&mut tracker, &stream[14..]).is_empty());
    assert!(tracker.is_at_boundary());
}

#[test]
fn non_minimal_length_encodings_are_followed_as_announced() {
    // 5 bytes announced in the 16-bit and in the 64-bit form: legal to parse, just wasteful.
    let mut stream = vec![0x81, 126, 0, 5];
    stream.extend_from_slice(b"abcde");
    stream.extend_from_slice(&[0x81, 127, 0, 0, 0, 0, 0, 0, 0, 5]);
    stream.extend_from_slice(b"fghij");
    let h = header(true, opcode::TEXT, false, 5);
    check_stream(&stream, &[h, h], &[9, 24]);
}

#[test]
fn zero_length_frames_are_boundaries_right_after_their_header() {
    // Empty text, empty masked ping, empty close.
    let stream = [0x81, 0x00, 0x89, 0x80, 9, 9, 9, 9, 0x88, 0x00];
    check_stream(
        &stream,
        &[
            header(true, opcode::TEXT, false, 0),
            header(true, opcode::PING, true, 0),
            header(true, opcode::CLOSE, false, 0),
        ],
        &[2, 8, 10],
    );
}

#[test]
fn fragmented_message_with_an_interleaved_ping() {
    let mut stream = vec![0x01, 0x03];
    stream.extend_from_slice(b"abc");
    stream.extend_from_slice(&[0x89, 0x02, b'p', b'!']);
    stream.extend_from_slice(&[0x00, 0x02, b'd', b'e']);
    stream.extend_from_slice(&[0x8A, 0x00]);
    stream.extend_from_slice(&[0x80, 0x01, b'f']);
    check_stream(
        &stream,
        &[
            header(false, opcode::TEXT, false, 3),
            header(true, opcode::PING, false, 2),
            header(false, opcode::CONTINUATION, false, 2),
            header(true, opcode::PONG, false, 0),
            header(true, opcode::CONTINUATION, false, 1),
        ],
        &[5, 9, 13, 15, 18],
    );
}

#[test]
fn rsv_bits_and_reserved_opcodes_are_reported_not_rejected() {
    // RSV1 (permessage-deflate) on text; a reserved data opcode 3; reserved control 0xB.
    let stream = [0xC1, 0x01, b'x', 0x73, 0x00, 0x8B, 0x01, 0];
    let mut tracker = FrameTracker::new();
    let seen = headers_of(&mut tracker, &stream);
    assert_eq!(seen.len(), 3);
    assert_eq!((seen[0].rsv, seen[0].opcode), (0b100, opcode::TEXT));
    assert_eq!((seen[1].rsv, seen[1].opcode), (0b111, 3));
    assert!(!seen[1].is_control());
    assert_eq!((seen[2].opcode, seen[2].is_control()), (0xB, true));
    assert!(tracker.is_at_boundary());
}

#[test]
fn control_frame_predicates() {
    let close = header(true, opcode::CLOSE, true, 2);
    assert!(close.is_close() && close.is_control() && !close.is_oversized_control());
    assert!(header(true, opcode::PING, false, 126).is_oversized_control());
    assert!(header(false, opcode::PONG, false, 0).is_oversized_control());
    assert!(!header(false, opcode::BINARY, false, 1 << 40).is_oversized_control());
    assert!(!header(true, opcode::CONTINUATION, false, 0).is_control());
}

#[test]
fn close_seen_is_set_by_the_close_header_only() {
    let mut tracker = FrameTracker::new();
    tracker.advance(&[0x82, 0x02, 0x88, 0x00], |_| {});
    assert!(!tracker.close_seen(), "0x88 inside a payload is not a Close");
    tracker.advance(&[0x88], |_| {});
    assert!(!tracker.close_seen(), "half a header is not a Close yet");
    tracker.advance(&[0x02, 0x03], |_| {});
    assert!(tracker.close_seen());
    assert!(!tracker.is_at_boundary());
}

#[test]
fn next_boundary_within_does_not_change_the_tracker() {
    let mut tracker = FrameTracker::new();
    tracker.advance(&[0x81, 0x04, b'a'], |_| {});
    let before = tracker;
    let rest = [b'b', b'c', b'd', 0x81, 0x00];
    assert_eq!(tracker.next_boundary_within(&rest), Some(3));
    assert_eq!(tracker.next_boundary_within(&rest[..2]), None);
    assert_eq!(tracker.next_boundary_within(&[]), None);
    assert_eq!(tracker, before);
    tracker.advance(&rest[..3], |_| {});
    assert_eq!(tracker.next_boundary_within(&rest[3..]), Some(0));
    assert_eq!(tracker.next_boundary_within(&[]), Some(0));
}

#[test]
fn a_u64_max_length_is_a_very_long_payload_not_an_overflow() {
    let mut stream = vec![0x82, 127];
    stream.extend_from_slice(&u64::MAX.to_be_bytes());
    let mut tracker = FrameTracker::new();
    assert_eq!(headers_of(&mut tracker, &stream), [header(true, opcode::BINARY, false, u64::MAX)]);
    let junk = vec![0x88; 1 << 20];
    assert_eq!(tracker.next_boundary_within(&junk), None);
    assert!(headers_of(&mut tracker, &junk).is_empty());
    assert!(!tracker.is_at_boundary());
    assert!(!tracker.close_seen());
}

#[test]
fn tracker_state_stays_small() {
    assert!(std::mem::size_of::<FrameTracker>() <= 24);
}

/// A `Read + Write` pipe end for tungstenite's `WebSocket`: reads `input`, discards writes.
struct Wire(Cursor<Vec<u8>>);

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Read one message with tungstenite's full protocol stack in `role`.
fn receive(bytes: &[u8], role: Role) -> Result<Message, WsError> {
    WebSocket::from_raw_socket(Wire(Cursor::new(bytes.to_vec())), role, None).read()
}

fn expect_close(message: Result<Message, WsError>) -> (CloseCode, String) {
    match message {
        Ok(Message::Close(Some(close))) => (close.code, close.reason.as_str().to_owned()),
        other => panic!("expected a Close with a code, got {other:?}"),
    }
}

#[test]
fn unmasked_close_is_read_by_a_tungstenite_client() {
    let frame = close_frame(1001, "draining", None);
    assert_eq!(frame.as_ref()[..2], [0x88, 10]);
    let (code, reason) = expect_close(receive(frame.as_ref(), Role::Client));
    assert_eq!((code, reason.as_str()), (CloseCode::Away, "draining"));
}

#[test]
fn masked_close_is_read_by_a_tungstenite_server() {
    let key = [0xA1, 0x00, 0x5C, 0xFF];
    let frame = close_frame(1012, "restart", Some(key));
    assert_eq!(frame.as_ref()[..6], [0x88, 0x80 | 9, 0xA1, 0x00, 0x5C, 0xFF]);
    let (code, reason) = expect_close(receive(frame.as_ref(), Role::Server));
    assert_eq!((code, reason.as_str()), (CloseCode::Restart, "restart"));
}

#[test]
fn masking_matters_to_each_peer() {
    // A server must refuse an unmasked frame; a client must refuse a masked one.
    let unmasked = close_frame(1001, "", None);
    assert!(matches!(
        receive(unmasked.as_ref(), Role::Server),
        Err(WsError::Protocol(ProtocolError::UnmaskedFrameFromClient))
    ));
    let masked = close_frame(1001, "", Some([1, 2, 3, 4]));
    assert!(matches!(
        receive(masked.as_ref(), Role::Client),
        Err(WsError::Protocol(ProtocolError::MaskedFrameFromServer))
    ));
}

#[test]
fn long_reasons_are_cut_to_the_control_limit_on_a_char_boundary() {
    let ascii = "a".repeat(200);
    let frame = close_frame(1001, &ascii, None);
    assert_eq!(frame.as_ref().len(), 2 + MAX_CONTROL_PAYLOAD);
    let (_, reason) = expect_close(receive(frame.as_ref(), Role::Client));
    assert_eq!(reason, "a".repeat(MAX_CLOSE_REASON_LEN));

    // Two-byte chars: 123 bytes would split the 62nd, so 61 chars (122 bytes) remain.
    let accented = "é".repeat(100);
    let frame = close_frame(1012, &accented, Some([9, 8, 7, 6]));
    assert_eq!(frame.as_ref().len(), 6 + 2 + 122);
    let (_, reason) = expect_close(receive(frame.as_ref(), Role::Server));
    assert_eq!(reason, "é".repeat(61));

    // A four-byte char straddling the limit is dropped whole.
    let straddle = format!("{}🦀", "b".repeat(121));
    let frame = close_frame(1001, &straddle, None);
    let (_, reason) = expect_close(receive(frame.as_ref(), Role::Client));
    assert_eq!(reason, "b".repeat(121));
}

#[test]
fn the_tracker_reports_our_own_close_frames() {
    for mask in [None, Some([0x88, 0x88, 0x88, 0x88])] {
        let frame = close_frame(1001, "bye", mask);
        let mut tracker = FrameTracker::new();
        let seen = headers_of(&mut tracker, frame.as_ref());
        assert_eq!(seen, [header(true, opcode::CLOSE, mask.is_some(), 5)]);
        assert!(tracker.is_at_boundary() && tracker.close_seen());
    }
}

#[test]
fn sendable_close_codes_match_what_tungstenite_accepts() {
    for code in 0..=u16::MAX {
        assert_eq!(is_sendable_close_code(code), CloseCode::from(code).is_allowed(), "code {code}");
    }
    assert!(is_sendable_close_code(1001) && is_sendable_close_code(1012));
}

// ---- property tests -------------------------------------------------------------------

fn proptest_config(cases: u32, seed: u64) -> ProptestConfig {
    ProptestConfig { cases, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..ProptestConfig::default() }
}

/// A frame to serialise: header fields plus a payload length filled from `fill`.
#[derive(Clone, Debug)]
struct Spec {
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: usize,
    fill: u64,
}

impl Spec {
    fn header(&self) -> FrameHeader {
        FrameHeader {
            fin: self.fin,
            rsv: self.rsv,
            opcode: self.opcode,
            masked: self.mask.is_some(),
            payload_len: self.len as u64,
        }
    }

    /// Random payload bytes (xorshift): cheap to make in bulk, and header-like bytes such
    /// as 0x81 or 0x88 turn up inside payloads as they would in real traffic.
    fn payload(&self) -> Vec<u8> {
        let mut x = self.fill | 1;
        (0..self.len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Serialise with tungstenite's own header encoder; the payload goes out raw (masking
    /// it would only permute bytes the tracker never reads).
    fn write_to(&self, out: &mut Vec<u8>) {
        let header = TFrameHeader {
            is_final: self.fin,
            rsv1: self.rsv & 0b100 != 0,
            rsv2: self.rsv & 0b010 != 0,
            rsv3: self.rsv & 0b001 != 0,
            opcode: OpCode::from(self.opcode),
            mask: self.mask,
        };
        header.format(self.len as u64, out).expect("writing to a Vec cannot fail");
        out.extend_from_slice(&self.payload());
    }
}

/// Payload lengths across all three length forms, weighted to the edges of each form.
fn data_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 0usize..=3,
        3 => 123usize..=129,
        2 => 65533usize..=65538,
        4 => 0usize..=2000,
    ]
}

fn spec(opcode: u8, fin: bool, len: impl Strategy<Value = usize>) -> impl Strategy<Value = Spec> {
    (0u8..8, proptest::option::of(any::<[u8; 4]>()), len, any::<u64>()).prop_map(move |(rsv, mask, len, fill)| Spec {
        fin,
        rsv,
        opcode,
        mask,
        len,
        fill,
    })
}

fn control() -> impl Strategy<Value = Spec> {
    prop_oneof![Just(opcode::CLOSE), Just(opcode::PING), Just(opcode::PONG)]
        .prop_flat_map(|op| spec(op, true, 0usize..=MAX_CONTROL_PAYLOAD))
}

/// One message: a lone control frame, or a data message of 1-4 fragments (text or
/// binary, then continuations, FIN on the last) with control frames between fragments.
fn message() -> impl Strategy<Value = Vec<Spec>> {
    let data = (prop_oneof![Just(opcode::TEXT), Just(opcode::BINARY)], 1usize..=4)
        .prop_flat_map(|(first, count)| {
            let fragments = (0..count)
                .map(|i| {
                    let op = if i == 0 { first } else { opcode::CONTINUATION };
                    spec(op, i + 1 == count, data_len())
                })
                .collect::<Vec<_>>();
            (fragments, proptest::collection::vec(proptest::option::of(control()), count))
        })
        .prop_map(|(fragments, controls)| {
            let mut frames = Vec::new();
            for (fragment, control) in fragments.into_iter().zip(controls) {
                frames.push(fragment);
                frames.extend(control);
            }
            // The control after the final fragment sits between messages: also fine.
            frames
        });
    prop_oneof![control().prop_map(|c| vec![c]), data]
}

fn frames() -> impl Strategy<Value = Vec<Spec>> {
    proptest::collection::vec(message(), 0..16).prop_map(|m| m.concat())
}

/// The serialised stream and the offsets of every frame boundary (0 and the end included).
fn serialise(frames: &[Spec]) -> (Vec<u8>, Vec<usize>) {
    let mut stream = Vec::new();
    let mut boundaries = vec![0];
    for frame in frames {
        frame.write_to(&mut stream);
        boundaries.push(stream.len());
    }
    (stream, boundaries)
}

/// Chunk limits: cuts near boundaries (so headers split at every offset, down to single
/// bytes) and cuts anywhere, sorted, deduplicated, ending at the stream's end.
fn cut_points(len: usize, boundaries: &[usize], near: &[(Index, usize)], anywhere: &[Index]) -> Vec<usize> {
    let mut cuts: Vec<usize> = near
        .iter()
        .map(|(b, offset)| (boundaries[b.index(boundaries.len())] + offset).min(len))
        .chain(anywhere.iter().map(|i| i.index(len + 1)))
        .chain([len])
        .filter(|&c| c > 0)
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// Parse `bytes` with tungstenite's frame reader, which must consume them exactly.
fn parse_with_tungstenite(bytes: Vec<u8>) -> Vec<Frame> {
    let total = bytes.len() as u64;
    let mut socket = FrameSocket::new(Cursor::new(bytes));
    let mut frames = Vec::new();
    // Bounded: every Some consumes at least a 2-byte header of a finite input.
    while let Some(frame) = socket.read(None).expect("a well-formed stream parses") {
        frames.push(frame);
    }
    let (cursor, leftover) = socket.into_inner();
    assert_eq!((cursor.position(), leftover.len()), (total, 0), "trailing bytes");
    frames
}

fn assert_frame_is(frame: &Frame, spec: &Spec) {
    let h = frame.header();
    let rsv = u8::from(h.rsv1) << 2 | u8::from(h.rsv2) << 1 | u8::from(h.rsv3);
    assert_eq!((h.is_final, rsv, u8::from(h.opcode), h.mask), (spec.fin, spec.rsv, spec.opcode, spec.mask));
    assert_eq!(frame.payload(), spec.payload().as_slice());
}

proptest! {
    #![proptest_config(proptest_config(256, 0x007e_7ef4_a3e5_0001))]

    #[test]
    fn chunked_streams_report_every_header_and_every_boundary(
        frames in frames(),
        near in proptest::collection::vec((any::<Index>(), 0usize..=15), 0..48),
        anywhere in proptest::collection::vec(any::<Index>(), 0..24),
    ) {
        let (stream, boundaries) = serialise(&frames);
        let cuts = cut_points(stream.len(), &boundaries, &near, &anywhere);
        let mut tracker = FrameTracker::new();
        let mut seen = Vec::new();
        let mut at = 0;
        prop_assert!(tracker.is_at_boundary());
        for &cut in &cuts {
            let chunk = &stream[at..cut];
            let expected = boundaries.iter().find(|&&b| b >= at && b <= cut).map(|b| b - at);
            prop_assert_eq!(tracker.next_boundary_within(chunk), expected);
            tracker.advance(chunk, |h| seen.push(h));
            at = cut;
            prop_assert_eq!(tracker.is_at_boundary(), boundaries.binary_search(&at).is_ok());
        }
        let expected: Vec<FrameHeader> = frames.iter().map(Spec::header).collect();
        prop_assert_eq!(seen, expected);
        prop_assert!(tracker.is_at_boundary());
    }

    #[test]
    fn an_injected_close_lands_between_frames(
        frames in frames(),
        anywhere in proptest::collection::vec(any::<Index>(), 0..24),
        request in any::<Index>(),
        key in proptest::option::of(any::<[u8; 4]>()),
    ) {
        let (stream, boundaries) = serialise(&frames);
        let cuts = cut_points(stream.len(), &boundaries, &[], &anywhere);
        let close = close_frame(1001, "draining", key);
        // The close is requested just before chunk `request` arrives (or after the last);
        // the relay then cuts at the first boundary it finds, as the tunnel relay will,
        // and here keeps forwarding afterwards so every original frame must still parse.
        let request = request.index(cuts.len() + 1);
        let mut tracker = FrameTracker::new();
        let mut out = Vec::with_capacity(stream.len() + close.as_ref().len());
        let mut requested_at = stream.len();
        let mut injected_at = None;
        let mut at = 0;
        for (i, &cut) in cuts.iter().enumerate() {
            if i == request {
                requested_at = at;
            }
            let chunk = &stream[at..cut];
            let split = match injected_at {
                None if i >= request => tracker.next_boundary_within(chunk),
                _ => None,
            };
            let (before, after) = chunk.split_at(split.unwrap_or(chunk.len()));
            tracker.advance(before, |_| {});
            out.extend_from_slice(before);
            if let Some(n) = split {
                injected_at = Some(at + n);
                out.extend_from_slice(close.as_ref());
            }
            tracker.advance(after, |_| {});
            out.extend_from_slice(after);
            at = cut;
        }
        if injected_at.is_none() {
            // Requested after the last chunk: the end of the stream is a boundary.
            prop_assert!(tracker.is_at_boundary());
            injected_at = Some(at);
            out.extend_from_slice(close.as_ref());
        }
        let first = boundaries.iter().copied().find(|&b| b >= requested_at);
        prop_assert_eq!(injected_at, first, "not the first boundary after the request");
        let k = boundaries.iter().position(|&b| Some(b) == injected_at).unwrap_or_default();

        let parsed = parse_with_tungstenite(out);
        prop_assert_eq!(parsed.len(), frames.len() + 1);
        for (frame, spec) in parsed[..k].iter().zip(&frames[..k]) {
            assert_frame_is(frame, spec);
        }
        let ours = &parsed[k];
        prop_assert_eq!(u8::from(ours.header().opcode), opcode::CLOSE);
        prop_assert_eq!(ours.header().mask, key);
        let mut payload = ours.payload().to_vec();
        if let Some(key) = key {
            for (b, k) in payload.iter_mut().zip(key.iter().cycle()) {
                *b ^= k;
            }
        }
        prop_assert_eq!(&payload[..2], &1001u16.to_be_bytes());
        prop_assert_eq!(&payload[2..], b"draining");
        for (frame, spec) in parsed[k + 1..].iter().zip(&frames[k..]) {
            assert_frame_is(frame, spec);
        }
    }
}

proptest! {
    #![proptest_config(proptest_config(512, 0x007e_7ef4_a3e5_0002))]

    #[test]
    fn arbitrary_bytes_never_panic_and_tracking_ignores_chunking(
        prefix in prop_oneof![
            Just(Vec::new()),
            Just(vec![0x82, 127, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]),
            Just(vec![0x01, 0xFF]),
        ],
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        cuts in proptest::collection::vec(any::<Index>(), 0..64),
    ) {
        let stream = [prefix, bytes].concat();
        let mut whole = FrameTracker::new();
        let whole_headers = headers_of(&mut whole, &stream);

        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        let mut chunked = FrameTracker::new();
        let mut chunked_headers = Vec::new();
        let mut at = 0;
        for cut in points {
            let chunk = &stream[at..cut];
            if let Some(n) = chunked.next_boundary_within(chunk) {
                let mut probe = chunked;
                probe.advance(&chunk[..n], |_| {});
                prop_assert!(probe.is_at_boundary());
            }
            chunked.advance(chunk, |h| chunked_headers.push(h));
            at = cut;
        }
        prop_assert_eq!(chunked_headers, whole_headers);
        prop_assert_eq!(chunked, whole);
    }
}
