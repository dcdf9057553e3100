use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{BoxFuture, GrantStore, TokenStore};
use crate::grant_id::GrantId;
use crate::token::TokenSet;
use tower::BoxError;

/// Keeps token sets in memory: the default store of [`NiftyAuth`](crate::NiftyAuth) (one slot) and
/// of [`NiftyGrants`](crate::NiftyGrants) (a map from [`GrantId`] to token set, see
/// [`GrantStore`]). Tokens are lost when the process ends.
///
/// Clones share the same slot and map, so a clone kept aside shows what the token manager saved.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), nifty_auth::BoxError> {
/// use nifty_auth::TokenSet;
/// use nifty_auth::store::{MemoryStore, TokenStore};
///
/// let store = MemoryStore::new();
/// store.save(&TokenSet::new("at").with_refresh_token("rt")).await?;
/// assert_eq!(store.get().unwrap().refresh_token(), Some("rt"));
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    slot: Arc<Mutex<Option<TokenSet>>>,
    grants: Arc<Mutex<HashMap<GrantId, TokenSet>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `tokens`.
    pub fn with_tokens(tokens: TokenSet) -> Self {
        MemoryStore {
            slot: Arc::new(Mutex::new(Some(tokens))),
            grants: Arc::default(),
        }
    }

    /// What the store holds now (the single slot a [`NiftyAuth`](crate::NiftyAuth) uses).
    pub fn get(&self) -> Option<TokenSet> {
        self.slot.lock().clone()
    }

    /// What the store holds now for `grant` (as a [`GrantStore`]).
    pub fn get_grant(&self, grant: &GrantId) -> Option<TokenSet> {
        self.grants.lock().get(grant).cloned()
    }

    /// How many grants the store holds (as a [`GrantStore`]).
    pub fn grant_count(&self) -> usize {
        self.grants.lock().len()
    }
}

impl GrantStore for MemoryStore {
    fn load_grant<'a>(
        &'a self,
        grant: &'a GrantId,
    ) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
        let tokens = self.get_grant(grant);
        Box::pin(async move { Ok(tokens) })
    }

    fn save_grant<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        self.grants.lock().insert(grant.clone(), tokens.clone());
        Box::pin(async { Ok(()) })
    }

    fn remove_grant<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
        self.grants.lock().remove(grant);
        Box::pin(async { Ok(()) })
    }
}

impl TokenStore for MemoryStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<TokenSet>, BoxError>> {
        let tokens = self.get();
        Box::pin(async move { Ok(tokens) })
    }

    fn save<'a>(&'a self, tokens: &'a TokenSet) -> BoxFuture<'a, Result<(), BoxError>> {
        *self.slot.lock() = Some(tokens.clone());
        Box::pin(async { Ok(()) })
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("tokens", &*self.slot.lock())
            .field("grants", &self.grants.lock().len())
            .finish()
    }
}
