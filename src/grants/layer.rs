//! [`NiftyGrantsLayer`]: one tower layer for every grant of a [`NiftyGrants`].
//!
//! The same service as [`NiftyAuthService`](crate::NiftyAuthService) (the same response future, 401
//! retry and body replay); only the way it finds the token manager differs: by the request's
//! [`GrantId`] extension, in the grants registry.

use std::fmt;

use tower_layer::Layer;

use super::{GrantId, NiftyGrants};
use crate::error::AuthError;
use crate::layer::{authenticating_service, wants_token, Core, Manager, Settings};
use crate::layer::{CloneBodyFn, CommonBodies};
use crate::stripe;
use crate::token::cache::Read;

/// A tower [`Layer`] that authenticates each request to Nifty as the grant named by its [`GrantId`]
/// extension. Made by [`NiftyGrants::layer`].
///
/// For each request:
/// - to an origin that is not allowed, or with an `Authorization` header of its own: sent untouched;
/// - without a [`GrantId`] in its extensions: **not sent**; the service fails with
///   [`AuthError::MissingGrant`];
/// - otherwise: exactly what [`NiftyAuthLayer`](crate::NiftyAuthLayer) does for that grant's tokens
///   (the cached header, or a wait for the grant's single-flight refresh; one retry after a 401).
///
/// ```no_run
/// # async fn run(grants: nifty_auth::NiftyGrants) -> Result<(), nifty_auth::BoxError> {
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use nifty_auth::GrantId;
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
/// let mut svc = ServiceBuilder::new().layer(grants.layer()).service(client);
///
/// let mut request = http::Request::get("https://openapi.niftypm.com/api/v1.0/projects")
///     .body(Full::new(Bytes::new()))?;
/// request.extensions_mut().insert(GrantId::new("workspace-42")?);
/// let response = svc.ready().await?.call(request).await?;
/// # let _ = response; Ok(()) }
/// ```
#[derive(Clone)]
pub struct NiftyGrantsLayer<P = CommonBodies> {
    grants: NiftyGrants,
    settings: Settings<P>,
}

impl NiftyGrantsLayer {
    /// A layer for every grant of `grants`; the same as [`NiftyGrants::layer`].
    pub fn new(grants: NiftyGrants) -> Self {
        NiftyGrantsLayer {
            grants,
            settings: Settings::new(true),
        }
    }

    /// As [`NiftyAuthLayer::max_replay_body_bytes`](crate::NiftyAuthLayer::max_replay_body_bytes).
    /// Defaults to [`DEFAULT_MAX_REPLAY_BODY_BYTES`](crate::DEFAULT_MAX_REPLAY_BODY_BYTES) (64 KiB).
    pub fn max_replay_body_bytes(self, max: usize) -> Self {
        self.replay_policy(CommonBodies::new(max))
    }
}

impl<P> NiftyGrantsLayer<P> {
    /// Whether a 401 is retried once with a fresh token of the same grant. Defaults to `true`.
    pub fn retry_on_unauthorized(self, retry: bool) -> Self {
        let settings = Settings {
            retry_on_unauthorized: retry,
            ..self.settings
        };
        NiftyGrantsLayer { settings, ..self }
    }

    /// As [`NiftyAuthLayer::clone_body_fn`](crate::NiftyAuthLayer::clone_body_fn): `clone_body`
    /// decides which bodies are kept for the retry after a 401.
    pub fn clone_body_fn<F, B>(self, clone_body: F) -> NiftyGrantsLayer<CloneBodyFn<F>>
    where
        F: Fn(&B) -> Option<B> + Clone,
    {
        self.replay_policy(CloneBodyFn(clone_body))
    }

    /// Replaces the replay policy with `policy` (see [`ReplayPolicy`](crate::ReplayPolicy)).
    pub fn replay_policy<Q>(self, policy: Q) -> NiftyGrantsLayer<Q> {
        let settings = self.settings.with_policy(policy);
        NiftyGrantsLayer {
            grants: self.grants,
            settings,
        }
    }
}

impl<S, P: Clone> Layer<S> for NiftyGrantsLayer<P> {
    type Service = NiftyGrantsService<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        NiftyGrantsService {
            core: self.settings.core(inner),
            grants: self.grants.clone(),
        }
    }
}

impl<P: fmt::Debug> fmt::Debug for NiftyGrantsLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NiftyGrantsLayer")
            .field("grants", &self.grants)
            .field("settings", &self.settings)
            .finish()
    }
}

/// The service made by [`NiftyGrantsLayer`]; see there for what it does to each request.
///
/// Errors are [`BoxError`](crate::BoxError)s: the inner service's errors as they are, token failures (and
/// [`AuthError::MissingGrant`]) as an [`AuthError`] (`err.downcast_ref::<AuthError>()`).
#[derive(Clone)]
pub struct NiftyGrantsService<S, P = CommonBodies> {
    core: Core<S, P>,
    grants: NiftyGrants,
}

authenticating_service!(NiftyGrantsService, |this, request| {
    let shared = &this.grants.shared;
    if !wants_token(&shared.origins, &request) {
        return this.core.pass(request);
    }
    let Some(grant) = request.extensions().get::<GrantId>() else {
        // Never guess a grant: sending no token (or another grant's) would be worse.
        return this.core.fail(AuthError::MissingGrant);
    };
    let stripe = stripe::index();
    // One registry lookup (the id carries its hash); no I/O even for a grant not cached.
    let (manager, read) = shared.read(grant, stripe);
    let (header, generation) = match read {
        Read::Fresh(header, generation) => (header, generation),
        Read::Stale(header, generation) => {
            manager.refresh_in_background();
            (header, generation)
        }
        Read::Missing => return this.core.wait_for_token(request, Manager::Grant(manager)),
    };
    shared.counters().request_authorized_on(stripe);
    this.core
        .send(request, header, generation, || Manager::Grant(manager))
});

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for NiftyGrantsService<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NiftyGrantsService")
            .field("core", &self.core)
            .field("grants", &self.grants)
            .finish()
    }
}
