//! Waiting for a refresh lock held by another process: poll with growing, jittered pauses until a
//! bound, then fail with a timeout that says who holds it. Shared by the file, Redis and PostgreSQL
//! stores.

use std::time::Duration;
use std::{error, fmt};

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
    /// or — once the bound has passed — fails with a [`LockTimeout`] carrying the message `holder`
    /// writes (given the bound waited).
    pub(crate) async fn pause(
        &mut self,
        holder: impl FnOnce(Duration) -> String,
    ) -> Result<(), BoxError> {
        let now = Instant::now();
        if self.deadline.is_some_and(|deadline| now >= deadline) {
            return Err(LockTimeout {
                waited: self.bound,
                holder: holder(self.bound),
            }
            .into());
        }
        let half = self.pause / 2;
        let pause = half + half.mul_f64(fastrand::f64());
        let left = self.deadline.map_or(pause, |deadline| deadline - now);
        tokio::time::sleep(pause.min(left)).await;
        self.pause = self.pause.saturating_mul(2).min(self.max_pause);
        Ok(())
    }
}

/// A store's refresh lock was held by someone else for longer than the caller's bound.
///
/// What a store's [`lock`](super::TokenStore::lock) returns (boxed) when it gave up waiting; the
/// token manager turns it into [`AuthError::RefreshLockHeld`](crate::AuthError::RefreshLockHeld).
/// Return it from your own store's lock for the same treatment.
#[derive(Debug, Clone)]
pub struct LockTimeout {
    waited: Duration,
    holder: String,
}

impl LockTimeout {
    /// A wait of `waited` that ended with the lock still held; `holder` says who holds it (no secret).
    pub fn new(waited: Duration, holder: impl Into<String>) -> Self {
        LockTimeout {
            waited,
            holder: holder.into(),
        }
    }

    /// How long the caller waited.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl fmt::Display for LockTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.holder)
    }
}

impl error::Error for LockTimeout {}

/// A save refused because the lock it was made under no longer protects it: a fenced store's
/// [`save_locked`](super::TokenStore::save_locked) found the lease lapsed, another holder, or the
/// entry changed since the lock was taken.
///
/// Return it (boxed) from your own store's fenced save: the token manager then gives that lock up
/// and saves its tokens under a new one. Any other save error keeps the lock held (the store may just
/// be failing), so no other process refreshes with the refresh token the unsaved tokens replaced.
#[derive(Debug, Clone)]
pub struct LockLost {
    reason: String,
}

impl LockLost {
    /// A refusal saying why (no secret).
    pub fn new(reason: impl Into<String>) -> Self {
        LockLost {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for LockLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl error::Error for LockLost {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_errors_say_why_and_how_long() {
        let timeout = LockTimeout::new(
            Duration::from_millis(1_500),
            "another process holds the lock",
        );
        assert_eq!(timeout.waited(), Duration::from_millis(1_500));
        assert_eq!(timeout.to_string(), "another process holds the lock");
        assert_eq!(
            LockLost::new("the lease lapsed").to_string(),
            "the lease lapsed"
        );
    }
}
