//! How transient token-call failures are retried inside one refresh: a bounded number of attempts,
//! exponential delays with a cap and "equal jitter", and `Retry-After` honoured up to the cap.
//! (The shape of tower's `retry/backoff.rs`.) All arithmetic saturates: any configuration, however
//! large, gives a delay and never a panic.

use std::time::Duration;

/// The exponent is capped here: `base * 2^16` is past any sensible cap already.
const MAX_DOUBLINGS: u32 = 16;

/// The retry policy of one refresh.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    /// Attempts in all (the first call included).
    pub(crate) attempts: u32,
    /// Delay before the second attempt; doubles after each failure.
    pub(crate) base: Duration,
    /// The longest delay.
    pub(crate) max: Duration,
}

impl Backoff {
    /// Whether failed attempt number `attempt` (1-based) may be followed by another.
    pub(crate) fn allows_retry_after(&self, attempt: u32) -> bool {
        attempt < self.attempts
    }

    /// How long to wait after failed attempt number `attempt` (1-based): the jittered backoff, or the
    /// endpoint's `Retry-After` if that is longer — but never longer than [`max`](Self::max).
    pub(crate) fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        self.delay_with(attempt, retry_after, fastrand::f64())
    }

    /// [`delay`](Self::delay) with the random draw `unit` (in `[0, 1)`) given.
    fn delay_with(&self, attempt: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(MAX_DOUBLINGS))
            .min(self.max);
        // "Equal jitter": half fixed, half random, so a fleet of clients does not retry in lockstep.
        let half = exp / 2;
        let jitter = Duration::try_from_secs_f64(half.as_secs_f64() * unit.clamp(0.0, 1.0))
            .unwrap_or(half)
            .min(half);
        let delay = half.saturating_add(jitter);
        match retry_after {
            Some(after) => delay.max(after.min(self.max)),
            None => delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(attempts: u32, base_ms: u64, max_ms: u64) -> Backoff {
        Backoff {
            attempts,
            base: Duration::from_millis(base_ms),
            max: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn delays_double_up_to_the_cap_with_equal_jitter() {
        let b = backoff(5, 100, 300);
        let ms = Duration::from_millis;
        assert_eq!(b.delay_with(1, None, 0.0), ms(50));
        assert_eq!(b.delay_with(2, None, 0.0), ms(100));
        assert_eq!(b.delay_with(3, None, 0.0), ms(150));
        assert_eq!(b.delay_with(4, None, 0.0), ms(150));
        assert_eq!(b.delay_with(2, None, 0.5), ms(150));
        for _ in 0..100 {
            let d1 = b.delay(1, None);
            assert!(d1 >= ms(50) && d1 <= ms(100), "{d1:?}");
            let d4 = b.delay(4, None);
            assert!(d4 >= ms(150) && d4 <= ms(300), "{d4:?}");
        }
    }

    #[test]
    fn retry_after_lengthens_the_delay_but_never_past_the_cap() {
        let b = backoff(3, 100, 1_000);
        let ms = Duration::from_millis;
        assert_eq!(b.delay_with(1, Some(ms(700)), 0.0), ms(700));
        assert_eq!(b.delay_with(1, Some(ms(10)), 0.0), ms(50));
        assert_eq!(b.delay_with(1, Some(Duration::MAX), 0.0), ms(1_000));
    }

    #[test]
    fn attempts_bound_the_retries() {
        let b = backoff(3, 1, 1);
        assert!(b.allows_retry_after(1) && b.allows_retry_after(2));
        assert!(!b.allows_retry_after(3));
        assert!(!backoff(1, 1, 1).allows_retry_after(1));
        assert!(!backoff(0, 1, 1).allows_retry_after(1));
    }

    #[test]
    fn huge_settings_saturate_instead_of_panicking() {
        let huge = Backoff {
            attempts: u32::MAX,
            base: Duration::MAX,
            max: Duration::MAX,
        };
        for attempt in [0, 1, 2, 17, 64, u32::MAX] {
            for unit in [0.0, 0.5, 0.999_999_999, 1.0, f64::NAN, -1.0] {
                let d = huge.delay_with(attempt, Some(Duration::MAX), unit);
                assert!(d >= Duration::MAX / 2, "{d:?}");
            }
            let _ = huge.delay(attempt, None);
        }
        let zero = backoff(2, 0, 0);
        assert_eq!(zero.delay_with(0, None, 0.5), Duration::ZERO);
    }
}
