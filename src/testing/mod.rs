//! A fake Nifty PM OAuth token endpoint and API on `127.0.0.1`, for tests.
//!
//! [`FakeNifty`] is a real HTTP/1.1 server on a random loopback port, spawned on the *current*
//! tokio runtime. It implements just enough of Nifty to exercise an OAuth client:
//!
//! * `POST /oauth/token` with HTTP Basic client authentication and a JSON body, for the
//!   `authorization_code` and `refresh_token` grants, with refresh-token rotation and
//!   replay detection (a reused, already rotated refresh token revokes the whole grant, as
//!   RFC 9700 section 4.14.2 recommends);
//! * `/api/v1.0/...` answering `200` to a live bearer token and `401` otherwise.
//!
//! Every request is counted and recorded, and knobs change its behaviour at any time: token
//! lifetime, rotation, a delay before every token answer, queued token endpoint faults
//! ([`TokenFault`]: a canned answer, a `429` with `Retry-After`, a connection reset, a hang, a
//! delay) and queued API statuses.
//!
//! Many grants (one per user or workspace that connected the app) live side by side:
//! [`FakeNifty::new_grant`] returns a [`FakeGrant`] that issues that grant's codes and tokens,
//! counts its token and API calls, and revokes it without touching the others. `GET
//! /api/v1.0/users/me` answers which grant its bearer belongs to (`"grant": n`, see
//! [`GrantKey`]), and so does [`FakeNifty::grant_of_bearer`]. The single-grant methods
//! ([`FakeNifty::issue_refresh_token`], [`FakeNifty::current_refresh_token`], …) keep working:
//! each `issue_*` starts a new grant, and `current_refresh_token` follows the most recently used one.
//!
//! All timing uses [`tokio::time`], so tests can run under `tokio::time::pause()` and expire
//! access tokens with `tokio::time::advance`. The server stops when the last clone of the
//! [`FakeNifty`] is dropped.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use nifty_auth::testing::{FakeNifty, Grant};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let fake = FakeNifty::start().await?;
//! let refresh_token = fake.issue_refresh_token();
//!
//! let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let body = serde_json::json!({ "grant_type": "refresh_token", "refresh_token": refresh_token });
//! let request = http::Request::post(fake.token_url())
//!     .header("authorization", "Basic ZmFrZS1jbGllbnQtaWQ6ZmFrZS1jbGllbnQtc2VjcmV0")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from(body.to_string())))?;
//! let response = client.request(request).await?;
//! assert_eq!(response.status(), 201);
//! let tokens: serde_json::Value =
//!     serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
//!
//! let access_token = tokens["access_token"].as_str().unwrap_or_default();
//! let request = http::Request::get(fake.api_url("/users/me"))
//!     .header("authorization", format!("Bearer {access_token}"))
//!     .body(Full::new(Bytes::new()))?;
//! assert_eq!(client.request(request).await?.status(), 200);
//!
//! assert_eq!(fake.token_calls_for(Grant::RefreshToken), 1);
//! assert_eq!(fake.api_calls(), 1);
//! // With rotation on (the default), the refresh token was replaced.
//! assert_ne!(fake.current_refresh_token(), Some(refresh_token));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, StatusCode};
use serde_json::Value;

mod builder;
mod grant;
mod hold;
mod model;
mod pages;
mod server;

pub use builder::FakeNiftyBuilder;

/// Token answers held back by [`FakeNifty::hold_token_answers`] until this is released or dropped.
#[must_use = "dropping the hold releases it at once"]
pub struct TokenHold {
    inner: Arc<Inner>,
}

impl TokenHold {
    /// Lets the held token requests (and every later one) be answered.
    pub fn release(self) {}
}

impl Drop for TokenHold {
    fn drop(&mut self) {
        self.inner.token_hold.send_replace(false);
    }
}

impl fmt::Debug for TokenHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHold")
    }
}
pub use grant::{FakeGrant, GrantKey};
pub use hold::ApiHold;

use server::{Inner, ServerGuard, API_PREFIX, AUTHORIZE_PATH, TOKEN_PATH};

/// An OAuth grant type of the token endpoint, as sent in the JSON `grant_type` field.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grant {
    /// `"grant_type": "authorization_code"`: exchanging an authorization code.
    AuthorizationCode,
    /// `"grant_type": "refresh_token"`: refreshing an access token.
    RefreshToken,
}

impl Grant {
    fn from_wire(value: &str) -> Option<Self> {
        match value {
            "authorization_code" => Some(Self::AuthorizationCode),
            "refresh_token" => Some(Self::RefreshToken),
            _ => None,
        }
    }
}

/// A misbehaviour of the token endpoint, queued with [`FakeNifty::push_token_fault`].
///
/// Each request to `/oauth/token` pops at most one queued fault (first in, first out) after it
/// has been read, counted and recorded.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum TokenFault {
    /// Answer exactly this, instead of handling the request.
    Respond {
        /// The HTTP status code (100..=999).
        status: u16,
        /// The `Content-Type` header value.
        content_type: String,
        /// The response body.
        body: String,
    },
    /// Close the TCP connection abortively (RST, `SO_LINGER` 0) without any response: the
    /// client sees a connection error.
    Reset,
    /// Never answer; the connection stays open until the client drops it (or the fake stops).
    Hang,
    /// Wait this long, then handle the request normally.
    Delay(Duration),
    /// Answer `429 Too Many Requests` with a `Retry-After` header: `retry_after` in whole
    /// seconds, rounded up (`Duration::ZERO` sends `Retry-After: 0`).
    RateLimited {
        /// How long the client is asked to wait.
        retry_after: Duration,
    },
}

impl TokenFault {
    /// [`TokenFault::Respond`] with this status, `Content-Type: application/json` and this body.
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Self::Respond {
            status,
            content_type: "application/json".to_owned(),
            body: body.into(),
        }
    }
}

/// A request the token endpoint received, as returned by [`FakeNifty::token_requests`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecordedTokenRequest {
    /// The request method.
    pub method: Method,
    /// The `Authorization` header, if present and visible ASCII.
    pub authorization: Option<String>,
    /// The `Content-Type` header, if present and visible ASCII.
    pub content_type: Option<String>,
    /// The `Accept` header, if present and visible ASCII.
    pub accept: Option<String>,
    /// The complete request body.
    pub body: Bytes,
    /// The body parsed as JSON, if it is JSON (whatever the `Content-Type`).
    pub json: Option<Value>,
    /// The grant whose `code` (for `authorization_code`) or `refresh_token` (for
    /// `refresh_token`, current or already rotated away) the request presented, if the fake
    /// issued it.
    pub grant: Option<GrantKey>,
}

/// A request the API received, as returned by [`FakeNifty::api_requests`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecordedApiRequest {
    /// The request method.
    pub method: Method,
    /// The path including the query, e.g. `/api/v1.0/tasks?project=p-1`.
    pub path: String,
    /// The `Authorization` header, if present and visible ASCII.
    pub authorization: Option<String>,
    /// Every header of the request, as received.
    pub headers: http::HeaderMap,
    /// The complete request body.
    pub body: Bytes,
    /// The status code the fake answered with.
    pub status: u16,
    /// The grant of the bearer token, if the fake issued it (valid or not).
    pub grant: Option<GrantKey>,
}

/// A fake Nifty token endpoint and API on `127.0.0.1`; see the [module docs](self).
///
/// Clones share the server and its state. The server stops when the last clone is dropped.
#[derive(Clone)]
pub struct FakeNifty {
    inner: Arc<Inner>,
    _server: Arc<ServerGuard>,
}

impl fmt::Debug for FakeNifty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeNifty")
            .field("addr", &self.inner.addr)
            .field("client_id", &self.inner.client_id)
            .field("token_calls", &self.token_calls())
            .field("api_calls", &self.api_calls())
            .finish_non_exhaustive()
    }
}

impl FakeNifty {
    /// A builder to configure the fake before starting it.
    pub fn builder() -> FakeNiftyBuilder {
        FakeNiftyBuilder::default()
    }

    /// Starts a fake with the default configuration; same as `FakeNifty::builder().start()`.
    ///
    /// # Errors
    ///
    /// Binding the listener failed.
    ///
    /// # Panics
    ///
    /// Panics if called outside a tokio runtime.
    pub async fn start() -> io::Result<FakeNifty> {
        Self::builder().start().await
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The token endpoint: `base_url() + "/oauth/token"`.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.base_url())
    }

    /// An API URL: `base_url() + "/api/v1.0" + path`; `path` should start with `/`.
    pub fn api_url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}{path}", self.base_url())
    }

    /// The client id the token endpoint accepts.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The client secret the token endpoint accepts.
    pub fn client_secret(&self) -> &str {
        &self.inner.client_secret
    }

    /// The client credentials the token endpoint accepts.
    pub fn credentials(&self) -> crate::Credentials {
        crate::Credentials::new(
            self.inner.client_id.clone(),
            self.inner.client_secret.clone(),
        )
    }

    /// Starts a new grant, with no code or token yet, and returns a handle on it: issue its
    /// codes and tokens, count its calls, revoke it. Many grants live side by side, each with
    /// its own refresh token rotation and revocation.
    pub fn new_grant(&self) -> FakeGrant {
        let key = self.inner.state.lock().model.new_grant();
        self.grant(key)
    }

    /// A handle on the grant `key` of this fake (e.g. from [`FakeNifty::grant_of_bearer`]).
    pub fn grant(&self, key: GrantKey) -> FakeGrant {
        FakeGrant {
            inner: Arc::clone(&self.inner),
            key,
        }
    }

    /// The grant `access_token` was issued for, whether or not it is still valid; `None` for a
    /// token this fake did not issue or issued for no grant ([`FakeNifty::issue_access_token`]).
    pub fn grant_of_bearer(&self, access_token: &str) -> Option<GrantKey> {
        self.inner
            .state
            .lock()
            .model
            .grant_of_access_token(access_token)
    }

    /// Starts a new grant and returns its one-time authorization code, bound to `redirect_uri`
    /// (the `authorization_code` request must send the same `redirect_uri`). Same as
    /// `fake.new_grant().issue_code(redirect_uri)`.
    pub fn issue_code(&self, redirect_uri: &str) -> String {
        self.new_grant().issue_code(redirect_uri)
    }

    /// Starts a new grant with a valid refresh token and returns it (no access token is issued).
    /// Same as `fake.new_grant().issue_refresh_token()`.
    ///
    /// The grant becomes the most recently used one (see [`FakeNifty::current_refresh_token`]).
    pub fn issue_refresh_token(&self) -> String {
        self.new_grant().issue_refresh_token()
    }

    /// Issues a valid access token that belongs to no grant, expiring after `lifetime`
    /// (`None`: never). Only [`FakeNifty::revoke_access_tokens`] or expiry invalidates it.
    pub fn issue_access_token(&self, lifetime: Option<Duration>) -> String {
        self.inner
            .state
            .lock()
            .model
            .issue_access_token(None, lifetime)
    }

    /// The lifetime of access tokens issued from now on, sent as `expires_in`; `None` omits
    /// `expires_in` and the tokens never expire.
    pub fn set_token_lifetime(&self, lifetime: Option<Duration>) {
        self.inner.state.lock().model.token_lifetime = lifetime;
    }

    /// Whether each refresh from now on returns a new refresh token and retires the old one.
    /// Without rotation the answer has no `refresh_token` and the old one stays valid.
    pub fn set_rotation(&self, rotate: bool) {
        self.inner.state.lock().model.rotation = rotate;
    }

    /// How long every token endpoint answer (faulted ones included) waits first.
    pub fn set_token_delay(&self, delay: Duration) {
        self.inner.state.lock().token_delay = delay;
    }

    /// Queues a fault; each token endpoint request consumes the oldest queued fault, if any,
    /// instead of normal handling (a [`TokenFault::Delay`] is followed by normal handling).
    ///
    /// # Panics
    ///
    /// Panics if a [`TokenFault::Respond`] has a status outside 100..=999 or a `content_type`
    /// that is not a valid header value.
    pub fn push_token_fault(&self, fault: TokenFault) {
        if let TokenFault::Respond {
            status,
            content_type,
            ..
        } = &fault
        {
            assert!(
                StatusCode::from_u16(*status).is_ok(),
                "FakeNifty: invalid status {status} in TokenFault::Respond"
            );
            assert!(
                HeaderValue::from_str(content_type).is_ok(),
                "FakeNifty: invalid content type {content_type:?} in TokenFault::Respond"
            );
        }
        self.inner.state.lock().token_faults.push_back(fault);
    }

    /// Queues a status: the next API request is answered with it (and a JSON body
    /// `{"message": ...}`) whatever its token. It is still counted and recorded; a queued `401`
    /// also counts in [`FakeNifty::unauthorized_served`].
    ///
    /// # Panics
    ///
    /// Panics if `status` is outside 100..=999.
    pub fn push_api_status(&self, status: u16) {
        let status = match StatusCode::from_u16(status) {
            Ok(status) => status,
            Err(_) => panic!("FakeNifty: invalid API status {status}"),
        };
        self.inner.state.lock().api_statuses.push_back(status);
    }

    /// Queues a body: the next API request (after any queued statuses) is answered `200` with these
    /// bytes (`Content-Type: application/octet-stream`) whatever its token. It is still counted and
    /// recorded.
    pub fn push_api_body(&self, body: impl Into<Bytes>) {
        self.inner.state.lock().api_bodies.push_back(body.into());
    }

    /// Holds the answer to the next API request that has no hold yet: the request is read (its body
    /// too) and then waits, unanswered, until the returned [`ApiHold`] is released or dropped.
    /// [`ApiHold::arrived`] says when the request got there, so a test knows a request is in flight
    /// without sleeping.
    pub fn hold_next_api_answer(&self) -> ApiHold {
        let (held, hold) = hold::pair();
        self.inner.state.lock().api_holds.push_back(held);
        hold
    }

    /// The authorize page: `base_url() + "/authorize"`. A `GET` with `response_type=code`, this
    /// fake's `client_id`, a `redirect_uri` and a `state` answers `302` to
    /// `redirect_uri?code=…&state=…` with a fresh one-time code (as if the user approved), or to
    /// `redirect_uri?error=access_denied&state=…` after [`FakeNifty::deny_next_authorization`].
    /// A wrong client id or response type answers `400`. With a PKCE `code_challenge` (method
    /// `S256` only; anything else answers `400`), the code's exchange must send the matching
    /// `code_verifier` or gets `invalid_grant`; without one, no verifier is checked.
    pub fn authorize_url(&self) -> String {
        format!("{}{AUTHORIZE_PATH}", self.base_url())
    }

    /// The next authorize request is refused by the "user" (`error=access_denied`).
    pub fn deny_next_authorization(&self) {
        self.inner.state.lock().deny_next_authorization = true;
    }

    /// The number of requests to the authorize page.
    pub fn authorize_calls(&self) -> usize {
        self.inner.state.lock().counts.authorize_calls
    }

    /// Invalidates every access token issued so far, of every grant: the API answers `401` to
    /// them. Refresh tokens stay valid and tokens issued later work. See also
    /// [`FakeGrant::revoke_access_tokens`].
    pub fn revoke_access_tokens(&self) {
        self.inner.state.lock().model.revoke_access_tokens(None);
    }

    /// Holds back every token answer until the returned [`TokenHold`] is released (or dropped):
    /// token requests arrive and are counted (in flight), but none is answered. A test can then
    /// bring about what must happen *while* a refresh is running — N requests rejected with the
    /// old token, say — waiting for that event instead of hoping the refresh is slow enough.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let fake = nifty_auth::testing::FakeNifty::start().await.unwrap();
    /// let hold = fake.hold_token_answers();
    /// // ... start a refresh, wait for what must happen meanwhile ...
    /// hold.release();
    /// # }
    /// ```
    pub fn hold_token_answers(&self) -> TokenHold {
        self.inner.token_hold.send_replace(true);
        TokenHold {
            inner: Arc::clone(&self.inner),
        }
    }

    /// The number of HTTP requests that reached `/oauth/token`, faulted ones included.
    pub fn token_calls(&self) -> usize {
        self.inner.state.lock().counts.token_calls
    }

    /// The number of token endpoint requests whose JSON body had this `grant_type`, counted
    /// before any validation (client authentication, content type). Faulted requests are
    /// counted too: the fake always reads the body before applying a fault.
    pub fn token_calls_for(&self, grant: Grant) -> usize {
        let st = self.inner.state.lock();
        match grant {
            Grant::AuthorizationCode => st.counts.token_calls_code,
            Grant::RefreshToken => st.counts.token_calls_refresh,
        }
    }

    /// The number of token endpoint requests received and not answered yet (waiting for
    /// [`FakeNifty::set_token_delay`], a [`TokenFault::Delay`] or a [`TokenFault::Hang`]).
    pub fn token_calls_in_flight(&self) -> usize {
        self.inner.state.lock().counts.in_flight
    }

    /// The most token endpoint requests ever in flight at once (the high-water mark of
    /// [`FakeNifty::token_calls_in_flight`]): catches overlapping token calls however short.
    pub fn max_token_calls_in_flight(&self) -> usize {
        self.inner.state.lock().counts.max_in_flight
    }

    /// The number of `refresh_token` requests presenting a refresh token that was already rotated
    /// away (a replay: the client lost or ignored the newer one). Each gets `invalid_grant`.
    pub fn refresh_token_replays(&self) -> usize {
        self.inner.state.lock().model.replays
    }

    /// Whether `refresh_token` is the current refresh token of a grant that is not revoked (it would
    /// be accepted now; a rotated-away one would not).
    pub fn refresh_token_is_live(&self, refresh_token: &str) -> bool {
        self.inner
            .state
            .lock()
            .model
            .refresh_token_is_live(refresh_token)
    }

    /// The number of API requests whose bearer token had expired when it arrived (a token this
    /// fake issued, not revoked, past its lifetime). Queued [`FakeNifty::push_api_status`]
    /// answers do not look at the token and are not counted.
    pub fn expired_tokens_received(&self) -> usize {
        self.inner.state.lock().counts.expired_received
    }

    /// The longest time past its expiry at which an expired bearer token arrived at the API
    /// (zero if none did); see [`FakeNifty::expired_tokens_received`].
    pub fn max_expired_overdue(&self) -> Duration {
        self.inner.state.lock().counts.max_overdue
    }

    /// The number of `400` `invalid_grant` answers of the token endpoint (including
    /// [`TokenFault::Respond`] answers with status 400 and a JSON `"error": "invalid_grant"`).
    pub fn invalid_grants_served(&self) -> usize {
        self.inner.state.lock().counts.invalid_grants
    }

    /// The number of requests under `/api/v1.0`.
    pub fn api_calls(&self) -> usize {
        self.inner.state.lock().counts.api_calls
    }

    /// The number of `401` answers of the API.
    pub fn unauthorized_served(&self) -> usize {
        self.inner.state.lock().counts.unauthorized
    }

    /// Every request the token endpoint received, oldest first.
    pub fn token_requests(&self) -> Vec<RecordedTokenRequest> {
        self.inner.state.lock().token_requests.clone()
    }

    /// Every request the API received, oldest first.
    pub fn api_requests(&self) -> Vec<RecordedApiRequest> {
        self.inner.state.lock().api_requests.clone()
    }

    /// The newest valid refresh token of the most recently used grant (the last one issued by
    /// [`FakeNifty::issue_refresh_token`] or presented to the token endpoint); `None` if there
    /// is none or that grant was revoked.
    pub fn current_refresh_token(&self) -> Option<String> {
        let st = self.inner.state.lock();
        st.model.current_refresh_token(st.model.last_grant?)
    }
}
