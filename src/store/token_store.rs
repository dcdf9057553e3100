//! [`TokenStore`]: token storage keyed by grant.

use std::sync::Arc;
use std::time::Duration;

use super::{BoxFuture, StoreLock};
use crate::grant_id::GrantId;
use crate::token::TokenSet;
use tower::BoxError;

/// Persistent storage for token sets, one entry (a file, a Redis key, a database row) per
/// [`GrantId`].
///
/// Implemented by [`MemoryStore`](super::MemoryStore) (the default), [`DirectoryStore`](super::DirectoryStore),
/// `RedisStore` and `PostgresStore`; implement it for your own storage (a database, a secrets
/// manager). A [`NiftyGrants`](crate::NiftyGrants) keeps every grant in one store; a single-grant
/// [`NiftyAuth`](crate::NiftyAuth) keeps its tokens in the entry [`single_grant`](Self::single_grant).
/// See the [module docs](super) for when each method is called and an example. Errors may be any
/// error type; they reach callers as [`AuthError::Store`](crate::AuthError::Store) with the error
/// as `source()`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a `TokenStore` (a store of one token set per grant)",
    note = "one token file (`FileStore`) keeps one grant: give it to `NiftyAuth`; for many grants \
            use `DirectoryStore`, `MemoryStore`, `RedisStore`, `PostgresStore` or your own store"
)]
pub trait TokenStore: Send + Sync + 'static {
    /// Reads `grant`'s token set; `Ok(None)` when nothing is stored for it.
    fn load<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>>;

    /// Durably stores `tokens` for `grant`, replacing what was there. Must not return before the
    /// data is safe: the new access token is used (and the old refresh token forgotten) only after
    /// this succeeds.
    fn save<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Deletes `grant`'s token set (and anything else kept for it). Deleting a grant that is not
    /// stored succeeds.
    fn remove<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Takes `grant`'s exclusive lock around one refresh, for stores shared by several processes.
    ///
    /// Called before [`load`](Self::load) at the start of every refresh (and before `set_tokens` /
    /// `exchange_code` save); the returned [`StoreLock`] is released after the new tokens are saved
    /// or the refresh failed — but kept, unreleased, while rotated tokens wait for a failed save to be
    /// retried, so no other process refreshes with the refresh token they replaced. `max_hold` is the
    /// longest one refresh can take (every token call attempt timing out, plus the backoff between
    /// them): it bounds how long to wait for a lock held elsewhere. A store whose lock expires should
    /// keep it alive for as long as the `StoreLock` lives (as `RedisStore` does with a watchdog) and
    /// fence writes in [`save_locked`](Self::save_locked). After the wait, the refresh re-reads the
    /// store and usually finds the other holder's tokens.
    ///
    /// A lock must never outlive its holder's intent: when releasing it fails, make sure it goes
    /// anyway, and bound every call to the backing service (a network partition must not hold a
    /// refresh until TCP gives up). The built-in stores: a `PostgresStore` lease row and a
    /// `RedisStore` lease whose release failed expire by themselves within their lease; the file
    /// stores release a lock file's `flock` by closing the file, which the OS does even for a
    /// process that dies.
    ///
    /// The default takes no lock: inside one process the token manager already runs one refresh at
    /// a time for each grant.
    fn lock<'a>(
        &'a self,
        grant: &'a GrantId,
        max_hold: Duration,
    ) -> BoxFuture<'a, Result<StoreLock, BoxError>> {
        let _ = (grant, max_hold);
        Box::pin(async { Ok(StoreLock::none()) })
    }

    /// Saves `tokens` for `grant` while holding `lock` (what [`lock`](Self::lock) returned): the
    /// token manager saves only this way. A store whose lock can lapse (a TTL) should *fence* the
    /// write here: refuse it with an error if `lock` is no longer the current holder, so a holder
    /// whose lock lapsed cannot overwrite a newer token set. The refused tokens are kept by the
    /// manager, which re-reads the store on its next attempt.
    ///
    /// The default ignores the lock and calls [`save`](Self::save).
    fn save_locked<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
        lock: &'a StoreLock,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        let _ = lock;
        self.save(grant, tokens)
    }

    /// The entry a single-grant [`NiftyAuth`](crate::NiftyAuth) given this store keeps its tokens
    /// in. The default is [`GrantId::single`] (`default`); `RedisStore` and `PostgresStore` answer
    /// the grant their builder was given, so keys and rows made before there was one trait keep
    /// being used.
    fn single_grant(&self) -> GrantId {
        GrantId::single()
    }
}

/// `Arc<T>` and `Box<T>` of a store are that store.
macro_rules! forward_token_store {
    ($($wrapper:ident),*) => {$(
        impl<T: TokenStore + ?Sized> TokenStore for $wrapper<T> {
            fn load<'a>(
                &'a self,
                grant: &'a GrantId,
            ) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
                (**self).load(grant)
            }
            fn save<'a>(
                &'a self,
                grant: &'a GrantId,
                tokens: &'a TokenSet,
            ) -> BoxFuture<'a, Result<(), BoxError>> {
                (**self).save(grant, tokens)
            }
            fn remove<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
                (**self).remove(grant)
            }
            fn lock<'a>(
                &'a self,
                grant: &'a GrantId,
                max_hold: Duration,
            ) -> BoxFuture<'a, Result<StoreLock, BoxError>> {
                (**self).lock(grant, max_hold)
            }
            fn save_locked<'a>(
                &'a self,
                grant: &'a GrantId,
                tokens: &'a TokenSet,
                lock: &'a StoreLock,
            ) -> BoxFuture<'a, Result<(), BoxError>> {
                (**self).save_locked(grant, tokens, lock)
            }
            fn single_grant(&self) -> GrantId {
                (**self).single_grant()
            }
        }
    )*};
}

forward_token_store!(Arc, Box);
