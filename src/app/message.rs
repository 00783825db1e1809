//! MESSAGE frames, encoded once per message and spliced per subscription.
//!
//! A message fanned out to thousands of subscriptions differs between them only in the
//! `subscription` and `destination` headers (and `ack`, `x-resume-gap` for some), so
//! [`Prepared`] encodes everything else once per protocol version, lazily, and a frame is one
//! copy of those bytes around the subscription's own header lines ([`SubLines`], escaped once
//! at SUBSCRIBE). Whether the bytes are UTF-8 is decided once too (header values are strings,
//! so only the body can make a frame binary): [`OutFrame`] carries the answer to the transport,
//! which must not check again.
//!
//! Pure: no I/O, no session state.

use std::sync::{Arc, OnceLock};

use super::broker::Envelope;
use super::history::StreamId;
use super::history::seam::Sequenced;
use super::stomp::{self, Command, Version};

/// Bytes ready for the transport, and whether they are UTF-8 (a WebSocket text message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutFrame {
    bytes: Vec<u8>,
    /// Set only where the bytes are known to be UTF-8: the transport relies on it without
    /// checking (private, so nothing outside this module can claim it).
    utf8: bool,
}

impl OutFrame {
    /// Bytes whose encoding is not known yet (control frames, which are rare): checked here.
    pub(crate) fn checked(bytes: Vec<u8>) -> OutFrame {
        let utf8 = std::str::from_utf8(&bytes).is_ok();
        OutFrame { bytes, utf8 }
    }

    /// The bytes, and whether they are UTF-8.
    pub(crate) fn into_parts(self) -> (Vec<u8>, bool) {
        (self.bytes, self.utf8)
    }

    /// A heart-beat (one EOL).
    pub(crate) fn heart_beat() -> OutFrame {
        OutFrame { bytes: b"\n".to_vec(), utf8: true }
    }
}

/// The header lines of one subscription, escaped for its session's protocol version.
#[derive(Debug, Clone)]
pub(crate) struct SubLines {
    subscription: Box<[u8]>,
    destination: Box<[u8]>,
}

impl SubLines {
    /// `subscription:<id>` and `destination:<destination>` (as the client subscribed to it).
    pub(crate) fn new(id: &str, destination: &str, version: Version) -> SubLines {
        SubLines {
            subscription: line("subscription", id, version),
            destination: line("destination", destination, version),
        }
    }
}

fn line(name: &str, value: &str, version: Version) -> Box<[u8]> {
    let mut out = Vec::with_capacity(name.len() + value.len() + 2);
    stomp::encode_header(name, value, Command::Message, version, &mut out);
    out.into_boxed_slice()
}

/// The parts of a MESSAGE shared by every subscription, for one protocol version.
#[derive(Debug)]
struct Shared {
    /// `message-id:...\n` (it sits between `subscription` and `destination`).
    id_line: Box<[u8]>,
    /// From `content-type` to the end: the rest of the headers, the blank line, the body and
    /// the NUL.
    tail: Box<[u8]>,
}

/// A message on its way to local subscriptions.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) envelope: Arc<Envelope>,
    utf8: bool,
    size: usize,
    /// By [`version_index`].
    shared: [OnceLock<Shared>; 3],
}

fn version_index(version: Version) -> usize {
    match version {
        Version::V1_0 => 0,
        Version::V1_1 => 1,
        Version::V1_2 => 2,
    }
}

impl Prepared {
    pub(crate) fn new(envelope: Arc<Envelope>) -> Prepared {
        let utf8 = std::str::from_utf8(&envelope.body).is_ok();
        let e = &envelope;
        let headers: usize = e.headers.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
        let size = e.body.len() + headers + e.id.len() + e.instance.len() + HEADER_ALLOWANCE;
        Prepared { envelope, utf8, size, shared: Default::default() }
    }

    /// What holding it in a queue costs, in bytes: the body and its headers (the frame's size
    /// give or take the per-subscription lines).
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    fn shared(&self, version: Version) -> &Shared {
        self.shared[version_index(version)].get_or_init(|| {
            let e = &self.envelope;
            let mut id_line = Vec::with_capacity(e.id.len() + 12);
            stomp::encode_header("message-id", &e.id, Command::Message, version, &mut id_line);
            let len = e.body.len().to_string();
            let stream_id = e.stream_id.map(|id| id.to_string());
            let mut tail = Vec::with_capacity(128 + e.body.len());
            let mut header = |n: &str, v: &str| stomp::encode_header(n, v, Command::Message, version, &mut tail);
            if let Some(ct) = &e.content_type {
                header("content-type", ct);
            }
            header("content-length", &len);
            header("tether-instance", &e.instance);
            if let Some(sender) = &e.sender {
                header("tether-user", sender);
            }
            if let Some(id) = &stream_id {
                header(STREAM_ID_HEADER, id);
            }
            for (n, v) in &e.headers {
                header(n, v);
            }
            tail.push(b'\n');
            tail.extend_from_slice(&e.body);
            tail.push(0);
            Shared { id_line: id_line.into_boxed_slice(), tail: tail.into_boxed_slice() }
        })
    }

    /// The MESSAGE for one subscription: its header lines, `ack` for client-acknowledged
    /// subscriptions, and `x-resume-gap: true` on the first message after a gap.
    pub(crate) fn frame(&self, version: Version, sub: &SubLines, ack: Option<&str>, gap: bool) -> OutFrame {
        let shared = self.shared(version);
        let mut bytes = Vec::with_capacity(
            8 + sub.subscription.len() + shared.id_line.len() + sub.destination.len() + 40 + shared.tail.len(),
        );
        bytes.extend_from_slice(b"MESSAGE\n");
        bytes.extend_from_slice(&sub.subscription);
        bytes.extend_from_slice(&shared.id_line);
        bytes.extend_from_slice(&sub.destination);
        if let Some(ack) = ack {
            stomp::encode_header("ack", ack, Command::Message, version, &mut bytes);
        }
        if gap {
            stomp::encode_header(RESUME_GAP_HEADER, "true", Command::Message, version, &mut bytes);
        }
        bytes.extend_from_slice(&shared.tail);
        OutFrame { bytes, utf8: self.utf8 }
    }
}

impl Sequenced for Arc<Prepared> {
    fn stream_id(&self) -> Option<StreamId> {
        self.envelope.stream_id
    }

    fn size(&self) -> usize {
        self.size
    }
}

/// The fixed headers' share of [`Prepared::size`] (names, `content-length`, ids, separators).
const HEADER_ALLOWANCE: usize = 96;

/// The MESSAGE header naming the message's position in its destination's record.
pub(crate) const STREAM_ID_HEADER: &str = "x-stream-id";
/// The SUBSCRIBE header asking for what followed a stream id.
pub(crate) const RESUME_FROM_HEADER: &str = "x-resume-from";
/// The MESSAGE header saying messages before it may be missing.
pub(crate) const RESUME_GAP_HEADER: &str = "x-resume-gap";

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(body: &'static [u8]) -> Arc<Envelope> {
        Arc::new(Envelope {
            origin: 1,
            instance: "app-1".into(),
            id: "0000000000000001-7".into(),
            destination: "/user/alice/queue/x".into(),
            sender: Some("bob".into()),
            content_type: Some("text/plain".into()),
            headers: vec![("x-k".into(), "a:b".into())],
            body: bytes::Bytes::from_static(body),
            published_at_ms: 0,
            stream_id: None,
        })
    }

    fn text(f: &OutFrame) -> String {
        String::from_utf8(f.bytes.clone()).unwrap()
    }

    #[test]
    fn message_frames_carry_subscription_specific_headers_and_user_headers() {
        let p = Prepared::new(envelope(b"hi\0there"));
        let sub = SubLines::new("sub-1", "/user/queue/x", Version::V1_2);
        assert_eq!(
            text(&p.frame(Version::V1_2, &sub, None, false)),
            "MESSAGE\nsubscription:sub-1\nmessage-id:0000000000000001-7\ndestination:/user/queue/x\n\
             content-type:text/plain\ncontent-length:8\ntether-instance:app-1\ntether-user:bob\n\
             x-k:a\\cb\n\nhi\0there\0"
        );
    }

    #[test]
    fn client_acknowledged_and_gap_marked_messages_carry_their_headers() {
        let p = Prepared::new(envelope(b"x"));
        let sub = SubLines::new("s", "/user/queue/x", Version::V1_2);
        let t = text(&p.frame(Version::V1_2, &sub, Some("42"), true));
        assert!(t.contains("\ndestination:/user/queue/x\nack:42\nx-resume-gap:true\ncontent-type:"), "{t}");
    }

    #[test]
    fn recorded_messages_carry_their_stream_id() {
        let mut e = (*envelope(b"x")).clone();
        e.stream_id = Some(StreamId { ms: 1718000000000, seq: 3 });
        let p = Prepared::new(Arc::new(e));
        let t = text(&p.frame(Version::V1_2, &SubLines::new("s", "/d", Version::V1_2), None, false));
        assert!(t.contains("\ntether-user:bob\nx-stream-id:1718000000000-3\nx-k:"), "{t}");
    }

    #[test]
    fn each_version_gets_its_own_escaping_and_binary_bodies_are_not_text() {
        let mut e = (*envelope(b"\xff")).clone();
        e.headers = vec![("x-k".into(), "a\rb:c".into())];
        let p = Prepared::new(Arc::new(e));
        let f12 = p.frame(Version::V1_2, &SubLines::new("s:1", "/d", Version::V1_2), None, false);
        let f11 = p.frame(Version::V1_1, &SubLines::new("s:1", "/d", Version::V1_1), None, false);
        let f10 = p.frame(Version::V1_0, &SubLines::new("s:1", "/d", Version::V1_0), None, false);
        assert!(!f12.utf8 && !f11.utf8 && !f10.utf8);
        let s = |f: &OutFrame| String::from_utf8_lossy(&f.bytes).into_owned();
        assert!(s(&f12).contains("subscription:s\\c1\n") && s(&f12).contains("x-k:a\\rb\\cc\n"));
        assert!(s(&f11).contains("x-k:a b\\cc\n"));
        assert!(s(&f10).contains("subscription:s:1\n") && s(&f10).contains("x-k:a b:c\n"));
        // The same frames as encoding the whole frame per subscription would give.
        let utf8 = Prepared::new(envelope(b"ok"));
        assert!(utf8.frame(Version::V1_2, &SubLines::new("s", "/d", Version::V1_2), None, false).utf8);
    }
}
