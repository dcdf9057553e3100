//! The token endpoint client: builds `POST /oauth/token` requests, sends them within the timeout,
//! reads the answer up to a size cap, and runs the attempt loop.
//!
//! Deciding what an answer means is [`classify`] (pure, no I/O); when and how often to try again is
//! [`Backoff`]; what an error may quote is [`crate::redact`].

mod backoff;
mod classify;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use serde_json::{json, Value};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceExt};

pub(crate) use self::backoff::Backoff;
use self::classify::{classify, Context, Failure, Outcome};
use crate::clock::{instant_after, Clock};
use crate::credentials::Credentials;
use crate::error::AuthError;
use crate::future::BoxFuture;
use crate::stats::Counting;
use crate::token::TokenSet;

pub(crate) use crate::token::MAX_TOKEN_RESPONSE_BYTES;

/// The boxed HTTP client used for token calls.
pub(crate) type HttpClient =
    BoxCloneSyncService<Request<Full<Bytes>>, Response<BoxBody<Bytes, BoxError>>, BoxError>;

/// The grant a token call asks for.
pub(crate) enum GrantType<'a> {
    AuthorizationCode {
        code: &'a str,
        redirect_uri: &'a str,
        /// PKCE (RFC 7636): sent as `code_verifier` when the authorize request had a challenge.
        code_verifier: Option<&'a str>,
    },
    RefreshToken {
        refresh_token: &'a str,
    },
}

impl GrantType<'_> {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            GrantType::AuthorizationCode { .. } => "authorization_code",
            GrantType::RefreshToken { .. } => "refresh_token",
        }
    }

    fn body(&self) -> Value {
        match self {
            GrantType::AuthorizationCode {
                code,
                redirect_uri,
                code_verifier,
            } => {
                let mut body = json!({
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect_uri,
                });
                if let Some(verifier) = code_verifier {
                    body["code_verifier"] = json!(verifier);
                }
                body
            }
            GrantType::RefreshToken { refresh_token } => json!({
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
            }),
        }
    }

    /// The secret this grant sends (scrubbed from any error excerpt).
    fn secret(&self) -> &str {
        match self {
            GrantType::AuthorizationCode { code, .. } => code,
            GrantType::RefreshToken { refresh_token } => refresh_token,
        }
    }
}

/// Talks to one token endpoint with one set of client credentials.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) url: Uri,
    credentials: Credentials,
    basic: HeaderValue,
    client: HttpClient,
    pub(crate) timeout: Duration,
    pub(crate) backoff: Backoff,
    /// What a token answer's `expires_in` counts from.
    clock: Clock,
    /// Shared by every grant using this endpoint: the concurrency limit and the 429 backoff.
    pressure: Arc<Pressure>,
}

/// Pressure on the token endpoint, shared by all the grants that call it: at most `limit` calls at
/// once (the rest queue), and after a 429 no call before its `Retry-After` (capped by the backoff's
/// maximum) — for every grant, not only the one that got it.
#[derive(Debug, Default)]
pub(crate) struct Pressure {
    limit: Option<tokio::sync::Semaphore>,
    not_before: parking_lot::Mutex<Option<tokio::time::Instant>>,
}

impl Pressure {
    /// At most `max_calls` token calls at once.
    pub(crate) fn limited(max_calls: usize) -> Self {
        Pressure {
            limit: Some(tokio::sync::Semaphore::new(max_calls.max(1))),
            not_before: parking_lot::Mutex::new(None),
        }
    }

    /// Waits for a 429's backoff to pass, then for a free call slot.
    pub(crate) async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.paused().await;
        match &self.limit {
            // The semaphore is never closed.
            Some(limit) => limit.acquire().await.ok(),
            None => None,
        }
    }

    /// Waits for a 429's backoff to pass.
    async fn paused(&self) {
        loop {
            let not_before = *self.not_before.lock();
            match not_before {
                Some(at) if tokio::time::Instant::now() < at => tokio::time::sleep_until(at).await,
                _ => break,
            }
        }
    }

    /// A 429: nobody calls for `pause`.
    fn rate_limited(&self, pause: Duration) {
        let until = instant_after(tokio::time::Instant::now(), pause);
        let mut not_before = self.not_before.lock();
        if not_before.is_none_or(|at| at < until) {
            *not_before = Some(until);
        }
    }
}

impl Endpoint {
    pub(crate) fn new(
        url: Uri,
        credentials: Credentials,
        client: HttpClient,
        timeout: Duration,
        backoff: Backoff,
        clock: Clock,
        pressure: Arc<Pressure>,
    ) -> Result<Self, AuthError> {
        let basic = credentials.basic_header().ok_or_else(|| {
            AuthError::config("the client credentials cannot be sent in a Basic header")
        })?;
        Ok(Endpoint {
            url,
            credentials,
            basic,
            client,
            timeout,
            backoff,
            clock,
            pressure,
        })
    }

    /// Runs one grant: up to `backoff.attempts` calls, retrying transport errors, timeouts, 5xx and 429.
    /// Each attempt waits for its turn: a 429's pause, then a call slot — unless `holding_turn`
    /// (the caller already holds a slot from [`Pressure::turn`], taken before its store lock).
    ///
    /// Returns the token set and the number of attempts made.
    pub(crate) fn request<'a>(
        &'a self,
        grant: &'a GrantType<'a>,
        previous_refresh_token: Option<&'a str>,
        counters: Counting<'a>,
        holding_turn: bool,
    ) -> BoxFuture<'a, (Result<TokenSet, AuthError>, u32)> {
        Box::pin(self.request_inner(grant, previous_refresh_token, counters, holding_turn))
    }

    /// The pressure on this endpoint (shared by every grant that calls it).
    pub(crate) fn pressure(&self) -> &Pressure {
        &self.pressure
    }

    async fn request_inner(
        &self,
        grant: &GrantType<'_>,
        previous_refresh_token: Option<&str>,
        counters: Counting<'_>,
        holding_turn: bool,
    ) -> (Result<TokenSet, AuthError>, u32) {
        let body = Bytes::from(grant.body().to_string());
        let mut attempt = 1;
        loop {
            let turn = if holding_turn {
                self.pressure.paused().await;
                None
            } else {
                self.pressure.turn().await
            };
            let call = counters.token_call_started();
            let outcome = self
                .attempt(grant, body.clone(), previous_refresh_token)
                .await;
            drop(call);
            drop(turn);
            let failure = match outcome {
                Ok(tokens) => {
                    counters.token_call(Ok(()));
                    return (Ok(tokens), attempt);
                }
                Err(failure) => {
                    counters.token_call(Err(&failure.error));
                    failure
                }
            };
            let delay = self.backoff.delay(attempt, failure.retry_after);
            if failure.error.status() == Some(http::StatusCode::TOO_MANY_REQUESTS) {
                // Slow every grant down, not only this one.
                self.pressure.rate_limited(delay);
            }
            if !failure.retry || !self.backoff.allows_retry_after(attempt) {
                return (Err(failure.error), attempt);
            }
            crate::trace::debug!(
                grant_type = grant.name(),
                attempt,
                delay_ms = delay.as_millis() as u64,
                error = %failure.error,
                "token call failed; retrying"
            );
            tokio::time::sleep_until(instant_after(tokio::time::Instant::now(), delay)).await;
            attempt += 1;
        }
    }

    /// One token call: sends, reads the answer (capped, within the timeout), and classifies it.
    async fn attempt(
        &self,
        grant: &GrantType<'_>,
        body: Bytes,
        previous_refresh_token: Option<&str>,
    ) -> Outcome {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.url.clone();
        let headers = request.headers_mut();
        headers.insert(AUTHORIZATION, self.basic.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));

        let client = self.client.clone();
        let call = async move {
            let response = client
                .oneshot(request)
                .await
                .map_err(|e| Failure::transient(AuthError::transport(e)))?;
            let (parts, body) = response.into_parts();
            let too_big = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|len| len > MAX_TOKEN_RESPONSE_BYTES as u64);
            let bytes = if too_big {
                None
            } else {
                read_capped(body)
                    .await
                    .map_err(|e| Failure::transient(AuthError::transport(e)))?
            };
            Ok((parts, bytes))
        };
        // `timeout_at` with a saturated deadline: any configured timeout, however large, is fine.
        let deadline = instant_after(tokio::time::Instant::now(), self.timeout);
        let (parts, bytes) = match tokio::time::timeout_at(deadline, call).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Failure::transient(AuthError::Timeout {
                    after: self.timeout,
                }))
            }
        };
        let secrets = [
            self.credentials.client_secret(),
            self.credentials.client_id(),
            grant.secret(),
            previous_refresh_token.unwrap_or_default(),
        ];
        classify(
            parts.status,
            &parts.headers,
            bytes.as_deref(),
            Context {
                grant: grant.name(),
                secrets: &secrets,
                previous_refresh_token,
                received_at: self.clock.now(),
            },
        )
    }
}

/// Reads a body up to [`MAX_TOKEN_RESPONSE_BYTES`]; `Ok(None)` if it is longer.
async fn read_capped(mut body: BoxBody<Bytes, BoxError>) -> Result<Option<Bytes>, BoxError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if buf.len().saturating_add(data.len()) > MAX_TOKEN_RESPONSE_BYTES {
                return Ok(None);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Some(buf.freeze()))
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("client_id", &self.credentials.client_id())
            .field("timeout", &self.timeout)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

/// The default HTTP client for token calls: hyper-util's pooled client, HTTPS through rustls
/// (webpki roots) when the `rustls` feature is on, plain HTTP otherwise.
pub(crate) fn default_client() -> Result<HttpClient, AuthError> {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    #[cfg(feature = "rustls")]
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| AuthError::config(format!("cannot set up TLS: {e}")))?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    #[cfg(not(feature = "rustls"))]
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    Ok(client.into_http_client())
}

/// A tower HTTP client for token calls: any `Service<Request<Full<Bytes>>>` answering
/// `Response<B>` (`B` an `http_body::Body` of `Bytes`) that is `Clone + Send + Sync + 'static`, such
/// as hyper-util's `Client` with your own connector, a proxy or a test double. Implemented for every
/// such service; what [`Builder::http_client`](crate::builder::Builder::http_client) takes. The
/// bounds are written here once.
pub trait TokenClient: sealed::Sealed {
    #[doc(hidden)]
    fn into_http_client(self) -> HttpClient;
}

mod sealed {
    pub trait Sealed {}
}

impl<S, RB> sealed::Sealed for S where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<RB>>
{
}

impl<S, RB> TokenClient for S
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<RB>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    RB::Error: Into<BoxError>,
{
    fn into_http_client(self) -> HttpClient {
        BoxCloneSyncService::new(
            self.map_response(|r: Response<RB>| r.map(|b| b.map_err(Into::into).boxed()))
                .map_err(Into::into),
        )
    }
}

#[cfg(test)]
mod tests;
