//! What a backend's availability is, given everything known about it. Pure: events go in
//! (admin drain, check results, connect failures, removal), [`HealthState::availability`] comes
//! out; time is passed in.
//!
//! Precedence, strongest first:
//! 1. `Draining` by an operator (admin drain) or because the backend left the config or DNS.
//!    Sticky: no health check undoes it, only `undrain` (or re-adding it).
//! 2. `Down`: `unhealthy_after` consecutive active checks failed (no answer, refused, timeout,
//!    or a status other than 2xx and 503).
//! 3. `Ejected`: `consecutive_failures` connect failures in a row; for `ejection` * 2^(n-1),
//!    capped at `max_ejection`, for the n-th ejection in a row.
//! 4. `Draining` because the last readiness check answered 503 (a terminating pod): at the
//!    first 503, not after `unhealthy_after`. It ends after `healthy_after` good checks.
//! 5. `Joining`: added by a reload or discovery and not yet seen healthy by a check.
//! 6. `Active`.

use std::time::{Duration, Instant};

use crate::balance::Availability;
use crate::config::{HealthCheckConfig, PassiveConfig};

/// The result of one active check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CheckOutcome {
    /// 2xx.
    Healthy,
    /// 503: the backend says it is shutting down.
    NotReady,
    /// No usable answer; the text says why (for the admin API).
    Failed(String),
}

#[derive(Debug, Clone, Default)]
pub(crate) struct HealthState {
    pub(crate) admin_drained: bool,
    pub(crate) removed: bool,
    not_ready: bool,
    joining: bool,
    down: bool,
    ok_streak: u32,
    fail_streak: u32,
    passive_failures: u32,
    /// Ejections in a row without a success in between (drives the back-off).
    ejections: u32,
    ejected_until: Option<Instant>,
    pub(crate) last_check: Option<CheckOutcome>,
}

impl HealthState {
    /// A backend present at startup: active until a check says otherwise.
    pub(crate) fn active() -> Self {
        Self::default()
    }

    /// A backend added later: it waits for its first healthy check.
    pub(crate) fn joining() -> Self {
        Self { joining: true, ..Self::default() }
    }

    pub(crate) fn availability(&self, now: Instant) -> Availability {
        if self.admin_drained || self.removed {
            Availability::Draining
        } else if self.down {
            Availability::Down
        } else if self.ejected_until.is_some_and(|until| now < until) {
            Availability::Ejected
        } else if self.not_ready {
            Availability::Draining
        } else if self.joining {
            Availability::Joining
        } else {
            Availability::Active
        }
    }

    pub(crate) fn on_check(&mut self, outcome: CheckOutcome, policy: &HealthCheckConfig) {
        match &outcome {
            CheckOutcome::Healthy => {
                self.ok_streak = self.ok_streak.saturating_add(1);
                self.fail_streak = 0;
                self.joining = false;
                if self.ok_streak >= policy.healthy_after {
                    self.down = false;
                    self.not_ready = false;
                }
            }
            CheckOutcome::NotReady => {
                // An answer, so not a failure: the backend is alive and asks to be drained.
                self.ok_streak = 0;
                self.fail_streak = 0;
                self.not_ready = true;
            }
            CheckOutcome::Failed(_) => {
                self.ok_streak = 0;
                self.fail_streak = self.fail_streak.saturating_add(1);
                if self.fail_streak >= policy.unhealthy_after {
                    self.down = true;
                }
            }
        }
        self.last_check = Some(outcome);
    }

    /// A request to the backend failed: no connection, no response within
    /// `timeouts.request`, or a response that is not HTTP. Returns the end of a new ejection, if
    /// this failure started one.
    pub(crate) fn on_failure(&mut self, now: Instant, policy: &PassiveConfig) -> Option<Instant> {
        if self.ejected_until.is_some_and(|until| now < until) {
            return None;
        }
        self.passive_failures = self.passive_failures.saturating_add(1);
        if self.passive_failures < policy.consecutive_failures {
            return None;
        }
        self.passive_failures = 0;
        self.ejections = self.ejections.saturating_add(1);
        let until = now + ejection_length(self.ejections, policy);
        self.ejected_until = Some(until);
        Some(until)
    }

    /// The backend answered a request (whatever the status): it is alive. A connection alone
    /// proves nothing; a backend that accepts and never answers keeps failing.
    pub(crate) fn on_answer(&mut self, now: Instant) {
        self.passive_failures = 0;
        if self.ejected_until.is_none_or(|until| now >= until) {
            self.ejections = 0;
        }
    }

    pub(crate) fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }
}

/// `ejection * 2^(n-1)`, capped at `max_ejection`.
pub(crate) fn ejection_length(n: u32, policy: &PassiveConfig) -> Duration {
    let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
    policy.ejection.checked_mul(factor).unwrap_or(policy.max_ejection).min(policy.max_ejection)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks() -> HealthCheckConfig {
        HealthCheckConfig {
            path: "/readyz".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_after: 2,
            unhealthy_after: 3,
        }
    }

    fn passive() -> PassiveConfig {
        PassiveConfig {
            consecutive_failures: 2,
            ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(60),
        }
    }

    fn failed() -> CheckOutcome {
        CheckOutcome::Failed("connection refused".into())
    }

    #[test]
    fn a_backend_goes_down_after_unhealthy_after_failures_and_back_after_healthy_after() {
        let now = Instant::now();
        let mut h = HealthState::active();
        assert_eq!(h.availability(now), Availability::Active);
        h.on_check(failed(), &checks());
        h.on_check(failed(), &checks());
        assert_eq!(h.availability(now), Availability::Active);
        h.on_check(failed(), &checks());
        assert_eq!(h.availability(now), Availability::Down);
        h.on_check(CheckOutcome::Healthy, &checks());
        assert_eq!(h.availability(now), Availability::Down);
        h.on_check(CheckOutcome::Healthy, &checks());
        assert_eq!(h.availability(now), Availability::Active);
    }

    #[test]
    fn a_503_drains_at_once_and_recovers_after_healthy_after() {
        let now = Instant::now();
        let mut h = HealthState::active();
        h.on_check(CheckOutcome::NotReady, &checks());
        assert_eq!(h.availability(now), Availability::Draining);
        h.on_check(CheckOutcome::Healthy, &checks());
        assert_eq!(h.availability(now), Availability::Draining);
        h.on_check(CheckOutcome::Healthy, &checks());
        assert_eq!(h.availability(now), Availability::Active);
    }

    #[test]
    fn an_admin_drain_is_sticky_against_checks() {
        let now = Instant::now();
        let mut h = HealthState::active();
        h.admin_drained = true;
        for _ in 0..5 {
            h.on_check(CheckOutcome::Healthy, &checks());
        }
        assert_eq!(h.availability(now), Availability::Draining);
        h.admin_drained = false;
        assert_eq!(h.availability(now), Availability::Active);
    }

    #[test]
    fn a_removed_backend_drains_even_when_it_fails_checks() {
        let now = Instant::now();
        let mut h = HealthState::active();
        h.removed = true;
        for _ in 0..3 {
            h.on_check(failed(), &checks());
        }
        assert_eq!(h.availability(now), Availability::Draining);
    }

    #[test]
    fn a_joining_backend_needs_one_healthy_check() {
        let now = Instant::now();
        let mut h = HealthState::joining();
        assert_eq!(h.availability(now), Availability::Joining);
        h.on_check(failed(), &checks());
        assert_eq!(h.availability(now), Availability::Joining);
        h.on_check(CheckOutcome::Healthy, &checks());
        assert_eq!(h.availability(now), Availability::Active);
    }

    #[test]
    fn failures_eject_with_exponential_backoff() {
        let t0 = Instant::now();
        let mut h = HealthState::active();
        assert_eq!(h.on_failure(t0, &passive()), None);
        let until = h.on_failure(t0, &passive()).unwrap();
        assert_eq!(until, t0 + Duration::from_secs(10));
        assert_eq!(h.availability(t0), Availability::Ejected);
        // Failures while ejected do not extend it.
        assert_eq!(h.on_failure(t0 + Duration::from_secs(1), &passive()), None);
        let t1 = until;
        assert_eq!(h.availability(t1), Availability::Active);
        h.on_failure(t1, &passive());
        assert_eq!(h.on_failure(t1, &passive()), Some(t1 + Duration::from_secs(20)));
        let t2 = t1 + Duration::from_secs(20);
        h.on_failure(t2, &passive());
        assert_eq!(h.on_failure(t2, &passive()), Some(t2 + Duration::from_secs(40)));
        let t3 = t2 + Duration::from_secs(40);
        h.on_failure(t3, &passive());
        assert_eq!(h.on_failure(t3, &passive()), Some(t3 + Duration::from_secs(60)), "capped");
        // A success after the ejection ends resets the back-off.
        let t4 = t3 + Duration::from_secs(60);
        h.on_answer(t4);
        h.on_failure(t4, &passive());
        assert_eq!(h.on_failure(t4, &passive()), Some(t4 + Duration::from_secs(10)));
    }

    #[test]
    fn ejection_length_never_overflows() {
        assert_eq!(ejection_length(1, &passive()), Duration::from_secs(10));
        assert_eq!(ejection_length(64, &passive()), Duration::from_secs(60));
        assert_eq!(ejection_length(u32::MAX, &passive()), Duration::from_secs(60));
    }
}
