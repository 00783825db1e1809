//! `request_head`: the raw-head sniffer ([`crate::downstream::sniff::HeadSniffer`]) and the
//! request checks ([`crate::proxy::headers::check_request`], `host_name`).
//!
//! Input: one seed byte for the split points, then the bytes of one or more request heads as
//! they would arrive on a connection.
//!
//! Invariants:
//! - the sniffer finds the same heads (where each ends, and whether it carried
//!   `Content-Length` and `Transfer-Encoding`) fed at once, in seeded chunks, and one byte at a
//!   time, and they are the heads a plain line-by-line reading of the bytes finds;
//! - for a first head that reads as a request (`METHOD target HTTP/1.x`, `name: value` lines,
//!   every part valid for `http`), the sniffer's facts match its headers, and `check_request`
//!   answers consistently with them: it refuses only for a reason the request has, and what it
//!   accepts has one framing, one Host, a Host on HTTP/1.1, no body on an upgrade, and a
//!   normalised host name (a fixed point of `host_name`).

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue, Method, Request, Uri, Version};

use super::input::chunks;
use crate::downstream::sniff::{HeadFacts, HeadSniffer};
use crate::proxy::headers::{Framing, Malformed, check_request, host_name, wants_websocket};

/// See the module doc.
pub fn request_head(data: &[u8]) {
    let (seed, stream) = match data.split_first() {
        Some((&seed, stream)) => (seed, stream),
        None => return,
    };
    let expected = reference_heads(stream);
    assert_eq!(sniff(&[stream]), expected, "the sniffer disagrees with a line-by-line reading");
    let seeded = chunks(stream, u64::from(seed));
    assert_eq!(sniff(&seeded), expected, "the sniffer depends on how the bytes are split");
    let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(sniff(&bytewise), expected, "the sniffer depends on how the bytes are split");

    if let Some(&(end, facts)) = expected.first()
        && let Some(req) = request_of(&stream[..end])
    {
        check(&req, facts);
    }
    for line in stream.split(|&b| b == b'\n') {
        check_host_name(line);
    }
}

/// The heads found by feeding `chunks` in order: where each ends (offset in the whole stream)
/// and its facts. The rest of a chunk after a head is fed again, as the next head's start.
fn sniff(chunks: &[&[u8]]) -> Vec<(usize, HeadFacts)> {
    let mut sniffer = HeadSniffer::new();
    let mut heads = Vec::new();
    let mut offset = 0;
    for chunk in chunks {
        let mut rest: &[u8] = chunk;
        while let Some((used, facts)) = sniffer.feed(rest) {
            assert!(used >= 1 && used <= rest.len(), "feed reported {used} of {} bytes", rest.len());
            heads.push((offset + used, facts));
            offset += used;
            rest = &rest[used..];
        }
        offset += rest.len();
    }
    heads
}

/// The lines of `bytes` (split at LF, one CR before the LF dropped) with where each line ends.
fn lines(bytes: &[u8]) -> impl Iterator<Item = (&[u8], usize)> {
    let mut start = 0;
    bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').map(move |(i, _)| {
        let line = &bytes[start..i];
        start = i + 1;
        (line.strip_suffix(b"\r").unwrap_or(line), i + 1)
    })
}

/// Heads as RFC 9112 section 2.2 reads them: empty lines before the request line are skipped,
/// and a head ends at the first empty line after it. A field line names a header by what
/// precedes its first `:`, compared case-insensitively.
fn reference_heads(stream: &[u8]) -> Vec<(usize, HeadFacts)> {
    let mut heads = Vec::new();
    let mut lines_in_head = 0;
    let mut facts = HeadFacts::default();
    for (line, end) in lines(stream) {
        if line.is_empty() {
            if lines_in_head > 0 {
                heads.push((end, facts));
                lines_in_head = 0;
                facts = HeadFacts::default();
            }
            continue;
        }
        if lines_in_head > 0
            && let Some(colon) = line.iter().position(|&b| b == b':')
        {
            let name = line[..colon].to_ascii_lowercase();
            facts.content_length |= name == b"content-length";
            facts.transfer_encoding |= name == b"transfer-encoding";
        }
        lines_in_head += 1;
    }
    heads
}

/// The request `head` describes, when every part of it is valid (hyper would refuse the rest).
fn request_of(head: &[u8]) -> Option<Request<()>> {
    let mut lines = lines(head).map(|(line, _)| line).skip_while(|line| line.is_empty());
    let request_line = std::str::from_utf8(lines.next()?).ok()?;
    let mut parts = request_line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let version = match version {
        "HTTP/1.1" => Version::HTTP_11,
        "HTTP/1.0" => Version::HTTP_10,
        _ => return None,
    };
    let mut builder = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).ok()?)
        .uri(Uri::try_from(target).ok()?)
        .version(version);
    for line in lines.take_while(|line| !line.is_empty()) {
        let colon = line.iter().position(|&b| b == b':')?;
        let name = HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = line[colon + 1..].trim_ascii();
        builder = builder.header(name, HeaderValue::from_bytes(value).ok()?);
    }
    builder.body(()).ok()
}

fn check(req: &Request<()>, facts: HeadFacts) {
    let headers = req.headers();
    let (has_length, has_encoding) = (headers.contains_key(CONTENT_LENGTH), headers.contains_key(TRANSFER_ENCODING));
    assert_eq!(
        (facts.content_length, facts.transfer_encoding),
        (has_length, has_encoding),
        "the sniffer's framing facts differ from the parsed head"
    );
    let framing = if facts.is_length_conflict() { Framing::LengthConflict } else { Framing::Clean };
    let lengths: Vec<&HeaderValue> = headers.get_all(CONTENT_LENGTH).iter().collect();
    let hosts = headers.get_all(HOST).iter().count();
    let authority = req.uri().authority();
    let body_on_upgrade =
        wants_websocket(req) && (has_encoding || headers.get(CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0"));
    match check_request(req, framing) {
        Ok(host) => {
            assert!(!(has_length && has_encoding), "accepted both Content-Length and Transfer-Encoding");
            if let Some(first) = lengths.first() {
                assert!(
                    !first.is_empty() && first.as_bytes().iter().all(u8::is_ascii_digit),
                    "accepted Content-Length {first:?}"
                );
                assert!(lengths.iter().all(|v| v == first), "accepted differing Content-Lengths");
            }
            assert!(hosts <= 1, "accepted {hosts} Host headers");
            assert!(
                req.version() != Version::HTTP_11 || hosts == 1 || authority.is_some(),
                "accepted an HTTP/1.1 request without Host"
            );
            assert!(!body_on_upgrade, "accepted a WebSocket upgrade with a body");
            match &host {
                Some(host) => check_normal_host(host),
                None => assert!(hosts == 0 && authority.is_none(), "a named host was not reported"),
            }
        }
        Err(e) => {
            let has_reason = match e {
                Malformed::LengthConflict => has_length && has_encoding,
                Malformed::BadContentLength => !lengths.is_empty(),
                Malformed::ManyHosts => hosts > 1,
                Malformed::MissingHost => hosts == 0 && authority.is_none() && req.version() == Version::HTTP_11,
                Malformed::UpgradeWithBody => body_on_upgrade,
                Malformed::BadHost => hosts == 1 || authority.is_some(),
                Malformed::Path(_) => false,
            };
            assert!(has_reason, "refused with {e:?} without a reason for it");
        }
    }
}

/// `host_name` of any bytes, when it gives a name, gives a normalised one.
fn check_host_name(raw: &[u8]) {
    if let Some(host) = host_name(raw) {
        check_normal_host(&host);
    }
}

/// A host as routing compares it: non-empty, lower case, of host characters, without a
/// trailing dot, and unchanged by `host_name` (so every way of writing one name gives the
/// same string).
fn check_normal_host(host: &str) {
    assert!(!host.is_empty(), "an empty host name");
    assert!(
        host.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'[' | b']' | b':')),
        "host name {host:?} has characters outside lower-case host characters"
    );
    assert!(!host.ends_with('.'), "host name {host:?} ends with a dot");
    assert_eq!(host_name(host.as_bytes()).as_deref(), Some(host), "host name {host:?} is not normalised");
}
