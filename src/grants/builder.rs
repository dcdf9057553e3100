//! The builder of a [`NiftyGrants`]: the shared [`Builder`] of kind [`ManyGrants`].

use std::fmt;
use std::sync::{Arc, Weak};

use super::registry::Registry;
use super::{
    GrantId, GrantsShared, NiftyGrants, DEFAULT_MAX_CACHED_GRANTS,
    DEFAULT_MAX_CONCURRENT_TOKEN_CALLS,
};
use crate::auth::Builder;
use crate::endpoint::Pressure;
use crate::error::AuthError;
use crate::manager::latches::{Callback, Latches};
use crate::manager::{Mirror, Policy};
use crate::stats::Counters;
use crate::store::{MemoryStore, TokenStore};
use crate::token::cache::CachePolicy;

/// Configures a [`NiftyGrants`]; made by [`NiftyGrants::builder`]. The settings shared with
/// [`NiftyAuth`](crate::NiftyAuth) ([`Builder::token_url`], [`Builder::allowed_origins`],
/// [`Builder::refresh_skew`], [`Builder::http_client`], the token call's timeout, attempts and
/// backoff, [`Builder::unauthorized_cooldown`]) are the same methods of the same [`Builder`]; the
/// methods of `impl Builder<ManyGrants>` set what only many grants have.
pub type NiftyGrantsBuilder = Builder<ManyGrants>;

/// The kind of a [`Builder`] of many grants ([`NiftyGrantsBuilder`]): the grant store, the cache
/// and token-call limits, the re-authorization callback.
pub struct ManyGrants {
    store: Option<Arc<dyn TokenStore>>,
    max_cached_grants: usize,
    max_concurrent_token_calls: usize,
    on_reauthorization_required: Option<Callback>,
}

impl Default for ManyGrants {
    fn default() -> Self {
        ManyGrants {
            store: None,
            max_cached_grants: DEFAULT_MAX_CACHED_GRANTS,
            max_concurrent_token_calls: DEFAULT_MAX_CONCURRENT_TOKEN_CALLS,
            on_reauthorization_required: None,
        }
    }
}

impl Builder<ManyGrants> {
    /// Where the grants' tokens are kept: any [`TokenStore`] (`MemoryStore`,
    /// [`DirectoryStore`](crate::store::DirectoryStore), `RedisStore`, `PostgresStore`, your own).
    /// Defaults to a [`MemoryStore`]. A single token file
    /// ([`FileStore`](crate::FileStore)) is not one: it keeps one grant.
    pub fn store(mut self, store: impl TokenStore) -> Self {
        self.kind.store = Some(Arc::new(store));
        self
    }

    /// At most this many grants' tokens in memory; idle grants beyond it are evicted (and reloaded
    /// from the store when next used). At least 1. Defaults to [`NiftyGrants::DEFAULT_MAX_CACHED_GRANTS`].
    pub fn max_cached_grants(mut self, max: usize) -> Self {
        self.kind.max_cached_grants = max.max(1);
        self
    }

    /// At most this many token calls at once across all grants; the rest queue. At least 1.
    /// Defaults to [`NiftyGrants::DEFAULT_MAX_CONCURRENT_TOKEN_CALLS`].
    pub fn max_concurrent_token_calls(mut self, max: usize) -> Self {
        self.kind.max_concurrent_token_calls = max.max(1);
        self
    }

    /// Called once when a grant needs re-authorization (its token endpoint answered
    /// `invalid_grant`, 401 or 403): e.g. mark the workspace "reconnect Nifty" in your database.
    /// Runs inside the refresh task: keep it quick and non-blocking.
    pub fn on_reauthorization_required<F>(mut self, callback: F) -> Self
    where
        F: Fn(&GrantId, &AuthError) + Send + Sync + 'static,
    {
        self.kind.on_reauthorization_required = Some(Arc::new(callback));
        self
    }

    /// Builds the grants. No I/O happens here.
    ///
    /// # Errors
    /// [`AuthError::Configuration`] for a token URL that is not an absolute http(s) URL, an https
    /// token URL without the `rustls` feature or a custom client, or a malformed allowed origin.
    pub fn build(self) -> Result<NiftyGrants, AuthError> {
        let kind = self.kind;
        let pressure = Arc::new(Pressure::limited(kind.max_concurrent_token_calls));
        let common = self.config.build(pressure)?;
        let registry = Arc::new(Registry::new(kind.max_cached_grants));
        // Weak: the registry holds the managers, which hold the policy.
        let mirror: Weak<dyn Mirror> = Arc::downgrade(&registry) as Weak<dyn Mirror>;
        Ok(NiftyGrants {
            shared: Arc::new(GrantsShared {
                origins: common.origins,
                policy: Arc::new(Policy {
                    endpoint: Some(common.endpoint),
                    bootstrap_refresh_token: None,
                    unauthorized_cooldown: common.unauthorized_cooldown,
                    latches: Some(Latches::new(kind.on_reauthorization_required)),
                    counters: Counters::default(),
                    mirror: Some(mirror),
                }),
                cache_policy: CachePolicy::grants(common.refresh_skew, common.clock),
                store: kind
                    .store
                    .unwrap_or_else(|| Arc::new(MemoryStore::new()) as Arc<dyn TokenStore>),
                registry,
            }),
        })
    }
}

impl fmt::Debug for ManyGrants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManyGrants")
            .field("store", &self.store.as_ref().map(|_| "custom"))
            .field("max_cached_grants", &self.max_cached_grants)
            .field(
                "max_concurrent_token_calls",
                &self.max_concurrent_token_calls,
            )
            .field(
                "on_reauthorization_required",
                &self.on_reauthorization_required.as_ref().map(|_| "set"),
            )
            .finish()
    }
}
