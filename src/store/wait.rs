//! Waiting for a refresh lock held by another process: poll with growing, jittered pauses until a
//! bound, then fail with a timeout that says who holds it. Shared by the file, Redis and PostgreSQL
//! stores.

use std::io;
use std::time::Duration;

use tokio::time::Instant;
use tower::BoxError;

/// The pauses between tries of a lock held elsewhere, and the bound on the whole wait.
pub(crate) struct LockWait {
    deadline: Option<Instant>,
    bound: Duration,
    pause: Duration,
    max_pause: Duration,
}

impl LockWait {
    /// Tries for at most `bound` (a bound past the end of time waits as long as it takes), pausing
    /// `first` after the first try and doubling up to `max_pause`.
    pub(crate) fn new(bound: Duration, first: Duration, max_pause: Duration) -> Self {
        LockWait {
            deadline: Instant::now().checked_add(bound),
            bound,
            pause: first,
            max_pause,
        }
    }

    /// Pauses before the next try (half fixed, half random, so waiters do not retry in lockstep),
    /// or — once the bound has passed — fails with [`io::ErrorKind::TimedOut`] and the message
    /// `holder` writes (given the bound waited).
    pub(crate) async fn pause(
        &mut self,
        holder: impl FnOnce(Duration) -> String,
    ) -> Result<(), BoxError> {
        let now = Instant::now();
        if self.deadline.is_some_and(|deadline| now >= deadline) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, holder(self.bound)).into());
        }
        let half = self.pause / 2;
        let pause = half + half.mul_f64(fastrand::f64());
        let left = self.deadline.map_or(pause, |deadline| deadline - now);
        tokio::time::sleep(pause.min(left)).await;
        self.pause = self.pause.saturating_mul(2).min(self.max_pause);
        Ok(())
    }
}
