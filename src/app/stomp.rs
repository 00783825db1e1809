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
    /// Client: open a session (STOMP 1.0 name).
    Connect,
    /// Client: open a session (STOMP 1.1+ name).
    Stomp,
    /// Server: the session is open.
    Connected,
    /// Client: publish to a destination.
    Send,
    /// Client: receive a destination's messages.
    Subscribe,
    /// Client: stop receiving a subscription.
    Unsubscribe,
    /// Client: acknowledge a message.
    Ack,
    /// Client: refuse a message.
    Nack,
    /// Client: start a transaction.
    Begin,
    /// Client: commit a transaction.
    Commit,
    /// Client: abort a transaction.
    Abort,
    /// Client: end the session.
    Disconnect,
    /// Server: a message for a subscription.
    Message,
    /// Server: a frame with a `receipt` header was processed.
    Receipt,
    /// Server: something went wrong; the session closes.
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
    /// STOMP 1.0: no header escaping.
    V1_0,
    /// STOMP 1.1: escaping, heart-beats.
    V1_1,
    /// STOMP 1.2: escaping of `\r` too.
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
    /// What the frame is.
    pub command: Command,
    pub(crate) headers: Vec<(String, String)>,
    /// The body, without the terminating NUL.
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and an empty body.
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
    /// Most headers accepted in one frame.
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
    /// A frame bigger than the limit.
    FrameTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    #[error("frame has more than {limit} headers")]
    /// More headers than the limit.
    TooManyHeaders {
        /// The limit.
        limit: usize,
    },
    /// A command this codec does not know.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// A header line without `:`.
    #[error("header line without ':'")]
    MalformedHeader,
    /// An escape sequence STOMP does not define.
    #[error("undefined escape sequence in header")]
    InvalidEscape,
    /// A head that is not UTF-8.
    #[error("header is not valid UTF-8")]
    InvalidUtf8,
    /// A `content-length` that is not a number.
    #[error("invalid content-length {0:?}")]
    InvalidContentLength(String),
    /// A body with a `content-length` not followed by NUL.
    #[error("body not terminated by NUL after content-length bytes")]
    MissingNul,
}

/// What [`Decoder::next_item`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// One EOL between frames: a heart-beat.
    HeartBeat,
    /// A complete frame.
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
    out.extend_from_slice(command.as_str().as_bytes());
    out.push(b'\n');
    for (name, value) in headers {
        encode_header(name, value, command, version, out);
    }
    out.push(b'\n');
}

/// Writes one header line (`name:value` and EOL) of a `command` frame, escaped as `version`
/// wants it.
pub(crate) fn encode_header(name: &str, value: &str, command: Command, version: Version, out: &mut Vec<u8>) {
    let escape = command.escapes_headers();
    push_escaped(out, name, version, escape);
    out.push(b':');
    push_escaped(out, value, version, escape);
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
mod tests;
