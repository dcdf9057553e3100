//! [`OneGrantStore`]: what a single-grant `NiftyAuth` keeps its tokens in.

use std::sync::Arc;
use std::time::Duration;

use super::{BoxFuture, FileStore, StoreLock, TokenStore};
use crate::grant_id::GrantId;
use crate::token::TokenSet;
use tower::BoxError;

/// What [`NiftyAuth::builder`](crate::NiftyAuth::builder)`.store(..)` takes: any [`TokenStore`]
/// (the handle uses its entry [`single_grant`](TokenStore::single_grant)), or one token file
/// ([`FileStore`]).
///
/// Sealed: implemented for every `TokenStore` and for `FileStore`, nothing else. A `FileStore` is
/// *not* a `TokenStore` (it holds one token set, not one per grant), so giving it to
/// [`NiftyGrants`](crate::NiftyGrants) does not compile:
///
/// ```compile_fail
/// use nifty_auth::{Credentials, FileStore, NiftyGrants};
///
/// let grants = NiftyGrants::builder(Credentials::new("id", "secret"))
///     .store(FileStore::new("tokens.json")) // one file cannot hold many grants
///     .build();
/// ```
///
/// ```
/// use nifty_auth::store::{DirectoryStore, MemoryStore};
/// use nifty_auth::{Credentials, FileStore, NiftyAuth, NiftyGrants};
///
/// let credentials = Credentials::new("id", "secret");
/// NiftyAuth::builder(credentials.clone()).store(FileStore::new("tokens.json"));
/// NiftyAuth::builder(credentials.clone()).store(DirectoryStore::new("grants")); // grants/default.json
/// NiftyAuth::builder(credentials.clone()).store(MemoryStore::new());
/// // Many grants take a store of many: a directory of token files.
/// NiftyGrants::builder(credentials).store(DirectoryStore::new("grants"));
/// ```
pub trait OneGrantStore: sealed::Sealed {}

pub(crate) mod sealed {
    use super::*;

    pub trait Sealed {
        /// The store and the entry in it the handle uses.
        fn into_store(self) -> (Arc<dyn TokenStore>, GrantId);
    }
}

impl<S: TokenStore> sealed::Sealed for S {
    fn into_store(self) -> (Arc<dyn TokenStore>, GrantId) {
        let grant = self.single_grant();
        (Arc::new(self), grant)
    }
}

impl<S: TokenStore> OneGrantStore for S {}

impl sealed::Sealed for FileStore {
    fn into_store(self) -> (Arc<dyn TokenStore>, GrantId) {
        (Arc::new(OneFile(self)), GrantId::single())
    }
}

impl OneGrantStore for FileStore {}

/// A token file as the store of the one grant of a `NiftyAuth`: the only grant it is ever asked
/// about is that handle's, so the id is not needed to find the file. Private: nothing else can
/// reach it with another grant.
struct OneFile(FileStore);

impl TokenStore for OneFile {
    fn load<'a>(&'a self, _: &'a GrantId) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
        Box::pin(self.0.load())
    }

    fn save<'a>(
        &'a self,
        _: &'a GrantId,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(self.0.save(tokens))
    }

    fn remove<'a>(&'a self, _: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(self.0.remove())
    }

    fn lock<'a>(
        &'a self,
        _: &'a GrantId,
        max_hold: Duration,
    ) -> BoxFuture<'a, Result<StoreLock, BoxError>> {
        Box::pin(self.0.lock(max_hold))
    }
}
