use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{BoxFuture, TokenStore};
use crate::{BoxError, TokenSet};

/// Keeps the token set in memory: the default store. Tokens are lost when the process ends.
///
/// Clones share the same slot, so a clone kept aside shows what the token manager saved.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), nifty_auth::BoxError> {
/// use nifty_auth::{MemoryStore, TokenSet, TokenStore};
///
/// let store = MemoryStore::new();
/// store.save(&TokenSet::new("at").with_refresh_token("rt")).await?;
/// assert_eq!(store.get().unwrap().refresh_token(), Some("rt"));
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    slot: Arc<Mutex<Option<TokenSet>>>,
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
        }
    }

    /// What the store holds now.
    pub fn get(&self) -> Option<TokenSet> {
        self.slot.lock().clone()
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
            .finish()
    }
}
