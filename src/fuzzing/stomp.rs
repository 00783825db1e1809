//! `stomp`: the STOMP codec of the reference app ([`crate::app::stomp`]).
//!
//! Input: a mode byte, then per mode
//! - even: a stream (seed byte for the split points, a limits byte, a version byte, then the
//!   bytes a peer sends);
//! - odd: one frame to encode (command, version and body flag bytes, then the body and header
//!   fields separated by 0x1F: `body 0x1F name 0x1F value 0x1F name ...`).
//!
//! Invariants:
//! - a stream decodes to the same items and the same error fed at once, in seeded chunks, or
//!   one byte at a time, and after an error the decoder keeps returning it;
//! - an encoded frame decodes back to itself, up to what the version cannot represent (no
//!   escaping in STOMP 1.0 and in CONNECT/CONNECTED frames: an EOL becomes a space and a `:`
//!   in a name splits it; STOMP 1.1 has no `\r` escape), and decodes with a frame limit equal
//!   to its length but not one byte less.

use super::input::{Input, chunks};
use crate::app::stomp::{Command, DecodeError, Decoder, Frame, Item, Limits, Version, to_bytes};

const VERSIONS: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

/// See the module doc.
pub fn stomp(data: &[u8]) {
    let mut input = Input::new(data);
    if input.byte() & 1 == 0 {
        stream(input);
    } else {
        round_trip(input);
    }
}

/// Every item `decoder` yields for `pieces`, ending with the error, if any.
fn decode_all(mut decoder: Decoder, pieces: &[&[u8]]) -> Vec<Result<Item, DecodeError>> {
    let mut items = Vec::new();
    for piece in pieces {
        decoder.push(piece);
        loop {
            match decoder.next_item() {
                Ok(Some(item)) => items.push(Ok(item)),
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(decoder.next_item(), Err(e.clone()), "the decoder forgot its error");
                    items.push(Err(e));
                    return items;
                }
            }
        }
    }
    items
}

fn decoder(limits: Limits, version: Version) -> Decoder {
    let mut decoder = Decoder::new(limits);
    decoder.set_version(version);
    decoder
}

fn stream(mut input: Input<'_>) {
    let seed = input.byte();
    let limits = match input.byte() {
        // Small limits, so that the fuzzer reaches them often.
        b @ 0..=127 => Limits { max_frame_bytes: usize::from(b) * 4, max_headers: usize::from(b % 8) },
        _ => Limits::default(),
    };
    let version = VERSIONS[usize::from(input.byte() % 3)];
    let bytes = input.rest();
    let whole = decode_all(decoder(limits, version), &[bytes]);
    let seeded = decode_all(decoder(limits, version), &chunks(bytes, u64::from(seed)));
    assert_eq!(seeded, whole, "decoding depends on how the bytes are split (seeded chunks)");
    let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
    let bytewise = decode_all(decoder(limits, version), &bytewise);
    assert_eq!(bytewise, whole, "decoding depends on how the bytes are split (byte by byte)");
}

fn round_trip(mut input: Input<'_>) {
    let command = Command::ALL[usize::from(input.byte()) % Command::ALL.len()];
    let version = VERSIONS[usize::from(input.byte() % 3)];
    let with_length = input.byte() & 1 == 1;
    let seed = input.byte();
    let body = input.until(0x1F).to_vec();
    let mut frame = Frame::new(command);
    while !input.is_empty() {
        let name = String::from_utf8_lossy(input.until(0x1F)).into_owned();
        let value = String::from_utf8_lossy(input.until(0x1F)).into_owned();
        frame = frame.header(name, value);
    }
    // A body with NUL needs its length; `Frame::body` adds it.
    frame = if with_length || body.contains(&0) { frame.body(body) } else { Frame { body: body.into(), ..frame } };

    let bytes = to_bytes(&frame, version);
    let Some(expected) = as_decoded(&frame, version) else {
        // What the decoder makes of it is not determined by the frame alone (a header of the
        // frame's own claims a wrong length): only that it does not panic.
        let _ = decode_all(decoder(Limits::default(), version), &[&bytes]);
        return;
    };
    let roomy = Limits { max_frame_bytes: bytes.len(), max_headers: frame.headers.len() };
    let pieces = chunks(&bytes, u64::from(seed));
    let decoded = decode_all(decoder(roomy, version), &pieces);
    assert_eq!(decoded, vec![expected.clone()], "an encoded frame did not decode back");
    if let Ok(Item::Frame(_)) = expected {
        let tight = Limits { max_frame_bytes: bytes.len() - 1, ..roomy };
        let decoded = decode_all(decoder(tight, version), &pieces);
        assert_eq!(
            decoded,
            vec![Err(DecodeError::FrameTooLarge { limit: bytes.len() - 1 })],
            "a frame one byte over the limit was not refused"
        );
    }
}

/// What decoding the encoding of `frame` must give, or `None` when its own headers make the
/// outcome depend on the body's bytes (a `content-length` that is a number, but not the
/// body's length).
fn as_decoded(frame: &Frame, version: Version) -> Option<Result<Item, DecodeError>> {
    // STOMP 1.2: CONNECT and CONNECTED frames never escape their headers (nor STOMP, which is
    // CONNECT under another name).
    let escapes =
        !matches!(frame.command, Command::Connect | Command::Stomp | Command::Connected) && version != Version::V1_0;
    let headers: Vec<(String, String)> = frame
        .headers
        .iter()
        .map(|(name, value)| {
            if !escapes {
                let line = format!("{name}:{value}").replace(['\r', '\n'], " ");
                let (name, value) = line.split_once(':').unwrap_or((&line, ""));
                (name.to_owned(), value.to_owned())
            } else if version == Version::V1_1 {
                (name.replace('\r', " "), value.replace('\r', " "))
            } else {
                (name.clone(), value.clone())
            }
        })
        .collect();
    match headers.iter().find(|(n, _)| n == "content-length").map(|(_, v)| v) {
        Some(v) => match v.parse::<usize>() {
            // Only ASCII digits are a length (`parse` would take a leading `+`).
            Ok(len) if v.bytes().all(|b| b.is_ascii_digit()) => {
                if len != frame.body.len() {
                    return None;
                }
            }
            _ => return Some(Err(DecodeError::InvalidContentLength(v.chars().take(32).collect()))),
        },
        None if frame.body.contains(&0) => return None,
        None => {}
    }
    Some(Ok(Item::Frame(Frame { command: frame.command, headers, body: frame.body.clone() })))
}
