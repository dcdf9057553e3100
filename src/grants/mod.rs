//! Many grants in one process: [`NiftyGrants`] and [`GrantId`].
//!
//! A multi-tenant app (a SaaS product, an automation platform, an assistant) connects each customer's
//! Nifty workspace as its own grant. [`NiftyGrants`] serves all of them with one shared machinery:
//! one client app ([`Credentials`]), one token endpoint client with one concurrency limit and one 429
//! backoff, one store ([`TokenStore`]: a file, a Redis key, a database row per grant), and a bounded
//! cache of per-grant token managers — each the same single-grant machinery as [`NiftyAuth`]: single
//! flight, refresh ahead, retry once on 401, save-before-use rotation, a latch on `invalid_grant` that
//! affects only its grant.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;

use crate::auth::{Builder, NiftyAuth, SharedAuth};
use crate::credentials::Credentials;
use crate::error::AuthError;
use crate::manager::{ManagerParts, Policy, TokenManager};
use crate::origin::Origins;
use crate::stats::{Counters, GrantsStats};
use crate::store::TokenStore;
use crate::token::cache::{CachePolicy, Read, TokenCache};
use crate::token::TokenSet;

mod builder;
mod layer;
#[cfg(feature = "reqwest")]
mod middleware;
mod registry;

pub use crate::grant_id::{GrantId, MAX_GRANT_ID_BYTES};
use crate::manager::Latches;
pub use builder::{ManyGrants, NiftyGrantsBuilder};
pub use layer::{NiftyGrantsLayer, NiftyGrantsService};
#[cfg(feature = "reqwest")]
pub use middleware::NiftyGrantsMiddleware;
use registry::Registry;

/// The default [`NiftyGrantsBuilder::max_cached_grants`].
#[doc(hidden)]
pub const DEFAULT_MAX_CACHED_GRANTS: usize = 10_000;
/// The default [`NiftyGrantsBuilder::max_concurrent_token_calls`].
#[doc(hidden)]
pub const DEFAULT_MAX_CONCURRENT_TOKEN_CALLS: usize = 8;

/// The tokens of many grants of one Nifty app, for multi-tenant servers.
///
/// Cheap to clone (an `Arc`). Each grant — a connected workspace, keyed by a [`GrantId`] of your
/// choosing — keeps the guarantees of a single [`NiftyAuth`]: exactly one token call per grant however
/// many of its requests need a new token, refresh ahead of expiry, retry once on 401, rotated tokens
/// saved before use, and a "re-authorization required" latch that affects only that grant. On top:
///
/// - **Bounded memory**: at most [`max_cached_grants`](NiftyGrantsBuilder::max_cached_grants)
///   grants' tokens in memory; idle grants are evicted and reloaded from the store on their next
///   request. A grant whose refresh is running, whose rotated tokens wait unsaved, or that a request
///   or handle still uses is never evicted.
/// - **Bounded pressure on the token endpoint**: at most
///   [`max_concurrent_token_calls`](NiftyGrantsBuilder::max_concurrent_token_calls) token calls at
///   once across all grants; a 429 slows every grant down; refresh-ahead points are spread with
///   jitter, so grants issued together do not all refresh in the same second.
/// - **Who must reconnect**: [`reauthorization_required`](Self::reauthorization_required) and
///   [`on_reauthorization_required`](NiftyGrantsBuilder::on_reauthorization_required).
///
/// ```
/// # #[cfg(feature = "testing")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), nifty_auth::BoxError> {
/// use nifty_auth::testing::FakeNifty;
/// use nifty_auth::{GrantId, NiftyGrants};
///
/// let nifty = FakeNifty::start().await?;
/// let grants = NiftyGrants::builder(nifty.credentials())
///     .token_url(nifty.token_url().as_str())
///     .build()?;
///
/// // Once per workspace, after its admin authorized your app:
/// let acme = GrantId::new("acme")?;
/// let redirect = "https://app.example/nifty/callback";
/// grants.exchange_code(&acme, nifty.issue_code(redirect), redirect).await?;
///
/// let token = grants.access_token(&acme).await?;
/// assert!(!token.is_empty());
/// # Ok(()) }
/// # #[cfg(not(feature = "testing"))]
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct NiftyGrants {
    pub(crate) shared: Arc<GrantsShared>,
}

/// What every clone of a [`NiftyGrants`] shares.
pub(crate) struct GrantsShared {
    pub(crate) origins: Origins,
    /// The endpoint, counters, latches and 401 cooldown of every grant.
    policy: Arc<Policy>,
    /// How every grant's cache publishes tokens (skew with jitter, one header copy).
    cache_policy: Arc<CachePolicy>,
    store: Arc<dyn TokenStore>,
    registry: Arc<Registry>,
}

impl GrantsShared {
    /// The token manager of `grant`: the cached one, or a new one (no I/O: its first refresh loads
    /// the grant from the store).
    #[inline]
    pub(crate) fn manager(&self, grant: &GrantId) -> Arc<TokenManager> {
        self.registry
            .get_or_insert_with(grant, || self.new_manager(grant))
    }

    /// The request path: what `grant`'s current token gives a request (the header copy of
    /// `stripe`), from the registry's entry; a grant not cached gets a new manager.
    #[inline]
    pub(crate) fn read(&self, grant: &GrantId, stripe: usize) -> (Arc<TokenManager>, Read) {
        match self.registry.read(grant, stripe) {
            Some(hot) => hot,
            None => self.read_new(grant),
        }
    }

    #[cold]
    fn read_new(&self, grant: &GrantId) -> (Arc<TokenManager>, Read) {
        let manager = self.manager(grant);
        let read = manager.cache.read();
        (manager, read)
    }

    /// The request counters (every grant's totals).
    #[inline]
    pub(crate) fn counters(&self) -> &Counters {
        &self.policy.counters
    }

    fn new_manager(&self, grant: &GrantId) -> TokenManager {
        TokenManager::new(ManagerParts {
            cache: TokenCache::new(Arc::clone(&self.cache_policy)),
            policy: Arc::clone(&self.policy),
            store: Arc::clone(&self.store),
            grant: grant.clone(),
        })
    }

    fn latches(&self) -> &Latches {
        // Always set for grants (see `NiftyGrantsBuilder::build`).
        self.policy.latches.as_ref().expect("grants have latches")
    }
}

impl NiftyGrants {
    /// The default [`max_cached_grants`](crate::builder::NiftyGrantsBuilder::max_cached_grants).
    pub const DEFAULT_MAX_CACHED_GRANTS: usize = DEFAULT_MAX_CACHED_GRANTS;
    /// The default
    /// [`max_concurrent_token_calls`](crate::builder::NiftyGrantsBuilder::max_concurrent_token_calls).
    pub const DEFAULT_MAX_CONCURRENT_TOKEN_CALLS: usize = DEFAULT_MAX_CONCURRENT_TOKEN_CALLS;
}

impl NiftyGrants {
    /// Starts configuring the grants of the Nifty app with these client credentials.
    pub fn builder(credentials: Credentials) -> NiftyGrantsBuilder {
        Builder::with_kind(credentials)
    }

    /// Runs the authorization_code grant for `grant` (its workspace admin just authorized your app):
    /// exchanges the `code` for tokens, saves them to the store under `grant` and uses them from now
    /// on, lifting the grant's "re-authorization required" latch. Runs in its own task: if the caller
    /// is dropped, the tokens are still saved.
    ///
    /// # Errors
    /// [`AuthError::ReauthorizationRequired`] for a bad or used code; any other [`AuthError`] from the
    /// token endpoint or the store (a failed save keeps the tokens for the next attempt to save).
    pub async fn exchange_code(
        &self,
        grant: &GrantId,
        code: impl Into<String>,
        redirect_uri: impl Into<String>,
    ) -> Result<TokenSet, AuthError> {
        self.shared
            .manager(grant)
            .exchange_code(code.into(), redirect_uri.into(), None)
            .await?
            .token_set()
    }

    /// [`exchange_code`](Self::exchange_code) for an authorization request made with PKCE
    /// (RFC 7636): also sends the request's `code_verifier`. See
    /// [`AuthorizationRequest::pkce`](crate::authorize::AuthorizationRequest::pkce) and
    /// [`AuthorizationRequest::exchange_grant`](crate::authorize::AuthorizationRequest::exchange_grant).
    ///
    /// # Errors
    /// As [`exchange_code`](Self::exchange_code); a wrong verifier is an `invalid_grant`, so
    /// [`AuthError::ReauthorizationRequired`].
    pub async fn exchange_code_with_verifier(
        &self,
        grant: &GrantId,
        code: impl Into<String>,
        redirect_uri: impl Into<String>,
        code_verifier: impl Into<String>,
    ) -> Result<TokenSet, AuthError> {
        self.shared
            .manager(grant)
            .exchange_code(code.into(), redirect_uri.into(), Some(code_verifier.into()))
            .await?
            .token_set()
    }

    /// Replaces `grant`'s tokens (e.g. tokens you obtained yourself): saves them under `grant`, uses
    /// them from now on, and lifts the grant's latch.
    ///
    /// # Errors
    /// As [`NiftyAuth::set_tokens`].
    pub async fn set_tokens(&self, grant: &GrantId, tokens: TokenSet) -> Result<(), AuthError> {
        self.shared
            .manager(grant)
            .set_tokens(tokens)
            .await
            .map(drop)
    }

    /// A valid access token of `grant`, refreshing first if needed (through the grant's single
    /// flight, the shared concurrency limit and 429 backoff).
    ///
    /// # Errors
    /// The refresh's [`AuthError`]; [`AuthError::ReauthorizationRequired`] for a grant the store
    /// does not know.
    pub async fn access_token(&self, grant: &GrantId) -> Result<String, AuthError> {
        self.shared.manager(grant).access_token().await
    }

    /// Forgets `grant` and deletes it from the store: waits for its running refresh, drops its
    /// tokens from memory, deletes its entry from the store (under its lock), and lifts its latch.
    /// Requests for it fail with [`AuthError::GrantRemoved`] (whose
    /// [`is_reauthorization_required`](AuthError::is_reauthorization_required) is `true`) until it is
    /// authorized again — in this process and, once their cached token is due for a refresh, in every
    /// other process sharing the store: a refresh that finds the entry gone never refreshes nor saves
    /// it back.
    ///
    /// # Errors
    /// [`AuthError::Store`] if the store cannot delete it (the grant is forgotten in memory anyway).
    pub async fn remove(&self, grant: &GrantId) -> Result<(), AuthError> {
        let shared = &self.shared;
        let retired = shared.registry.get(grant);
        if let Some(manager) = &retired {
            Arc::clone(manager).retire().await?;
        }
        let store = Arc::clone(&shared.store);
        let id = grant.clone();
        let max_hold = shared
            .policy
            .endpoint
            .as_ref()
            .map_or(Duration::ZERO, |endpoint| endpoint.timeout)
            .saturating_add(Duration::from_secs(10));
        let result = async move {
            let lock = store.lock(&id, max_hold).await?;
            let removed = store.remove(&id).await;
            lock.release().await;
            removed
        }
        .await
        .map_err(AuthError::store);
        if let Some(manager) = &retired {
            shared.registry.remove_if(grant, manager);
        }
        shared.latches().lifted(grant);
        result
    }

    /// A single-grant handle on `grant`, sharing this machinery (cache, single flight, store, limits):
    /// its [`layer`](NiftyAuth::layer) and middleware authenticate every request as `grant`. Its
    /// [`stats`](NiftyAuth::stats) are `grant`'s own refresh-path counts (see there); the totals of
    /// every grant are in [`stats`](Self::stats).
    pub fn grant(&self, grant: &GrantId) -> NiftyAuth {
        NiftyAuth {
            shared: Arc::new(SharedAuth::with_manager(
                self.shared.manager(grant),
                self.shared.origins.clone(),
            )),
        }
    }

    /// One tower layer for every grant: each request is authenticated as the grant whose
    /// [`GrantId`] is in its extensions (`request.extensions_mut().insert(grant_id)`); a request to
    /// an allowed origin without one is not sent ([`AuthError::MissingGrant`]). See
    /// [`NiftyGrantsLayer`].
    pub fn layer(&self) -> NiftyGrantsLayer {
        NiftyGrantsLayer::new(self.clone())
    }

    /// One reqwest-middleware middleware for every grant: each request is authenticated as the
    /// grant set with `RequestBuilder::with_extension(grant_id)`. See [`NiftyGrantsMiddleware`].
    #[cfg(feature = "reqwest")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn middleware(&self) -> NiftyGrantsMiddleware {
        NiftyGrantsMiddleware::new(self.clone())
    }

    /// The grants whose token endpoint said they are dead (`invalid_grant`, 401, 403): show
    /// "reconnect Nifty" to their owners. Sorted. A grant leaves the list when it is authorized again
    /// (`exchange_code`, `set_tokens`) or removed.
    pub fn reauthorization_required(&self) -> Vec<GrantId> {
        self.shared.latches().grants()
    }

    /// How many grants' tokens are in memory now (at most
    /// [`max_cached_grants`](NiftyGrantsBuilder::max_cached_grants) while nothing pins more).
    pub fn cached_grants(&self) -> usize {
        self.shared.registry.len()
    }

    /// Counters over all grants: token calls by outcome, refreshes, 401 retries, requests; and the
    /// cache: grants cached, evicted, needing re-authorization. One grant's own counts:
    /// `grants.grant(&id).stats()`.
    pub fn stats(&self) -> GrantsStats {
        GrantsStats {
            totals: self.shared.policy.counters.snapshot(),
            cached_grants: self.shared.registry.len(),
            evictions: self.shared.registry.evictions(),
            reauthorization_required: self.shared.latches().len(),
        }
    }

    /// Whether the bearer token may be attached to a request for `uri`.
    pub fn is_allowed(&self, uri: &Uri) -> bool {
        self.shared.origins.allows(uri)
    }
}

impl fmt::Debug for NiftyGrants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NiftyGrants")
            .field("endpoint", &self.shared.policy.endpoint)
            .field("allowed_origins", &self.shared.origins)
            .field("registry", &self.shared.registry)
            .field("latches", &self.shared.policy.latches)
            .finish_non_exhaustive()
    }
}
