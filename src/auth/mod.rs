//! [`NiftyAuth`], the handle on one grant's token manager, and its [`Builder`].

mod builder;

use std::fmt;
use std::sync::Arc;

use http::Uri;

use crate::credentials::Credentials;
use crate::error::AuthError;
use crate::manager::TokenManager;
use crate::origin::Origins;
use crate::stripe::STRIPES;
use crate::token::TokenSet;

pub use builder::{
    Builder, OneGrant, PersonalTokenBuilder, DEFAULT_API_ORIGIN, DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_MAX, DEFAULT_REFRESH_SKEW, DEFAULT_TOKEN_ATTEMPTS, DEFAULT_TOKEN_TIMEOUT,
    DEFAULT_TOKEN_URL, DEFAULT_UNAUTHORIZED_COOLDOWN,
};

/// The token manager: fetches, caches, refreshes and stores the tokens of one Nifty grant.
///
/// Cheap to clone (an `Arc`); every clone, every [`NiftyAuthLayer`](crate::NiftyAuthLayer) made from it and every request
/// share one token cache and one single-flight refresh.
///
/// ```no_run
/// # async fn run() -> Result<(), nifty_auth::AuthError> {
/// use std::time::Duration;
/// use nifty_auth::{Credentials, NiftyAuth};
/// use nifty_auth::store::FileStore;
///
/// let auth = NiftyAuth::builder(Credentials::new("client-id", "client-secret"))
///     .store(FileStore::new("nifty-tokens.json"))
///     .refresh_skew(Duration::from_secs(60))
///     .build()?;
/// let token = auth.access_token().await?; // refreshes if needed
/// # let _ = token; Ok(()) }
/// ```
#[derive(Clone)]
pub struct NiftyAuth {
    pub(crate) shared: Arc<SharedAuth>,
}

/// What every clone of a [`NiftyAuth`] shares.
pub(crate) struct SharedAuth {
    pub(crate) manager: Arc<TokenManager>,
    pub(crate) origins: Origins,
    /// Handles to `manager`, one per stripe, each with its own reference count: what a request keeps
    /// for its possible retry, so requests on different cores do not share one counter.
    pub(crate) handles: [Arc<ManagerHandle>; STRIPES],
}

/// A handle to the shared [`TokenManager`] behind a reference count of its own (see
/// `SharedAuth::handles`). Aligned to 128 bytes so two handles' reference counts never share a
/// cache line (or an adjacent-line prefetch pair).
#[repr(align(128))]
pub(crate) struct ManagerHandle(pub(crate) Arc<TokenManager>);

impl SharedAuth {
    fn new(manager: TokenManager, origins: Origins) -> Self {
        Self::with_manager(Arc::new(manager), origins)
    }

    /// A handle on an existing manager (one grant of a `NiftyGrants`).
    pub(crate) fn with_manager(manager: Arc<TokenManager>, origins: Origins) -> Self {
        SharedAuth {
            handles: std::array::from_fn(|_| Arc::new(ManagerHandle(Arc::clone(&manager)))),
            manager,
            origins,
        }
    }

    /// This thread's handle to the manager.
    #[inline]
    pub(crate) fn handle(&self) -> &Arc<ManagerHandle> {
        &self.handles[crate::stripe::index()]
    }
}

impl NiftyAuth {
    /// Nifty's token endpoint: the default [`Builder::token_url`].
    pub const DEFAULT_TOKEN_URL: &'static str = builder::DEFAULT_TOKEN_URL;
    /// The default allowed origin of [`NiftyAuth::personal_token`]: Nifty's API.
    pub const DEFAULT_API_ORIGIN: &'static str = builder::DEFAULT_API_ORIGIN;
    /// The default [`Builder::refresh_skew`]: refresh this long before the access token expires.
    pub const DEFAULT_REFRESH_SKEW: std::time::Duration = builder::DEFAULT_REFRESH_SKEW;
    /// The default [`Builder::token_timeout`] of one token call.
    pub const DEFAULT_TOKEN_TIMEOUT: std::time::Duration = builder::DEFAULT_TOKEN_TIMEOUT;
    /// The default [`Builder::token_attempts`]: calls per refresh when the endpoint fails transiently.
    pub const DEFAULT_TOKEN_ATTEMPTS: u32 = builder::DEFAULT_TOKEN_ATTEMPTS;
    /// The default first backoff delay of [`Builder::token_backoff`]; it doubles per attempt.
    pub const DEFAULT_BACKOFF_BASE: std::time::Duration = builder::DEFAULT_BACKOFF_BASE;
    /// The default longest backoff delay of [`Builder::token_backoff`].
    pub const DEFAULT_BACKOFF_MAX: std::time::Duration = builder::DEFAULT_BACKOFF_MAX;
    /// The default [`Builder::unauthorized_cooldown`]: a token rejected twice within this long of
    /// being obtained is not refreshed again because of a 401.
    pub const DEFAULT_UNAUTHORIZED_COOLDOWN: std::time::Duration =
        builder::DEFAULT_UNAUTHORIZED_COOLDOWN;
}

impl NiftyAuth {
    /// Starts configuring a token manager for the Nifty app with these client credentials.
    pub fn builder(credentials: Credentials) -> Builder {
        Builder::with_kind(credentials)
    }

    /// A `NiftyAuth` for a Nifty **personal access token** (`nft_user_…`): a long-lived bearer with no
    /// refresh and no token endpoint. The layer attaches it, scoped to the allowed origins (by default
    /// `https://openapi.niftypm.com`), and does not retry 401s (there is nothing to refresh with).
    ///
    /// ```
    /// use nifty_auth::NiftyAuth;
    ///
    /// let auth = NiftyAuth::personal_token("nft_user_abc123").build()?;
    /// assert!(!auth.can_refresh());
    /// # Ok::<(), nifty_auth::AuthError>(())
    /// ```
    pub fn personal_token(token: impl Into<String>) -> PersonalTokenBuilder {
        PersonalTokenBuilder {
            token: token.into(),
            allowed_origins: None,
        }
    }

    /// A snapshot of the counters of this handle's token manager (token calls by outcome, refreshes, coalesced waiters,
    /// 401 retries, requests). Cheap: a handful of relaxed atomic loads.
    ///
    /// For a handle from [`NiftyGrants::grant`](crate::NiftyGrants::grant), that grant's own counts
    /// of the refresh path only — token calls by outcome, refreshes, coalesced waiters, 401 retries
    /// (through any layer, middleware or handle) — with `requests_authorized` and
    /// `requests_without_retry` at 0: requests are counted in
    /// [`NiftyGrants::stats`](crate::NiftyGrants::stats)'s totals only, so a request costs no extra
    /// write. A grant's counts live in its token manager: they start again from 0 after the grant
    /// is evicted from memory or removed (the totals keep them).
    pub fn stats(&self) -> crate::stats::Stats {
        self.shared.manager.counters().snapshot()
    }

    /// Whether this handle can get new tokens (`false` for a personal access token).
    pub fn can_refresh(&self) -> bool {
        self.shared.manager.can_refresh()
    }

    /// Runs the authorization_code grant: exchanges the `code` from the authorize redirect for tokens,
    /// saves them to the store and uses them from now on (lifting any "re-authorization required"
    /// latch).
    ///
    /// `redirect_uri` must be the one the authorize step used. The call runs in its own task: if the
    /// caller is dropped, the tokens are still saved.
    ///
    /// # Errors
    /// [`AuthError::ReauthorizationRequired`] for a bad or used code; any other [`AuthError`] from the
    /// token endpoint or the store.
    pub async fn exchange_code(
        &self,
        code: impl Into<String>,
        redirect_uri: impl Into<String>,
    ) -> Result<TokenSet, AuthError> {
        let current = Arc::clone(&self.shared.manager)
            .exchange_code(code.into(), redirect_uri.into(), None)
            .await?;
        current.token_set()
    }

    /// [`exchange_code`](Self::exchange_code) for an authorization request made with PKCE
    /// (RFC 7636): also sends the request's `code_verifier`. See
    /// [`AuthorizationRequest::pkce`](crate::authorize::AuthorizationRequest::pkce), whose
    /// [`exchange`](crate::authorize::AuthorizationRequest::exchange) calls this.
    ///
    /// # Errors
    /// As [`exchange_code`](Self::exchange_code); a wrong verifier is an `invalid_grant`, so
    /// [`AuthError::ReauthorizationRequired`].
    pub async fn exchange_code_with_verifier(
        &self,
        code: impl Into<String>,
        redirect_uri: impl Into<String>,
        code_verifier: impl Into<String>,
    ) -> Result<TokenSet, AuthError> {
        let current = Arc::clone(&self.shared.manager)
            .exchange_code(code.into(), redirect_uri.into(), Some(code_verifier.into()))
            .await?;
        current.token_set()
    }

    /// A valid access token, refreshing first if the current one is expired or missing (through the
    /// same single flight as requests). Within the refresh skew it returns the current token and
    /// refreshes in the background.
    ///
    /// # Errors
    /// The refresh's [`AuthError`].
    pub async fn access_token(&self) -> Result<String, AuthError> {
        self.shared.manager.access_token().await
    }

    /// Replaces the tokens, e.g. after the user authorized the app again: saves them to the store,
    /// uses them from now on, and lifts a "re-authorization required" latch. Waits for a running
    /// refresh to finish first, so the new tokens are not overwritten by it.
    ///
    /// # Errors
    /// [`AuthError::InvalidResponse`] if the access token cannot be sent in a header or the token type
    /// is not bearer; [`AuthError::Store`] if the store cannot save (the tokens are then not used).
    pub async fn set_tokens(&self, tokens: TokenSet) -> Result<(), AuthError> {
        Arc::clone(&self.shared.manager)
            .set_tokens(tokens)
            .await
            .map(drop)
    }

    /// The token set in use now, if any (no refresh, no I/O).
    pub fn tokens(&self) -> Option<TokenSet> {
        self.shared.manager.cache.load().tokens.clone()
    }

    /// Whether the bearer token may be attached to a request for `uri` (see
    /// [`Builder::allowed_origins`]).
    pub fn is_allowed(&self, uri: &Uri) -> bool {
        self.shared.origins.allows(uri)
    }
}

impl fmt::Debug for NiftyAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.shared.manager.cache.load();
        f.debug_struct("NiftyAuth")
            .field("endpoint", &self.shared.manager.endpoint_client())
            .field("allowed_origins", &self.shared.origins)
            .field("has_token", &current.tokens.is_some())
            .field("generation", &current.generation)
            .finish_non_exhaustive()
    }
}
