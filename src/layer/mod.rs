//! [`NiftyAuthLayer`] and its service: attach the bearer token, retry once on 401.
//!
//! See the [crate docs](crate) for how a request flows.

use std::fmt;
use std::mem;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use crate::auth::NiftyAuth;
use crate::error::AuthError;
use crate::manager::{TokenManager, Want};
use crate::origin::Origins;
use crate::stripe::{self, STRIPES};
use crate::token::cache::{LocalCache, Read, TokenCache};

mod body;
mod future;
mod head;

pub use body::{CloneBodyFn, CommonBodies, ReplayPolicy, ReplayableBody};
pub use future::ResponseFuture;

pub(crate) use future::Manager;
use future::Retry;

/// The default [`NiftyAuthLayer::max_replay_body_bytes`]: bodies whose copy copies their bytes
/// (`String`) are replayed after a 401 up to 64 KiB. Bodies whose copy shares its
/// bytes (`Full<Bytes>`) are replayed whatever their size.
#[doc(hidden)]
pub const DEFAULT_MAX_REPLAY_BODY_BYTES: usize = 64 * 1024;

/// A tower [`Layer`] that authenticates requests to Nifty with the tokens of a [`NiftyAuth`].
///
/// Made by [`NiftyAuth::layer`] or [`NiftyAuthLayer::new`]. It holds only configuration and the shared
/// token manager; every service it makes shares the one token cache.
///
/// ```no_run
/// # async fn run() -> Result<(), nifty_auth::BoxError> {
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use nifty_auth::{Credentials, NiftyAuth};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// let auth = NiftyAuth::builder(Credentials::new("client-id", "client-secret"))
///     .refresh_token("rt-from-last-time")
///     .build()?;
/// let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
/// let mut svc = ServiceBuilder::new().layer(auth.layer()).service(client);
///
/// let request = http::Request::get("https://openapi.niftypm.com/api/v1.0/projects")
///     .body(Full::new(Bytes::new()))?;
/// let response = svc.ready().await?.call(request).await?;
/// # let _ = response; Ok(()) }
/// ```
///
/// Any request body type works. Which bodies are kept for the 401 retry is the layer's
/// [`ReplayPolicy`]: by default [`CommonBodies`] (`Full<Bytes>`, `Empty<Bytes>`, `String`, … are
/// replayed; streaming and unknown bodies are sent once); [`clone_body_fn`](Self::clone_body_fn)
/// sets your own.
#[derive(Clone)]
pub struct NiftyAuthLayer<P = CommonBodies> {
    auth: NiftyAuth,
    settings: Settings<P>,
}

impl NiftyAuthLayer {
    /// The default [`max_replay_body_bytes`](Self::max_replay_body_bytes).
    pub const DEFAULT_MAX_REPLAY_BODY_BYTES: usize = DEFAULT_MAX_REPLAY_BODY_BYTES;

    /// A layer attaching the tokens of `auth`.
    pub fn new(auth: NiftyAuth) -> Self {
        NiftyAuthLayer {
            settings: Settings::new(auth.can_refresh()),
            auth,
        }
    }

    /// Bodies that the default policy replays by copying their bytes (`String`) are
    /// kept for the retry after a 401 up to this size; larger ones are sent once and their 401
    /// returned as it is. Bodies whose copy shares the bytes (`Full<Bytes>`) are replayed whatever
    /// their size. Defaults to [`NiftyAuthLayer::DEFAULT_MAX_REPLAY_BODY_BYTES`] (64 KiB).
    pub fn max_replay_body_bytes(mut self, max: usize) -> Self {
        self.settings.policy = CommonBodies::new(max);
        self
    }
}

impl<P> NiftyAuthLayer<P> {
    /// Whether a 401 is retried once with a fresh token. Defaults to `true` (`false` for a personal
    /// access token, which cannot be refreshed).
    pub fn retry_on_unauthorized(mut self, retry: bool) -> Self {
        self.settings.retry_on_unauthorized = retry;
        self
    }

    /// Replaces the replay policy with `clone_body`: it returns a body that sends the same bytes
    /// again (kept for the retry after a 401), or `None` to send the request once. Replaces the
    /// default [`CommonBodies`] (and its size cap) entirely.
    ///
    /// ```
    /// # fn run(auth: nifty_auth::NiftyAuth) {
    /// use bytes::Bytes;
    /// use http_body_util::{Either, Full};
    ///
    /// // A body type the default does not know: replay its buffered side, stream the other once.
    /// type MyBody = Either<Full<Bytes>, String>;
    /// let layer = auth.layer().clone_body_fn(|body: &MyBody| match body {
    ///     Either::Left(full) => Some(Either::Left(full.clone())),
    ///     Either::Right(_) => None,
    /// });
    /// # let _ = layer; }
    /// ```
    pub fn clone_body_fn<F, B>(self, clone_body: F) -> NiftyAuthLayer<CloneBodyFn<F>>
    where
        F: Fn(&B) -> Option<B> + Clone,
    {
        self.replay_policy(CloneBodyFn(clone_body))
    }

    /// Replaces the replay policy with `policy` (see [`ReplayPolicy`]).
    pub fn replay_policy<Q>(self, policy: Q) -> NiftyAuthLayer<Q> {
        NiftyAuthLayer {
            auth: self.auth,
            settings: self.settings.with_policy(policy),
        }
    }
}

impl<S, P: Clone> Layer<S> for NiftyAuthLayer<P> {
    type Service = NiftyAuthService<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        NiftyAuthService {
            core: self.settings.core(inner),
            current: TokenCache::local(&self.auth.shared.manager),
            auth: self.auth.clone(),
        }
    }
}

impl<P: fmt::Debug> fmt::Debug for NiftyAuthLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NiftyAuthLayer")
            .field("auth", &self.auth)
            .field("policy", &self.settings.policy)
            .field(
                "retry_on_unauthorized",
                &self.settings.retry_on_unauthorized,
            )
            .finish()
    }
}

/// The service made by [`NiftyAuthLayer`].
///
/// For each request to an allowed origin without an `Authorization` header of its own, it attaches
/// `Authorization: Bearer <token>` (marked sensitive) and forwards it. With a valid token cached that
/// is all it does: no lock, no allocation beyond cloning the shared header value. Without one, the
/// request waits for the single-flight refresh. A 401 answer is retried once with a newer token if the
/// layer's [`ReplayPolicy`] kept a copy of the body.
///
/// Errors are [`BoxError`](crate::BoxError)s: the inner service's errors as they are, token failures as an
/// [`AuthError`] (`err.downcast_ref::<AuthError>()`).
#[derive(Clone)]
pub struct NiftyAuthService<S, P = CommonBodies> {
    core: Core<S, P>,
    /// This service's view of the current token (no shared bookkeeping while it does not change).
    current: LocalCache<TokenManager>,
    auth: NiftyAuth,
}

impl<S> NiftyAuthService<S> {
    /// Wraps `inner` with the default layer settings; the same as `auth.layer().layer(inner)`.
    pub fn new(inner: S, auth: NiftyAuth) -> Self {
        NiftyAuthLayer::new(auth).layer(inner)
    }
}

authenticating_service!(NiftyAuthService, |this, request| {
    if !wants_token(&this.auth.shared.origins, &request) {
        return this.core.pass(request);
    }
    let manager = &this.auth.shared.manager;
    // One thread-local lookup for the header copy, the counter and the manager handle.
    let stripe = stripe::index();
    let (header, generation) = match this.current.load().read_for(stripe) {
        Read::Fresh(header, generation) => (header, generation),
        Read::Stale(header, generation) => {
            manager.refresh_in_background();
            (header, generation)
        }
        Read::Missing => {
            let handle = Arc::clone(this.auth.shared.handle());
            return this.core.wait_for_token(request, Manager::Striped(handle));
        }
    };
    manager.counters().request_authorized_on(stripe);
    let handle = &this.auth.shared.handles[stripe % STRIPES];
    this.core.send(request, header, generation, || {
        Manager::Striped(Arc::clone(handle))
    })
});

/// The accessors and the `Service` impl of an authenticating service (a struct with a
/// `core: Core<S, P>` field); `call` runs the given body with `this` (the service) and `request`.
/// Shared by [`NiftyAuthService`] and the grants service, which differ only in that body.
macro_rules! authenticating_service {
    ($service:ident, |$this:ident, $request:ident| $call:block) => {
        impl<S, P> $service<S, P> {
            /// The wrapped service.
            pub fn get_ref(&self) -> &S {
                &self.core.inner
            }

            /// The wrapped service, mutably.
            pub fn get_mut(&mut self) -> &mut S {
                &mut self.core.inner
            }

            /// Unwraps the service.
            pub fn into_inner(self) -> S {
                self.core.inner
            }
        }

        impl<S, P, B, RB> tower_service::Service<http::Request<B>> for $service<S, P>
        where
            S: tower_service::Service<http::Request<B>, Response = http::Response<RB>> + Clone,
            S::Error: Into<$crate::BoxError>,
            P: $crate::ReplayPolicy<B>,
        {
            type Response = http::Response<RB>;
            type Error = $crate::BoxError;
            type Future = $crate::ResponseFuture<S, B>;

            fn poll_ready(
                &mut self,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), Self::Error>> {
                self.core.inner.poll_ready(cx).map_err(Into::into)
            }

            fn call(&mut self, $request: http::Request<B>) -> Self::Future {
                let $this = self;
                $call
            }
        }
    };
}
pub(crate) use authenticating_service;

/// Whether `request` should get a token: it goes to an allowed origin and the caller did not
/// authorize it itself (a request with its own `Authorization` is sent exactly as it is, every value
/// kept).
#[inline]
pub(crate) fn wants_token<B>(origins: &Origins, request: &Request<B>) -> bool {
    origins.allows(request.uri()) && !request.headers().contains_key(AUTHORIZATION)
}

/// A layer's replay settings: which bodies are kept for the retry after a 401, and whether there is
/// one. Shared by [`NiftyAuthLayer`] and the grants layer.
#[derive(Clone, Debug)]
pub(crate) struct Settings<P> {
    pub(crate) policy: P,
    pub(crate) retry_on_unauthorized: bool,
}

impl Settings<CommonBodies> {
    /// The default policy, retrying 401s if `retry_on_unauthorized`.
    pub(crate) fn new(retry_on_unauthorized: bool) -> Self {
        Settings {
            policy: CommonBodies::new(DEFAULT_MAX_REPLAY_BODY_BYTES),
            retry_on_unauthorized,
        }
    }
}

impl<P> Settings<P> {
    pub(crate) fn with_policy<Q>(self, policy: Q) -> Settings<Q> {
        Settings {
            policy,
            retry_on_unauthorized: self.retry_on_unauthorized,
        }
    }

    /// The settings around `inner`, for a new service.
    pub(crate) fn core<S>(&self, inner: S) -> Core<S, P>
    where
        P: Clone,
    {
        Core {
            inner,
            policy: self.policy.clone(),
            retry_on_unauthorized: self.retry_on_unauthorized,
        }
    }
}

/// What every authenticating service does once it knows the request's token manager: send with a
/// header, wait for a token, or fail before sending. Shared by [`NiftyAuthService`] and the grants
/// service, which differ only in how they find the manager.
#[derive(Clone, Debug)]
pub(crate) struct Core<S, P> {
    pub(crate) inner: S,
    policy: P,
    retry_on_unauthorized: bool,
}

impl<S: Clone, P> Core<S, P> {
    /// Sends `request` untouched.
    #[inline]
    pub(crate) fn pass<B>(&mut self, request: Request<B>) -> ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        ResponseFuture::first(self.inner.call(request), None)
    }

    /// The hot path: sends `request` with `header` (of token `generation`), keeping a copy for the
    /// retry after a 401 if the policy replays its body (only then is `manager` called).
    #[inline]
    pub(crate) fn send<B>(
        &mut self,
        mut request: Request<B>,
        header: http::HeaderValue,
        generation: u64,
        manager: impl FnOnce() -> Manager,
    ) -> ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
        P: ReplayPolicy<B>,
    {
        let retry = if self.retry_on_unauthorized {
            Retry::new(&request, &self.policy, &self.inner, manager, generation)
        } else {
            None
        };
        request.headers_mut().insert(AUTHORIZATION, header);
        ResponseFuture::first(self.inner.call(request), retry)
    }

    /// The cold path: no usable token, so the request waits for `manager`'s single-flight refresh.
    pub(crate) fn wait_for_token<B>(
        &mut self,
        request: Request<B>,
        manager: Manager,
    ) -> ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
        P: ReplayPolicy<B>,
    {
        // Wait for the token first, then drive a clone of the service to readiness.
        self.give_back_readiness();
        let token = Box::pin(Arc::clone(manager.get()).token(Want::Usable));
        let replay = if self.retry_on_unauthorized {
            self.policy.clone_body(request.body())
        } else {
            None
        };
        ResponseFuture::wait_for_token(token, self.inner.clone(), request, manager, replay)
    }

    /// Fails the request with `error` without sending it.
    pub(crate) fn fail<B>(&mut self, error: AuthError) -> ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        self.give_back_readiness();
        ResponseFuture::failed(error.into())
    }

    /// Drops the ready service, giving back what its readiness reserved (a concurrency permit, a
    /// buffer slot: the token call may need that very permit), and keeps a clone for the next call.
    fn give_back_readiness(&mut self) {
        let clone = self.inner.clone();
        drop(mem::replace(&mut self.inner, clone));
    }
}

/// Whether a 401's `WWW-Authenticate` says `error="insufficient_scope"`: a new token would not help.
pub(crate) fn insufficient_scope(headers: &http::HeaderMap) -> bool {
    const NEEDLE: &[u8] = b"insufficient_scope";
    headers
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .any(|value| {
            value
                .as_bytes()
                .windows(NEEDLE.len())
                .any(|w| w.eq_ignore_ascii_case(NEEDLE))
        })
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for NiftyAuthService<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NiftyAuthService")
            .field("inner", &self.core.inner)
            .field("auth", &self.auth)
            .field("policy", &self.core.policy)
            .field("retry_on_unauthorized", &self.core.retry_on_unauthorized)
            .finish()
    }
}

// `NiftyAuth::layer` lives here, beside the layer it builds, so that `auth` never imports `layer`.
impl NiftyAuth {
    /// A [`NiftyAuthLayer`] attaching this handle's tokens; the same as [`NiftyAuthLayer::new`].
    pub fn layer(&self) -> NiftyAuthLayer {
        NiftyAuthLayer::new(self.clone())
    }
}
