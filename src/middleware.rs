//! [`NiftyAuthMiddleware`]: the same token manager as a reqwest-middleware middleware.
//!
//! Built from the same [`NiftyAuth`] as the tower layer, so a process that uses both shares one
//! token cache and one single-flight refresh. Same semantics: the bearer only goes to allowed
//! origins, a request with its own `Authorization` is left alone, and a 401 is retried once with a
//! newer token — using [`reqwest::Request::try_clone`], so a streaming body (which cannot be cloned)
//! is sent once and its 401 returned as it is.
//!
//! # Placement relative to `reqwest-retry`
//!
//! Put the retry middleware **outside** and nifty-auth **inside** (add it after):
//!
//! ```no_run
//! # fn run(auth: nifty_auth::NiftyAuth) {
//! use reqwest_retry::{policies::ExponentialBackoff, RetryTransientMiddleware};
//!
//! let retry = RetryTransientMiddleware::new_with_policy(ExponentialBackoff::builder().build_with_max_retries(3));
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(retry)              // outer: retries 5xx / connection errors
//!     .with(auth.middleware())  // inner: a fresh token on every attempt, 401 handled here
//!     .build();
//! # let _ = client; }
//! ```
//!
//! That way every attempt reqwest-retry makes gets the token current *at that moment* (a backoff can
//! outlive a token), and the 401 refresh-and-retry happens once per attempt, inside it. In the other
//! order the retry middleware would clone a request that already carries a bearer — which this
//! middleware then leaves alone as caller-set — and could resend an expired token. reqwest-retry does
//! not retry 401 (it is not transient), so the two never both retry the same answer.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "testing")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), nifty_auth::BoxError> {
//! use nifty_auth::testing::FakeNifty;
//! use nifty_auth::NiftyAuth;
//!
//! let nifty = FakeNifty::start().await?;
//! let auth = NiftyAuth::builder(nifty.credentials())
//!     .token_url(nifty.token_url().as_str())
//!     .refresh_token(nifty.issue_refresh_token())
//!     .build()?;
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(auth.middleware())
//!     .build();
//!
//! let response = client.get(nifty.api_url("/projects")).send().await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(nifty.token_calls(), 1);
//! # Ok(()) }
//! # #[cfg(not(feature = "testing"))]
//! # fn main() {}
//! ```

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::Extensions;
use reqwest_middleware::Next;

use crate::auth::NiftyAuth;
use crate::layer::DEFAULT_MAX_REPLAY_BODY_BYTES;
use crate::manager::TokenManager;
use crate::origin::Origins;

/// A [`reqwest_middleware::Middleware`] attaching the tokens of a [`NiftyAuth`]; see the
/// [module docs](self).
///
/// Errors from the token manager arrive as `reqwest_middleware::Error::Middleware` wrapping an
/// [`AuthError`](crate::AuthError): `err` → `match err { Error::Middleware(e) => e.downcast_ref::<AuthError>() … }`.
#[derive(Clone, Debug)]
pub struct NiftyAuthMiddleware {
    auth: NiftyAuth,
    replay: Replay,
}

impl NiftyAuthMiddleware {
    /// A middleware attaching the tokens of `auth`; the same as [`NiftyAuth::middleware`].
    pub fn new(auth: NiftyAuth) -> Self {
        NiftyAuthMiddleware {
            replay: Replay::new(auth.can_refresh()),
            auth,
        }
    }

    /// Buffered bodies up to this size are replayed after a 401; larger ones are sent once. Defaults
    /// to [`DEFAULT_MAX_REPLAY_BODY_BYTES`].
    pub fn max_replay_body_bytes(mut self, max: usize) -> Self {
        self.replay.max_replay_body_bytes = max;
        self
    }

    /// Whether a 401 is retried once with a newer token. Defaults to `true` (`false` for personal
    /// access tokens, which cannot be refreshed).
    pub fn retry_on_unauthorized(mut self, retry: bool) -> Self {
        self.replay.retry_on_unauthorized = retry;
        self
    }
}

impl NiftyAuth {
    /// A [`NiftyAuthMiddleware`] for reqwest-middleware, sharing this handle's tokens.
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn middleware(&self) -> NiftyAuthMiddleware {
        NiftyAuthMiddleware::new(self.clone())
    }
}

nifty_middleware!(NiftyAuthMiddleware, |this, request, extensions, next| {
    if !wants_token(&this.auth.shared.origins, &request) {
        return next.run(request, extensions).await;
    }
    send(
        &this.auth.shared.manager,
        this.replay,
        request,
        extensions,
        next,
    )
    .await
});

/// The `Middleware` impl of a nifty-auth middleware; `handle` runs the given body with `this` (the
/// middleware) and the request, its extensions and the next middleware. Shared by
/// [`NiftyAuthMiddleware`] and the grants middleware.
macro_rules! nifty_middleware {
    ($middleware:ident, |$this:ident, $request:ident, $extensions:ident, $next:ident| $handle:block) => {
        #[async_trait::async_trait]
        impl reqwest_middleware::Middleware for $middleware {
            async fn handle(
                &self,
                $request: reqwest::Request,
                $extensions: &mut http::Extensions,
                $next: reqwest_middleware::Next<'_>,
            ) -> reqwest_middleware::Result<reqwest::Response> {
                let $this = self;
                $handle
            }
        }
    };
}
pub(crate) use nifty_middleware;

/// A middleware's replay settings (shared by [`NiftyAuthMiddleware`] and the grants middleware).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Replay {
    pub(crate) max_replay_body_bytes: usize,
    pub(crate) retry_on_unauthorized: bool,
}

impl Replay {
    pub(crate) fn new(retry_on_unauthorized: bool) -> Self {
        Replay {
            max_replay_body_bytes: DEFAULT_MAX_REPLAY_BODY_BYTES,
            retry_on_unauthorized,
        }
    }
}

/// Whether `request` should get a token: it goes to an allowed origin and has no `Authorization`
/// of its own (a request with one is left alone).
pub(crate) fn wants_token(origins: &Origins, request: &reqwest::Request) -> bool {
    let url = request.url();
    !request.headers().contains_key(AUTHORIZATION)
        && url.host_str().is_some_and(|host| {
            origins.allows_origin(url.scheme(), host, url.port_or_known_default())
        })
}

/// Sends `request` with a header from `manager`, and retries it once after a 401 with a newer one
/// (if `replay` allows and the body can be cloned).
pub(crate) async fn send(
    manager: &Arc<TokenManager>,
    replay: Replay,
    mut request: reqwest::Request,
    extensions: &mut Extensions,
    next: Next<'_>,
) -> reqwest_middleware::Result<reqwest::Response> {
    let (header, generation) = manager
        .header_for_request()
        .await
        .map_err(reqwest_middleware::Error::middleware)?;
    manager.counters().request_authorized();
    let small_enough = request.body().is_none_or(|body| {
        body.as_bytes()
            .is_some_and(|b| b.len() <= replay.max_replay_body_bytes)
    });
    let retry = if replay.retry_on_unauthorized && small_enough {
        request.try_clone()
    } else {
        None
    };
    request.headers_mut().insert(AUTHORIZATION, header);
    let response = next.clone().run(request, extensions).await?;
    if response.status() != http::StatusCode::UNAUTHORIZED {
        return Ok(response);
    }
    let Some(mut retry) = retry else {
        return Ok(response);
    };
    if crate::layer::insufficient_scope(response.headers()) {
        return Ok(response); // a new token would not have more scope
    }
    let Some((header, retry_generation)) = manager
        .header_after_unauthorized(generation)
        .await
        .map_err(reqwest_middleware::Error::middleware)?
    else {
        return Ok(response);
    };
    crate::trace::debug!(generation, "401 answered; retrying once with a newer token");
    retry.headers_mut().insert(AUTHORIZATION, header);
    manager.counters().unauthorized_retry();
    let response = next.run(retry, extensions).await?;
    if response.status() == http::StatusCode::UNAUTHORIZED {
        manager.rejected_again(retry_generation);
    }
    Ok(response)
}
