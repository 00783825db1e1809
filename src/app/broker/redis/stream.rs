//! History in Redis: a stream per destination (`tether:stream:<destination>`), written by a
//! script that appends the envelope and publishes it in one atomic step, and read back with
//! `XRANGE`. Shared by the single-Redis and the cluster adapters.
//!
//! Why a script: the stream id is only known once Redis appended the entry, and subscribers
//! must receive messages in stream-id order (the resume seam drops anything at or before the
//! last id it handed out). Two instances doing `XADD` then `PUBLISH` could interleave; inside
//! one script nothing else runs, so the publish order of a channel is the order of its stream.
//! The script splices the id into the published JSON (`{"sid":"<id>",...`); the stream entry
//! holds the envelope without it (the entry's own id is the id).

use std::sync::{Arc, LazyLock};

use redis::Value;

use crate::app::broker::Envelope;
use crate::app::history::{Retention, Start, StreamId};

/// KEYS: the stream, the channel. ARGV: `len` or `age`, the count or milliseconds to keep, the
/// envelope's JSON, and `PUBLISH` or `SPUBLISH`. Age retention trims by `MINID` against the
/// server's own clock and lets an idle stream expire after the same time; length retention
/// trims by `MAXLEN`. Both trims are approximate (`~`), which is what keeps `XADD` cheap.
const SOURCE: &str = r#"
local id
if ARGV[1] == 'len' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[3])
else
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local min = string.format('%.0f', now - tonumber(ARGV[2]))
  id = redis.call('XADD', KEYS[1], 'MINID', '~', min, '*', 'e', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
redis.call(ARGV[4], KEYS[2], '{"sid":"' .. id .. '",' .. string.sub(ARGV[3], 2))
return id
"#;

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SOURCE));

/// Which publish command the script ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PublishCommand {
    /// Plain Pub/Sub (one Redis).
    Publish,
    /// Sharded Pub/Sub (Redis Cluster): the channel lives on its slot's node.
    SPublish,
}

impl PublishCommand {
    fn as_str(self) -> &'static str {
        match self {
            PublishCommand::Publish => "PUBLISH",
            PublishCommand::SPublish => "SPUBLISH",
        }
    }
}

/// `SCRIPT LOAD`, run on every new connection before the first [`record_cmd`].
pub(crate) fn load_cmd() -> redis::Cmd {
    let mut cmd = redis::cmd("SCRIPT");
    cmd.arg("LOAD").arg(SOURCE);
    cmd
}

/// Records `payload` (an envelope's JSON object) in `stream` and publishes it on `channel`.
pub(crate) fn record_cmd(
    stream: &str,
    channel: &str,
    retention: Retention,
    payload: &[u8],
    publish: PublishCommand,
) -> redis::Cmd {
    let (mode, amount) = match retention {
        Retention::Len(n) => ("len", n.max(1) as u64),
        Retention::Age(age) => ("age", (age.as_millis() as u64).max(1)),
    };
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(SCRIPT.get_hash()).arg(2).arg(stream).arg(channel).arg(mode).arg(amount).arg(payload).arg(publish.as_str());
    cmd
}

/// `XRANGE stream <start> + COUNT limit`.
pub(crate) fn xrange_cmd(stream: &str, start: Start, limit: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(stream).arg(start.to_xrange()).arg("+").arg("COUNT").arg(limit);
    cmd
}

/// Why an `XRANGE` answer could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("unexpected XRANGE reply shape")]
    Shape,
    #[error("invalid entry id {0:?}")]
    Id(String),
    #[error("entry {id} holds no valid envelope: {reason}")]
    Entry { id: String, reason: String },
}

/// The envelopes of an `XRANGE` reply, each with its entry's id, for hub key `key`.
pub(crate) fn parse_xrange(key: &str, reply: Value) -> Result<Vec<Arc<Envelope>>, StreamError> {
    let Value::Array(entries) = reply else {
        return match reply {
            Value::Nil => Ok(Vec::new()),
            _ => Err(StreamError::Shape),
        };
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(mut parts) = entry else { return Err(StreamError::Shape) };
        if parts.len() != 2 {
            return Err(StreamError::Shape);
        }
        let fields = parts.pop().ok_or(StreamError::Shape)?;
        let id = text(parts.pop().ok_or(StreamError::Shape)?)?;
        let stream_id = StreamId::parse(&id).ok_or_else(|| StreamError::Id(id.clone()))?;
        let fields = match fields {
            Value::Array(f) => f,
            Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => return Err(StreamError::Shape),
        };
        let payload = fields
            .chunks(2)
            .find(|kv| matches!(&kv[0], Value::BulkString(k) if k == b"e"))
            .and_then(|kv| match kv.get(1) {
                Some(Value::BulkString(v)) => Some(v.as_slice()),
                _ => None,
            })
            .ok_or_else(|| StreamError::Entry { id: id.clone(), reason: "no field e".into() })?;
        let mut envelope =
            Envelope::from_wire(payload).map_err(|e| StreamError::Entry { id: id.clone(), reason: e.to_string() })?;
        // A stream is only ever written for its own destination; anything else is not ours.
        if envelope.destination != key {
            return Err(StreamError::Entry { id, reason: format!("destination {:?}", envelope.destination) });
        }
        envelope.stream_id = Some(stream_id);
        out.push(Arc::new(envelope));
    }
    Ok(out)
}

fn text(v: Value) -> Result<String, StreamError> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).map_err(|_| StreamError::Shape),
        Value::SimpleString(s) => Ok(s),
        _ => Err(StreamError::Shape),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(destination: &str) -> Envelope {
        Envelope {
            origin: 7,
            instance: "i".into(),
            id: "m-1".into(),
            destination: destination.into(),
            sender: None,
            content_type: None,
            headers: Vec::new(),
            body: bytes::Bytes::from_static(b"hello"),
            published_at_ms: 1,
            stream_id: None,
        }
    }

    fn entry(id: &str, payload: Vec<u8>) -> Value {
        Value::Array(vec![
            Value::BulkString(id.as_bytes().to_vec()),
            Value::Array(vec![Value::BulkString(b"e".to_vec()), Value::BulkString(payload)]),
        ])
    }

    #[test]
    fn xrange_replies_become_envelopes_with_their_ids() {
        let reply = Value::Array(vec![entry("5-0", envelope("/t").to_wire()), entry("5-1", envelope("/t").to_wire())]);
        let got = parse_xrange("/t", reply).unwrap();
        assert_eq!(got.iter().map(|e| e.stream_id.unwrap().to_string()).collect::<Vec<_>>(), ["5-0", "5-1"]);
        assert_eq!(&got[0].body[..], b"hello");
        assert!(parse_xrange("/t", Value::Array(vec![])).unwrap().is_empty());
    }

    #[test]
    fn entries_of_another_destination_or_garbage_are_refused() {
        let other = Value::Array(vec![entry("5-0", envelope("/other").to_wire())]);
        assert!(parse_xrange("/t", other).is_err());
        assert!(parse_xrange("/t", Value::Array(vec![entry("x", envelope("/t").to_wire())])).is_err());
        assert!(parse_xrange("/t", Value::Array(vec![entry("5-0", b"nope".to_vec())])).is_err());
        assert!(parse_xrange("/t", Value::Int(3)).is_err());
    }

    #[test]
    fn the_published_form_is_the_recorded_envelope_with_its_id_spliced_in() {
        // What the script does to the JSON, done here the same way.
        let wire = envelope("/t").to_wire();
        let mut published = br#"{"sid":"17-3","#.to_vec();
        published.extend_from_slice(&wire[1..]);
        let e = Envelope::from_wire(&published).unwrap();
        assert_eq!(e.stream_id, Some(StreamId { ms: 17, seq: 3 }));
        assert_eq!(Envelope { stream_id: None, ..e }, envelope("/t"));
    }
}
