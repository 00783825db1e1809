//! The drain schedule: when each session is closed during graceful shutdown. Pure arithmetic,
//! no clock and no sessions; `backend::run` applies it.
//!
//! Closing every WebSocket at once makes every client reconnect at once (the seeds' rolling
//! update problem); spreading the closes evenly over `--drain-spread` spreads the reconnects.

use std::time::Duration;

/// Offsets from the start of the drain at which to close `n` sessions, evenly spread over
/// `spread`: the first at 0, the last at `spread * (n - 1) / n`, so all are closed within
/// `spread` and consecutive closes are `spread / n` apart.
pub fn drain_offsets(n: usize, spread: Duration) -> Vec<Duration> {
    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
    (0..n32).map(|i| spread * i / n32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_spread_evenly_within_the_window() {
        let ms = Duration::from_millis;
        assert_eq!(drain_offsets(0, ms(500)), Vec::<Duration>::new());
        assert_eq!(drain_offsets(1, ms(500)), vec![ms(0)]);
        assert_eq!(drain_offsets(5, ms(500)), vec![ms(0), ms(100), ms(200), ms(300), ms(400)]);
        assert_eq!(drain_offsets(3, Duration::ZERO), vec![Duration::ZERO; 3]);
        let many = drain_offsets(10_000, ms(5_000));
        assert!(many.windows(2).all(|w| w[0] <= w[1]));
        assert!(*many.last().unwrap() < ms(5_000));
    }
}
