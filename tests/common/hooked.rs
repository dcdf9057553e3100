//! [`Hooked`]: a real store with a fault (or a count) put in front of its saves and locks — the
//! one wrapper the tests that need a failing, panicking or counting store share, instead of each
//! writing out the whole `TokenStore` impl around its one change.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the hooks"
)]

use std::time::Duration;

use nifty_auth::store::BoxFuture;
use nifty_auth::{BoxError, GrantId, StoreLock, TokenSet, TokenStore};

/// What a [`Hooked`] store does before it hands a call to the store inside.
pub trait Hook: Send + Sync + 'static {
    /// Before every save, plain or locked: an `Err` fails that save, and nothing is stored.
    fn save(&self) -> Result<(), BoxError> {
        Ok(())
    }

    /// Before every lock: an `Err` fails it, `Some` is the lock handed out instead of the inner
    /// store's, `None` takes the inner store's.
    fn lock(&self) -> Result<Option<StoreLock>, BoxError> {
        Ok(None)
    }
}

/// `inner` with `hook` in front of its saves and locks; loads and removes go straight through.
/// Clones share whatever `inner` and `hook` share.
#[derive(Clone, Debug, Default)]
pub struct Hooked<S, H> {
    pub inner: S,
    pub hook: H,
}

impl<S, H> Hooked<S, H> {
    pub fn new(inner: S, hook: H) -> Self {
        Hooked { inner, hook }
    }
}

fn failed<'a, T: Send + 'a>(error: BoxError) -> BoxFuture<'a, Result<T, BoxError>> {
    Box::pin(async move { Err(error) })
}

impl<S: TokenStore, H: Hook> TokenStore for Hooked<S, H> {
    fn load<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
        self.inner.load(grant)
    }

    fn save<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        match self.hook.save() {
            Ok(()) => self.inner.save(grant, tokens),
            Err(error) => failed(error),
        }
    }

    fn remove<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
        self.inner.remove(grant)
    }

    fn lock<'a>(
        &'a self,
        grant: &'a GrantId,
        max_hold: Duration,
    ) -> BoxFuture<'a, Result<StoreLock, BoxError>> {
        match self.hook.lock() {
            Ok(None) => self.inner.lock(grant, max_hold),
            Ok(Some(lock)) => Box::pin(async move { Ok(lock) }),
            Err(error) => failed(error),
        }
    }

    fn save_locked<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
        lock: &'a StoreLock,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        match self.hook.save() {
            Ok(()) => self.inner.save_locked(grant, tokens, lock),
            Err(error) => failed(error),
        }
    }

    fn single_grant(&self) -> GrantId {
        self.inner.single_grant()
    }
}
