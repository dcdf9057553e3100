//! The builders: [`Builder`] for one grant ([`NiftyAuth`]) and, with the same settings, for many
//! ([`NiftyGrants`](crate::NiftyGrants)).
//!
//! The settings both share (token endpoint, allowed origins, refresh timing, retries, the HTTP client)
//! live in one [`Config`] value that every `Builder<K>` holds; their setters are written once, in
//! `impl<K> Builder<K>`. What differs between one grant and many (the store, a bootstrap refresh
//! token, cache limits) is the builder's kind `K`: [`OneGrant`] here, `ManyGrants` in the grants
//! module.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;

use super::{NiftyAuth, SharedAuth};
use crate::clock::Clock;
use crate::credentials::Credentials;
use crate::endpoint::{self, Backoff, Endpoint, HttpClient, Pressure, TokenClient};
use crate::error::AuthError;
use crate::grant_id::GrantId;
use crate::manager::{ManagerParts, Policy, TokenManager};
use crate::origin::Origins;
use crate::stats::Counters;
use crate::store::one::sealed::Sealed as _;
use crate::store::{MemoryStore, OneGrantStore, TokenStore};
use crate::token::cache::{CachePolicy, TokenCache};
use crate::token::TokenSet;

/// Nifty's token endpoint: the default [`Builder::token_url`].
#[doc(hidden)]
pub const DEFAULT_TOKEN_URL: &str = "https://openapi.niftypm.com/oauth/token";
/// The default [`Builder::refresh_skew`]: refresh this long before the access token expires.
#[doc(hidden)]
pub const DEFAULT_REFRESH_SKEW: Duration = Duration::from_secs(60);
/// The default [`Builder::token_timeout`] of one token call.
#[doc(hidden)]
pub const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// The default [`Builder::token_attempts`]: calls per refresh when the endpoint fails transiently.
#[doc(hidden)]
pub const DEFAULT_TOKEN_ATTEMPTS: u32 = 3;
/// The default first backoff delay of [`Builder::token_backoff`]; it doubles per attempt.
#[doc(hidden)]
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(250);
/// The default longest backoff delay of [`Builder::token_backoff`].
#[doc(hidden)]
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(4);
/// The default [`Builder::unauthorized_cooldown`]: a token rejected twice within this long of being
/// obtained is not refreshed again because of a 401.
#[doc(hidden)]
pub const DEFAULT_UNAUTHORIZED_COOLDOWN: Duration = Duration::from_secs(30);

/// The default allowed origin of [`NiftyAuth::personal_token`]: Nifty's API.
#[doc(hidden)]
pub const DEFAULT_API_ORIGIN: &str = "https://openapi.niftypm.com";

/// Configures a [`NiftyAuth`] for a personal access token; made by [`NiftyAuth::personal_token`].
pub struct PersonalTokenBuilder {
    pub(super) token: String,
    pub(super) allowed_origins: Option<Result<Origins, AuthError>>,
}

impl PersonalTokenBuilder {
    /// The origins the token may be sent to. Defaults to [`NiftyAuth::DEFAULT_API_ORIGIN`].
    pub fn allowed_origins<I, T>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.allowed_origins = Some(Origins::parse(origins));
        self
    }

    /// Builds the `NiftyAuth`.
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
                mirror: None,
            }),
            store: Arc::new(MemoryStore::with_tokens(tokens)),
            grant: GrantId::single(),
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

/// Configures a [`NiftyAuth`] (made by [`NiftyAuth::builder`]) or, as
/// [`NiftyGrantsBuilder`](crate::NiftyGrantsBuilder) = `Builder<ManyGrants>`, a
/// [`NiftyGrants`](crate::NiftyGrants) (made by [`NiftyGrants::builder`](crate::NiftyGrants::builder)).
///
/// Every setting has a default (the `DEFAULT_*` constants); only the credentials are required. The
/// settings both kinds share are set by the same methods (`impl<K> Builder<K>`); the rest belong to
/// the kind.
///
/// ```
/// use std::time::Duration;
/// use nifty_auth::{Credentials, NiftyAuth, NiftyGrants};
///
/// let one = NiftyAuth::builder(Credentials::new("client-id", "client-secret"))
///     .token_timeout(Duration::from_secs(10))
///     .refresh_token("saved-refresh-token")
///     .build()?;
/// let many = NiftyGrants::builder(Credentials::new("client-id", "client-secret"))
///     .token_timeout(Duration::from_secs(10))
///     .max_cached_grants(50_000)
///     .build()?;
/// # let _ = (one, many);
/// # Ok::<(), nifty_auth::AuthError>(())
/// ```
pub struct Builder<K = OneGrant> {
    pub(crate) config: Config,
    pub(crate) kind: K,
}

/// The settings every [`NiftyAuth`] and [`NiftyGrants`](crate::NiftyGrants) has: the client app's
/// credentials, the token endpoint and its HTTP client, the allowed origins, refresh timing and
/// retries. Held by a [`Builder`] of either kind and set through its methods.
pub(crate) struct Config {
    credentials: Credentials,
    token_url: Result<Uri, String>,
    refresh_skew: Duration,
    allowed_origins: Option<Result<Origins, AuthError>>,
    http_client: Option<HttpClient>,
    token_timeout: Duration,
    token_attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    unauthorized_cooldown: Duration,
}

/// The kind of a [`Builder`] of one grant ([`NiftyAuth`]): its store and bootstrap refresh token.
#[derive(Default)]
pub struct OneGrant {
    refresh_token: Option<String>,
    /// The store and the grant's entry in it.
    store: Option<(Arc<dyn TokenStore>, GrantId)>,
}

impl Config {
    fn new(credentials: Credentials) -> Self {
        Config {
            credentials,
            token_url: Ok(Uri::from_static(DEFAULT_TOKEN_URL)),
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

    /// Validates the settings and builds what every grant shares: the endpoint client (with
    /// `pressure`) and the allowed origins.
    pub(crate) fn build(self, pressure: Arc<Pressure>) -> Result<Common, AuthError> {
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
        })
    }
}

impl<K: Default> Builder<K> {
    pub(crate) fn with_kind(credentials: Credentials) -> Self {
        Builder {
            config: Config::new(credentials),
            kind: K::default(),
        }
    }
}

impl<K> Builder<K> {
    /// The token endpoint (a `&str`, `String` or [`http::Uri`]). Defaults to [`NiftyAuth::DEFAULT_TOKEN_URL`].
    /// A URL that does not parse makes `build` fail.
    pub fn token_url<U>(mut self, url: U) -> Self
    where
        U: TryInto<Uri>,
        U::Error: fmt::Display,
    {
        self.config.token_url = url.try_into().map_err(|e| e.to_string());
        self
    }

    /// Refresh this long before the access token expires, in the background, while requests keep
    /// using the current token. Clamped to half of each token's lifetime; the grants of a
    /// `NiftyGrants` spread their refresh points with jitter up to twice as early. Defaults to
    /// [`NiftyAuth::DEFAULT_REFRESH_SKEW`].
    pub fn refresh_skew(mut self, skew: Duration) -> Self {
        self.config.refresh_skew = skew;
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
        self.config.allowed_origins = Some(Origins::parse(origins));
        self
    }

    /// The HTTP client for token calls, instead of the built-in hyper-util client (rustls): any tower
    /// service taking `Request<Full<Bytes>>`, e.g. a hyper-util `Client` with your own connector, a
    /// proxy or a test double. It must not follow redirects.
    pub fn http_client(mut self, client: impl TokenClient) -> Self {
        self.config.http_client = Some(client.into_http_client());
        self
    }

    /// The timeout of one token call, reading the answer included. Defaults to
    /// [`NiftyAuth::DEFAULT_TOKEN_TIMEOUT`].
    pub fn token_timeout(mut self, timeout: Duration) -> Self {
        self.config.token_timeout = timeout;
        self
    }

    /// How many calls one refresh makes when the endpoint fails transiently (transport errors,
    /// timeouts, 5xx, 429), at least 1. Defaults to [`NiftyAuth::DEFAULT_TOKEN_ATTEMPTS`].
    pub fn token_attempts(mut self, attempts: u32) -> Self {
        self.config.token_attempts = attempts.max(1);
        self
    }

    /// The backoff between those calls: `base` doubled per attempt, capped at `max`, with jitter (each
    /// delay is between half and all of that). Defaults to [`NiftyAuth::DEFAULT_BACKOFF_BASE`] and
    /// [`NiftyAuth::DEFAULT_BACKOFF_MAX`].
    pub fn token_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.config.backoff_base = base;
        self.config.backoff_max = max.max(base);
        self
    }

    /// How long a token is protected from 401-driven refreshes once it has been rejected: when a
    /// token obtained less than this long ago is answered 401 a second time (the server rejects even
    /// a fresh token: a permission problem, a proxy), the 401 is returned as it is instead of
    /// refreshing again, so such an origin cannot cause one token call per request. The first 401 for
    /// a token always refreshes. Defaults to [`NiftyAuth::DEFAULT_UNAUTHORIZED_COOLDOWN`].
    ///
    /// A 401 whose `WWW-Authenticate` says `error="insufficient_scope"` never refreshes.
    pub fn unauthorized_cooldown(mut self, cooldown: Duration) -> Self {
        self.config.unauthorized_cooldown = cooldown;
        self
    }
}

impl Builder<OneGrant> {
    /// A refresh token to start from (e.g. saved from an earlier run), used when the store holds no
    /// tokens: the first request refreshes with it. Defaults to none.
    pub fn refresh_token(mut self, refresh_token: impl Into<String>) -> Self {
        self.kind.refresh_token = Some(refresh_token.into());
        self
    }

    /// Where tokens are kept: any [`TokenStore`] (including `Arc<dyn TokenStore>`), whose entry
    /// [`single_grant`](TokenStore::single_grant) this handle uses, or one token file
    /// ([`FileStore`](crate::FileStore)); see [`OneGrantStore`]. Defaults to a [`MemoryStore`].
    pub fn store(mut self, store: impl OneGrantStore) -> Self {
        self.kind.store = Some(store.into_store());
        self
    }

    /// Builds the token manager. No I/O happens here: tokens are loaded or fetched on first use.
    ///
    /// # Errors
    /// [`AuthError::Configuration`] for a token URL that is not an absolute http(s) URL, an https
    /// token URL without the `rustls` feature or a custom client, or a malformed allowed origin.
    pub fn build(self) -> Result<NiftyAuth, AuthError> {
        let common = self.config.build(Arc::new(Pressure::default()))?;
        let (store, grant) = self
            .kind
            .store
            .unwrap_or_else(|| MemoryStore::new().into_store());
        let manager = TokenManager::new(ManagerParts {
            cache: TokenCache::new(CachePolicy::single(common.refresh_skew, common.clock)),
            policy: Arc::new(Policy {
                endpoint: Some(common.endpoint),
                bootstrap_refresh_token: self.kind.refresh_token,
                unauthorized_cooldown: common.unauthorized_cooldown,
                latches: None,
                counters: Counters::default(),
                mirror: None,
            }),
            store,
            grant,
        });
        Ok(NiftyAuth {
            shared: Arc::new(SharedAuth::new(manager, common.origins)),
        })
    }
}

/// What [`Config::build`] makes: the parts every grant of one client app shares.
pub(crate) struct Common {
    pub(crate) endpoint: Endpoint,
    pub(crate) origins: Origins,
    pub(crate) clock: Clock,
    pub(crate) refresh_skew: Duration,
    pub(crate) unauthorized_cooldown: Duration,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("credentials", &self.credentials)
            .field("token_url", &self.token_url)
            .field("allowed_origins", &self.allowed_origins)
            .field("refresh_skew", &self.refresh_skew)
            .field("token_timeout", &self.token_timeout)
            .field("token_attempts", &self.token_attempts)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("unauthorized_cooldown", &self.unauthorized_cooldown)
            .field("http_client", &self.http_client.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl fmt::Debug for OneGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneGrant")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "***"))
            .field("store", &self.store.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl<K: fmt::Debug> fmt::Debug for Builder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("kind", &self.kind)
            .finish()
    }
}
