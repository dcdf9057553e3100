//! OAuth 2.0 bearer auth for [Nifty PM's API](https://openapi.niftypm.com) as a [tower] layer.
//!
//! [`NiftyAuthLayer`] wraps any tower HTTP client (hyper-util's `Client`, a `ServiceBuilder` stack)
//! and gives each request `Authorization: Bearer <token>`. Tokens come from Nifty's
//! `POST /oauth/token` (authorization_code and refresh_token grants) and are managed by
//! [`NiftyAuth`]:
//!
//! - **Single flight.** Any number of concurrent requests that need a new token cause one call to the
//!   token endpoint; all of them go on with its result (or all get its error).
//! - **Rotation safety.** The refresh runs in its own task, so it completes and its rotated refresh
//!   token is saved even if every waiting request was dropped. New tokens are saved to the
//!   [`TokenStore`] *before* any request uses them; a failed refresh keeps the old tokens;
//!   [`FileStore`] writes atomically with mode `0600`.
//! - **Retry once on 401.** A 401 answer triggers one refresh (shared by every request rejected with
//!   the same token) and one retry with the same method, URI, headers and body bytes.
//! - **Refresh ahead.** Within [`refresh_skew`](Builder::refresh_skew) of expiry, requests keep using
//!   the current token while one background refresh runs; an expired token is never sent.
//! - **No leaks.** Secrets never appear in `Debug`, logs or errors; the bearer header is marked
//!   sensitive and goes only to [`allowed_origins`](Builder::allowed_origins).
//! - **Typed errors.** Every bad answer from the token endpoint becomes an [`AuthError`] that says
//!   whether to re-authorize, fix the configuration or retry later.
//! - **Cheap hot path.** With a valid token cached, a request costs one lock-free load, two clock
//!   reads and the clone of a pre-built header value, and no heap allocation.
//! - **Many grants.** [`NiftyGrants`] serves every connected workspace from one layer; see below.
//!
//! # Example
//!
//! Against a fake Nifty on loopback (feature `testing`; with the real one, leave `token_url` and
//! `allowed_origins` at their defaults):
//!
//! ```
//! # #[cfg(feature = "testing")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), nifty_auth::BoxError> {
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use nifty_auth::testing::FakeNifty;
//! use nifty_auth::NiftyAuth;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let nifty = FakeNifty::start().await?;
//! let auth = NiftyAuth::builder(nifty.credentials())
//!     .token_url(nifty.token_url().as_str())
//!     .refresh_token(nifty.issue_refresh_token())
//!     .build()?;
//!
//! let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let svc = ServiceBuilder::new().layer(auth.layer()).service(client);
//!
//! let request = http::Request::get(nifty.api_url("/users/me")).body(Full::new(Bytes::new()))?;
//! let response = svc.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(nifty.token_calls(), 1);
//! # Ok(()) }
//! # #[cfg(not(feature = "testing"))]
//! # fn main() {}
//! ```
//!
//! # Features
//!
//! - `rustls` (default): HTTPS for the built-in token endpoint client (hyper-util + rustls with webpki
//!   roots; no system libraries). Without it, supply [`Builder::http_client`] for an https token URL.
//! - `tracing` (default): debug events for refreshes and 401 retries, never with a token or secret.
//! - `redis`: `RedisStore`, tokens shared by many processes with a cross-process refresh lock and
//!   optional encryption at rest.
//! - `postgres`: `PostgresStore`, a row per grant in PostgreSQL (sqlx, rustls) with a cross-process
//!   refresh lock (a lease row that survives restarts), fenced saves and optional encryption.
//! - `reqwest`: `NiftyAuthMiddleware` for reqwest-middleware, sharing the token cache with the layer.
//! - `testing`: `testing::FakeNifty`, a real loopback Nifty token endpoint and API for your tests.
//! - `metrics`: token calls, refreshes and 401 retries reported through the `metrics` facade
//!   (`metrics` module), for the exporter your program installs.
//! - `cli`: the `nifty-auth` command line (`login`, `token`, `status`, `logout`, `api`, `proxy`).
//!
//! # Many grants
//!
//! A multi-tenant app connects each customer's workspace as its own grant: [`NiftyGrants`] serves
//! them all from one layer (each request names its grant with a [`GrantId`] in its extensions), with
//! per-grant single flight, bounded memory (`max_cached_grants`), bounded pressure on the token
//! endpoint (`max_concurrent_token_calls`, a shared 429 backoff, jittered refresh points) and a list
//! of the grants that must be re-authorized. Their tokens live in a [`TokenStore`] — the same trait a
//! single-grant `NiftyAuth` uses, with a fixed grant id: `MemoryStore`, `DirectoryStore` (a file
//! per grant), `RedisStore`, `PostgresStore` or your own (a row per grant).
//!
//! # Modules
//!
//! The crate root holds what every user names: [`NiftyAuth`], [`NiftyGrants`], [`NiftyAuthLayer`],
//! [`GrantId`], [`Credentials`], [`TokenSet`], [`AuthError`] and [`BoxError`]. The rest, by topic:
//!
//! - [`builder`]: one [`Builder`] for one grant and for many, sharing every common
//!   setting; the personal-token builder.
//! - [`layer`]: the tower layer, its service and response future. [`replay`]: which request bodies
//!   are kept for the retry after a 401.
//! - [`grants`]: many grants in one process — [`NiftyGrants`], its layer and middleware.
//! - [`store`]: the [`TokenStore`] trait (one entry per grant), `MemoryStore`,
//!   `DirectoryStore`, `RedisStore` (feature `redis`), `PostgresStore` (feature `postgres`), and
//!   `FileStore`, one token file for one grant.
//! - [`authorize`]: the first authorization (authorize URL, loopback callback, PKCE).
//! - [`stats`]: counters. `middleware` (feature `reqwest`), `metrics` (feature `metrics`), `testing`
//!   (feature `testing`).
//!
//! Defaults and limits are constants on their types: [`NiftyAuth::DEFAULT_REFRESH_SKEW`],
//! [`NiftyGrants::DEFAULT_MAX_CACHED_GRANTS`], [`TokenSet::MAX_EXPIRES_IN`], [`GrantId::MAX_BYTES`],
//! [`NiftyAuthLayer::DEFAULT_MAX_REPLAY_BODY_BYTES`] and the others beside them.
//!
//! # Design notes
//!
//! The current token lives behind an [`arc_swap::ArcSwap`]: a [`NiftyAuthLayer`] request never
//! locks (a [`NiftyGrants`] request reads the same token from its grant's registry entry, under one
//! of 16 shard locks held for that read alone). A refresh is a
//! spawned task whose `Shared` handle waiters await; a [`parking_lot::Mutex`] guards each grant's
//! refresh state (the in-flight slot, the failure latch, tokens waiting for a save), and a request
//! with a fresh token never takes it. A 401 names the token *generation* it was sent with: if a
//! newer token is already current the retry just uses it, otherwise it joins (or starts) the refresh.
//! Request bodies are not buffered by the layer: any `http_body::Body` works; bodies its
//! [`ReplayPolicy`] can copy cheaply (by default `Full<Bytes>`, `Empty`, `String`, …; others with
//! [`NiftyAuthLayer::clone_body_fn`]) are kept for the retry, streaming bodies are sent once.
//! Expiry is judged on tokio's clock, overruled by the wall clock when that is clearly ahead (a
//! machine that slept), so tests can pause and advance tokio's clock.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(
    not(feature = "tracing"),
    allow(
        unused_variables,
        reason = "some values are only read by tracing events"
    )
)]

mod auth;
pub mod authorize;
mod clock;
mod credentials;
mod endpoint;
mod error;
mod future;
mod grant_id;
pub mod grants;
pub mod layer;
mod manager;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod middleware;
mod origin;
mod redact;
pub mod stats;
pub mod store;
mod stripe;
mod token;
mod trace;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use auth::NiftyAuth;
pub use credentials::Credentials;
pub use error::AuthError;
pub use grant_id::GrantId;
pub use grants::NiftyGrants;
pub use layer::NiftyAuthLayer;
pub use token::TokenSet;

/// The error type of [`NiftyAuthService`] and of the store traits' methods
/// (tower's boxed error).
pub use tower::BoxError;

/// The builders: [`Builder`] of one grant ([`NiftyAuth::builder`]) or, with the
/// same shared settings, of many ([`NiftyGrants::builder`]), and the personal-token builder.
pub mod builder {
    pub use crate::auth::{Builder, OneGrant, PersonalTokenBuilder};
    pub use crate::endpoint::TokenClient;
    pub use crate::grants::{ManyGrants, NiftyGrantsBuilder};
}

/// Request bodies and the 401 retry: what the layer may keep of a body to send it again.
pub mod replay {
    pub use crate::layer::{CloneBodyFn, CommonBodies, ReplayPolicy, ReplayableBody};
}

// The paths of 0.x, before the modules above: kept so existing code compiles, hidden from the
// docs. See CHANGELOG ("API reorganised").
#[doc(hidden)]
pub use auth::{
    Builder, OneGrant, PersonalTokenBuilder, DEFAULT_API_ORIGIN, DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_MAX, DEFAULT_REFRESH_SKEW, DEFAULT_TOKEN_ATTEMPTS, DEFAULT_TOKEN_TIMEOUT,
    DEFAULT_TOKEN_URL, DEFAULT_UNAUTHORIZED_COOLDOWN,
};
#[cfg(feature = "reqwest")]
#[doc(hidden)]
pub use grants::NiftyGrantsMiddleware;
#[doc(hidden)]
pub use grants::{
    ManyGrants, NiftyGrantsBuilder, NiftyGrantsLayer, NiftyGrantsService,
    DEFAULT_MAX_CACHED_GRANTS, DEFAULT_MAX_CONCURRENT_TOKEN_CALLS, MAX_GRANT_ID_BYTES,
};
#[doc(hidden)]
pub use layer::{
    CloneBodyFn, CommonBodies, NiftyAuthService, ReplayPolicy, ReplayableBody, ResponseFuture,
    DEFAULT_MAX_REPLAY_BODY_BYTES,
};
#[cfg(feature = "reqwest")]
#[doc(hidden)]
pub use middleware::NiftyAuthMiddleware;
#[doc(hidden)]
pub use stats::{GrantsStats, Stats};
#[cfg(feature = "postgres")]
#[doc(hidden)]
pub use store::PostgresStore;
#[cfg(feature = "redis")]
#[doc(hidden)]
pub use store::RedisStore;
#[doc(hidden)]
pub use store::{DirectoryStore, FileStore, MemoryStore, StoreLock, TokenStore};
#[doc(hidden)]
pub use token::MAX_EXPIRES_IN;
#[doc(hidden)]
pub use token::MAX_TOKEN_RESPONSE_BYTES;
