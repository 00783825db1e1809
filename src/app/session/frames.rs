//! The frames a session writes that depend on its state (MESSAGE per subscription, ERROR), and
//! heart-beat negotiation. Pure.

use std::time::Duration;

use crate::app::instance::Delivery;
use crate::app::stomp::{self, Command, Frame, Version};

/// Encodes one MESSAGE frame for a delivery; `ack` is the `ack` header of client-acknowledged
/// subscriptions.
pub(crate) fn message(d: &Delivery, version: Version, ack: Option<&str>) -> Vec<u8> {
    let e = &d.envelope;
    let len = e.body.len().to_string();
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(9 + e.headers.len());
    headers.push(("subscription", &d.subscription));
    headers.push(("message-id", &e.id));
    headers.push(("destination", &d.destination));
    if let Some(ack) = ack {
        headers.push(("ack", ack));
    }
    if let Some(ct) = &e.content_type {
        headers.push(("content-type", ct));
    }
    headers.push(("content-length", &len));
    headers.push(("tether-instance", &e.instance));
    if let Some(sender) = &e.sender {
        headers.push(("tether-user", sender));
    }
    headers.extend(e.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let mut out = Vec::with_capacity(128 + e.body.len());
    stomp::encode_head(Command::Message, headers, version, &mut out);
    out.extend_from_slice(&e.body);
    out.push(0);
    out
}

/// An ERROR frame: `message` names the problem, `detail` is the body.
pub(crate) fn error(message: &str, receipt: Option<&str>, detail: &str) -> Frame {
    let mut f = Frame::new(Command::Error).header("message", message).header("content-type", "text/plain");
    if let Some(r) = receipt {
        f = f.header("receipt-id", r);
    }
    f.body(detail.to_owned())
}

/// Parses a `heart-beat` header `cx,cy` (milliseconds). A missing header is `0,0`.
pub(crate) fn parse_heart_beat(value: Option<&str>) -> Option<(u64, u64)> {
    let Some(v) = value else {
        return Some((0, 0));
    };
    let (a, b) = v.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// STOMP heart-beat negotiation. The server offers `server_ms` both ways; the client said it can
/// send every `cx` and wants to receive every `cy`. Returns (how often we send, how often we
/// expect to hear from the client); None disables that direction.
pub(crate) fn negotiate_heart_beat(server_ms: u64, (cx, cy): (u64, u64)) -> (Option<Duration>, Option<Duration>) {
    let agreed = |ours: u64, theirs: u64| (ours > 0 && theirs > 0).then(|| Duration::from_millis(ours.max(theirs)));
    (agreed(server_ms, cy), agreed(server_ms, cx))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::app::broker::Envelope;

    #[test]
    fn heart_beats_are_negotiated_per_spec() {
        let ms = Duration::from_millis;
        assert_eq!(negotiate_heart_beat(10_000, (10_000, 10_000)), (Some(ms(10_000)), Some(ms(10_000))));
        // The slower side wins in each direction.
        assert_eq!(negotiate_heart_beat(1_000, (5_000, 200)), (Some(ms(1_000)), Some(ms(5_000))));
        // Zero on either side disables that direction.
        assert_eq!(negotiate_heart_beat(1_000, (0, 500)), (Some(ms(1_000)), None));
        assert_eq!(negotiate_heart_beat(0, (500, 500)), (None, None));
    }

    #[test]
    fn heart_beat_header_parsing() {
        assert_eq!(parse_heart_beat(None), Some((0, 0)));
        assert_eq!(parse_heart_beat(Some("100, 200")), Some((100, 200)));
        assert_eq!(parse_heart_beat(Some("100")), None);
        assert_eq!(parse_heart_beat(Some("-1,5")), None);
    }

    fn delivery() -> Delivery {
        Delivery {
            envelope: Arc::new(Envelope {
                origin: 1,
                instance: "app-1".into(),
                id: "0000000000000001-7".into(),
                destination: "/user/alice/queue/x".into(),
                sender: Some("bob".into()),
                content_type: Some("text/plain".into()),
                headers: vec![("x-k".into(), "a:b".into())],
                body: bytes::Bytes::from_static(b"hi\0there"),
                published_at_ms: 0,
            }),
            subscription: "sub-1".into(),
            seq: 1,
            destination: "/user/queue/x".into(),
        }
    }

    #[test]
    fn message_frames_carry_subscription_specific_headers_and_user_headers() {
        let t = String::from_utf8(message(&delivery(), Version::V1_2, None)).unwrap();
        assert_eq!(
            t,
            "MESSAGE\nsubscription:sub-1\nmessage-id:0000000000000001-7\ndestination:/user/queue/x\n\
             content-type:text/plain\ncontent-length:8\ntether-instance:app-1\ntether-user:bob\n\
             x-k:a\\cb\n\nhi\0there\0"
        );
    }

    #[test]
    fn client_acknowledged_messages_carry_an_ack_header() {
        let t = String::from_utf8(message(&delivery(), Version::V1_2, Some("42"))).unwrap();
        assert!(t.contains("\ndestination:/user/queue/x\nack:42\n"), "{t}");
    }
}
