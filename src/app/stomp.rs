//! STOMP 1.0/1.1/1.2 framing: bytes <-> [`Frame`]s, header escaping, size limits.
//!
//! Owns the wire format only. It is pure (no I/O, no clock, no session state) and must not
//! interpret frame semantics beyond framing: which frames are allowed when is `session`'s job.
//!
//! The [`Decoder`] is a byte-stream decoder, not a per-message one: STOMP-over-WebSocket clients
//! may put several frames in one WebSocket message (stompjs batches heart-beats and frames) or
//! split one frame across messages (stompjs `splitLargeFrames`), so WebSocket message payloads are
//! simply appended with [`Decoder::push`] and frames are taken out with [`Decoder::next_item`].

use bytes::{Bytes, BytesMut};

/// Largest frame (command line through the terminating NUL) a peer may send by default. Chat and
/// auction events are a few hundred bytes; 64 KiB leaves room for rich payloads while capping the
/// memory a single misbehaving session can pin in its decode buffer.
pub(crate) const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

/// Most headers one frame may carry by default. Real clients send fewer than ten; the cap bounds
/// per-frame allocation work for hostile input.
pub(crate) const DEFAULT_MAX_HEADERS: usize = 64;

/// A STOMP command (the first line of a frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    Connect,
    Stomp,
    Connected,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    Message,
    Receipt,
    Error,
}

impl Command {
    /// Every command, for exhaustive tests.
    pub(crate) const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Connected,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Connected => "CONNECTED",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    pub(crate) fn parse(line: &[u8]) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.as_str().as_bytes() == line)
    }

    /// STOMP 1.2: "CONNECT and CONNECTED frames do not escape" their headers, so that a 1.0
    /// server can still read a 1.2 client's opening frame. STOMP is CONNECT under another name.
    fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A negotiated protocol version; it decides header escaping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Version> {
        match s.trim() {
            "1.0" => Some(Version::V1_0),
            "1.1" => Some(Version::V1_1),
            "1.2" => Some(Version::V1_2),
            _ => None,
        }
    }

    /// The highest version in a CONNECT `accept-version` list that we speak. A missing header
    /// means 1.0 (STOMP 1.1 §"Protocol Negotiation").
    pub(crate) fn negotiate(accept_version: Option<&str>) -> Option<Version> {
        match accept_version {
            None => Some(Version::V1_0),
            Some(list) => list.split(',').filter_map(Version::parse).max(),
        }
    }
}

/// One STOMP frame. Headers keep wire order and duplicates; per STOMP 1.2 the first occurrence
/// of a repeated header is the one that counts ([`Frame::get`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub(crate) headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Frame {
    pub fn new(command: Command) -> Frame {
        Frame { command, headers: Vec::new(), body: Bytes::new() }
    }

    /// Appends a header (builder style).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body and a matching `content-length`, so bodies containing NUL survive.
    pub fn body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self.headers.retain(|(n, _)| n != "content-length");
        self.headers.push(("content-length".to_owned(), self.body.len().to_string()));
        self
    }

    /// The first value of header `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Decoder limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, command line through NUL.
    pub max_frame_bytes: usize,
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_frame_bytes: DEFAULT_MAX_FRAME_BYTES, max_headers: DEFAULT_MAX_HEADERS }
    }
}

/// Why bytes could not be decoded. Every variant is fatal for the session (STOMP has no resync).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame larger than {limit} bytes")]
    FrameTooLarge { limit: usize },
    #[error("frame has more than {limit} headers")]
    TooManyHeaders { limit: usize },
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("header line without ':'")]
    MalformedHeader,
    #[error("undefined escape sequence in header")]
    InvalidEscape,
    #[error("header is not valid UTF-8")]
    InvalidUtf8,
    #[error("invalid content-length {0:?}")]
    InvalidContentLength(String),
    #[error("body not terminated by NUL after content-length bytes")]
    MissingNul,
}

/// What [`Decoder::next_item`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// One EOL between frames: a heart-beat.
    HeartBeat,
    Frame(Frame),
}

/// Incremental decoder over a byte stream. After an error it keeps returning that error.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    limits: Limits,
    version: Version,
    failed: Option<DecodeError>,
    /// What the last incomplete parse was waiting for. Re-parsing a partial frame from its start
    /// on every push would make a frame trickled in tiny WebSocket messages cost O(n^2); with
    /// this, a push that cannot complete the awaited delimiter or length is answered at once.
    wait: Option<Wait>,
}

#[derive(Clone, Copy, Debug)]
enum Wait {
    /// A `byte` not present in the buffer before offset `scanned`.
    Byte { byte: u8, scanned: usize },
    /// The buffer to reach `len` bytes.
    Len(usize),
}

enum Step<T> {
    Done(T),
    NeedMore,
}

impl Decoder {
    /// A decoder that unescapes as STOMP 1.2 until told otherwise. The first frame of a session is
    /// CONNECT/STOMP, which is never escaped, so the version is known before it matters.
    pub fn new(limits: Limits) -> Decoder {
        Decoder { buf: BytesMut::new(), limits, version: Version::V1_2, failed: None, wait: None }
    }

    pub(crate) fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// The next complete item, `Ok(None)` when more bytes are needed.
    pub fn next_item(&mut self) -> Result<Option<Item>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.still_waiting() {
            return Ok(None);
        }
        self.wait = None;
        match self.try_decode() {
            Ok(Step::Done(item)) => Ok(Some(item)),
            Ok(Step::NeedMore) => Ok(None),
            Err(e) => {
                self.failed = Some(e.clone());
                self.buf.clear();
                Err(e)
            }
        }
    }

    /// Whether the bytes added since the last incomplete parse cannot change its outcome.
    /// At or past the frame limit the full parse runs, so it reports `FrameTooLarge` exactly as
    /// it would have for the same bytes pushed at once.
    fn still_waiting(&mut self) -> bool {
        let len = self.buf.len();
        if len >= self.limits.max_frame_bytes {
            return false;
        }
        match &mut self.wait {
            None => false,
            Some(Wait::Len(need)) => len < *need,
            Some(Wait::Byte { byte, scanned }) => {
                let found = self.buf[*scanned..].contains(byte);
                *scanned = len;
                !found
            }
        }
    }

    fn try_decode(&mut self) -> Result<Step<Item>, DecodeError> {
        match self.buf.first() {
            None => return Ok(Step::NeedMore),
            Some(b'\n') => {
                let _ = self.buf.split_to(1);
                return Ok(Step::Done(Item::HeartBeat));
            }
            Some(b'\r') => match self.buf.get(1) {
                None => return Ok(Step::NeedMore),
                Some(b'\n') => {
                    let _ = self.buf.split_to(2);
                    return Ok(Step::Done(Item::HeartBeat));
                }
                Some(_) => {}
            },
            Some(_) => {}
        }
        let limit = self.limits.max_frame_bytes;

        let Step::Done(eol) = self.find(b'\n', 0)? else {
            return Ok(Step::NeedMore);
        };
        let command_line = strip_cr(&self.buf[..eol]);
        let command = Command::parse(command_line).ok_or_else(|| {
            let shown = &command_line[..command_line.len().min(32)];
            DecodeError::UnknownCommand(String::from_utf8_lossy(shown).into_owned())
        })?;
        let unescape = command.escapes_headers() && self.version >= Version::V1_1;

        let mut headers = Vec::new();
        let mut pos = eol + 1;
        let body_start = loop {
            let Step::Done(eol) = self.find(b'\n', pos)? else {
                return Ok(Step::NeedMore);
            };
            let line = strip_cr(&self.buf[pos..eol]);
            if line.is_empty() {
                break eol + 1;
            }
            if headers.len() == self.limits.max_headers {
                return Err(DecodeError::TooManyHeaders { limit: self.limits.max_headers });
            }
            headers.push(parse_header(line, unescape)?);
            pos = eol + 1;
        };

        let content_length =
            headers.iter().find(|(n, _)| n == "content-length").map(|(_, v)| parse_content_length(v)).transpose()?;
        let nul = match content_length {
            Some(len) => {
                let nul = body_start.saturating_add(len);
                if nul >= limit {
                    return Err(DecodeError::FrameTooLarge { limit });
                }
                match self.buf.get(nul) {
                    None => {
                        self.wait = Some(Wait::Len(nul + 1));
                        return Ok(Step::NeedMore);
                    }
                    Some(0) => nul,
                    Some(_) => return Err(DecodeError::MissingNul),
                }
            }
            None => match self.find(0, body_start)? {
                Step::Done(nul) => nul,
                Step::NeedMore => return Ok(Step::NeedMore),
            },
        };

        let frame = self.buf.split_to(nul + 1).freeze();
        Ok(Step::Done(Item::Frame(Frame { command, headers, body: frame.slice(body_start..nul) })))
    }

    /// Index of the first `byte` at or after `from`, within the frame limit. The limit is checked
    /// against the position the delimiter would need, not the bytes received so far, so a frame
    /// fed in any chunking yields the same result as the same bytes fed at once.
    fn find(&mut self, byte: u8, from: usize) -> Result<Step<usize>, DecodeError> {
        let limit = self.limits.max_frame_bytes;
        let end = self.buf.len().min(limit);
        if let Some(i) = self.buf.get(from..end).and_then(|s| s.iter().position(|&b| b == byte)) {
            return Ok(Step::Done(from + i));
        }
        if self.buf.len() >= limit {
            return Err(DecodeError::FrameTooLarge { limit });
        }
        self.wait = Some(Wait::Byte { byte, scanned: self.buf.len() });
        Ok(Step::NeedMore)
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn parse_header(line: &[u8], unescape: bool) -> Result<(String, String), DecodeError> {
    let colon = line.iter().position(|&b| b == b':').ok_or(DecodeError::MalformedHeader)?;
    // Values may contain further unescaped ':' (CONNECT frames and lenient 1.0/1.1 clients).
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    let name = std::str::from_utf8(name).map_err(|_| DecodeError::InvalidUtf8)?;
    let value = std::str::from_utf8(value).map_err(|_| DecodeError::InvalidUtf8)?;
    if unescape { Ok((unescape_str(name)?, unescape_str(value)?)) } else { Ok((name.to_owned(), value.to_owned())) }
}

fn parse_content_length(v: &str) -> Result<usize, DecodeError> {
    let invalid = || DecodeError::InvalidContentLength(v.chars().take(32).collect());
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    v.parse().map_err(|_| invalid())
}

/// STOMP 1.2 §"Value Encoding": `\r \n \c \\`; any other escape is a fatal protocol error.
/// 1.1 defines the same set minus `\r`; we accept `\r` there too since it is unambiguous.
fn unescape_str(s: &str) -> Result<String, DecodeError> {
    if !s.contains('\\') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some('c') => out.push(':'),
            Some('\\') => out.push('\\'),
            _ => return Err(DecodeError::InvalidEscape),
        }
    }
    Ok(out)
}

fn push_escaped(out: &mut Vec<u8>, s: &str, version: Version, escape: bool) {
    if !escape || version == Version::V1_0 {
        // No escaping exists here, so a raw EOL would end the header early; it cannot be
        // represented and is replaced rather than allowed to corrupt the frame.
        for b in s.bytes() {
            out.push(if b == b'\n' || b == b'\r' { b' ' } else { b });
        }
        return;
    }
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b':' => out.extend_from_slice(b"\\c"),
            b'\r' if version == Version::V1_2 => out.extend_from_slice(b"\\r"),
            b'\r' => out.push(b' '),
            _ => out.push(b),
        }
    }
}

/// Writes the command line and headers (through the blank line) of a frame.
pub(crate) fn encode_head<'a>(
    command: Command,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    version: Version,
    out: &mut Vec<u8>,
) {
    let escape = command.escapes_headers();
    out.extend_from_slice(command.as_str().as_bytes());
    out.push(b'\n');
    for (name, value) in headers {
        push_escaped(out, name, version, escape);
        out.push(b':');
        push_escaped(out, value, version, escape);
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Writes a whole frame. Headers are written as given: use [`Frame::body`] to get a
/// `content-length`, which bodies containing NUL need.
pub(crate) fn encode(frame: &Frame, version: Version, out: &mut Vec<u8>) {
    encode_head(frame.command, frame.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())), version, out);
    out.extend_from_slice(&frame.body);
    out.push(0);
}

/// Encodes one frame into a new buffer.
pub fn to_bytes(frame: &Frame, version: Version) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + frame.body.len());
    encode(frame, version, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config as ProptestConfig, RngSeed};

    fn decode_all(bytes: &[u8], limits: Limits) -> (Vec<Item>, Option<DecodeError>) {
        let mut d = Decoder::new(limits);
        d.push(bytes);
        drain(&mut d)
    }

    fn drain(d: &mut Decoder) -> (Vec<Item>, Option<DecodeError>) {
        let mut items = Vec::new();
        loop {
            match d.next_item() {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return (items, None),
                Err(e) => return (items, Some(e)),
            }
        }
    }

    fn frames(bytes: &[u8]) -> Vec<Frame> {
        let (items, err) = decode_all(bytes, Limits::default());
        assert_eq!(err, None);
        items
            .into_iter()
            .filter_map(|i| match i {
                Item::Frame(f) => Some(f),
                Item::HeartBeat => None,
            })
            .collect()
    }

    #[test]
    fn decodes_a_send_frame_without_content_length() {
        let f = frames(b"SEND\ndestination:/topic/a\n\nhello\0");
        assert_eq!(f, vec![Frame::new(Command::Send).header("destination", "/topic/a").with_raw_body("hello")]);
    }

    impl Frame {
        fn with_raw_body(mut self, body: &'static str) -> Frame {
            self.body = Bytes::from_static(body.as_bytes());
            self
        }
    }

    #[test]
    fn content_length_body_may_contain_nul() {
        let f = frames(b"SEND\ndestination:/q\ncontent-length:5\n\na\0b\0c\0");
        assert_eq!(f.len(), 1);
        assert_eq!(&f[0].body[..], b"a\0b\0c");
    }

    #[test]
    fn crlf_line_endings_and_heartbeats_between_frames() {
        let (items, err) = decode_all(b"\n\r\nSEND\r\ndestination:/q\r\n\r\nx\0\n\nACK\nid:1\n\n\0", Limits::default());
        assert_eq!(err, None);
        assert_eq!(
            items,
            vec![
                Item::HeartBeat,
                Item::HeartBeat,
                Item::Frame(Frame::new(Command::Send).header("destination", "/q").with_raw_body("x")),
                Item::HeartBeat,
                Item::HeartBeat,
                Item::Frame(Frame::new(Command::Ack).header("id", "1")),
            ]
        );
    }

    #[test]
    fn headers_are_unescaped_except_in_connect() {
        let f = frames(b"SEND\na\\cb:x\\ny\\\\z\\r\n\n\0CONNECT\nlogin:a\\cb:c\n\n\0");
        assert_eq!(f[0].headers, vec![("a:b".into(), "x\ny\\z\r".into())]);
        assert_eq!(f[1].headers, vec![("login".into(), "a\\cb:c".into())]);
    }

    #[test]
    fn stomp_1_0_does_not_unescape() {
        let mut d = Decoder::new(Limits::default());
        d.set_version(Version::V1_0);
        d.push(b"SEND\nx:a\\cb\n\n\0");
        let Ok(Some(Item::Frame(f))) = d.next_item() else {
            panic!("expected a frame");
        };
        assert_eq!(f.get("x"), Some("a\\cb"));
    }

    #[test]
    fn undefined_escape_is_fatal() {
        let (_, err) = decode_all(b"SEND\nx:a\\tb\n\n\0", Limits::default());
        assert_eq!(err, Some(DecodeError::InvalidEscape));
    }

    #[test]
    fn first_of_repeated_headers_wins() {
        let f = frames(b"MESSAGE\nfoo:World\nfoo:Hello\n\n\0");
        assert_eq!(f[0].get("foo"), Some("World"));
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let cases: [(&[u8], DecodeError); 5] = [
            (b"FOO\n\n\0", DecodeError::UnknownCommand("FOO".into())),
            (b"SEND\nnocolon\n\n\0", DecodeError::MalformedHeader),
            (b"SEND\ncontent-length:x\n\n\0", DecodeError::InvalidContentLength("x".into())),
            (b"SEND\ncontent-length:1\n\nab\0", DecodeError::MissingNul),
            (b"SEND\nh:\xff\n\n\0", DecodeError::InvalidUtf8),
        ];
        for (input, want) in cases {
            assert_eq!(decode_all(input, Limits::default()).1, Some(want), "{input:?}");
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_they_complete() {
        let limits = Limits { max_frame_bytes: 100, max_headers: 4 };
        let mut d = Decoder::new(limits);
        d.push(b"SEND\ndestination:/q\n\n");
        d.push(&[b'a'; 100]);
        assert_eq!(d.next_item(), Err(DecodeError::FrameTooLarge { limit: 100 }));
        // A declared content-length beyond the limit is refused without waiting for the body.
        let (_, err) = decode_all(b"SEND\ncontent-length:1000\n\n", limits);
        assert_eq!(err, Some(DecodeError::FrameTooLarge { limit: 100 }));
        let (_, err) = decode_all(b"SEND\na:1\nb:1\nc:1\nd:1\ne:1\n\n\0", limits);
        assert_eq!(err, Some(DecodeError::TooManyHeaders { limit: 4 }));
        // Exactly at the limit is fine: 99 bytes of frame + NUL.
        let mut exact = b"SEND\n\n".to_vec();
        exact.extend(std::iter::repeat_n(b'a', 100 - exact.len() - 1));
        exact.push(0);
        assert_eq!(decode_all(&exact, limits).1, None);
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = Decoder::new(Limits::default());
        d.push(b"BOGUS\n\n\0SEND\n\n\0");
        assert!(d.next_item().is_err());
        assert!(d.next_item().is_err());
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut d = Decoder::new(Limits::default());
        d.push(b"SEND\ndestination:/a\ncontent-le");
        assert_eq!(d.next_item(), Ok(None));
        d.push(b"ngth:2\n\nab");
        assert_eq!(d.next_item(), Ok(None));
        d.push(b"\0\r");
        assert!(matches!(d.next_item(), Ok(Some(Item::Frame(_)))));
        assert_eq!(d.next_item(), Ok(None));
        d.push(b"\n");
        assert_eq!(d.next_item(), Ok(Some(Item::HeartBeat)));
    }

    #[test]
    fn a_frame_trickled_byte_by_byte_decodes_without_rescanning() {
        // Both body forms: NUL-terminated and content-length. Re-parsing from the frame start on
        // every byte would be ~2e9 steps here; the wait hint keeps it linear.
        for with_length in [false, true] {
            let body = vec![b'z'; 60 * 1024];
            let mut frame = Frame::new(Command::Send).header("destination", "/q");
            frame = if with_length { frame.body(body.clone()) } else { Frame { body: body.clone().into(), ..frame } };
            let bytes = to_bytes(&frame, Version::V1_2);
            let started = std::time::Instant::now();
            let mut d = Decoder::new(Limits::default());
            let mut got = None;
            for b in &bytes {
                d.push(std::slice::from_ref(b));
                if let Some(item) = d.next_item().unwrap() {
                    got = Some(item);
                }
            }
            assert_eq!(got, Some(Item::Frame(frame)));
            assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
        }
    }

    #[test]
    fn encoding_escapes_per_version() {
        let f = Frame::new(Command::Message).header("k:", "a\nb\r\\");
        assert_eq!(to_bytes(&f, Version::V1_2), b"MESSAGE\nk\\c:a\\nb\\r\\\\\n\n\0");
        assert_eq!(to_bytes(&f, Version::V1_1), b"MESSAGE\nk\\c:a\\nb \\\\\n\n\0");
        assert_eq!(to_bytes(&f, Version::V1_0), b"MESSAGE\nk::a b \\\n\n\0");
        let c = Frame::new(Command::Connected).header("server", "a:b");
        assert_eq!(to_bytes(&c, Version::V1_2), b"CONNECTED\nserver:a:b\n\n\0");
    }

    #[test]
    fn version_negotiation_picks_the_highest_common() {
        assert_eq!(Version::negotiate(Some("1.0,1.1,1.2")), Some(Version::V1_2));
        assert_eq!(Version::negotiate(Some("1.1, 1.0")), Some(Version::V1_1));
        assert_eq!(Version::negotiate(None), Some(Version::V1_0));
        assert_eq!(Version::negotiate(Some("2.0")), None);
    }

    fn proptest_config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            rng_seed: RngSeed::Fixed(0x7e7e_57a3),
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    fn arb_escaped_command() -> impl Strategy<Value = Command> {
        prop::sample::select(Command::ALL.into_iter().filter(|c| c.escapes_headers()).collect::<Vec<_>>())
    }

    // Header text drawn from an alphabet heavy in the characters escaping exists for.
    fn arb_header_text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![Just(':'), Just('\n'), Just('\r'), Just('\\'), Just('c'), Just('n'), Just('é'), any::<char>(),],
            0..12,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (
            arb_escaped_command(),
            prop::collection::vec((arb_header_text(), arb_header_text()), 0..6),
            prop::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(command, headers, body)| {
                let mut f = Frame::new(command);
                // A user header named content-length would shadow the real one (first wins).
                f.headers = headers.into_iter().filter(|(n, _)| n != "content-length").collect();
                f.body(body)
            })
    }

    proptest! {
        #![proptest_config(proptest_config(512))]

        #[test]
        fn encode_then_decode_round_trips(frame in arb_frame()) {
            let bytes = to_bytes(&frame, Version::V1_2);
            let (items, err) = decode_all(&bytes, Limits { max_frame_bytes: 1 << 20, max_headers: 64 });
            prop_assert_eq!(err, None);
            prop_assert_eq!(items, vec![Item::Frame(frame)]);
        }

        #[test]
        fn connect_frames_round_trip_without_escaping(
            values in prop::collection::vec("[^\r\n]{0,16}", 0..5),
        ) {
            let mut frame = Frame::new(Command::Connect);
            for (i, v) in values.into_iter().enumerate() {
                frame = frame.header(format!("h{i}"), v);
            }
            let bytes = to_bytes(&frame, Version::V1_2);
            prop_assert_eq!(frames(&bytes), vec![frame]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16),
            max_frame_bytes in 1usize..256,
        ) {
            let mut d = Decoder::new(Limits { max_frame_bytes, max_headers: 4 });
            for chunk in &chunks {
                d.push(chunk);
                let (items, _) = drain(&mut d);
                for item in items {
                    if let Item::Frame(f) = item {
                        prop_assert!(f.body.len() < max_frame_bytes);
                    }
                }
            }
        }

        #[test]
        fn any_split_points_yield_the_same_items(
            frames in prop::collection::vec(arb_frame(), 1..4),
            heartbeats in prop::collection::vec(0usize..3, 4),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            max_frame_bytes in prop_oneof![Just(1usize << 20), 16usize..400],
        ) {
            let mut bytes = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                bytes.extend(std::iter::repeat_n(b'\n', heartbeats[i]));
                encode(f, Version::V1_2, &mut bytes);
            }
            let limits = Limits { max_frame_bytes, max_headers: 64 };
            let whole = decode_all(&bytes, limits);

            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut d = Decoder::new(limits);
            let mut items = Vec::new();
            let mut err = None;
            let mut start = 0;
            for end in points.into_iter().chain([bytes.len()]) {
                d.push(&bytes[start..end]);
                start = end;
                let (got, e) = drain(&mut d);
                items.extend(got);
                if e.is_some() {
                    err = e;
                    break;
                }
            }
            prop_assert_eq!((items, err), whole);
        }
    }
}
