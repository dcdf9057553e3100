//! The rescue task: a manager whose save failed keeps the lock and retries the save on its own.

use super::*;

/// The rescue task's first pause before retrying a failed save; it doubles up to
/// [`RESCUE_MAX_DELAY`] (each pause half fixed, half random).
const RESCUE_FIRST_DELAY: Duration = Duration::from_millis(100);

/// The longest pause between the rescue task's tries: a replica waiting for the kept lock gets the
/// saved tokens within about this long (plus its own lock poll) of the store accepting writes again.
const RESCUE_MAX_DELAY: Duration = Duration::from_secs(1);

/// The rescue task of a manager with unsaved tokens; marks it ended however it ends (a runtime that
/// shuts down drops it), so the next failed save starts another.
struct Rescue(Arc<TokenManager>);

impl Rescue {
    async fn run(self) {
        self.0.rescue().await;
    }
}

impl Drop for Rescue {
    fn drop(&mut self) {
        self.0.state.lock().rescuing = false;
    }
}

impl TokenManager {
    /// [`lock_store`](Self::lock_store); if it fails while tokens wait unsaved, the rescue task
    /// retries.
    pub(super) async fn lock_store_or_rescue(self: &Arc<Self>) -> Result<StoreLock, AuthError> {
        let lock = self.lock_store().await;
        if lock.is_err() {
            self.rescue_if_parked();
        }
        lock
    }

    /// Starts the rescue task if tokens wait unsaved and none runs.
    pub(super) fn rescue_if_parked(self: &Arc<Self>) {
        {
            let mut state = self.state.lock();
            if state.pending.is_none() || state.rescuing {
                return;
            }
            state.rescuing = true;
        }
        let rescue = Rescue(Arc::clone(self));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(rescue.run());
        } // else `rescue` drops here: the next attempt starts one
    }

    /// Retries the save of parked tokens on its own, with capped, jittered backoff, until they are
    /// saved (or dropped: the grant was removed), so a replica waiting for the lock kept with them
    /// gets them soon after the store accepts writes again, whether or not anyone calls this one.
    /// Each try is a flight like any refresh (single flight with this process's callers).
    pub(super) async fn rescue(self: &Arc<Self>) {
        let mut delay = RESCUE_FIRST_DELAY;
        loop {
            let half = delay / 2;
            tokio::time::sleep(half + half.mul_f64(fastrand::f64())).await;
            delay = delay.saturating_mul(2).min(RESCUE_MAX_DELAY);
            let joined = {
                let mut state = self.state.lock();
                if state.pending.is_none() {
                    // Under the same lock that parks tokens: a save failing after this starts a new
                    // rescue. (The guard's later reset may let two run at once: harmless, each try
                    // is a single flight.)
                    state.rescuing = false;
                    return;
                }
                self.join(&mut state, Want::Save)
            };
            if let Ok(joined) = joined {
                let _ = self.land(joined.launch()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
