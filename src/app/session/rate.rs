//! The publish rate limit of one session (`--max-publish-rate`), pure: a token bucket that
//! holds one second's worth of messages, refilled continuously. A client may burst up to the
//! rate and sustain the rate, never more. The caller passes the clock.

use std::time::Instant;

#[derive(Debug)]
pub(crate) struct RateLimit {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// A full bucket of `per_second` messages (at least one).
    pub(crate) fn new(per_second: u32, now: Instant) -> RateLimit {
        let per_second = f64::from(per_second.max(1));
        RateLimit { per_second, tokens: per_second, last: now }
    }

    /// Whether one more message may be published at `now` (taking it from the bucket if so).
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.per_second);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// How long `n` messages take at `per_second`.
    fn at_rate(n: u32, per_second: u32) -> Duration {
        Duration::from_secs_f64(f64::from(n) / f64::from(per_second))
    }

    #[test]
    fn a_burst_of_one_seconds_worth_then_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(10, t0);
        assert!((0..10).all(|_| r.allow(t0)), "a full bucket");
        assert!(!r.allow(t0), "the eleventh in the same instant");
        assert!(!r.allow(t0 + Duration::from_millis(50)));
        assert!(r.allow(t0 + at_rate(1, 10)), "one token per 100 ms");
        assert!(!r.allow(t0 + at_rate(1, 10)));
        // A sustained 10/s passes for as long as it lasts; 11/s does not.
        let mut r = RateLimit::new(10, t0);
        for i in 0..10 {
            r.allow(t0 + Duration::from_nanos(i));
        }
        let mut t = t0;
        for _ in 0..100 {
            t += at_rate(1, 10);
            assert!(r.allow(t));
        }
        let mut r = RateLimit::new(10, t0);
        let refused = (0..100).filter(|i| !r.allow(t0 + at_rate(*i, 11))).count();
        assert!(refused > 0);
    }

    #[test]
    fn an_idle_bucket_fills_only_to_the_rate_and_a_clock_step_back_is_harmless() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(3, t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| r.allow(later)).count(), 3);
        assert!(!r.allow(t0), "an earlier instant adds nothing");
        assert_eq!(RateLimit::new(0, t0).per_second, 1.0, "zero means one per second, never none");
    }
}
