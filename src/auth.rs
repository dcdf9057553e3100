//! [`NiftyAuth`], the token manager handle, and its [`Builder`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;

use crate::clock::Clock;
use crate::credentials::Credentials;
use crate::endpoint::{self, Backoff, Endpoint, HttpClient, Pressure};
use crate::error::AuthError;
use crate::manager::{ManagerParts, Policy, StoreRef, TokenManager, Unauthorized, Want};
use crate::origin::Origins;
use crate::stats::Counters;
use crate::store::{MemoryStore, TokenStore};
use crate::stripe::STRIPES;
use crate::token::cache::{CachePolicy, Read, TokenCache};
use crate::token::TokenSet;
use tower::BoxError;

/// Nifty's token endpoint: the default [`Builder::token_url`].
pub const DEFAULT_TOKEN_URL: &str = "https://openapi.niftypm.com/oauth/token";
/// The default [`Builder::refresh_skew`]: refresh this long before the access token expires.
pub const DEFAULT_REFRESH_SKEW: Duration = Duration::from_secs(60);
/// The default [`Builder::token_timeout`] of one token call.
pub const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// The default [`Builder::token_attempts`]: calls per refresh when the endpoint fails transiently.
pub const DEFAULT_TOKEN_ATTEMPTS: u32 = 3;
/// The default first backoff delay of [`Builder::token_backoff`]; it doubles per attempt.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(250);
/// The default longest backoff delay of [`Builder::token_backoff`].
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(4);
/// The default [`Builder::unauthorized_cooldown`]: a token rejected twice within this long of being
/// obtained is not refreshed again because of a 401.
pub const DEFAULT_UNAUTHORIZED_COOLDOWN: Duration = Duration::from_secs(30);

/// The token manager: fetches, caches, refreshes and stores the tokens of one Nifty grant.
///
/// Cheap to clone (an `Arc`); every clone, every [`NiftyAuthLayer`](crate::NiftyAuthLayer) made from it and every request
/// share one token cache and one single-flight refresh.
///
/// ```no_run
/// # async fn run() -> Result<(), nifty_auth::AuthError> {
/// use std::time::Duration;
/// use nifty_auth::{Credentials, FileStore, NiftyAuth};
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
    /// Starts configuring a token manager for the Nifty app with these client credentials.
    pub fn builder(credentials: Credentials) -> Builder {
        Builder::new(credentials)
    }

    /// A manager for a Nifty **personal access token** (`nft_user_…`): a long-lived bearer with no
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

    /// A snapshot of this manager's counters (token calls by outcome, refreshes, coalesced waiters,
    /// 401 retries, requests). Cheap: a handful of relaxed atomic loads. For a handle from
    /// [`NiftyGrants::grant`](crate::NiftyGrants::grant), the counters of all grants (the same as
    /// [`NiftyGrants::stats`](crate::NiftyGrants::stats)'s totals): counting per grant would cost
    /// every cached grant memory; the `nifty_auth.refresh` span carries the grant id instead.
    pub fn stats(&self) -> crate::stats::Stats {
        self.shared.manager.counters().snapshot()
    }

    /// Whether this manager can get new tokens (`false` for a personal access token).
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
        access_token_of(&self.shared.manager).await
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

impl NiftyAuth {
    /// The header for a request about to be sent: the cached one (starting a background refresh in
    /// the skew window), or the result of the single-flight refresh. With its generation.
    #[cfg_attr(
        not(feature = "reqwest"),
        allow(dead_code, reason = "used by the reqwest middleware")
    )]
    pub(crate) async fn header_for_request(&self) -> Result<(http::HeaderValue, u64), AuthError> {
        let manager = &self.shared.manager;
        if let Some(found) = manager.header_now() {
            return Ok(found);
        }
        let current = Arc::clone(manager).token(Want::Usable).await?;
        current.bearer()
    }

    /// What to do after a 401 for `generation`: `Ok(None)` to return the 401 as it is, or the header
    /// (and its generation) to retry with — a newer current one, or a refresh's.
    #[cfg_attr(
        not(feature = "reqwest"),
        allow(dead_code, reason = "used by the reqwest middleware")
    )]
    pub(crate) async fn header_after_unauthorized(
        &self,
        generation: u64,
    ) -> Result<Option<(http::HeaderValue, u64)>, AuthError> {
        match self.shared.manager.after_unauthorized(generation) {
            Unauthorized::Newer(header, generation) => Ok(Some((header, generation))),
            Unauthorized::Wait(token) => token.await?.bearer().map(Some),
            Unauthorized::GiveUp => Ok(None),
        }
    }
}

/// A valid access token of `manager`'s grant, refreshing first if needed.
pub(crate) async fn access_token_of(manager: &Arc<TokenManager>) -> Result<String, AuthError> {
    // One load: the token of the same publication the freshness was judged on.
    let current = manager.cache.load();
    let usable = match current.read() {
        Read::Fresh(..) => true,
        Read::Stale(..) => {
            manager.refresh_in_background();
            true
        }
        Read::Missing => false,
    };
    if let Some(token) = current.access_token().filter(|_| usable) {
        return Ok(token.to_owned());
    }
    let current = Arc::clone(manager).token(Want::Usable).await?;
    current
        .token_set()
        .map(|tokens| tokens.access_token().to_owned())
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

/// The default allowed origin of [`NiftyAuth::personal_token`]: Nifty's API.
pub const DEFAULT_API_ORIGIN: &str = "https://openapi.niftypm.com";

/// Configures a [`NiftyAuth`] for a personal access token; made by [`NiftyAuth::personal_token`].
pub struct PersonalTokenBuilder {
    token: String,
    allowed_origins: Option<Result<Origins, AuthError>>,
}

impl PersonalTokenBuilder {
    /// The origins the token may be sent to. Defaults to [`DEFAULT_API_ORIGIN`].
    pub fn allowed_origins<I, T>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.allowed_origins = Some(Origins::parse(origins));
        self
    }

    /// Builds the manager.
    ///
    /// # Errors
    /// [`AuthError::InvalidResponse`] if the token cannot be sent in a header (control characters,
    /// non-ASCII, empty); [`AuthError::Configuration`] for a malformed origin.
    pub fn build(self) -> Result<NiftyAuth, AuthError> {
        let origins = match self.allowed_origins {
            Some(origins) => origins?,
            None => Origins::parse([DEFAULT_API_ORIGIN])?,
        };
        let tokens = TokenSet::new(self.token);
        tokens.validate()?;
        let cache = TokenCache::new(CachePolicy::single(Duration::ZERO, Clock::new()));
        cache.publish(tokens.clone())?;
        let manager = TokenManager::new(ManagerParts {
            cache,
            policy: Arc::new(Policy {
                endpoint: None,
                bootstrap_refresh_token: None,
                unauthorized_cooldown: DEFAULT_UNAUTHORIZED_COOLDOWN,
                latches: None,
                counters: Counters::default(),
            }),
            store: StoreRef::Token(Arc::new(MemoryStore::with_tokens(tokens))),
            grant: None,
        });
        Ok(NiftyAuth {
            shared: Arc::new(SharedAuth::new(manager, origins)),
        })
    }
}

impl fmt::Debug for PersonalTokenBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersonalTokenBuilder")
            .field("token", &"***")
            .field("allowed_origins", &self.allowed_origins)
            .finish()
    }
}

/// Configures a [`NiftyAuth`]; made by [`NiftyAuth::builder`].
///
/// Every setting has a default (the `DEFAULT_*` constants); only the credentials are required.
pub struct Builder {
    credentials: Credentials,
    token_url: Result<Uri, String>,
    refresh_token: Option<String>,
    store: Option<Arc<dyn TokenStore>>,
    refresh_skew: Duration,
    allowed_origins: Option<Result<Origins, AuthError>>,
    http_client: Option<HttpClient>,
    token_timeout: Duration,
    token_attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    unauthorized_cooldown: Duration,
}

impl Builder {
    fn new(credentials: Credentials) -> Self {
        Builder {
            credentials,
            token_url: Ok(Uri::from_static(DEFAULT_TOKEN_URL)),
            refresh_token: None,
            store: None,
            refresh_skew: DEFAULT_REFRESH_SKEW,
            allowed_origins: None,
            http_client: None,
            token_timeout: DEFAULT_TOKEN_TIMEOUT,
            token_attempts: DEFAULT_TOKEN_ATTEMPTS,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            unauthorized_cooldown: DEFAULT_UNAUTHORIZED_COOLDOWN,
        }
    }

    /// The token endpoint (a `&str`, `String` or [`http::Uri`]). Defaults to [`DEFAULT_TOKEN_URL`].
    /// A URL that does not parse makes [`build`](Self::build) fail.
    pub fn token_url<U>(mut self, url: U) -> Self
    where
        U: TryInto<Uri>,
        U::Error: fmt::Display,
    {
        self.token_url = url.try_into().map_err(|e| e.to_string());
        self
    }

    /// A refresh token to start from (e.g. saved from an earlier run), used when the store holds no
    /// tokens: the first request refreshes with it. Defaults to none.
    pub fn refresh_token(mut self, refresh_token: impl Into<String>) -> Self {
        self.refresh_token = Some(refresh_token.into());
        self
    }

    /// Where tokens are kept: any [`TokenStore`], including `Arc<dyn TokenStore>`. Defaults to a
    /// [`MemoryStore`].
    pub fn store(mut self, store: impl TokenStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Refresh this long before the access token expires, in the background, while requests keep
    /// using the current token. Clamped to half of each token's lifetime. Defaults to
    /// [`DEFAULT_REFRESH_SKEW`].
    pub fn refresh_skew(mut self, skew: Duration) -> Self {
        self.refresh_skew = skew;
        self
    }

    /// The origins (scheme, host, port) the bearer token may be sent to, e.g.
    /// `["https://openapi.niftypm.com"]`. Requests to any other origin pass through without a token;
    /// relative URIs count as allowed. Defaults to the token URL's origin.
    pub fn allowed_origins<I, T>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.allowed_origins = Some(Origins::parse(origins));
        self
    }

    /// The HTTP client for token calls, instead of the built-in hyper-util client (rustls): any tower
    /// service taking `Request<Full<Bytes>>`, e.g. a hyper-util `Client` with your own connector, a
    /// proxy or a test double. It must not follow redirects.
    pub fn http_client<S, RB>(mut self, client: S) -> Self
    where
        S: tower_service::Service<Request<Full<Bytes>>, Response = Response<RB>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        RB: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        RB::Error: Into<BoxError>,
    {
        self.http_client = Some(endpoint::box_client(client));
        self
    }

    /// The timeout of one token call, reading the answer included. Defaults to
    /// [`DEFAULT_TOKEN_TIMEOUT`].
    pub fn token_timeout(mut self, timeout: Duration) -> Self {
        self.token_timeout = timeout;
        self
    }

    /// How many calls one refresh makes when the endpoint fails transiently (transport errors,
    /// timeouts, 5xx, 429), at least 1. Defaults to [`DEFAULT_TOKEN_ATTEMPTS`].
    pub fn token_attempts(mut self, attempts: u32) -> Self {
        self.token_attempts = attempts.max(1);
        self
    }

    /// The backoff between those calls: `base` doubled per attempt, capped at `max`, with jitter (each
    /// delay is between half and all of that). Defaults to [`DEFAULT_BACKOFF_BASE`] and
    /// [`DEFAULT_BACKOFF_MAX`].
    pub fn token_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max.max(base);
        self
    }

    /// How long a token is protected from 401-driven refreshes once it has been rejected: when a
    /// token obtained less than this long ago is answered 401 a second time (the server rejects even
    /// a fresh token: a permission problem, a proxy), the 401 is returned as it is instead of
    /// refreshing again, so such an origin cannot cause one token call per request. The first 401 for
    /// a token always refreshes. Defaults to [`DEFAULT_UNAUTHORIZED_COOLDOWN`].
    ///
    /// A 401 whose `WWW-Authenticate` says `error="insufficient_scope"` never refreshes.
    pub fn unauthorized_cooldown(mut self, cooldown: Duration) -> Self {
        self.unauthorized_cooldown = cooldown;
        self
    }

    /// Builds the token manager. No I/O happens here: tokens are loaded or fetched on first use.
    ///
    /// # Errors
    /// [`AuthError::Configuration`] for a token URL that is not an absolute http(s) URL, an https
    /// token URL without the `rustls` feature or a custom client, or a malformed allowed origin.
    pub fn build(self) -> Result<NiftyAuth, AuthError> {
        let common = self.build_common(Arc::new(Pressure::default()))?;
        let store = common
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::new()) as Arc<dyn TokenStore>);
        let manager = TokenManager::new(ManagerParts {
            cache: TokenCache::new(CachePolicy::single(common.refresh_skew, common.clock)),
            policy: Arc::new(Policy {
                endpoint: Some(common.endpoint),
                bootstrap_refresh_token: common.refresh_token,
                unauthorized_cooldown: common.unauthorized_cooldown,
                latches: None,
                counters: Counters::default(),
            }),
            store: StoreRef::Token(store),
            grant: None,
        });
        Ok(NiftyAuth {
            shared: Arc::new(SharedAuth::new(manager, common.origins)),
        })
    }

    /// Validates the settings and builds what every grant shares: the endpoint client (with
    /// `pressure`) and the allowed origins.
    pub(crate) fn build_common(self, pressure: Arc<Pressure>) -> Result<Common, AuthError> {
        let url = self
            .token_url
            .map_err(|e| AuthError::config(format!("the token URL is not a URL: {e}")))?;
        let scheme_ok = matches!(url.scheme_str(), Some("http") | Some("https"));
        if !scheme_ok || url.host().is_none_or(str::is_empty) {
            return Err(AuthError::config(format!(
                "the token URL `{url}` must be an absolute http(s) URL"
            )));
        }
        let origins = match self.allowed_origins {
            Some(origins) => origins?,
            None => Origins::of_uri(&url)?,
        };
        let client = match self.http_client {
            Some(client) => client,
            None => {
                if cfg!(not(feature = "rustls")) && url.scheme_str() == Some("https") {
                    return Err(AuthError::config(
                        "an https token URL needs the `rustls` feature or a custom http_client",
                    ));
                }
                endpoint::default_client()?
            }
        };
        let clock = Clock::new();
        let endpoint = Endpoint::new(
            url,
            self.credentials,
            client,
            self.token_timeout,
            Backoff {
                attempts: self.token_attempts,
                base: self.backoff_base,
                max: self.backoff_max,
            },
            clock,
            pressure,
        )?;
        Ok(Common {
            endpoint,
            origins,
            clock,
            refresh_skew: self.refresh_skew,
            unauthorized_cooldown: self.unauthorized_cooldown,
            refresh_token: self.refresh_token,
            store: self.store,
        })
    }
}

/// What [`Builder::build_common`] makes: the parts every grant of one client app shares.
pub(crate) struct Common {
    pub(crate) endpoint: Endpoint,
    pub(crate) origins: Origins,
    pub(crate) clock: Clock,
    pub(crate) refresh_skew: Duration,
    pub(crate) unauthorized_cooldown: Duration,
    pub(crate) refresh_token: Option<String>,
    pub(crate) store: Option<Arc<dyn TokenStore>>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("credentials", &self.credentials)
            .field("token_url", &self.token_url)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "***"))
            .field("refresh_skew", &self.refresh_skew)
            .field("token_timeout", &self.token_timeout)
            .field("token_attempts", &self.token_attempts)
            .finish_non_exhaustive()
    }
}
