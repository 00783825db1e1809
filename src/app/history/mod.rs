//! A destination's recent messages, kept so that a client that reconnects misses nothing: every
//! message published while history is on (`--history`, `--history-len`) is recorded under its
//! destination with a stream id, each MESSAGE carries that id (`x-stream-id`), and a SUBSCRIBE
//! with `x-resume-from: <id>` first gets what followed that id, then the live messages.
//!
//! Owns the pure parts: [`StreamId`] (the id format of Redis Streams, `<ms>-<seq>`, which the
//! in-process bus imitates), [`Retention`], the in-memory record of the in-process bus
//! ([`ring`]) and the seam between replay and live delivery ([`seam`]). The records themselves
//! live in the brokers (a Redis Stream per destination, or the ring); this module must not do
//! I/O or know about sessions.

pub(crate) mod ring;
pub(crate) mod seam;

use std::fmt;
use std::time::Duration;

/// Messages fetched from the record per round trip while resuming: enough that a short outage
/// is replayed in one or two round trips, few enough that one page is a bounded burst for the
/// client.
pub(crate) const REPLAY_PAGE: usize = 512;

/// The position of a message in its destination's record, as Redis Streams write it
/// (`1718000000000-0`: milliseconds, then a sequence within the millisecond). Ordered: a later
/// message of the same destination always has a greater id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct StreamId {
    pub(crate) ms: u64,
    pub(crate) seq: u64,
}

impl StreamId {
    /// Parses `<ms>-<seq>`. A bare `<ms>` (allowed by Redis as a range bound) is not an id a
    /// message ever carried, so it is refused.
    pub(crate) fn parse(s: &str) -> Option<StreamId> {
        let (ms, seq) = s.split_once('-')?;
        let number = |t: &str| (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse().ok())?;
        Some(StreamId { ms: number(ms)?, seq: number(seq)? })
    }

    /// The id after `self` when a message is added at wall-clock `now_ms`: Redis's rule, so
    /// ids grow even when the clock steps back.
    pub(crate) fn next(last: Option<StreamId>, now_ms: u64) -> StreamId {
        match last {
            Some(last) if now_ms <= last.ms => StreamId { ms: last.ms, seq: last.seq + 1 },
            _ => StreamId { ms: now_ms, seq: 0 },
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// How much of a destination's record is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retention {
    /// Messages younger than this (`--history 5m`).
    Age(Duration),
    /// About this many messages per destination (`--history-len N`; Redis trims approximately,
    /// so a little more may be kept).
    Len(usize),
}

/// Where a replay starts, with the meaning of `XRANGE` bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// At this id, included: the first page of a resume, which shows whether the id is still
    /// in the record.
    Including(StreamId),
    /// After this id: the following pages.
    After(StreamId),
}

impl Start {
    /// Whether `id` is at or past this bound.
    pub(crate) fn admits(self, id: StreamId) -> bool {
        match self {
            Start::Including(start) => id >= start,
            Start::After(start) => id > start,
        }
    }

    /// The bound as `XRANGE` writes it: `id` inclusive, `(id` exclusive.
    pub(crate) fn to_xrange(self) -> String {
        match self {
            Start::Including(id) => id.to_string(),
            Start::After(id) => format!("({id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_parse_and_print_as_redis_writes_them() {
        let id = StreamId::parse("1718000000000-7").unwrap();
        assert_eq!(id, StreamId { ms: 1_718_000_000_000, seq: 7 });
        assert_eq!(id.to_string(), "1718000000000-7");
        for bad in ["", "-", "1", "1-", "-1", "a-1", "1-b", "1-2-3", " 1-2", "1-2 ", "+1-2", "99999999999999999999-0"] {
            assert_eq!(StreamId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn stream_ids_order_by_time_then_sequence() {
        let a = StreamId { ms: 5, seq: 9 };
        let b = StreamId { ms: 6, seq: 0 };
        assert!(a < b);
        assert!(StreamId { ms: 6, seq: 1 } > b);
    }

    #[test]
    fn the_next_id_always_grows_even_when_the_clock_steps_back() {
        assert_eq!(StreamId::next(None, 100), StreamId { ms: 100, seq: 0 });
        let last = StreamId { ms: 100, seq: 3 };
        assert_eq!(StreamId::next(Some(last), 100), StreamId { ms: 100, seq: 4 });
        assert_eq!(StreamId::next(Some(last), 90), StreamId { ms: 100, seq: 4 });
        assert_eq!(StreamId::next(Some(last), 101), StreamId { ms: 101, seq: 0 });
    }

    #[test]
    fn replay_bounds_mean_what_xrange_means() {
        let id = StreamId { ms: 10, seq: 2 };
        let (before, after) = (StreamId { ms: 10, seq: 1 }, StreamId { ms: 10, seq: 3 });
        assert!(Start::Including(id).admits(id) && Start::Including(id).admits(after));
        assert!(!Start::Including(id).admits(before));
        assert!(!Start::After(id).admits(id) && Start::After(id).admits(after));
        assert_eq!(Start::Including(id).to_xrange(), "10-2");
        assert_eq!(Start::After(id).to_xrange(), "(10-2");
    }
}
