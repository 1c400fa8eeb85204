//! Retry delays for bootstrap dials and a rate limit for repetitive log lines.
//!
//! Small enough not to warrant a crate: the delays are pure functions of the attempt number
//! and a jitter fraction, so they are tested without a clock.

use std::time::{Duration, Instant};

/// Exponential backoff with full-range jitter on the upper half: attempt `n` (0-based) waits
/// a random time in `[d/2, d]` where `d = min(initial * 2^n, max)`.
///
/// The jitter keeps nodes that lost the same bootstrap peer at the same moment (a restart of
/// the peer) from coming back in lockstep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Cap of the delay (before jitter).
    pub max: Duration,
}

impl Default for Backoff {
    /// 1 s, doubling, capped at 30 s.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before retry `attempt` (0-based), with `jitter` in `[0, 1]` choosing where in
    /// `[d/2, d]` it falls (values outside are clamped).
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let cap = self.max.max(self.initial);
        // 2^attempt saturates long before u32 overflows; past the cap the exponent is moot.
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        let d = self.initial.saturating_mul(factor).min(cap);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            1.0
        };
        d.div_f64(2.0) + d.div_f64(2.0).mul_f64(jitter)
    }

    /// [`Backoff::delay`] with a random jitter.
    pub fn random_delay(&self, attempt: u32) -> Duration {
        // A failure to get randomness only costs the jitter.
        let r = getrandom::u32().unwrap_or(u32::MAX);
        self.delay(attempt, f64::from(r) / f64::from(u32::MAX))
    }
}

/// Lets an event through at most once per `every`, counting what it held back, so a flood
/// (an outsider hammering a private node) costs one log line per interval.
#[derive(Debug)]
pub(crate) struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub(crate) fn new(every: Duration) -> Self {
        RateLimit {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` if the event may be reported now, `n` being how many were held back since the
    /// last report; `None` if it must be dropped.
    pub(crate) fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 1.0), Duration::from_secs(1));
        assert_eq!(b.delay(1, 1.0), Duration::from_secs(2));
        assert_eq!(b.delay(4, 1.0), Duration::from_secs(16));
        assert_eq!(b.delay(5, 1.0), Duration::from_secs(30));
        assert_eq!(b.delay(1000, 1.0), Duration::from_secs(30));
        // Jitter keeps the delay within [d/2, d].
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(500));
        assert_eq!(b.delay(1000, 0.0), Duration::from_secs(15));
        assert_eq!(b.delay(3, 0.5), Duration::from_secs(6));
        assert_eq!(b.delay(3, -3.0), Duration::from_secs(4));
        assert_eq!(b.delay(3, f64::NAN), Duration::from_secs(8));
        for attempt in 0..40 {
            let d = b.random_delay(attempt);
            assert!(d <= Duration::from_secs(30), "{d:?}");
            assert!(d >= Duration::from_millis(500), "{d:?}");
        }
    }

    #[test]
    fn a_cap_below_the_initial_delay_is_the_initial_delay() {
        let b = Backoff {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(3, 1.0), Duration::from_secs(5));
    }

    #[test]
    fn rate_limit_reports_once_per_interval_with_the_count_held_back() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(60));
        assert_eq!(r.check(t0), Some(0));
        assert_eq!(r.check(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.check(t0 + Duration::from_secs(59)), None);
        assert_eq!(r.check(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(r.check(t0 + Duration::from_secs(61)), None);
    }
}
