//! Close scheduling: when each of `n` tunnels gets its graceful Close.
//!
//! Owns: the arithmetic that spreads `n` closes evenly over a window
//! ([`CloseSchedule::spread`], for drain timeouts and shutdown) or paces them at a maximum rate
//! ([`CloseSchedule::rate_limited`], for rebalancing), and a cursor that hands every index out
//! exactly once, in order. Must not: read the clock (the caller passes `now`), sleep, know which
//! tunnel an index stands for (the relay's choice), or panic or overflow on any duration or
//! count that config or a caller can produce.
//!
//! Times are kept as exact integer nanosecond offsets from `start`, and "is it due" compares
//! offsets with `now - start`; that keeps `due` exact and free of `Instant` overflow even for
//! absurd spreads. Only [`CloseSchedule::at`] turns an offset back into an `Instant`.

use std::ops::Range;
use std::time::{Duration, Instant};

const NANOS_PER_SEC: u128 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pace {
    /// Close `i` at `total * i / n` nanoseconds.
    Spread { total: u128 },
    /// Close `i` at `i / per_second` seconds; 0 means never.
    Rate { per_second: u32 },
}

/// When to close each of `n` tunnels, and which closes are due at a given `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CloseSchedule {
    start: Instant,
    pace: Pace,
    len: usize,
    /// Indices below this were already returned by `due`.
    next: usize,
}

impl CloseSchedule {
    /// Spread `n` closes evenly over `spread` from `start`: close `i` at
    /// `start + spread * i / n` (exact, floored to the nanosecond), so consecutive gaps differ
    /// from `spread / n` by under 1 ns, the first close is at `start` and the last at
    /// `spread * (n - 1) / n`, at least half of `spread` for `n >= 2`. `n = 0` yields nothing;
    /// a zero `spread` closes everything at `start`.
    pub(crate) fn spread(start: Instant, spread: Duration, n: usize) -> Self {
        Self { start, pace: Pace::Spread { total: spread.as_nanos() }, len: n, next: 0 }
    }

    /// At most `per_second` closes in any one-second window `[t, t + 1s)`: close `i` at
    /// `start + i / per_second` seconds (exact to the nanosecond, floored). `per_second = 0`
    /// honours the limit literally: no close is ever due (config validation should reject 0).
    pub(crate) fn rate_limited(start: Instant, per_second: u32, n: usize) -> Self {
        Self { start, pace: Pace::Rate { per_second }, len: n, next: 0 }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// When close `i` is due; `None` for `i >= len()`, for a close that is never due (rate 0),
    /// or for an instant `Instant` cannot represent (only an absurd spread gets there).
    pub(crate) fn at(&self, i: usize) -> Option<Instant> {
        let offset = self.offset(i)?;
        let secs = u64::try_from(offset / NANOS_PER_SEC).ok()?;
        let nanos = (offset % NANOS_PER_SEC) as u32; // < 10^9
        self.start.checked_add(Duration::new(secs, nanos))
    }

    /// The indices due at `now` that were not returned before, in order; each index is returned
    /// exactly once over the schedule's life. A `now` earlier than a previous one (or than
    /// `start`) just returns an empty range.
    pub(crate) fn due(&mut self, now: Instant) -> Range<usize> {
        let from = self.next;
        let Some(elapsed) = now.checked_duration_since(self.start) else {
            return from..from;
        };
        let elapsed = elapsed.as_nanos();
        // Offsets never decrease with `i`, so the due indices are a prefix: binary search,
        // at most log2(len) rounds.
        let (mut lo, mut hi) = (from, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.offset(mid).is_some_and(|offset| offset <= elapsed) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        self.next = lo;
        from..lo
    }

    /// When the next not-yet-returned close is due, so the relay can sleep until then; `None`
    /// once nothing more will ever come due (all returned, rate 0, or beyond `Instant`).
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.at(self.next)
    }

    /// Nanoseconds from `start` to close `i`, exact and overflow-free; `None` if `i` is out of
    /// range or never due.
    fn offset(&self, i: usize) -> Option<u128> {
        if i >= self.len {
            return None;
        }
        let i = i as u128;
        match self.pace {
            Pace::Spread { total } => {
                // total * i / n without the (up to 2^158) product: with total = q*n + r,
                // total*i/n = q*i + r*i/n exactly, where q*i <= total and r*i < n^2 <= 2^128.
                let n = self.len as u128;
                let (q, r) = (total / n, total % n);
                Some(q * i + r * i / n)
            }
            Pace::Rate { per_second: 0 } => None,
            // i < 2^64 and 10^9 < 2^30, so the product fits easily.
            Pace::Rate { per_second } => Some(i * NANOS_PER_SEC / u128::from(per_second)),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::test_runner::{Config as ProptestConfig, RngSeed};

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn all_times(schedule: &CloseSchedule) -> Vec<Instant> {
        (0..schedule.len()).map(|i| schedule.at(i).expect("every index below len is due at some instant")).collect()
    }

    #[test]
    fn four_closes_over_two_seconds_are_half_a_second_apart() {
        let start = Instant::now();
        let schedule = CloseSchedule::spread(start, Duration::from_secs(2), 4);
        assert_eq!(all_times(&schedule), [0, 500, 1000, 1500].map(|ms| start + ms * MS));
        assert_eq!(schedule.at(4), None);
    }

    #[test]
    fn uneven_division_floors_each_instant_to_the_nanosecond() {
        let start = Instant::now();
        let schedule = CloseSchedule::spread(start, Duration::from_nanos(10), 3);
        let offsets: Vec<Duration> = all_times(&schedule).iter().map(|t| t.duration_since(start)).collect();
        assert_eq!(offsets, [0, 3, 6].map(Duration::from_nanos));
    }

    #[test]
    fn no_tunnels_means_nothing_is_ever_due() {
        let start = Instant::now();
        let mut schedule = CloseSchedule::spread(start, Duration::from_secs(5), 0);
        assert!(schedule.is_empty());
        assert_eq!(schedule.next_due(), None);
        assert_eq!(schedule.due(start + Duration::from_secs(3600)), 0..0);
    }

    #[test]
    fn zero_spread_closes_everything_at_start() {
        let start = Instant::now();
        let mut schedule = CloseSchedule::spread(start, Duration::ZERO, 7);
        assert!(all_times(&schedule).iter().all(|&t| t == start));
        assert_eq!(schedule.due(start - MS), 0..0);
        assert_eq!(schedule.due(start), 0..7);
        assert_eq!(schedule.next_due(), None);
    }

    #[test]
    fn due_hands_out_each_index_once_and_waits_for_its_time() {
        let start = Instant::now();
        let mut schedule = CloseSchedule::spread(start, Duration::from_secs(1), 4);
        assert_eq!(schedule.next_due(), Some(start));
        assert_eq!(schedule.due(start + 499 * MS), 0..2);
        assert_eq!(schedule.next_due(), Some(start + 500 * MS));
        assert_eq!(schedule.due(start + 499 * MS), 2..2);
        assert_eq!(schedule.due(start + 100 * MS), 2..2, "time going back returns nothing");
        assert_eq!(schedule.due(start + 500 * MS), 2..3);
        assert_eq!(schedule.due(start + Duration::from_secs(60)), 3..4);
        assert_eq!(schedule.next_due(), None);
        assert_eq!(schedule.due(start + Duration::from_secs(61)), 4..4);
    }

    #[test]
    fn rate_limit_paces_closes_at_exact_intervals() {
        let start = Instant::now();
        let mut schedule = CloseSchedule::rate_limited(start, 4, 6);
        assert_eq!(all_times(&schedule), [0, 250, 500, 750, 1000, 1250].map(|ms| start + ms * MS));
        assert_eq!(schedule.due(start + 999 * MS), 0..4);
        assert_eq!(schedule.due(start + 1000 * MS), 4..5);
    }

    #[test]
    fn a_zero_rate_never_closes_anything() {
        let start = Instant::now();
        let mut schedule = CloseSchedule::rate_limited(start, 0, 3);
        assert_eq!(schedule.len(), 3);
        assert_eq!(schedule.at(0), None);
        assert_eq!(schedule.next_due(), None);
        assert_eq!(schedule.due(start + Duration::from_secs(3600)), 0..0);
    }

    #[test]
    fn an_absurd_spread_neither_panics_nor_overflows() {
        let start = Instant::now();
        let mut schedule = CloseSchedule::spread(start, Duration::MAX, usize::MAX);
        assert_eq!(schedule.at(0), Some(start));
        assert_eq!(schedule.due(start), 0..1);
        // Index 1 sits ~2^64 / 2^64 s = ~1 s out; far indices are beyond any Instant.
        assert_eq!(schedule.due(start + Duration::from_secs(2)), 1..3);
        // The last index lies ~2^64 s out: past what `Instant` holds (i64 seconds on Linux).
        assert_eq!(schedule.at(usize::MAX - 1), None);
        let mut rate = CloseSchedule::rate_limited(start, 1, usize::MAX);
        assert_eq!(rate.due(start + Duration::from_secs(2)), 0..3);
        assert_eq!(rate.next_due(), Some(start + Duration::from_secs(3)));
    }

    fn proptest_config(cases: u32, seed: u64) -> ProptestConfig {
        ProptestConfig { cases, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..ProptestConfig::default() }
    }

    /// Spreads from 0 to 1000 s, weighted to the seconds-long windows drains use.
    fn spread() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            (0u64..=10_000).prop_map(Duration::from_nanos),
            (1_000u64..=30_000).prop_map(Duration::from_millis),
            (0u64..=1_000_000_000_000).prop_map(Duration::from_nanos),
        ]
    }

    proptest! {
        #![proptest_config(proptest_config(512, 0x5c4e_d01e_0001))]

        #[test]
        fn spread_closes_are_exactly_even(spread in spread(), n in 0usize..3000) {
            let start = Instant::now();
            let schedule = CloseSchedule::spread(start, spread, n);
            let times = all_times(&schedule);
            prop_assert_eq!(times.len(), n);
            prop_assert_eq!(schedule.at(n), None);
            if let Some(&first) = times.first() {
                prop_assert_eq!(first, start);
            }
            let total = spread.as_nanos();
            for pair in times.windows(2) {
                // |gap - spread/n| < 1 ns  <=>  |gap * n - spread| < n.
                let gap = pair[1].duration_since(pair[0]).as_nanos();
                prop_assert!(gap * (n as u128) + (n as u128) > total, "gap {} too short", gap);
                prop_assert!(gap * (n as u128) < total + n as u128, "gap {} too long", gap);
            }
            for &t in &times {
                prop_assert!(t <= start + spread);
            }
            if n >= 2 {
                let span = times[n - 1].duration_since(times[0]);
                prop_assert!(span >= spread / 2, "span {:?} under half of {:?}", span, spread);
            }
        }

        #[test]
        fn no_burst_in_any_quarter_second_when_spread_over_a_second_or_more(
            spread in (1_000u64..=30_000).prop_map(Duration::from_millis),
            n in 0usize..5000,
        ) {
            let start = Instant::now();
            let times = all_times(&CloseSchedule::spread(start, spread, n));
            // A closed 250 ms window holding m closes would hold some i..=i+m-1 with
            // t[i+m-1] - t[i] <= 250 ms; so m+1 in a window <=> t[i+m] - t[i] <= 250 ms.
            let most = 2.max(n / 2);
            for i in 0..n.saturating_sub(most) {
                let width = times[i + most].duration_since(times[i]);
                prop_assert!(width > 250 * MS, "{} closes within {:?}", most + 1, width);
            }
        }

        #[test]
        fn rate_limit_is_never_exceeded_in_any_second(per_second in 1u32..=500, n in 0usize..3000) {
            let start = Instant::now();
            let times = all_times(&CloseSchedule::rate_limited(start, per_second, n));
            let p = per_second as usize;
            // per_second + 1 closes in some [t, t + 1s) <=> t[i + p] - t[i] < 1 s for some i.
            for i in 0..n.saturating_sub(p) {
                prop_assert!(times[i + p].duration_since(times[i]) >= Duration::from_secs(1));
            }
            // ... and the pace is not slower than asked: exactly i / per_second seconds.
            for (i, t) in times.iter().enumerate() {
                let expected = Duration::from_nanos((i as u64 * 1_000_000_000) / u64::from(per_second));
                prop_assert_eq!(t.duration_since(start), expected);
            }
        }

        #[test]
        fn due_returns_every_index_once_in_order_for_any_sequence_of_nows(
            spread in spread(),
            per_second in 0u32..=100,
            rate in any::<bool>(),
            n in 0usize..500,
            // Milliseconds relative to start, possibly before it and possibly going backwards.
            nows in proptest::collection::vec(-2_000i64..=40_000, 0..64),
        ) {
            let base = Instant::now();
            let start = base + Duration::from_secs(5);
            let mut schedule = if rate {
                CloseSchedule::rate_limited(start, per_second, n)
            } else {
                CloseSchedule::spread(start, spread, n)
            };
            let reference = schedule.clone();
            let mut expected_next = 0;
            for ms in nows {
                let now = if ms < 0 {
                    start - Duration::from_millis(ms.unsigned_abs())
                } else {
                    start + Duration::from_millis(ms.unsigned_abs())
                };
                let due = schedule.due(now);
                prop_assert_eq!(due.start, expected_next, "skipped or repeated an index");
                for i in due.clone() {
                    prop_assert!(reference.at(i).is_some_and(|t| t <= now), "{} returned early", i);
                }
                expected_next = due.end;
                // Everything due was returned: the next one is strictly later, or never.
                prop_assert!(schedule.next_due().is_none_or(|t| t > now));
                prop_assert_eq!(schedule.next_due(), reference.at(expected_next));
            }
            let far = start + Duration::from_secs(1_000_000);
            let rest = schedule.due(far);
            prop_assert_eq!(rest.start, expected_next);
            let all_due = !rate || per_second > 0;
            prop_assert_eq!(rest.end, if all_due { n } else { 0 });
            prop_assert_eq!(schedule.next_due(), None);
        }
    }
}
