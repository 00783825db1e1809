//! The ERROR frames a session writes, and heart-beat negotiation. Pure. (MESSAGE frames are
//! `message`'s.)

use std::time::Duration;

use crate::app::stomp::{Command, Frame};

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
    use super::*;

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
}
