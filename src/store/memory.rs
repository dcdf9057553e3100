use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{BoxFuture, TokenStore};
use crate::grant_id::GrantId;
use crate::token::TokenSet;
use tower::BoxError;

/// Keeps token sets in memory, a map from [`GrantId`] to token set: the default store of
/// [`NiftyAuth`](crate::NiftyAuth) (which uses the grant [`GrantId::SINGLE`]) and of
/// [`NiftyGrants`](crate::NiftyGrants). Tokens are lost when the process ends.
///
/// Clones share the same map, so a clone kept aside shows what the token manager saved.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), nifty_auth::BoxError> {
/// use nifty_auth::store::{MemoryStore, TokenStore};
/// use nifty_auth::{GrantId, TokenSet};
///
/// let store = MemoryStore::new();
/// let grant = GrantId::new("workspace-42")?;
/// store.save(&grant, &TokenSet::new("at").with_refresh_token("rt")).await?;
/// assert_eq!(store.get_grant(&grant).unwrap().refresh_token(), Some("rt"));
/// assert!(store.get().is_none()); // the single grant's entry
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    grants: Arc<Mutex<HashMap<GrantId, TokenSet>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `tokens` for the grant [`GrantId::SINGLE`] (what a single-grant
    /// [`NiftyAuth`](crate::NiftyAuth) uses).
    pub fn with_tokens(tokens: TokenSet) -> Self {
        let store = Self::new();
        store.grants.lock().insert(GrantId::single(), tokens);
        store
    }

    /// What the store holds now for the grant [`GrantId::SINGLE`] (what a single-grant
    /// [`NiftyAuth`](crate::NiftyAuth) uses).
    pub fn get(&self) -> Option<TokenSet> {
        self.get_grant(&GrantId::single())
    }

    /// What the store holds now for `grant`.
    pub fn get_grant(&self, grant: &GrantId) -> Option<TokenSet> {
        self.grants.lock().get(grant).cloned()
    }

    /// How many grants the store holds.
    pub fn grant_count(&self) -> usize {
        self.grants.lock().len()
    }
}

impl TokenStore for MemoryStore {
    fn load<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
        let tokens = self.get_grant(grant);
        Box::pin(async move { Ok(tokens) })
    }

    fn save<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        self.grants.lock().insert(grant.clone(), tokens.clone());
        Box::pin(async { Ok(()) })
    }

    fn remove<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
        self.grants.lock().remove(grant);
        Box::pin(async { Ok(()) })
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Token sets redact their secrets in `Debug`; the count is enough here.
        f.debug_struct("MemoryStore")
            .field("grants", &self.grants.lock().len())
            .finish()
    }
}
