//! [`ResponseFuture`]: the first send, and when a 401 comes back, the one retry.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::ReplayPolicy;
use super::head::Head;
use crate::auth::ManagerHandle;
use crate::error::AuthError;
use crate::manager::{TokenFuture, TokenManager, Unauthorized};
use crate::trace;
use tower::BoxError;

/// The token manager a request keeps for its retry: no allocation, one reference count either way.
pub(crate) enum Manager {
    /// One of a `NiftyAuth`'s striped handles (see `SharedAuth::handles`).
    Striped(Arc<ManagerHandle>),
    /// One grant's manager, from a `NiftyGrants` registry.
    Grant(Arc<TokenManager>),
}

impl Manager {
    #[inline]
    pub(crate) fn get(&self) -> &Arc<TokenManager> {
        match self {
            Manager::Striped(handle) => &handle.0,
            Manager::Grant(manager) => manager,
        }
    }
}

/// Everything a retry needs: a service to send with, a copy of the request (taken before the
/// `Authorization` header was added), and the token generation the first send used. Kept inline in
/// the response future, so keeping it allocates nothing (the head's buffer comes from a pool).
pub(crate) struct Retry<S, B> {
    service: S,
    manager: Manager,
    head: Head,
    body: B,
    generation: u64,
}

impl<S: Clone, B> Retry<S, B> {
    /// A copy of `request` for a retry, or `None` if `policy` does not replay its body. `manager` is
    /// called only when there is a copy.
    #[inline]
    pub(crate) fn new<P: ReplayPolicy<B>>(
        request: &Request<B>,
        policy: &P,
        service: &S,
        manager: impl FnOnce() -> Manager,
        generation: u64,
    ) -> Option<Self> {
        let body = policy.clone_body(request.body())?;
        Some(Retry {
            head: Head::capture(request)?,
            body,
            service: service.clone(),
            manager: manager(),
            generation,
        })
    }
}

/// A request waiting for a token, then for the service's readiness, before its first send.
struct Waiting<S, B> {
    /// A clone of the service, not yet driven to readiness.
    service: S,
    request: Request<B>,
    manager: Manager,
    /// The copy of the body for a retry (taken at `call`), or `None` when the request is sent once.
    replay: Option<B>,
    /// The token's header and generation, once it arrived.
    header: Option<(HeaderValue, u64)>,
}

pin_project! {
    /// The response future of [`NiftyAuthService`](super::NiftyAuthService).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        // What a retry needs, or `None` when a 401 goes back as it is. Kept outside the state, as
        // tower's retry keeps its request, so the state only holds what each step waits on.
        retry: Option<Retry<S, B>>,
        #[pin]
        state: State<S, B, S::Future>,
    }
}

pin_project! {
    // Each state is named for what the future waits on in it.
    #[project = StateProj]
    enum State<S, B, F> {
        // No usable token yet: waiting for the single-flight refresh, then for the service's
        // readiness, before the first send. (Boxed: the cold path, kept out of the hot future's size.)
        Token { token: TokenFuture, waiting: Option<Box<Waiting<S, B>>> },
        // Waiting for the answer to the first send.
        Response { #[pin] future: F },
        // A 401 came back: waiting for a token newer than the rejected one.
        NewerToken { token: TokenFuture },
        // Waiting for the service to be ready again before the retry.
        Readiness { header: HeaderValue, generation: u64 },
        // Waiting for the answer to the retry; it goes to the caller, 401 or not.
        RetryResponse { #[pin] future: F, manager: Manager, generation: u64 },
        // Failed before anything was sent (a request without a grant): the error, once.
        Failed { error: Option<BoxError> },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    #[inline]
    pub(crate) fn first(future: S::Future, retry: Option<Retry<S, B>>) -> Self {
        ResponseFuture {
            retry,
            state: State::Response { future },
        }
    }

    pub(crate) fn wait_for_token(
        token: TokenFuture,
        service: S,
        request: Request<B>,
        manager: Manager,
        replay: Option<B>,
    ) -> Self {
        ResponseFuture {
            retry: None,
            state: State::Token {
                token,
                waiting: Some(Box::new(Waiting {
                    service,
                    request,
                    manager,
                    replay,
                    header: None,
                })),
            },
        }
    }

    /// A future that fails with `error` without sending anything.
    pub(crate) fn failed(error: BoxError) -> Self {
        ResponseFuture {
            retry: None,
            state: State::Failed { error: Some(error) },
        }
    }
}

fn gone() -> BoxError {
    AuthError::Internal {
        reason: "response future polled after completion".to_owned(),
    }
    .into()
}

impl<S, B, RB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let retry = this.retry;
        let mut state = this.state;
        loop {
            match state.as_mut().project() {
                StateProj::Token { token, waiting } => {
                    let waiting_now = waiting.as_mut().ok_or_else(gone)?;
                    if waiting_now.header.is_none() {
                        let current = ready!(token.as_mut().poll(cx))?;
                        waiting_now.header = Some(current.bearer()?);
                    }
                    // Readiness only now that the token is here: holding the inner service's
                    // readiness (a concurrency permit, a buffer slot) while waiting could starve the
                    // token call itself when it shares that limit.
                    ready!(waiting_now.service.poll_ready(cx)).map_err(Into::into)?;
                    let Waiting {
                        mut service,
                        mut request,
                        manager,
                        replay,
                        header,
                    } = *waiting.take().ok_or_else(gone)?;
                    let (header, generation) = header.ok_or_else(gone)?;
                    manager.get().counters().request_authorized();
                    if let Some(body) = replay {
                        *retry = Head::capture(&request).map(|head| Retry {
                            service: service.clone(),
                            manager,
                            head,
                            body,
                            generation,
                        });
                    }
                    request.headers_mut().insert(AUTHORIZATION, header);
                    let future = service.call(request);
                    state.set(State::Response { future });
                }
                StateProj::Response { future } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if response.status() != StatusCode::UNAUTHORIZED
                        || super::insufficient_scope(response.headers())
                    {
                        // Not a token problem, or one a new token would not cure (RFC 6750 §3.1).
                        return Poll::Ready(Ok(response));
                    }
                    let Some(retrying) = retry.as_ref() else {
                        return Poll::Ready(Ok(response));
                    };
                    // Usually another request's refresh already replaced the rejected token: then
                    // use the newer one straight away, without a token future.
                    match retrying
                        .manager
                        .get()
                        .after_unauthorized(retrying.generation)
                    {
                        Unauthorized::Newer(header, generation) => {
                            trace::debug!(
                                generation,
                                "401 answered; retrying once with a newer token"
                            );
                            state.set(State::Readiness { header, generation });
                        }
                        Unauthorized::Wait(token) => {
                            trace::debug!("401 answered; retrying once after a refresh");
                            state.set(State::NewerToken { token });
                        }
                        Unauthorized::GiveUp => return Poll::Ready(Ok(response)),
                    }
                }
                StateProj::NewerToken { token } => {
                    let current = ready!(token.as_mut().poll(cx))?;
                    let (header, generation) = current.bearer()?;
                    state.set(State::Readiness { header, generation });
                }
                StateProj::Readiness { header, generation } => {
                    let service = &mut retry.as_mut().ok_or_else(gone)?.service;
                    ready!(service.poll_ready(cx)).map_err(Into::into)?;
                    let Retry {
                        mut service,
                        manager,
                        head,
                        body,
                        ..
                    } = retry.take().ok_or_else(gone)?;
                    let Some(mut request) = head.into_request(body) else {
                        return Poll::Ready(Err(AuthError::Internal {
                            reason: "the request's headers could not be rebuilt for the retry"
                                .to_owned(),
                        }
                        .into()));
                    };
                    manager.get().counters().unauthorized_retry();
                    request.headers_mut().insert(AUTHORIZATION, header.clone());
                    let future = service.call(request);
                    let generation = *generation;
                    state.set(State::RetryResponse {
                        future,
                        manager,
                        generation,
                    });
                }
                StateProj::RetryResponse {
                    future,
                    manager,
                    generation,
                } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if response.status() == StatusCode::UNAUTHORIZED {
                        manager.get().rejected_again(*generation);
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().ok_or_else(gone)?))
                }
            }
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Token { .. } => "waiting for a token",
            State::Response { .. } => "waiting for the response",
            State::NewerToken { .. } => "waiting for a newer token after a 401",
            State::Readiness { .. } => "waiting for readiness to retry",
            State::RetryResponse { .. } => "waiting for the retry's response",
            State::Failed { .. } => "failed before sending",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("can_retry", &self.retry.is_some())
            .finish()
    }
}
