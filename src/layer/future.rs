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

use super::body::{replay_copy, ReplayableBody};
use super::head::Head;
use crate::auth::ManagerHandle;
use crate::token::refresh::{TokenFuture, TokenManager, Unauthorized};
use crate::trace;
use crate::{AuthError, BoxError};

/// Everything a retry needs: a service to send with, a copy of the request (taken before the
/// `Authorization` header was added), and the token generation the first send used.
pub(crate) struct Retry<S, B> {
    service: S,
    /// A striped handle (see `SharedAuth::handles`).
    manager: Arc<ManagerHandle>,
    head: Head,
    body: B,
    generation: u64,
}

impl<S: Clone, B: ReplayableBody> Retry<S, B> {
    /// A copy of `request` for a retry, or `None` if its body cannot be kept.
    #[inline]
    pub(crate) fn new(
        request: &Request<B>,
        service: &S,
        manager: &Arc<ManagerHandle>,
        max_body_bytes: u64,
        generation: u64,
    ) -> Option<Box<Self>> {
        let body = replay_copy(request.body(), max_body_bytes)?;
        Some(Box::new(Retry {
            head: Head::capture(request)?,
            body,
            service: service.clone(),
            manager: Arc::clone(manager),
            generation,
        }))
    }
}

/// A request waiting for a token, then for the service's readiness, before its first send.
struct Waiting<S, B> {
    /// A clone of the service, not yet driven to readiness.
    service: S,
    request: Request<B>,
    manager: Arc<TokenManager>,
    /// The replay cap, or `None` when 401 retries are off.
    replay_cap: Option<u64>,
    /// The token's header and generation, once it arrived.
    header: Option<(HeaderValue, u64)>,
}

/// What a retry remembers to report a second 401 (the token it carried was rejected too).
struct Sent {
    manager: Arc<ManagerHandle>,
    generation: u64,
}

pin_project! {
    /// The response future of [`NiftyAuthService`](super::NiftyAuthService).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B, S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, F> {
        // No usable token yet: waiting for the single-flight refresh, then for the service's
        // readiness. (Cold data is boxed, so the future stays small and cheap to move on the hot
        // path.)
        WaitToken { token: TokenFuture, waiting: Option<Box<Waiting<S, B>>> },
        // The first send.
        First { #[pin] future: F, retry: Option<Box<Retry<S, B>>> },
        // A 401 came back: waiting for a token newer than the rejected one.
        Refresh { token: TokenFuture, retry: Option<Box<Retry<S, B>>> },
        // Waiting for the service to be ready again before the retry.
        Ready { header: HeaderValue, generation: u64, retry: Option<Box<Retry<S, B>>> },
        // The retry; its answer, 401 or not, goes to the caller.
        Second { #[pin] future: F, sent: Option<Box<Sent>> },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn first(future: S::Future, retry: Option<Box<Retry<S, B>>>) -> Self {
        ResponseFuture {
            state: State::First { future, retry },
        }
    }

    pub(crate) fn wait_for_token(
        token: TokenFuture,
        service: S,
        request: Request<B>,
        manager: Arc<TokenManager>,
        replay_cap: Option<u64>,
    ) -> Self {
        ResponseFuture {
            state: State::WaitToken {
                token,
                waiting: Some(Box::new(Waiting {
                    service,
                    request,
                    manager,
                    replay_cap,
                    header: None,
                })),
            },
        }
    }
}

fn gone() -> BoxError {
    AuthError::Internal {
        reason: "response future polled after completion".to_owned(),
    }
    .into()
}

fn header_of(current: &crate::token::cache::Current) -> Result<(HeaderValue, u64), BoxError> {
    match current.header() {
        Some(header) => Ok((header, current.generation)),
        None => Err(AuthError::Internal {
            reason: "a refresh published no token".to_owned(),
        }
        .into()),
    }
}

impl<S, B, RB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayableBody,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::WaitToken { token, waiting } => {
                    let waiting_now = waiting.as_mut().ok_or_else(gone)?;
                    if waiting_now.header.is_none() {
                        let current = ready!(token.as_mut().poll(cx))?;
                        waiting_now.header = Some(header_of(&current)?);
                    }
                    // Readiness only now that the token is here: holding the inner service's
                    // readiness (a concurrency permit, a buffer slot) while waiting could starve the
                    // token call itself when it shares that limit.
                    ready!(waiting_now.service.poll_ready(cx)).map_err(Into::into)?;
                    let Waiting {
                        mut service,
                        mut request,
                        manager,
                        replay_cap,
                        header,
                    } = *waiting.take().ok_or_else(gone)?;
                    let (header, generation) = header.ok_or_else(gone)?;
                    manager.counters.request_authorized();
                    let retry = replay_cap.and_then(|max| {
                        let handle = Arc::new(ManagerHandle(Arc::clone(&manager)));
                        Retry::new(&request, &service, &handle, max, generation)
                    });
                    request.headers_mut().insert(AUTHORIZATION, header);
                    let future = service.call(request);
                    state.set(State::First { future, retry });
                }
                StateProj::First { future, retry } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if response.status() != StatusCode::UNAUTHORIZED
                        || super::insufficient_scope(response.headers())
                    {
                        // Not a token problem, or one a new token would not cure (RFC 6750 §3.1).
                        return Poll::Ready(Ok(response));
                    }
                    let Some(retry) = retry.take() else {
                        return Poll::Ready(Ok(response));
                    };
                    // Usually another request's refresh already replaced the rejected token: then
                    // use the newer one straight away, without a token future.
                    match retry.manager.0.after_unauthorized(retry.generation) {
                        Unauthorized::Newer(header, generation) => state.set(State::Ready {
                            header,
                            generation,
                            retry: Some(retry),
                        }),
                        Unauthorized::Wait(token) => state.set(State::Refresh {
                            token,
                            retry: Some(retry),
                        }),
                        Unauthorized::GiveUp => return Poll::Ready(Ok(response)),
                    }
                    trace::debug!(
                        generation = retry_generation(&state),
                        "401 answered; retrying once with a newer token"
                    );
                }
                StateProj::Refresh { token, retry } => {
                    let current = ready!(token.as_mut().poll(cx))?;
                    let (header, generation) = header_of(&current)?;
                    let retry = retry.take();
                    state.set(State::Ready {
                        header,
                        generation,
                        retry,
                    });
                }
                StateProj::Ready {
                    header,
                    generation,
                    retry,
                } => {
                    let service = &mut retry.as_mut().ok_or_else(gone)?.service;
                    ready!(service.poll_ready(cx)).map_err(Into::into)?;
                    let Retry {
                        mut service,
                        manager,
                        head,
                        body,
                        ..
                    } = *retry.take().ok_or_else(gone)?;
                    let Some(mut request) = head.into_request(body) else {
                        return Poll::Ready(Err(AuthError::Internal {
                            reason: "the request's headers could not be rebuilt for the retry"
                                .to_owned(),
                        }
                        .into()));
                    };
                    manager.0.counters.unauthorized_retry();
                    request.headers_mut().insert(AUTHORIZATION, header.clone());
                    let future = service.call(request);
                    let sent = Some(Box::new(Sent {
                        manager,
                        generation: *generation,
                    }));
                    state.set(State::Second { future, sent });
                }
                StateProj::Second { future, sent } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if response.status() == StatusCode::UNAUTHORIZED {
                        if let Some(sent) = sent.take() {
                            sent.manager.0.rejected_again(sent.generation);
                        }
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

/// The generation a retry is about to use (for the debug event).
#[cfg_attr(
    not(feature = "tracing"),
    allow(dead_code, reason = "only read by a tracing event")
)]
fn retry_generation<S, B, F>(state: &Pin<&mut State<S, B, F>>) -> u64 {
    match &**state {
        State::Ready { generation, .. } => *generation,
        _ => 0,
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::WaitToken { .. } => "waiting for a token",
            State::First { .. } => "sending",
            State::Refresh { .. } => "refreshing after 401",
            State::Ready { .. } => "waiting for readiness to retry",
            State::Second { .. } => "retrying",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
