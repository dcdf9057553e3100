//! The manager's view of its store: its grant's entry, locked with a bound, and what a lost save
//! or a fenced refusal looks like.

use super::*;

/// A short fingerprint of a refresh token (never 0, which means "none").
pub(super) fn fingerprint(refresh_token: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    refresh_token.hash(&mut hasher);
    hasher.finish().max(1)
}

impl TokenManager {
    /// Takes the store's refresh lock, waiting at most as long as a refresh can take.
    pub(super) async fn lock_store(&self) -> Result<StoreLock, AuthError> {
        self.lock_store_within(self.max_refresh_time()).await
    }

    /// Tries for the store's refresh lock without waiting for another holder (beyond the slack a
    /// store adds to every wait).
    pub(super) async fn try_lock_store(&self) -> Result<StoreLock, AuthError> {
        self.lock_store_within(Duration::ZERO).await
    }

    async fn lock_store_within(&self, max_hold: Duration) -> Result<StoreLock, AuthError> {
        self.store
            .lock(&self.grant, max_hold)
            .await
            .map_err(|error| match error.downcast_ref::<LockTimeout>() {
                Some(timeout) => AuthError::RefreshLockHeld {
                    waited: timeout.waited(),
                },
                None => AuthError::store(error),
            })
    }

    pub(super) async fn store_load(&self) -> Result<Option<TokenSet>, BoxError> {
        self.store.load(&self.grant).await
    }

    pub(super) async fn store_save_locked(
        &self,
        tokens: &TokenSet,
        lock: &StoreLock,
    ) -> Result<(), BoxError> {
        self.store.save_locked(&self.grant, tokens, lock).await
    }

    /// The longest one refresh can take: every attempt timing out, the longest backoff between them,
    /// and a margin for the store. What a store's refresh lock must outlast.
    fn max_refresh_time(&self) -> Duration {
        const STORE_MARGIN: Duration = Duration::from_secs(10);
        match &self.policy.endpoint {
            Some(e) => {
                let attempts = e.backoff.attempts;
                e.timeout
                    .saturating_mul(attempts)
                    .saturating_add(e.backoff.max.saturating_mul(attempts.saturating_sub(1)))
                    .saturating_add(STORE_MARGIN)
            }
            None => STORE_MARGIN,
        }
    }
}

#[cfg(test)]
mod tests;
