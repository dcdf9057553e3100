//! [`GrantStore`]: token storage for many grants, one entry per [`GrantId`].

use std::sync::Arc;
use std::time::Duration;

use super::{BoxFuture, StoreLock};
use crate::grant_id::GrantId;
use crate::token::TokenSet;
use tower::BoxError;

/// Persistent storage for the token sets of many grants: what a [`NiftyGrants`](crate::NiftyGrants)
/// keeps its grants in. One entry (a file, a Redis key, a database row) per [`GrantId`].
///
/// Implemented by [`MemoryStore`](super::MemoryStore) (the default), [`FileStore`](super::FileStore)
/// (one file per grant in a directory, see [`FileStore::directory`](super::FileStore::directory)) and
/// `RedisStore` (one key and one lock per grant). The methods mirror [`TokenStore`](super::TokenStore)'s, with the grant
/// they are about; their contract is the same (see the [module docs](super)): `lock` before a refresh
/// (held until the new tokens are saved), `load` inside it, `save_locked` before the tokens are used.
/// Grant ids come from your users: escape them before they become file names, keys or SQL (use
/// parameters, never string-built SQL).
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use nifty_auth::store::{BoxFuture, GrantStore};
/// use nifty_auth::{BoxError, GrantId, TokenSet};
///
/// /// A table with a row per grant (here: a map standing in for it).
/// #[derive(Debug, Default)]
/// struct Table(Mutex<HashMap<String, String>>);
///
/// impl GrantStore for Table {
///     fn load_grant<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
///         Box::pin(async move {
///             let row = self.0.lock().unwrap().get(grant.as_str()).cloned();
///             Ok(row.map(|json| serde_json::from_str(&json)).transpose()?)
///         })
///     }
///     fn save_grant<'a>(&'a self, grant: &'a GrantId, tokens: &'a TokenSet) -> BoxFuture<'a, Result<(), BoxError>> {
///         Box::pin(async move {
///             let json = serde_json::to_string(tokens)?;
///             self.0.lock().unwrap().insert(grant.as_str().to_owned(), json);
///             Ok(())
///         })
///     }
///     fn remove_grant<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
///         Box::pin(async move {
///             self.0.lock().unwrap().remove(grant.as_str());
///             Ok(())
///         })
///     }
/// }
/// ```
pub trait GrantStore: Send + Sync + 'static {
    /// Reads `grant`'s token set; `Ok(None)` when nothing is stored for it.
    fn load_grant<'a>(
        &'a self,
        grant: &'a GrantId,
    ) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>>;

    /// Durably stores `tokens` for `grant`, replacing what was there.
    fn save_grant<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Deletes `grant`'s token set (and anything else kept for it). Deleting a grant that is not
    /// stored succeeds.
    fn remove_grant<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Takes `grant`'s refresh lock, for stores shared by several processes; see
    /// [`TokenStore::lock`](super::TokenStore::lock). The default takes no lock.
    fn lock_grant<'a>(
        &'a self,
        grant: &'a GrantId,
        max_hold: Duration,
    ) -> BoxFuture<'a, Result<StoreLock, BoxError>> {
        let _ = (grant, max_hold);
        Box::pin(async { Ok(StoreLock::none()) })
    }

    /// Saves while holding `grant`'s lock; see [`TokenStore::save_locked`](super::TokenStore::save_locked). The default calls
    /// [`save_grant`](Self::save_grant).
    fn save_grant_locked<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
        lock: &'a StoreLock,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        let _ = lock;
        self.save_grant(grant, tokens)
    }
}

impl<T: GrantStore + ?Sized> GrantStore for Arc<T> {
    fn load_grant<'a>(
        &'a self,
        grant: &'a GrantId,
    ) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
        (**self).load_grant(grant)
    }
    fn save_grant<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        (**self).save_grant(grant, tokens)
    }
    fn remove_grant<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
        (**self).remove_grant(grant)
    }
    fn lock_grant<'a>(
        &'a self,
        grant: &'a GrantId,
        max_hold: Duration,
    ) -> BoxFuture<'a, Result<StoreLock, BoxError>> {
        (**self).lock_grant(grant, max_hold)
    }
    fn save_grant_locked<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
        lock: &'a StoreLock,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        (**self).save_grant_locked(grant, tokens, lock)
    }
}
