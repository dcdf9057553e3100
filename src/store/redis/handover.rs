//! A lock kept across a failed save: when the token manager releases a refresh lock right after a
//! save under it failed (Redis unreachable, a failover, replicas not acknowledging; not the fence
//! refusing it), the rotated tokens are still unsaved and the manager takes the lock again at once
//! to retry. Deleting the lock in between would let another process take it, read the older token
//! set and refresh with the refresh token those unsaved tokens replaced. So such a release does
//! not delete the lock: its lease is left to run, and the next lock attempt of this store for the
//! grant takes it back (a compare-and-`PEXPIRE` of the same owner token) with no gap. If no
//! attempt comes (the process died), the lease lapses within one lock TTL, as any holder's.

use tower::BoxError;

use super::lease::EXTEND;
use super::{millis, redis_error, Keys, RedisStore};
use crate::store::StoreLock;

impl RedisStore {
    /// Keeps the lock `key` held by `owner` for this store's next lock attempt on it.
    pub(super) fn hand_over(&self, key: String, owner: String) {
        self.inner.handover.lock().insert(key, owner);
    }

    /// Takes back a lock handed over for `keys`, if there is one and it is still ours.
    pub(super) async fn take_back(
        &self,
        keys: &Keys,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Option<StoreLock>, BoxError> {
        let Some(owner) = self.inner.handover.lock().remove(&keys.lock) else {
            return Ok(None);
        };
        let connection = self.connection().await;
        let mut connection = match connection {
            Ok(connection) => connection,
            Err(e) => {
                self.hand_over(keys.lock.clone(), owner);
                return Err(e);
            }
        };
        let extended: Result<i64, _> = EXTEND
            .key(&keys.lock)
            .arg(&owner)
            .arg(millis(self.inner.lock_ttl))
            .invoke_async(&mut connection)
            .await;
        match extended {
            Ok(1) => Ok(Some(self.hold(
                runtime,
                connection,
                owner,
                keys.lock.clone(),
            ))),
            // Lapsed, or someone else's now: an ordinary attempt.
            Ok(_) => Ok(None),
            Err(e) => {
                self.hand_over(keys.lock.clone(), owner);
                Err(redis_error("PEXPIRE (taking back the refresh lock)", e))
            }
        }
    }
}
