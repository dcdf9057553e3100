//! Where tokens live between runs: the [`TokenStore`] trait, [`MemoryStore`] and [`FileStore`].
//!
//! The token manager calls the store from its refresh task (one per grant at a time), after the
//! refresh has its token-call slot:
//!
//! 1. [`lock`](TokenStore::lock) before a refresh (a no-op by default; a shared store such as
//!    `RedisStore` takes a cross-process lock here). A lock held elsewhere past the bound is a
//!    [`LockTimeout`], which callers see as
//!    [`AuthError::RefreshLockHeld`](crate::AuthError::RefreshLockHeld),
//! 2. [`load`](TokenStore::load) right after, because someone else may have refreshed already — or
//!    removed the grant: an entry gone after the manager had seen it is
//!    [`AuthError::GrantRemoved`](crate::AuthError::GrantRemoved), never refreshed nor saved back,
//! 3. [`save_locked`](TokenStore::save_locked) with the new tokens *before* any request uses them. A
//!    refresh whose save fails returns [`AuthError::Store`](crate::AuthError::Store); the new tokens
//!    stay unused in memory, with the lock still held, and a rescue task of the manager retries the
//!    save until it lands: a rotated refresh token is never lost and never used unsaved.
//!
//! `remove` (a grant store's [`remove_grant`](GrantStore::remove_grant)) runs in the caller's task,
//! under the grant's lock.
//!
//! # Writing your own store
//!
//! The trait is object-safe (`Arc<dyn TokenStore>` works), so its methods return boxed futures:
//!
//! ```
//! use nifty_auth::{BoxError, TokenSet};
//! use nifty_auth::store::TokenStore;
//! use nifty_auth::store::BoxFuture;
//!
//! /// Keeps tokens in a database table (here: a mutex standing in for it).
//! #[derive(Debug, Default)]
//! struct DbStore {
//!     row: std::sync::Mutex<Option<String>>,
//! }
//!
//! impl TokenStore for DbStore {
//!     fn load(&self) -> BoxFuture<'_, Result<Option<TokenSet>, BoxError>> {
//!         Box::pin(async move {
//!             let row = self.row.lock().unwrap().clone();
//!             Ok(match row {
//!                 Some(json) => Some(serde_json::from_str(&json)?),
//!                 None => None,
//!             })
//!         })
//!     }
//!
//!     fn save<'a>(&'a self, tokens: &'a TokenSet) -> BoxFuture<'a, Result<(), BoxError>> {
//!         Box::pin(async move {
//!             *self.row.lock().unwrap() = Some(serde_json::to_string(tokens)?);
//!             Ok(())
//!         })
//!     }
//! }
//! ```

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::token::TokenSet;
use tower::BoxError;

mod file;
mod grant;
#[cfg(any(feature = "redis", feature = "postgres"))]
mod lease;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "redis", feature = "postgres"))]
mod seal;
mod wait;

pub use file::FileStore;
pub use grant::GrantStore;
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::{
    PostgresStore, PostgresStoreBuilder, DEFAULT_POSTGRES_ACQUIRE_TIMEOUT, DEFAULT_POSTGRES_GRANT,
    DEFAULT_POSTGRES_LOCK_LEASE, DEFAULT_POSTGRES_MAX_CONNECTIONS, DEFAULT_POSTGRES_QUERY_TIMEOUT,
    DEFAULT_POSTGRES_TABLE,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{
    RedisStore, RedisStoreBuilder, DEFAULT_REDIS_COMMAND_TIMEOUT, DEFAULT_REDIS_CONNECT_TIMEOUT,
    DEFAULT_REDIS_KEY_PREFIX, DEFAULT_REDIS_LOCK_TTL, DEFAULT_REDIS_REPLICA_TIMEOUT,
    DEFAULT_REDIS_TOKEN_TTL,
};
pub use wait::{LockLost, LockTimeout};

pub use crate::future::BoxFuture;

/// Persistent storage for a [`TokenSet`].
///
/// Implemented by [`MemoryStore`] (the default) and [`FileStore`]; implement it for your own storage
/// (a database, a secrets manager). See the [module docs](self) for when each method is called and an
/// example implementation. Errors may be any error type; they reach callers as
/// [`AuthError::Store`](crate::AuthError::Store) with the error as `source()`.
pub trait TokenStore: Send + Sync + 'static {
    /// Reads the stored token set; `Ok(None)` when nothing has been stored yet.
    fn load(&self) -> BoxFuture<'_, Result<Option<TokenSet>, BoxError>>;

    /// Durably stores `tokens`, replacing what was there. Must not return before the data is safe:
    /// the new access token is used (and the old refresh token forgotten) only after this succeeds.
    fn save<'a>(&'a self, tokens: &'a TokenSet) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Takes an exclusive lock around one refresh, for stores shared by several processes.
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
    /// `RedisStore` lease whose release failed expire by themselves within their lease;
    /// [`FileStore`] releases its lock file's `flock` by closing the file, which the OS does even
    /// for a process that dies.
    ///
    /// The default takes no lock: inside one process the token manager already runs one refresh at
    /// a time.
    fn lock(&self, max_hold: Duration) -> BoxFuture<'_, Result<StoreLock, BoxError>> {
        let _ = max_hold;
        Box::pin(async { Ok(StoreLock::none()) })
    }

    /// Saves `tokens` while holding `lock` (what [`lock`](Self::lock) returned): the token manager
    /// saves only this way. A store whose lock can lapse (a TTL) should *fence* the write here: refuse
    /// it with an error if `lock` is no longer the current holder, so a holder whose lock lapsed cannot
    /// overwrite a newer token set. The refused tokens are kept by the manager, which re-reads the store
    /// on its next attempt.
    ///
    /// The default ignores the lock and calls [`save`](Self::save).
    fn save_locked<'a>(
        &'a self,
        tokens: &'a TokenSet,
        lock: &'a StoreLock,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        let _ = lock;
        self.save(tokens)
    }
}

/// `Arc<T>` and `Box<T>` of a store are that store.
macro_rules! forward_token_store {
    ($($wrapper:ident),*) => {$(
        impl<T: TokenStore + ?Sized> TokenStore for $wrapper<T> {
            fn load(&self) -> BoxFuture<'_, Result<Option<TokenSet>, BoxError>> {
                (**self).load()
            }
            fn save<'a>(&'a self, tokens: &'a TokenSet) -> BoxFuture<'a, Result<(), BoxError>> {
                (**self).save(tokens)
            }
            fn lock(&self, max_hold: Duration) -> BoxFuture<'_, Result<StoreLock, BoxError>> {
                (**self).lock(max_hold)
            }
            fn save_locked<'a>(
                &'a self,
                tokens: &'a TokenSet,
                lock: &'a StoreLock,
            ) -> BoxFuture<'a, Result<(), BoxError>> {
                (**self).save_locked(tokens, lock)
            }
        }
    )*};
}

forward_token_store!(Arc, Box);

type Release = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// A lock held around one refresh, returned by [`TokenStore::lock`].
///
/// The token manager calls [`release`](Self::release) when the refresh is over. If the lock is dropped
/// without being released (a panic), the release future is spawned on the current tokio runtime.
pub struct StoreLock {
    // In a mutex only so that `&StoreLock` is `Send` (the manager holds one across `save_locked`).
    release: parking_lot::Mutex<Option<Release>>,
    data: Option<Box<dyn Any + Send + Sync>>,
}

impl StoreLock {
    /// A lock that holds nothing (what the default [`TokenStore::lock`] returns).
    pub fn none() -> Self {
        StoreLock {
            release: parking_lot::Mutex::new(None),
            data: None,
        }
    }

    /// A lock released by running `release` (for example a compare-and-delete of a Redis key).
    pub fn new<F, Fut>(release: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        StoreLock {
            release: parking_lot::Mutex::new(Some(Box::new(move || Box::pin(release())))),
            data: None,
        }
    }

    /// Attaches data of the store's own to the lock (a fencing token, a version, a connection), for
    /// [`TokenStore::save_locked`] to read back with [`data`](Self::data).
    pub fn with_data<T: Any + Send + Sync>(mut self, data: T) -> Self {
        self.data = Some(Box::new(data));
        self
    }

    /// The data attached with [`with_data`](Self::with_data), if it is a `T`.
    pub fn data<T: Any>(&self) -> Option<&T> {
        self.data.as_deref().and_then(|d| d.downcast_ref())
    }

    /// Releases the lock.
    pub async fn release(self) {
        let release = self.release.lock().take();
        if let Some(release) = release {
            release().await;
        }
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        if let Some(release) = self.release.get_mut().take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(release());
            }
        }
    }
}

impl fmt::Debug for StoreLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreLock")
            .field("held", &self.release.lock().is_some())
            .finish()
    }
}
