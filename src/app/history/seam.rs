//! The seam of one resumed subscription: what was missed (pages read from the record) and what
//! arrives live meanwhile become one sequence, in stream order, with nothing twice and nothing
//! missing. Pure.
//!
//! The live subscription is made (and confirmed by the broker) *before* the first page is read,
//! so every message is in the record, live, or both: live messages are held while the pages
//! come in, then those the pages already delivered are dropped by id. Afterwards every message
//! at or before the last id handed out is a duplicate (ids grow per destination, and one
//! destination's messages arrive in record order), which is what makes the seam exact.
//!
//! A live subscription whose broker side is interrupted (the connection to Redis dropped, or
//! its channel's slot moved) is resumed the same way from its own cursor: it holds what
//! arrives from the interruption on ([`Seam::hold`]), and once the broker subscription is back
//! ([`Seam::resync`]) reads what it missed from the record.
//!
//! Resuming from an id the record no longer holds (trimmed, or history off) is not an error:
//! the client gets what is left, and the first MESSAGE it is given says so (`x-resume-gap`).

use std::collections::VecDeque;

use super::{Start, StreamId};

/// What the seam needs to know of a message.
pub(crate) trait Sequenced {
    /// Its id in the record; `None` for a message that was never recorded (history off where it
    /// was published, or a foreign channel), which is never taken for a duplicate.
    fn stream_id(&self) -> Option<StreamId>;
    /// What it costs to hold it, in bytes.
    fn size(&self) -> usize;
}

/// A message to write, and whether it is the first after a gap.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Out<M> {
    pub(crate) message: M,
    pub(crate) gap: bool,
}

/// What to do after a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Read the next page from here.
    Fetch(Start),
    /// The replay is over; the subscription is live.
    Done,
}

/// More live messages arrived during the replay than the hold limit allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Overflow;

#[derive(Debug)]
enum State<M> {
    Live,
    /// Holding live messages while the record is read; `waiting` until it may be read (an
    /// interrupted subscription waits for its broker subscription to be back).
    Replaying {
        first_page: bool,
        waiting: bool,
        held: VecDeque<M>,
        held_bytes: usize,
        limit: usize,
    },
}

/// One subscription's position in its destination's stream.
#[derive(Debug)]
pub(crate) struct Seam<M> {
    state: State<M>,
    /// The last id handed out, or the resume point: anything at or before it is a duplicate.
    cursor: Option<StreamId>,
    /// The next message handed out carries the gap mark.
    gap: bool,
}

impl<M: Sequenced> Seam<M> {
    /// A plain subscription: live at once.
    pub(crate) fn live() -> Seam<M> {
        Seam { state: State::Live, cursor: None, gap: false }
    }

    /// A subscription resuming after `cursor`, holding at most `limit` bytes of live messages
    /// while it replays. Returns where the first page starts: at `cursor` itself, which shows
    /// whether the record still holds it.
    pub(crate) fn resume(cursor: StreamId, limit: usize) -> (Seam<M>, Start) {
        let state = State::Replaying { first_page: true, waiting: false, held: VecDeque::new(), held_bytes: 0, limit };
        (Seam { state, cursor: Some(cursor), gap: false }, Start::Including(cursor))
    }

    /// The broker subscription was dropped: hold live messages (at most `limit` bytes) until
    /// [`Seam::resync`]. Nothing changes when nothing was handed out yet (there is no point to
    /// read the record from) or a replay is already under way.
    pub(crate) fn hold(&mut self, limit: usize) {
        if let (State::Live, Some(_)) = (&self.state, self.cursor) {
            self.state =
                State::Replaying { first_page: true, waiting: true, held: VecDeque::new(), held_bytes: 0, limit };
        }
    }

    /// The broker subscription is back: where to read what was missed, if this seam was
    /// holding for it.
    pub(crate) fn resync(&mut self) -> Option<Start> {
        match &mut self.state {
            State::Replaying { waiting, .. } if *waiting => {
                *waiting = false;
                self.cursor.map(Start::Including)
            }
            _ => None,
        }
    }

    #[cfg(test)]
    pub(crate) fn is_replaying(&self) -> bool {
        matches!(self.state, State::Replaying { .. })
    }

    /// A live message: handed out, dropped as a duplicate, or held while replaying.
    pub(crate) fn on_live(&mut self, message: M) -> Result<Option<Out<M>>, Overflow> {
        match &mut self.state {
            State::Live => Ok(self.admit(message)),
            State::Replaying { held, held_bytes, limit, .. } => {
                *held_bytes += message.size();
                if *held_bytes > *limit {
                    return Err(Overflow);
                }
                held.push_back(message);
                Ok(None)
            }
        }
    }

    /// A page of the record (`page_size` asked for). Returns what to hand out, in order, and
    /// whether to read on. After the last page the held live messages follow, duplicates
    /// dropped.
    pub(crate) fn on_page(&mut self, page: Vec<M>, page_size: usize) -> (Vec<Out<M>>, Next) {
        let State::Replaying { first_page, .. } = &mut self.state else {
            return (Vec::new(), Next::Done);
        };
        let full = page.len() >= page_size;
        let last = page.last().and_then(Sequenced::stream_id);
        if std::mem::replace(first_page, false) {
            let kept = page.first().and_then(Sequenced::stream_id).is_some_and(|id| Some(id) == self.cursor);
            if !kept {
                // The record does not know the cursor (trimmed, history off, or an id it never
                // handed out): nothing can be told apart by it, so it must not hold back what
                // follows. Duplicates are still dropped by the ids handed out from here on.
                self.gap = true;
                self.cursor = None;
            }
        }
        let mut out: Vec<Out<M>> = page.into_iter().filter_map(|m| self.admit(m)).collect();
        if let (true, Some(last)) = (full, last) {
            return (out, Next::Fetch(Start::After(last)));
        }
        if let State::Replaying { held, .. } = std::mem::replace(&mut self.state, State::Live) {
            out.extend(held.into_iter().filter_map(|m| self.admit(m)));
        }
        (out, Next::Done)
    }

    /// Hands `message` out unless it is at or before the cursor.
    fn admit(&mut self, message: M) -> Option<Out<M>> {
        if let Some(id) = message.stream_id() {
            if self.cursor.is_some_and(|c| id <= c) {
                return None;
            }
            self.cursor = Some(id);
        }
        Some(Out { message, gap: std::mem::take(&mut self.gap) })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct M(Option<u64>);

    impl Sequenced for M {
        fn stream_id(&self) -> Option<StreamId> {
            self.0.map(|n| StreamId { ms: n, seq: 0 })
        }
        fn size(&self) -> usize {
            10
        }
    }

    fn id(n: u64) -> StreamId {
        StreamId { ms: n, seq: 0 }
    }

    fn ms(out: &[Out<M>]) -> Vec<(u64, bool)> {
        out.iter().map(|o| (o.message.0.unwrap_or(0), o.gap)).collect()
    }

    #[test]
    fn a_live_subscription_drops_only_what_it_already_handed_out() {
        let mut s = Seam::live();
        assert_eq!(s.on_live(M(Some(2))).unwrap().map(|o| o.gap), Some(false));
        assert!(s.on_live(M(Some(2))).unwrap().is_none(), "a duplicate");
        assert!(s.on_live(M(Some(1))).unwrap().is_none(), "behind the cursor");
        assert!(s.on_live(M(None)).unwrap().is_some(), "unrecorded messages always pass");
        assert!(s.on_live(M(Some(3))).unwrap().is_some());
    }

    #[test]
    fn held_live_messages_follow_the_replay_without_the_overlap() {
        let (mut s, start) = Seam::resume(id(2), 1000);
        assert_eq!(start, Start::Including(id(2)));
        for n in [4, 5, 6] {
            assert_eq!(s.on_live(M(Some(n))), Ok(None));
        }
        let (out, next) = s.on_page(vec![M(Some(2)), M(Some(3)), M(Some(4))], 3);
        assert_eq!(ms(&out), [(3, false), (4, false)]);
        assert_eq!(next, Next::Fetch(Start::After(id(4))));
        let (out, next) = s.on_page(vec![M(Some(5))], 3);
        assert_eq!(ms(&out), [(5, false), (6, false)], "5 came both ways, once out");
        assert_eq!(next, Next::Done);
        assert!(!s.is_replaying());
        assert_eq!(s.on_live(M(Some(6))), Ok(None));
    }

    #[test]
    fn a_cursor_the_record_no_longer_holds_marks_the_first_message() {
        let (mut s, _) = Seam::resume(id(2), 1000);
        let (out, next) = s.on_page(vec![M(Some(7)), M(Some(8))], 10);
        assert_eq!(ms(&out), [(7, true), (8, false)]);
        assert_eq!(next, Next::Done);
        // Nothing in the record at all (or history off): the mark waits for the first live one.
        let (mut s, _) = Seam::resume(id(2), 1000);
        let (out, _) = s.on_page(vec![], 10);
        assert!(out.is_empty());
        assert_eq!(s.on_live(M(Some(9))).unwrap().map(|o| o.gap), Some(true));
        assert_eq!(s.on_live(M(Some(10))).unwrap().map(|o| o.gap), Some(false));
    }

    #[test]
    fn a_cursor_the_record_never_held_does_not_hold_back_live_messages() {
        // An id from the future (a client's invention): the record has nothing at or after it.
        let (mut s, _) = Seam::resume(id(1000), 1000);
        assert_eq!(s.on_live(M(Some(5))), Ok(None));
        let (out, next) = s.on_page(vec![], 10);
        assert_eq!((ms(&out), next), (vec![(5, true)], Next::Done));
        assert_eq!(s.on_live(M(Some(6))).unwrap().map(|o| (o.message.0, o.gap)), Some((Some(6), false)));
        assert_eq!(s.on_live(M(Some(6))), Ok(None), "still no duplicates");
    }

    #[test]
    fn an_interrupted_subscription_holds_then_reads_what_it_missed() {
        let mut s = Seam::live();
        assert!(s.on_live(M(Some(1))).unwrap().is_some());
        s.hold(1000);
        assert!(s.is_replaying());
        // Messages 2 and 3 were published while the broker subscription was down; 4 and 5
        // arrive live once it is back, before the record is read.
        assert_eq!(s.on_live(M(Some(4))), Ok(None));
        s.hold(1000);
        assert_eq!(s.resync(), Some(Start::Including(id(1))));
        assert_eq!(s.resync(), None, "once");
        assert_eq!(s.on_live(M(Some(5))), Ok(None));
        let (out, next) = s.on_page(vec![M(Some(1)), M(Some(2)), M(Some(3)), M(Some(4))], 10);
        assert_eq!(ms(&out), [(2, false), (3, false), (4, false), (5, false)]);
        assert_eq!(next, Next::Done);
        assert!(!s.is_replaying());
        // Before anything was handed out there is no point to resume from: it stays live.
        let mut fresh: Seam<M> = Seam::live();
        fresh.hold(1000);
        assert!(!fresh.is_replaying());
        assert_eq!(fresh.resync(), None);
        // A resume under way is not restarted.
        let (mut resuming, _) = Seam::<M>::resume(id(1), 1000);
        resuming.hold(1000);
        assert_eq!(resuming.resync(), None);
    }

    #[test]
    fn holding_is_bounded_in_bytes() {
        let (mut s, _) = Seam::resume(id(1), 25);
        assert_eq!(s.on_live(M(Some(2))), Ok(None));
        assert_eq!(s.on_live(M(Some(3))), Ok(None));
        assert_eq!(s.on_live(M(Some(4))), Err(Overflow));
    }

    proptest! {
        /// Messages 1..=n are published. The client saw `cursor` before; the live subscription
        /// is confirmed after message `confirmed`; the record has lost everything before
        /// `trimmed`. Live messages and pages (each read after the previous one, from a record
        /// that keeps growing) interleave in any order. The client gets every message after its
        /// cursor that still exists, once, in order, and a gap mark exactly when its cursor was
        /// trimmed.
        #[test]
        fn resuming_hands_out_each_message_once_in_order(
            n in 1u64..40,
            cursor_frac in 0.0f64..1.0,
            confirm_frac in 0.0f64..1.0,
            trim_frac in 0.0f64..1.0,
            page_size in 1usize..6,
            schedule in proptest::collection::vec(any::<bool>(), 0..120),
        ) {
            let cursor = 1 + (cursor_frac * n as f64) as u64 % n;
            let confirmed = cursor + (confirm_frac * (n - cursor + 1) as f64) as u64 % (n - cursor + 1);
            let trimmed = 1 + (trim_frac * (confirmed + 1) as f64) as u64 % (confirmed + 1);
            let (mut s, mut start) = Seam::resume(id(cursor), usize::MAX);
            let mut published = confirmed;
            let mut next_live = confirmed + 1;
            let mut out = Vec::new();
            let mut replay_done = false;
            let mut steps = schedule.into_iter();
            while !(replay_done && next_live > n) {
                let publish_live = steps.next().unwrap_or(replay_done);
                if (publish_live || replay_done) && next_live <= n {
                    published = published.max(next_live);
                    if let Some(o) = s.on_live(M(Some(next_live))).unwrap() {
                        out.push(o);
                    }
                    next_live += 1;
                } else if !replay_done {
                    let page: Vec<M> = (trimmed..=published)
                        .filter(|&i| start.admits(id(i)))
                        .take(page_size)
                        .map(|i| M(Some(i)))
                        .collect();
                    let (o, next) = s.on_page(page, page_size);
                    out.extend(o);
                    match next {
                        Next::Fetch(s2) => start = s2,
                        Next::Done => replay_done = true,
                    }
                } else {
                    break;
                }
            }
            let got: Vec<u64> = out.iter().map(|o| o.message.0.unwrap()).collect();
            let from = if trimmed <= cursor { cursor + 1 } else { trimmed };
            let expected: Vec<u64> = (from..=n).collect();
            prop_assert_eq!(&got, &expected);
            let gaps: Vec<bool> = out.iter().map(|o| o.gap).collect();
            let gap_expected = trimmed > cursor;
            prop_assert_eq!(gaps.first().copied().unwrap_or(gap_expected), gap_expected);
            prop_assert!(gaps.iter().skip(1).all(|g| !g));
        }
    }
}
