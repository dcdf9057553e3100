//! The manager's view of its store: a store of its own or its grant's entry in a shared one,
//! locked with a bound, and what a lost save or a fenced refusal looks like.

use super::*;

/// Where a manager's tokens live: a store of its own (`NiftyAuth`), or its grant's entry in the
/// shared store of a `NiftyGrants` (no per-grant view object: the grant id is the manager's).
pub(crate) enum StoreRef {
    Token(Arc<dyn TokenStore>),
    Grant(Arc<dyn GrantStore>),
}

/// A grant store without a grant: a construction bug, reported rather than panicking.
fn no_grant() -> BoxError {
    "a grant store was given no grant id".into()
}

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
        match (&self.store, &self.grant) {
            (StoreRef::Grant(store), Some(grant)) => store.lock_grant(grant, max_hold).await,
            (StoreRef::Token(store), _) => store.lock(max_hold).await,
            (StoreRef::Grant(_), None) => Err(no_grant()),
        }
        .map_err(|error| match error.downcast_ref::<LockTimeout>() {
            Some(timeout) => AuthError::RefreshLockHeld {
                waited: timeout.waited(),
            },
            None => AuthError::store(error),
        })
    }

    pub(super) async fn store_load(&self) -> Result<Option<TokenSet>, BoxError> {
        match (&self.store, &self.grant) {
            (StoreRef::Grant(store), Some(grant)) => store.load_grant(grant).await,
            (StoreRef::Token(store), _) => store.load().await,
            (StoreRef::Grant(_), None) => Err(no_grant()),
        }
    }

    pub(super) async fn store_save_locked(
        &self,
        tokens: &TokenSet,
        lock: &StoreLock,
    ) -> Result<(), BoxError> {
        match (&self.store, &self.grant) {
            (StoreRef::Grant(store), Some(grant)) => {
                store.save_grant_locked(grant, tokens, lock).await
            }
            (StoreRef::Token(store), _) => store.save_locked(tokens, lock).await,
            (StoreRef::Grant(_), None) => Err(no_grant()),
        }
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
