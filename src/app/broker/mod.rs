//! The fan-out port: how a message published on one instance reaches the subscribers on every
//! instance, this one included. Owns the [`Broker`] trait, the [`Envelope`] that crosses
//! instances and its wire form; the adapters are [`redis::RedisBroker`] and [`local::LocalBus`].
//!
//! Every delivery, local ones too, comes back through the adapter's [`Inbound`]: one path, so
//! every instance sees one destination's messages in the same order (Redis serialises the
//! PUBLISHes of a channel) and no message can reach a subscriber twice by two routes.
//!
//! Adapters only move envelopes between instances and report health. They must not know about
//! sessions or STOMP, and they must never block a caller: every method returns at once, and the
//! slow part (a Redis round trip) is an [`Ack`] the caller may await or drop.

pub mod local;
pub(crate) mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use futures_util::future::BoxFuture;

use super::history::{Start, StreamId};

/// A message on its way to every subscriber of `destination` (a hub key) on every instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Envelope {
    /// Random per-instance nonce of the publisher. Local bypass drops envelopes carrying our own
    /// nonce when they come back from the broker. It is never the configured `--id`: replicas
    /// that share an id must still not drop each other's messages.
    pub(crate) origin: u64,
    /// The publishing instance's `--id`, for display (`tether-instance` header).
    pub(crate) instance: Arc<str>,
    /// Cluster-unique message id: origin nonce + counter. Becomes MESSAGE `message-id`.
    pub(crate) id: Arc<str>,
    pub(crate) destination: String,
    /// Authenticated user who sent it, if any.
    pub(crate) sender: Option<String>,
    pub(crate) content_type: Option<String>,
    /// User headers of the SEND, passed through to MESSAGE.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Bytes,
    /// Publish time, Unix epoch milliseconds, for the cross-instance fan-out latency metric.
    pub(crate) published_at_ms: u64,
    /// Its position in the destination's record, when history is on: given by the broker as it
    /// records the message, never by the publisher.
    pub(crate) stream_id: Option<StreamId>,
}

impl Envelope {
    /// The JSON form published on the broker. Text bodies stay readable in `redis-cli
    /// MONITOR`; binary bodies go as base64.
    pub(crate) fn to_wire(&self) -> Vec<u8> {
        let (body, body_b64) = match std::str::from_utf8(&self.body) {
            Ok(s) => (Some(s), None),
            Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(&self.body))),
        };
        let wire = Wire {
            v: WIRE_VERSION,
            origin: format!("{:016x}", self.origin),
            instance: &self.instance,
            id: &self.id,
            destination: &self.destination,
            sender: self.sender.as_deref(),
            content_type: self.content_type.as_deref(),
            headers: &self.headers,
            ts: self.published_at_ms,
            body,
            body_b64,
        };
        // Serialising borrowed strings and numbers into a Vec cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    pub(crate) fn from_wire(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let wire: OwnedWire = serde_json::from_slice(bytes)?;
        let stream_id = match &wire.sid {
            None => None,
            Some(sid) => Some(StreamId::parse(sid).ok_or_else(|| EnvelopeError::StreamId(sid.clone()))?),
        };
        if wire.v != WIRE_VERSION {
            return Err(EnvelopeError::Version(wire.v));
        }
        let origin = u64::from_str_radix(&wire.origin, 16).map_err(|_| EnvelopeError::Origin(wire.origin))?;
        let body = match (wire.body, wire.body_b64) {
            (Some(text), None) => Bytes::from(text),
            (None, Some(b64)) => {
                Bytes::from(base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| EnvelopeError::Body)?)
            }
            (None, None) => Bytes::new(),
            (Some(_), Some(_)) => return Err(EnvelopeError::Body),
        };
        Ok(Envelope {
            origin,
            instance: wire.instance.into(),
            id: wire.id.into(),
            destination: wire.destination,
            sender: wire.sender,
            content_type: wire.content_type,
            headers: wire.headers,
            body,
            published_at_ms: wire.ts,
            stream_id,
        })
    }
}

const WIRE_VERSION: u8 = 1;

#[derive(Serialize)]
struct Wire<'a> {
    v: u8,
    origin: String,
    instance: &'a str,
    id: &'a str,
    destination: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sender: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    headers: &'a [(String, String)],
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_b64: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnedWire {
    /// The stream id, spliced in by the Redis script that records and publishes in one step
    /// (the publisher cannot know it); never written by [`Envelope::to_wire`].
    #[serde(default)]
    sid: Option<String>,
    v: u8,
    origin: String,
    instance: String,
    id: String,
    destination: String,
    sender: Option<String>,
    content_type: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    ts: u64,
    body: Option<String>,
    body_b64: Option<String>,
}

/// Why a broker payload is not an envelope.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EnvelopeError {
    #[error("envelope is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported envelope version {0}")]
    Version(u8),
    #[error("invalid origin nonce {0:?}")]
    Origin(String),
    #[error("invalid envelope body")]
    Body,
    #[error("invalid stream id {0:?}")]
    StreamId(String),
}

/// Why a publish or a subscription change was not confirmed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BrokerError {
    #[error("the broker is unavailable")]
    Down,
    /// The connection failed while the command was in flight: it may or may not have been
    /// applied, and it is never sent again.
    #[error("the broker connection was lost before it confirmed")]
    Lost,
    #[error("the broker publish queue is full")]
    Overloaded,
    #[error("the broker did not confirm in time")]
    Timeout,
    #[error("the broker is shutting down")]
    Closed,
}

/// What an instance listens to on the broker.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Target {
    /// Envelopes for one hub key (tether's own channel `tether:dest:{key}`).
    Key(String),
    /// A Redis glob pattern of foreign channels (`--channel-map`), delivered raw.
    Pattern(String),
}

/// What a broker hands to its instance.
#[derive(Debug)]
pub(crate) enum Received {
    /// An envelope some instance (maybe this one) published.
    Envelope(Arc<Envelope>),
    /// A payload a foreign publisher sent on `channel`, matched by subscribed `pattern`.
    Channel { pattern: String, channel: String, payload: Bytes },
    /// These hub keys' subscriptions were dropped (the connection went, or a key's slot moved
    /// to another node): whatever is published to them is missed until [`Received::Restored`].
    Interrupted(Vec<String>),
    /// These hub keys are subscribed again after [`Received::Interrupted`]: what was missed is
    /// in their record (with history on).
    Restored(Vec<String>),
}

/// Which adapter an instance runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BrokerKind {
    Redis,
    Local,
}

/// Where a broker delivers what it received. Called from the broker's own task (or, for the
/// in-process bus, the publisher's); it must not block (the hub fan-out only uses `try_send`).
pub(crate) type Inbound = Arc<dyn Fn(Received) + Send + Sync>;

/// Health of the broker connection, as `/healthz` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    Up,
    /// Connected, but a command has been waiting longer than the slow threshold. Nothing is
    /// failed or retried for it: a slow broker is not a down one.
    Slow,
    Down,
}

/// The fan-out port. All methods return at once.
pub(crate) trait Broker: Send + Sync {
    fn kind(&self) -> BrokerKind;

    /// Sends `envelope` to every instance, this one included. The [`Ack`] resolves once the
    /// broker accepted it; an error means it was not delivered anywhere (or, for
    /// [`BrokerError::Lost`], that nobody can tell).
    fn publish(&self, envelope: Arc<Envelope>) -> Ack;

    /// Listens to `target` (idempotent). The [`Ack`] resolves once the broker confirmed it:
    /// from then on, everything published to it on any instance arrives here.
    fn watch(&self, target: Target) -> Ack;

    /// Stops listening to `target`.
    fn unwatch(&self, target: Target);

    /// Up to `limit` recorded envelopes of hub key `key` from `start` on, oldest first, each
    /// with its stream id (`XRANGE`). Empty when history is off.
    fn replay(&self, key: &str, start: Start, limit: usize) -> Replay;

    fn health(&self) -> Health;
}

/// A pending page of a destination's record.
pub(crate) type Replay = BoxFuture<'static, Result<Vec<Arc<Envelope>>, BrokerError>>;

/// A pending broker confirmation.
#[derive(Debug)]
pub(crate) struct Ack(AckState);

enum AckState {
    Ready(Option<Result<(), BrokerError>>),
    Waiting(oneshot::Receiver<Result<(), BrokerError>>),
    Future(Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>),
}

impl std::fmt::Debug for AckState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AckState::Ready(r) => f.debug_tuple("Ready").field(r).finish(),
            AckState::Waiting(_) => f.write_str("Waiting"),
            AckState::Future(_) => f.write_str("Future"),
        }
    }
}

impl Ack {
    pub(crate) fn ready(result: Result<(), BrokerError>) -> Ack {
        Ack(AckState::Ready(Some(result)))
    }

    pub(crate) fn from_future(fut: impl Future<Output = Result<(), BrokerError>> + Send + 'static) -> Ack {
        Ack(AckState::Future(Box::pin(fut)))
    }

    /// Resolves with the first error of `acks`, or Ok once all of them confirmed.
    pub(crate) async fn all(acks: Vec<Ack>) -> Result<(), BrokerError> {
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }

    /// An ack resolved by whoever holds the sender; a dropped sender means [`BrokerError::Closed`].
    pub(crate) fn channel() -> (oneshot::Sender<Result<(), BrokerError>>, Ack) {
        let (tx, rx) = oneshot::channel();
        (tx, Ack(AckState::Waiting(rx)))
    }
}

impl Future for Ack {
    type Output = Result<(), BrokerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            AckState::Ready(r) => Poll::Ready(r.take().unwrap_or(Err(BrokerError::Closed))),
            AckState::Waiting(rx) => Pin::new(rx).poll(cx).map(|r| r.unwrap_or(Err(BrokerError::Closed))),
            AckState::Future(f) => f.as_mut().poll(cx),
        }
    }
}

/// Prefix of every channel tether uses, so `PUBSUB CHANNELS tether:dest:*` lists them all.
pub(crate) const CHANNEL_PREFIX: &str = "tether:dest:";
/// Prefix of every stream tether writes (history).
pub(crate) const STREAM_PREFIX: &str = "tether:stream:";

/// How hub keys become Redis names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Naming {
    /// One Redis: `tether:dest:<key>` and `tether:stream:<key>`.
    Plain,
    /// Redis Cluster: the key in a hash tag (`tether:dest:{<key>}`, `tether:stream:{<key>}`),
    /// so a destination's channel and stream hash to the same slot and live on one node (a
    /// script can then record and publish in one step). A key that starts with `}` would make
    /// the tag empty (Redis then hashes the whole name, differently for the two): such keys
    /// get the tag `{~}` instead, all on one slot.
    Cluster,
}

impl Naming {
    pub(crate) fn channel(self, key: &str) -> String {
        self.name(CHANNEL_PREFIX, key)
    }

    pub(crate) fn stream(self, key: &str) -> String {
        self.name(STREAM_PREFIX, key)
    }

    /// The hub key whose channel is `channel` (the inverse of [`Naming::channel`]).
    pub(crate) fn key_of_channel(self, channel: &str) -> Option<&str> {
        let rest = channel.strip_prefix(CHANNEL_PREFIX)?;
        match self {
            Naming::Plain => Some(rest),
            Naming::Cluster => match rest.strip_prefix("{~}") {
                Some(key) if key.starts_with('}') => Some(key),
                _ => rest.strip_prefix('{')?.strip_suffix('}'),
            },
        }
    }

    fn name(self, prefix: &str, key: &str) -> String {
        match self {
            Naming::Plain => format!("{prefix}{key}"),
            Naming::Cluster if key.starts_with('}') => format!("{prefix}{{~}}{key}"),
            Naming::Cluster => format!("{prefix}{{{key}}}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(body: &[u8]) -> Envelope {
        Envelope {
            origin: 0xdead_beef_0000_0001,
            instance: "app-1".into(),
            id: "deadbeef-1".into(),
            destination: "/topic/room.a".into(),
            sender: Some("alice".into()),
            content_type: Some("application/json".into()),
            headers: vec![("x-a".into(), "1:2\n".into())],
            body: Bytes::copy_from_slice(body),
            published_at_ms: 1_700_000_000_000,
            stream_id: None,
        }
    }

    #[test]
    fn text_and_binary_envelopes_round_trip() {
        for body in [&b"{\"text\":\"hi\"}"[..], &[0, 159, 146, 150, 255], b""] {
            let e = envelope(body);
            assert_eq!(Envelope::from_wire(&e.to_wire()).unwrap(), e);
        }
        let wire = String::from_utf8(envelope(&[255]).to_wire()).unwrap();
        assert!(wire.contains("\"body_b64\":\"/w==\""), "{wire}");
    }

    #[test]
    fn a_destinations_channel_and_stream_share_a_cluster_slot() {
        use ::redis::cluster_routing::Slot;
        assert_eq!(Naming::Plain.channel("/topic/a"), "tether:dest:/topic/a");
        assert_eq!(Naming::Plain.stream("/topic/a"), "tether:stream:/topic/a");
        assert_eq!(Naming::Cluster.channel("/topic/a"), "tether:dest:{/topic/a}");
        for key in ["/topic/a", "/topic/b", "}x", "}", "a}b", "{a}", "a{b}c", "/user/alice/queue/x", "{", "}}{{"] {
            let (c, s) = (Naming::Cluster.channel(key), Naming::Cluster.stream(key));
            assert_eq!(Slot::for_key(&c), Slot::for_key(&s), "{key:?}: {c} and {s}");
        }
        for naming in [Naming::Plain, Naming::Cluster] {
            for key in ["/topic/a", "}x", "}", "~}a", "{~}}b", "/user/alice/queue/x"] {
                assert_eq!(naming.key_of_channel(&naming.channel(key)), Some(key), "{naming:?} {key:?}");
            }
        }
        assert_eq!(Naming::Cluster.key_of_channel("tether:dest:/topic/a"), None);
        assert_eq!(Naming::Plain.key_of_channel("other:/topic/a"), None);
        // Different destinations spread over slots.
        assert_ne!(
            Slot::for_key(Naming::Cluster.channel("/topic/a")),
            Slot::for_key(Naming::Cluster.channel("/topic/b"))
        );
    }

    #[test]
    fn foreign_payloads_are_rejected_not_panicked_on() {
        for bad in [&b"not json"[..], b"{}", b"{\"v\":2}", b"\xff\xfe"] {
            assert!(Envelope::from_wire(bad).is_err());
        }
        let mut e = String::from_utf8(envelope(b"x").to_wire()).unwrap();
        e = e.replace("deadbeef00000001", "zz");
        assert!(matches!(Envelope::from_wire(e.as_bytes()), Err(EnvelopeError::Origin(_))));
    }
}
