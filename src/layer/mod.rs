//! [`NiftyAuthLayer`] and its service: attach the bearer token, retry once on 401.
//!
//! See the [crate docs](crate) for how a request flows.

use std::fmt;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::stripe::{self, STRIPES};
use crate::token::cache::{LocalCache, Read};
use crate::token::refresh::Want;
use crate::{BoxError, NiftyAuth};

mod body;
mod future;
mod head;

pub use body::{CloneBodyFn, CommonBodies, ReplayPolicy, ReplayableBody};
pub use future::ResponseFuture;

use future::Retry;

/// The default [`NiftyAuthLayer::max_replay_body_bytes`]: bodies whose copy copies their bytes
/// (`String`) are replayed after a 401 up to 64 KiB. Bodies whose copy shares its
/// bytes (`Full<Bytes>`) are replayed whatever their size.
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
    policy: P,
    retry_on_unauthorized: bool,
}

impl NiftyAuthLayer {
    /// A layer attaching the tokens of `auth`.
    pub fn new(auth: NiftyAuth) -> Self {
        NiftyAuthLayer {
            retry_on_unauthorized: auth.can_refresh(),
            auth,
            policy: CommonBodies::new(DEFAULT_MAX_REPLAY_BODY_BYTES),
        }
    }

    /// Bodies that the default policy replays by copying their bytes (`String`) are
    /// kept for the retry after a 401 up to this size; larger ones are sent once and their 401
    /// returned as it is. Bodies whose copy shares the bytes (`Full<Bytes>`) are replayed whatever
    /// their size. Defaults to [`DEFAULT_MAX_REPLAY_BODY_BYTES`] (64 KiB).
    pub fn max_replay_body_bytes(mut self, max: usize) -> Self {
        self.policy = CommonBodies::new(max);
        self
    }
}

impl<P> NiftyAuthLayer<P> {
    /// Whether a 401 is retried once with a fresh token. Defaults to `true` (`false` for a personal
    /// access token, which cannot be refreshed).
    pub fn retry_on_unauthorized(mut self, retry: bool) -> Self {
        self.retry_on_unauthorized = retry;
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
            policy,
            retry_on_unauthorized: self.retry_on_unauthorized,
        }
    }
}

impl<S, P: Clone> Layer<S> for NiftyAuthLayer<P> {
    type Service = NiftyAuthService<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        NiftyAuthService {
            inner,
            current: self.auth.shared.manager.cache.local(),
            auth: self.auth.clone(),
            policy: self.policy.clone(),
            retry_on_unauthorized: self.retry_on_unauthorized,
        }
    }
}

impl<P: fmt::Debug> fmt::Debug for NiftyAuthLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NiftyAuthLayer")
            .field("auth", &self.auth)
            .field("policy", &self.policy)
            .field("retry_on_unauthorized", &self.retry_on_unauthorized)
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
/// Errors are [`BoxError`]s: the inner service's errors as they are, token failures as an
/// [`AuthError`](crate::AuthError) (`err.downcast_ref::<AuthError>()`).
#[derive(Clone)]
pub struct NiftyAuthService<S, P = CommonBodies> {
    inner: S,
    /// This service's view of the current token (no shared bookkeeping while it does not change).
    current: LocalCache,
    auth: NiftyAuth,
    policy: P,
    retry_on_unauthorized: bool,
}

impl<S> NiftyAuthService<S> {
    /// Wraps `inner` with the default layer settings; the same as `auth.layer().layer(inner)`.
    pub fn new(inner: S, auth: NiftyAuth) -> Self {
        NiftyAuthLayer::new(auth).layer(inner)
    }
}

impl<S, P> NiftyAuthService<S, P> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, P, B, RB> Service<Request<B>> for NiftyAuthService<S, P>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    P: ReplayPolicy<B>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if !self.auth.shared.origins.allows(request.uri())
            || request.headers().contains_key(AUTHORIZATION)
        {
            // This origin may not see our token, or the caller authorized the request itself: send
            // it exactly as it is (every `Authorization` value kept).
            return ResponseFuture::first(self.inner.call(request), None);
        }
        let manager = &self.auth.shared.manager;
        // One thread-local lookup for the header copy, the counter and the manager handle.
        let stripe = stripe::index();
        let (header, generation) = match self.current.load().read_for(stripe) {
            Read::Fresh(header, generation) => (header, generation),
            Read::Stale(header, generation) => {
                manager.refresh_in_background();
                (header, generation)
            }
            Read::Missing => {
                // Wait for the token first, then drive a clone of the service to readiness. The ready
                // service is dropped here, giving back what its readiness reserved (a concurrency
                // permit, a buffer slot): the token call may need that very permit.
                let clone = self.inner.clone();
                drop(mem::replace(&mut self.inner, clone));
                let token = Box::pin(Arc::clone(manager).token(Want::Usable));
                let replay = if self.retry_on_unauthorized {
                    self.policy.clone_body(request.body())
                } else {
                    None
                };
                return ResponseFuture::wait_for_token(
                    token,
                    self.inner.clone(),
                    request,
                    Arc::clone(self.auth.shared.handle()),
                    replay,
                );
            }
        };
        let retry = self.retry_for(&request, generation, stripe);
        request.headers_mut().insert(AUTHORIZATION, header);
        manager.counters.request_authorized_on(stripe);
        ResponseFuture::first(self.inner.call(request), retry)
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

impl<S: Clone, P> NiftyAuthService<S, P> {
    /// What a retry after a 401 needs, if the request can be retried.
    #[inline]
    fn retry_for<B>(
        &self,
        request: &Request<B>,
        generation: u64,
        stripe: usize,
    ) -> Option<Retry<S, B>>
    where
        P: ReplayPolicy<B>,
    {
        if !self.retry_on_unauthorized {
            return None;
        }
        Retry::new(
            request,
            &self.policy,
            &self.inner,
            &self.auth.shared.handles[stripe % STRIPES],
            generation,
        )
    }
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for NiftyAuthService<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NiftyAuthService")
            .field("inner", &self.inner)
            .field("auth", &self.auth)
            .field("policy", &self.policy)
            .field("retry_on_unauthorized", &self.retry_on_unauthorized)
            .finish()
    }
}
