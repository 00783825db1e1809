//! The in-process bus's record: per destination, the recent messages and their stream ids,
//! trimmed by [`Retention`] the way Redis trims a stream (`MINID` by age, `MAXLEN` by count),
//! and read with the meaning of `XRANGE`. Pure: the caller passes the clock.

use std::collections::{HashMap, VecDeque};

use super::{Retention, Start, StreamId};

/// Every this many records, every destination is trimmed by age (not only the one written), so
/// destinations nobody publishes to any more do not keep their last messages forever.
const SWEEP_EVERY: u64 = 1024;

#[derive(Debug)]
struct Ring<T> {
    entries: VecDeque<(StreamId, T)>,
    /// The last id handed out, kept when the entries are trimmed away, so ids keep growing.
    last: Option<StreamId>,
}

/// Records by destination.
#[derive(Debug)]
pub(crate) struct Rings<T> {
    retention: Retention,
    by_key: HashMap<String, Ring<T>>,
    records: u64,
}

impl<T: Clone> Rings<T> {
    pub(crate) fn new(retention: Retention) -> Rings<T> {
        Rings { retention, by_key: HashMap::new(), records: 0 }
    }

    /// Records under `key`, at wall-clock `now_ms`, the item `make` builds for its id; returns
    /// the item.
    pub(crate) fn record(&mut self, key: &str, now_ms: u64, make: impl FnOnce(StreamId) -> T) -> T {
        let ring = match self.by_key.get_mut(key) {
            Some(r) => r,
            None => self.by_key.entry(key.to_owned()).or_insert(Ring { entries: VecDeque::new(), last: None }),
        };
        let id = StreamId::next(ring.last, now_ms);
        ring.last = Some(id);
        let item = make(id);
        ring.entries.push_back((id, item.clone()));
        trim(ring, self.retention, now_ms);
        self.records += 1;
        if self.records.is_multiple_of(SWEEP_EVERY) {
            self.sweep(now_ms);
        }
        item
    }

    /// Up to `limit` entries of `key` from `start` on, oldest first (`XRANGE key start + COUNT
    /// limit`).
    pub(crate) fn range(&mut self, key: &str, start: Start, limit: usize, now_ms: u64) -> Vec<(StreamId, T)> {
        let Some(ring) = self.by_key.get_mut(key) else {
            return Vec::new();
        };
        trim(ring, self.retention, now_ms);
        let first = ring.entries.partition_point(|(id, _)| !start.admits(*id));
        ring.entries.iter().skip(first).take(limit).cloned().collect()
    }

    /// Trims every destination by age; forgets destinations with nothing left.
    fn sweep(&mut self, now_ms: u64) {
        let retention = self.retention;
        self.by_key.retain(|_, ring| {
            trim(ring, retention, now_ms);
            !ring.entries.is_empty()
        });
    }

    #[cfg(test)]
    fn destinations(&self) -> usize {
        self.by_key.len()
    }
}

fn trim<T>(ring: &mut Ring<T>, retention: Retention, now_ms: u64) {
    match retention {
        Retention::Len(n) => {
            while ring.entries.len() > n.max(1) {
                ring.entries.pop_front();
            }
        }
        Retention::Age(age) => {
            let min_ms = now_ms.saturating_sub(age.as_millis() as u64);
            while ring.entries.front().is_some_and(|(id, _)| id.ms < min_ms) {
                ring.entries.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ids(entries: &[(StreamId, u32)]) -> Vec<u32> {
        entries.iter().map(|(_, v)| *v).collect()
    }

    /// Records `v` and returns its id.
    fn put(r: &mut Rings<u32>, key: &str, v: u32, now_ms: u64) -> StreamId {
        let mut got = None;
        r.record(key, now_ms, |id| {
            got = Some(id);
            v
        });
        got.unwrap()
    }

    #[test]
    fn ids_grow_per_destination_and_ranges_read_like_xrange() {
        let mut r = Rings::new(Retention::Len(100));
        let a0 = put(&mut r, "/a", 0, 1000);
        let a1 = put(&mut r, "/a", 1, 1000);
        let b0 = put(&mut r, "/b", 10, 999);
        let a2 = put(&mut r, "/a", 2, 1001);
        assert_eq!(
            (a0, a1, a2),
            (StreamId { ms: 1000, seq: 0 }, StreamId { ms: 1000, seq: 1 }, StreamId { ms: 1001, seq: 0 })
        );
        assert_eq!(b0, StreamId { ms: 999, seq: 0 }, "another destination has its own sequence");
        assert_eq!(ids(&r.range("/a", Start::Including(a1), 10, 1001)), [1, 2]);
        assert_eq!(ids(&r.range("/a", Start::After(a1), 10, 1001)), [2]);
        assert_eq!(ids(&r.range("/a", Start::After(a2), 10, 1001)), Vec::<u32>::new());
        assert_eq!(ids(&r.range("/a", Start::Including(StreamId { ms: 0, seq: 0 }), 2, 1001)), [0, 1]);
        assert_eq!(ids(&r.range("/nobody", Start::Including(a0), 10, 1001)), Vec::<u32>::new());
    }

    #[test]
    fn length_retention_keeps_the_newest() {
        let mut r = Rings::new(Retention::Len(3));
        let first = put(&mut r, "/a", 0, 1);
        for i in 1..10 {
            put(&mut r, "/a", i, 1);
        }
        let all = r.range("/a", Start::Including(first), 100, 1);
        assert_eq!(ids(&all), [7, 8, 9]);
    }

    #[test]
    fn age_retention_drops_what_is_older_and_ids_still_grow() {
        let mut r = Rings::new(Retention::Age(Duration::from_millis(100)));
        let old = put(&mut r, "/a", 0, 1000);
        put(&mut r, "/a", 1, 1050);
        assert_eq!(ids(&r.range("/a", Start::Including(old), 10, 1100)), [0, 1]);
        assert_eq!(ids(&r.range("/a", Start::Including(old), 10, 1101)), [1], "1000 is older than 100 ms");
        assert_eq!(ids(&r.range("/a", Start::Including(old), 10, 1200)), Vec::<u32>::new());
        // Trimmed empty, the destination still hands out growing ids (the clock stepped back).
        let next = put(&mut r, "/a", 2, 900);
        assert!(next > old, "{next} after {old}");
    }

    #[test]
    fn destinations_nobody_writes_to_are_forgotten_by_the_sweep() {
        let mut r = Rings::new(Retention::Age(Duration::from_millis(10)));
        put(&mut r, "/dead", 0, 0);
        for i in 0..SWEEP_EVERY {
            put(&mut r, "/live", i as u32, 1000 + i);
        }
        assert_eq!(r.destinations(), 1, "only /live is left");
    }
}
