//! Where tokens live between runs: the [`TokenStore`] trait and its built-in stores.
//!
//! A store keeps one token set per grant, keyed by [`GrantId`](crate::GrantId): [`MemoryStore`]
//! (the default), [`DirectoryStore`] (a file per grant), `RedisStore` (a key per grant),
//! `PostgresStore` (a row per grant). A [`NiftyGrants`](crate::NiftyGrants) uses the entry of each of its grants; a
//! single-grant [`NiftyAuth`](crate::NiftyAuth) is the same thing with a fixed id, the store's
//! [`single_grant`](TokenStore::single_grant) (`default` unless the store was built for another).
//! A single token file ([`FileStore`]) is a store of one grant only: `NiftyAuth` takes it, and
//! `NiftyGrants` does not (a compile error, not a run-time one — see [`OneGrantStore`]).
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
//! [`remove`](TokenStore::remove) (from `NiftyGrants::remove`) runs in the caller's task, under the
//! grant's lock.
//!
//! # Writing your own store
//!
//! The trait is object-safe (`Arc<dyn TokenStore>` works), so its methods return boxed futures:
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//! use nifty_auth::store::{BoxFuture, TokenStore};
//! use nifty_auth::{BoxError, GrantId, TokenSet};
//!
//! /// A table with a row per grant (here: a map standing in for it).
//! #[derive(Debug, Default)]
//! struct Table(Mutex<HashMap<String, String>>);
//!
//! impl TokenStore for Table {
//!     fn load<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
//!         Box::pin(async move {
//!             let row = self.0.lock().unwrap().get(grant.as_str()).cloned();
//!             Ok(row.map(|json| serde_json::from_str(&json)).transpose()?)
//!         })
//!     }
//!     fn save<'a>(&'a self, grant: &'a GrantId, tokens: &'a TokenSet) -> BoxFuture<'a, Result<(), BoxError>> {
//!         Box::pin(async move {
//!             let json = serde_json::to_string(tokens)?;
//!             self.0.lock().unwrap().insert(grant.as_str().to_owned(), json);
//!             Ok(())
//!         })
//!     }
//!     fn remove<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
//!         Box::pin(async move {
//!             self.0.lock().unwrap().remove(grant.as_str());
//!             Ok(())
//!         })
//!     }
//! }
//!
//! // The same store serves one grant or many.
//! let one = nifty_auth::NiftyAuth::builder(nifty_auth::Credentials::new("id", "secret"))
//!     .store(Table::default());
//! let many = nifty_auth::NiftyGrants::builder(nifty_auth::Credentials::new("id", "secret"))
//!     .store(Table::default());
//! # let _ = (one, many);
//! ```
//!
//! Grant ids come from your users: escape them before they become file names, keys or SQL (use
//! parameters, never string-built SQL).

use std::any::Any;
use std::fmt;
use std::future::Future;

mod file;
#[cfg(any(feature = "redis", feature = "postgres"))]
mod lease;
mod memory;
pub(crate) mod one;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "redis", feature = "postgres"))]
mod seal;
mod token_store;
mod wait;

pub use file::{DirectoryStore, FileStore};
pub use memory::MemoryStore;
pub use one::OneGrantStore;
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
pub use token_store::TokenStore;
pub use wait::{LockLost, LockTimeout};

pub use crate::future::BoxFuture;

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
