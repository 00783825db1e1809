//! STOMP transactions of one session (pure): frames sent with a `transaction` header are held
//! until COMMIT, which hands them back in order, or dropped on ABORT.
//!
//! Bounded: a session may have [`MAX_OPEN`] transactions open and hold [`MAX_HELD`] frames in
//! all, so a client cannot grow server memory by never committing.

use std::collections::HashMap;

use crate::app::stomp::Frame;

/// Open transactions per session.
pub(crate) const MAX_OPEN: usize = 16;
/// Frames held across all open transactions of a session.
pub(crate) const MAX_HELD: usize = 1024;

/// Why a transaction frame was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TxError {
    #[error("transaction {0:?} is already open")]
    Duplicate(String),
    #[error("no open transaction {0:?}")]
    Unknown(String),
    #[error("too many open transactions (limit {MAX_OPEN})")]
    TooManyOpen,
    #[error("too many frames held in transactions (limit {MAX_HELD})")]
    TooManyHeld,
}

#[derive(Debug, Default)]
pub(crate) struct Transactions {
    open: HashMap<String, Vec<Frame>>,
    held: usize,
}

impl Transactions {
    pub(crate) fn begin(&mut self, id: &str) -> Result<(), TxError> {
        if self.open.contains_key(id) {
            return Err(TxError::Duplicate(id.to_owned()));
        }
        if self.open.len() >= MAX_OPEN {
            return Err(TxError::TooManyOpen);
        }
        self.open.insert(id.to_owned(), Vec::new());
        Ok(())
    }

    /// Holds `frame` (a SEND, ACK or NACK) in transaction `id`.
    pub(crate) fn hold(&mut self, id: &str, frame: Frame) -> Result<(), TxError> {
        let Some(frames) = self.open.get_mut(id) else {
            return Err(TxError::Unknown(id.to_owned()));
        };
        if self.held >= MAX_HELD {
            return Err(TxError::TooManyHeld);
        }
        frames.push(frame);
        self.held += 1;
        Ok(())
    }

    /// Closes `id`, returning its frames in the order they were sent.
    pub(crate) fn commit(&mut self, id: &str) -> Result<Vec<Frame>, TxError> {
        let frames = self.open.remove(id).ok_or_else(|| TxError::Unknown(id.to_owned()))?;
        self.held -= frames.len();
        Ok(frames)
    }

    /// Closes `id`, dropping its frames.
    pub(crate) fn abort(&mut self, id: &str) -> Result<(), TxError> {
        self.commit(id).map(drop)
    }

    /// Aborts everything (disconnect). Returns how many transactions were open.
    pub(crate) fn abort_all(&mut self) -> usize {
        let n = self.open.len();
        self.open.clear();
        self.held = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::stomp::Command;

    fn send(body: &'static str) -> Frame {
        Frame::new(Command::Send).header("destination", "/t").body(body)
    }

    #[test]
    fn commit_returns_the_held_frames_in_order_and_abort_drops_them() {
        let mut t = Transactions::default();
        t.begin("a").unwrap();
        t.begin("b").unwrap();
        t.hold("a", send("1")).unwrap();
        t.hold("b", send("x")).unwrap();
        t.hold("a", send("2")).unwrap();
        let bodies: Vec<_> = t.commit("a").unwrap().into_iter().map(|f| f.body).collect();
        assert_eq!(bodies, vec!["1", "2"]);
        t.abort("b").unwrap();
        assert_eq!(t.commit("b"), Err(TxError::Unknown("b".into())));
        assert_eq!(t.abort_all(), 0);
    }

    #[test]
    fn unknown_and_duplicate_ids_are_errors() {
        let mut t = Transactions::default();
        assert_eq!(t.hold("x", send("1")), Err(TxError::Unknown("x".into())));
        assert_eq!(t.commit("x"), Err(TxError::Unknown("x".into())));
        assert_eq!(t.abort("x"), Err(TxError::Unknown("x".into())));
        t.begin("x").unwrap();
        assert_eq!(t.begin("x"), Err(TxError::Duplicate("x".into())));
        t.commit("x").unwrap();
        // A committed id may be used again.
        t.begin("x").unwrap();
        assert_eq!(t.abort_all(), 1);
        assert_eq!(t.hold("x", send("1")), Err(TxError::Unknown("x".into())));
    }

    #[test]
    fn open_transactions_and_held_frames_are_bounded() {
        let mut t = Transactions::default();
        for i in 0..MAX_OPEN {
            t.begin(&i.to_string()).unwrap();
        }
        assert_eq!(t.begin("one more"), Err(TxError::TooManyOpen));
        for _ in 0..MAX_HELD {
            t.hold("0", send("x")).unwrap();
        }
        assert_eq!(t.hold("1", send("x")), Err(TxError::TooManyHeld));
        t.abort("0").unwrap();
        t.hold("1", send("x")).unwrap();
    }
}
