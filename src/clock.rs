//! The time expiry is judged by: the monotonic clock, overruled by the wall clock when the wall clock
//! is clearly ahead.
//!
//! A monotonic clock (`Instant`) stops while a laptop or VM sleeps, so a token that expired during the
//! sleep would read as fresh after resume; the wall clock can be stepped backwards by NTP. Expiry is
//! therefore judged by the *later* of the two views: [`Clock::now`] is the anchor advanced by tokio's
//! clock, or `SystemTime::now()` when that is more than [`WALL_TOLERANCE`] later (a suspend, a wall
//! clock stepped forward). The tolerance keeps the monotonic view exact while the two agree — and
//! keeps tests that `tokio::time::pause()` and `advance()` exact: an advance moves [`Clock::now`]
//! forward by just that much, whatever the real time spent meanwhile.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// How far the wall clock must run ahead of the monotonic view to overrule it.
pub(crate) const WALL_TOLERANCE: Duration = Duration::from_secs(1);

/// About thirty years: what an instant "never" is mapped to (`Instant + Duration::MAX` panics).
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// A pair of readings of the wall clock and tokio's clock taken at the same moment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    wall: SystemTime,
    mono: Instant,
}

impl Clock {
    /// Anchors a clock now.
    pub(crate) fn new() -> Self {
        Clock {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    /// Now: the anchor advanced by tokio's clock, or the wall clock when it is more than
    /// [`WALL_TOLERANCE`] later.
    pub(crate) fn now(&self) -> SystemTime {
        let by_mono = self
            .wall
            .checked_add(self.mono.elapsed())
            .unwrap_or(self.wall);
        let wall = SystemTime::now();
        if wall > by_mono.checked_add(WALL_TOLERANCE).unwrap_or(by_mono) {
            wall
        } else {
            by_mono
        }
    }

    /// The tokio instant at which [`now`](Self::now) reaches `at` on the monotonic view.
    pub(crate) fn instant_at(&self, at: SystemTime) -> Instant {
        let after = at.duration_since(self.wall).unwrap_or(Duration::ZERO);
        instant_after(self.mono, after)
    }
}

/// `start + after`, saturating at a far-future instant instead of panicking.
pub(crate) fn instant_after(start: Instant, after: Duration) -> Instant {
    start
        .checked_add(after.min(FAR_FUTURE))
        .unwrap_or_else(|| start + Duration::from_secs(365 * 24 * 60 * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paused_advance_moves_now_forward() {
        let clock = Clock::new();
        let before = clock.now();
        tokio::time::advance(Duration::from_secs(3600)).await;
        let after = clock.now();
        assert_eq!(
            after.duration_since(before).unwrap(),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn far_instants_saturate() {
        let clock = Clock::new();
        let far = clock.instant_at(SystemTime::now() + Duration::from_secs(100 * 365 * 86_400));
        assert!(far > Instant::now() + Duration::from_secs(10 * 365 * 86_400));
        let _ = instant_after(Instant::now(), Duration::MAX);
    }
}
