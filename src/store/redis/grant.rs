//! [`RedisStore`] as a [`TokenStore`]: one token key and one lock key per grant.

use std::future::ready;
use std::time::Duration;

use super::key::{self, Keys};
use super::RedisStore;
use crate::grant_id::GrantId;
use crate::store::{BoxFuture, StoreLock, TokenStore};
use crate::token::TokenSet;
use tower::BoxError;

impl RedisStore {
    /// The Redis key holding `grant`'s token set :
    /// `<prefix>:<client id>:<grant id>:tokens`, the client id and grant id escaped (see
    /// [Many grants](RedisStore#many-grants)).
    pub fn grant_key(&self, grant: &GrantId) -> String {
        self.grant_keys(grant).tokens
    }

    /// The Redis key of `grant`'s refresh lock :
    /// `<prefix>:<client id>:<grant id>:lock`.
    pub fn grant_lock_key(&self, grant: &GrantId) -> String {
        self.grant_keys(grant).lock
    }

    fn grant_keys(&self, grant: &GrantId) -> Keys {
        key::grant_keys(
            &self.inner.base,
            grant.as_str(),
            self.inner.target.is_cluster(),
        )
    }
}

/// One token key and one lock key per grant; see [Many grants](RedisStore#many-grants).
impl TokenStore for RedisStore {
    fn load<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
        Box::pin(async move { self.load_at(&self.grant_keys(grant)).await })
    }

    /// Writes `grant`'s token set unconditionally (no lock, no fence), with the token TTL.
    fn save<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move { self.save_at(&self.grant_keys(grant), tokens).await })
    }

    /// Deletes `grant`'s token key. Its lock key is left alone: a holder's lease lapses by itself.
    fn remove<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let keys = self.grant_keys(grant);
            self.bounded("DEL", |mut connection| async move {
                redis::cmd("DEL")
                    .arg(&keys.tokens)
                    .query_async::<()>(&mut connection)
                    .await
            })
            .await
        })
    }

    /// Takes `grant`'s refresh lock (a lease kept alive by a watchdog while the [`StoreLock`]
    /// lives). Waits at most `max_hold` + the lock TTL + one second for another holder: a live
    /// holder finishes within `max_hold`, a dead one's lease lapses within one lock TTL.
    ///
    /// `max_hold` bounds only the wait; the lease does not depend on it.
    fn lock<'a>(
        &'a self,
        grant: &'a GrantId,
        max_hold: Duration,
    ) -> BoxFuture<'a, Result<StoreLock, BoxError>> {
        Box::pin(async move { self.acquire(&self.grant_keys(grant), max_hold).await })
    }

    /// Saves `grant`'s token set only if `lock` is this store's lock *of this grant* and still
    /// holds it: a lock taken for another grant is refused before anything is sent to Redis.
    fn save_locked<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
        lock: &'a StoreLock,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        let keys = self.grant_keys(grant);
        match self.lease(lock, &keys) {
            Ok(lease) => Box::pin(async move { self.save_fenced(&keys, tokens, lease).await }),
            Err(e) => Box::pin(ready(Err(e))),
        }
    }

    /// The builder's grant name.
    fn single_grant(&self) -> GrantId {
        self.inner.single.clone()
    }
}
