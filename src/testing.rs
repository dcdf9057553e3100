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
//! ([`TokenFault`]: a canned answer, a connection reset, a hang, a delay) and queued API statuses.
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

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::{select, Either};
use http::header::{
    HeaderValue, ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

const TOKEN_PATH: &str = "/oauth/token";
const AUTHORIZE_PATH: &str = "/authorize";
const API_PREFIX: &str = "/api/v1.0";
const DEFAULT_CLIENT_ID: &str = "fake-client-id";
const DEFAULT_CLIENT_SECRET: &str = "fake-client-secret";
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
const SCOPE: &str = "project task";

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
    /// The complete request body.
    pub body: Bytes,
    /// The status code the fake answered with.
    pub status: u16,
}

/// Configures a [`FakeNifty`] before it starts; see [`FakeNifty::builder`].
#[derive(Clone)]
#[must_use = "a FakeNiftyBuilder does nothing until `.start().await`"]
pub struct FakeNiftyBuilder {
    client_id: String,
    client_secret: String,
    token_lifetime: Option<Duration>,
    rotation: bool,
    token_delay: Duration,
    replay_revokes_grant: bool,
}

impl fmt::Debug for FakeNiftyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeNiftyBuilder")
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .field("token_lifetime", &self.token_lifetime)
            .field("rotation", &self.rotation)
            .field("token_delay", &self.token_delay)
            .field("replay_revokes_grant", &self.replay_revokes_grant)
            .finish()
    }
}

impl Default for FakeNiftyBuilder {
    fn default() -> Self {
        Self {
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            token_lifetime: Some(DEFAULT_TOKEN_LIFETIME),
            rotation: true,
            token_delay: Duration::ZERO,
            replay_revokes_grant: true,
        }
    }
}

impl FakeNiftyBuilder {
    /// The OAuth client id and secret the token endpoint accepts
    /// (default `fake-client-id` / `fake-client-secret`).
    pub fn client(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.client_id = id.into();
        self.client_secret = secret.into();
        self
    }

    /// The lifetime of issued access tokens, sent as `expires_in`; `None` omits `expires_in`
    /// and the tokens never expire. Default: one hour.
    pub fn token_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Whether each refresh returns a new refresh token and retires the old one. Default: `true`.
    pub fn rotation(mut self, rotate: bool) -> Self {
        self.rotation = rotate;
        self
    }

    /// How long every token endpoint answer waits first. Default: zero.
    pub fn token_delay(mut self, delay: Duration) -> Self {
        self.token_delay = delay;
        self
    }

    /// Whether presenting a retired (already rotated) refresh token revokes the whole grant: its
    /// current refresh token and all its access tokens stop working (RFC 9700 section 4.14.2).
    /// The replayed request gets `invalid_grant` either way. Default: `true`.
    pub fn replay_revokes_grant(mut self, on: bool) -> Self {
        self.replay_revokes_grant = on;
        self
    }

    /// Binds `127.0.0.1:0` and spawns the server on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// Binding the listener failed.
    ///
    /// # Panics
    ///
    /// Panics if called outside a tokio runtime.
    pub async fn start(self) -> io::Result<FakeNifty> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            addr,
            client_id: self.client_id,
            client_secret: self.client_secret,
            replay_revokes_grant: self.replay_revokes_grant,
            state: Mutex::new(State::new(
                self.token_lifetime,
                self.rotation,
                self.token_delay,
            )),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&inner))).abort_handle();
        Ok(FakeNifty {
            inner,
            _server: Arc::new(ServerGuard { accept }),
        })
    }
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

    /// Starts a new grant and returns its one-time authorization code, bound to `redirect_uri`
    /// (the `authorization_code` request must send the same `redirect_uri`).
    pub fn issue_code(&self, redirect_uri: &str) -> String {
        self.inner.state.lock().issue_code(redirect_uri)
    }

    /// Starts a new grant with a valid refresh token and returns it (no access token is issued).
    ///
    /// The grant becomes the most recently used one (see [`FakeNifty::current_refresh_token`]).
    pub fn issue_refresh_token(&self) -> String {
        let mut st = self.inner.state.lock();
        let grant = st.new_grant();
        let refresh_token = st.new_refresh_token(grant);
        st.last_grant = Some(grant);
        refresh_token
    }

    /// Issues a valid access token that belongs to no grant, expiring after `lifetime`
    /// (`None`: never). Only [`FakeNifty::revoke_access_tokens`] or expiry invalidates it.
    pub fn issue_access_token(&self, lifetime: Option<Duration>) -> String {
        self.inner.state.lock().new_access_token(None, lifetime)
    }

    /// The lifetime of access tokens issued from now on, sent as `expires_in`; `None` omits
    /// `expires_in` and the tokens never expire.
    pub fn set_token_lifetime(&self, lifetime: Option<Duration>) {
        self.inner.state.lock().token_lifetime = lifetime;
    }

    /// Whether each refresh from now on returns a new refresh token and retires the old one.
    /// Without rotation the answer has no `refresh_token` and the old one stays valid.
    pub fn set_rotation(&self, rotate: bool) {
        self.inner.state.lock().rotation = rotate;
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
        self.inner.state.lock().authorize_calls
    }

    /// Invalidates every access token issued so far: the API answers `401` to them. Refresh
    /// tokens stay valid and tokens issued later work.
    pub fn revoke_access_tokens(&self) {
        let mut st = self.inner.state.lock();
        for token in st.access_tokens.values_mut() {
            token.revoked = true;
        }
    }

    /// The number of HTTP requests that reached `/oauth/token`, faulted ones included.
    pub fn token_calls(&self) -> usize {
        self.inner.state.lock().token_calls
    }

    /// The number of token endpoint requests whose JSON body had this `grant_type`, counted
    /// before any validation (client authentication, content type). Faulted requests are
    /// counted too: the fake always reads the body before applying a fault.
    pub fn token_calls_for(&self, grant: Grant) -> usize {
        let st = self.inner.state.lock();
        match grant {
            Grant::AuthorizationCode => st.token_calls_code,
            Grant::RefreshToken => st.token_calls_refresh,
        }
    }

    /// The number of token endpoint requests received and not answered yet (waiting for
    /// [`FakeNifty::set_token_delay`], a [`TokenFault::Delay`] or a [`TokenFault::Hang`]).
    pub fn token_calls_in_flight(&self) -> usize {
        self.inner.state.lock().in_flight
    }

    /// The most token endpoint requests ever in flight at once (the high-water mark of
    /// [`FakeNifty::token_calls_in_flight`]): catches overlapping token calls however short.
    pub fn max_token_calls_in_flight(&self) -> usize {
        self.inner.state.lock().max_in_flight
    }

    /// The number of `refresh_token` requests presenting a refresh token that was already rotated
    /// away (a replay: the client lost or ignored the newer one). Each gets `invalid_grant`.
    pub fn refresh_token_replays(&self) -> usize {
        self.inner.state.lock().replays
    }

    /// Whether `refresh_token` is the current refresh token of a grant that is not revoked (it would
    /// be accepted now; a rotated-away one would not).
    pub fn refresh_token_is_live(&self, refresh_token: &str) -> bool {
        let st = self.inner.state.lock();
        st.refresh_tokens
            .get(refresh_token)
            .and_then(|grant| st.grants.get(grant))
            .is_some_and(|g| !g.revoked && g.refresh_token.as_deref() == Some(refresh_token))
    }

    /// The number of API requests whose bearer token had expired when it arrived (a token this
    /// fake issued, not revoked, past its lifetime). Queued [`FakeNifty::push_api_status`]
    /// answers do not look at the token and are not counted.
    pub fn expired_tokens_received(&self) -> usize {
        self.inner.state.lock().expired_received
    }

    /// The longest time past its expiry at which an expired bearer token arrived at the API
    /// (zero if none did); see [`FakeNifty::expired_tokens_received`].
    pub fn max_expired_overdue(&self) -> Duration {
        self.inner.state.lock().max_overdue
    }

    /// The number of `400` `invalid_grant` answers of the token endpoint (including
    /// [`TokenFault::Respond`] answers with status 400 and a JSON `"error": "invalid_grant"`).
    pub fn invalid_grants_served(&self) -> usize {
        self.inner.state.lock().invalid_grants
    }

    /// The number of requests under `/api/v1.0`.
    pub fn api_calls(&self) -> usize {
        self.inner.state.lock().api_calls
    }

    /// The number of `401` answers of the API.
    pub fn unauthorized_served(&self) -> usize {
        self.inner.state.lock().unauthorized
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
        let grant = st.grants.get(&st.last_grant?)?;
        if grant.revoked {
            return None;
        }
        grant.refresh_token.clone()
    }
}

/// Stops the server when the last [`FakeNifty`] clone is dropped. Aborting the accept task
/// drops its `JoinSet`, which aborts every connection task.
struct ServerGuard {
    accept: AbortHandle,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

struct Inner {
    addr: SocketAddr,
    client_id: String,
    client_secret: String,
    replay_revokes_grant: bool,
    state: Mutex<State>,
}

struct GrantState {
    /// The current refresh token, once one was issued.
    refresh_token: Option<String>,
    revoked: bool,
}

struct CodeState {
    grant: u64,
    redirect_uri: String,
    used: bool,
    /// The PKCE `code_challenge` (S256) of the authorize request, if it sent one.
    challenge: Option<String>,
}

struct AccessState {
    grant: Option<u64>,
    expires_at: Option<Instant>,
    revoked: bool,
}

struct State {
    token_lifetime: Option<Duration>,
    rotation: bool,
    token_delay: Duration,
    token_faults: VecDeque<TokenFault>,
    api_statuses: VecDeque<StatusCode>,

    next_grant: u64,
    next_token: u64,
    grants: HashMap<u64, GrantState>,
    codes: HashMap<String, CodeState>,
    /// Every refresh token ever issued (current or retired) → its grant.
    refresh_tokens: HashMap<String, u64>,
    access_tokens: HashMap<String, AccessState>,
    last_grant: Option<u64>,

    deny_next_authorization: bool,
    authorize_calls: usize,
    token_calls: usize,
    token_calls_code: usize,
    token_calls_refresh: usize,
    in_flight: usize,
    max_in_flight: usize,
    replays: usize,
    expired_received: usize,
    max_overdue: Duration,
    invalid_grants: usize,
    api_calls: usize,
    unauthorized: usize,
    token_requests: Vec<RecordedTokenRequest>,
    api_requests: Vec<RecordedApiRequest>,
}

impl State {
    fn new(token_lifetime: Option<Duration>, rotation: bool, token_delay: Duration) -> Self {
        Self {
            token_lifetime,
            rotation,
            token_delay,
            token_faults: VecDeque::new(),
            api_statuses: VecDeque::new(),
            next_grant: 1,
            next_token: 1,
            grants: HashMap::new(),
            codes: HashMap::new(),
            refresh_tokens: HashMap::new(),
            access_tokens: HashMap::new(),
            last_grant: None,
            deny_next_authorization: false,
            authorize_calls: 0,
            token_calls: 0,
            token_calls_code: 0,
            token_calls_refresh: 0,
            in_flight: 0,
            max_in_flight: 0,
            replays: 0,
            expired_received: 0,
            max_overdue: Duration::ZERO,
            invalid_grants: 0,
            api_calls: 0,
            unauthorized: 0,
            token_requests: Vec::new(),
            api_requests: Vec::new(),
        }
    }

    /// Starts a new grant and returns its one-time code, bound to `redirect_uri`.
    fn issue_code(&mut self, redirect_uri: &str) -> String {
        let grant = self.new_grant();
        let code = format!("code-{grant}-{:016x}", fastrand::u64(..));
        self.codes.insert(
            code.clone(),
            CodeState {
                grant,
                redirect_uri: redirect_uri.to_owned(),
                used: false,
                challenge: None,
            },
        );
        code
    }

    fn new_grant(&mut self) -> u64 {
        let id = self.next_grant;
        self.next_grant += 1;
        self.grants.insert(
            id,
            GrantState {
                refresh_token: None,
                revoked: false,
            },
        );
        id
    }

    fn next_token(&mut self) -> u64 {
        let n = self.next_token;
        self.next_token += 1;
        n
    }

    /// Issues a refresh token for `grant` and makes it the grant's current one.
    fn new_refresh_token(&mut self, grant: u64) -> String {
        let n = self.next_token();
        let token = format!("rt-{grant}-{n}-{:016x}", fastrand::u64(..));
        self.refresh_tokens.insert(token.clone(), grant);
        if let Some(state) = self.grants.get_mut(&grant) {
            state.refresh_token = Some(token.clone());
        }
        token
    }

    fn new_access_token(&mut self, grant: Option<u64>, lifetime: Option<Duration>) -> String {
        let n = self.next_token();
        let label = grant.map_or_else(|| "s".to_owned(), |g| g.to_string());
        let token = format!("at-{label}-{n}-{:016x}", fastrand::u64(..));
        self.access_tokens.insert(
            token.clone(),
            AccessState {
                grant,
                expires_at: lifetime.and_then(|l| Instant::now().checked_add(l)),
                revoked: false,
            },
        );
        token
    }

    fn access_token_valid(&self, token: &str) -> bool {
        let Some(access) = self.access_tokens.get(token) else {
            return false;
        };
        let grant_live = access
            .grant
            .none_or(|g| self.grants.get(&g).is_some_and(|g| !g.revoked));
        !access.revoked && grant_live && access.expires_at.none_or(|at| Instant::now() < at)
    }

    /// How long ago `token` expired, if it is a known, unrevoked token of a live grant (or of no
    /// grant) that has expired.
    fn access_token_overdue(&self, token: &str) -> Option<Duration> {
        let access = self.access_tokens.get(token)?;
        let grant_live = access
            .grant
            .none_or(|g| self.grants.get(&g).is_some_and(|g| !g.revoked));
        let expires_at = access.expires_at?;
        let now = Instant::now();
        (!access.revoked && grant_live && now >= expires_at).then(|| now - expires_at)
    }

    /// A 201 token answer for `grant`, with a new refresh token if `refresh_token` is `Some`.
    fn token_success(
        &mut self,
        grant: u64,
        refresh_token: Option<String>,
    ) -> Response<Full<Bytes>> {
        let lifetime = self.token_lifetime;
        let access_token = self.new_access_token(Some(grant), lifetime);
        self.last_grant = Some(grant);
        let mut body = serde_json::Map::new();
        body.insert("access_token".into(), Value::from(access_token));
        body.insert("token_type".into(), Value::from("bearer"));
        if let Some(refresh_token) = refresh_token {
            body.insert("refresh_token".into(), Value::from(refresh_token));
        }
        if let Some(lifetime) = lifetime {
            body.insert("expires_in".into(), Value::from(lifetime.as_secs_f64()));
        }
        body.insert("scope".into(), Value::from(SCOPE));
        let mut response = json_response(StatusCode::CREATED, &Value::Object(body));
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    fn invalid_grant(&mut self, description: &str) -> Response<Full<Bytes>> {
        self.invalid_grants += 1;
        json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "invalid_grant", "error_description": description }),
        )
    }
}

/// `Option::is_none_or` is newer than the crate's MSRV.
trait NoneOr<T> {
    fn none_or(self, f: impl FnOnce(T) -> bool) -> bool;
}

impl<T> NoneOr<T> for Option<T> {
    fn none_or(self, f: impl FnOnce(T) -> bool) -> bool {
        match self {
            None => true,
            Some(value) => f(value),
        }
    }
}

/// Counts a token request as in flight until it is answered or dropped.
struct InFlight<'a>(&'a Inner);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                while connections.try_join_next().is_some() {}
                connections.spawn(serve_connection(stream, Arc::clone(&inner)));
            }
            // E.g. out of file descriptors: back off a little instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn serve_connection(stream: TcpStream, inner: Arc<Inner>) {
    let _ = stream.set_nodelay(true);
    let reset = Arc::new(Notify::new());
    let service_reset = Arc::clone(&reset);
    let service = service_fn(move |request| {
        let inner = Arc::clone(&inner);
        let reset = Arc::clone(&service_reset);
        async move { Ok::<_, Infallible>(inner.handle(request, &reset).await) }
    });
    let mut connection = http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service);
    let was_reset = {
        let reset_requested = pin!(reset.notified());
        matches!(
            select(&mut connection, reset_requested).await,
            Either::Right(_)
        )
    };
    if was_reset {
        let stream = connection.into_parts().io.into_inner();
        // Linger 0: closing sends RST instead of FIN, and never blocks.
        #[allow(deprecated)]
        let _ = stream.set_linger(Some(Duration::ZERO));
        drop(stream);
    }
}

impl Inner {
    async fn handle(&self, request: Request<Incoming>, reset: &Notify) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if path == TOKEN_PATH {
            self.token(request, reset).await
        } else if path == AUTHORIZE_PATH {
            self.authorize(&request)
        } else if path == API_PREFIX
            || path
                .strip_prefix(API_PREFIX)
                .is_some_and(|rest| rest.starts_with('/'))
        {
            self.api(request).await
        } else {
            json_response(StatusCode::NOT_FOUND, &json!({ "message": "not found" }))
        }
    }

    /// The authorize page: approves at once (or refuses once if asked to) and redirects.
    fn authorize(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let mut params = HashMap::new();
        for (key, value) in
            form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
        {
            params.insert(key.into_owned(), value.into_owned());
        }
        let mut st = self.state.lock();
        st.authorize_calls += 1;
        let param = |name: &str| params.get(name).map(String::as_str);
        if request.method() != Method::GET
            || param("response_type") != Some("code")
            || param("client_id") != Some(self.client_id.as_str())
        {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
        }
        let Some(redirect_uri) = param("redirect_uri").filter(|r| r.parse::<http::Uri>().is_ok())
        else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
        };
        // PKCE (RFC 7636): only S256 is accepted; the exchange must then prove the verifier.
        let challenge = param("code_challenge").map(str::to_owned);
        if challenge.is_some() && param("code_challenge_method") != Some("S256") {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
        }
        let mut query = form_urlencoded::Serializer::new(String::new());
        if std::mem::take(&mut st.deny_next_authorization) {
            query.append_pair("error", "access_denied");
            query.append_pair("error_description", "The user denied the request");
        } else {
            let code = st.issue_code(redirect_uri);
            if let Some(state) = st.codes.get_mut(&code) {
                state.challenge = challenge;
            }
            query.append_pair("code", &code);
        }
        if let Some(state) = param("state") {
            query.append_pair("state", state);
        }
        let separator = if redirect_uri.contains('?') { '&' } else { '?' };
        let location = format!("{redirect_uri}{separator}{}", query.finish());
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::FOUND;
        match HeaderValue::try_from(location) {
            Ok(location) => {
                response
                    .headers_mut()
                    .insert(http::header::LOCATION, location);
                response
            }
            Err(_) => oauth_error(StatusCode::BAD_REQUEST, "invalid_request"),
        }
    }

    async fn token(&self, request: Request<Incoming>, reset: &Notify) -> Response<Full<Bytes>> {
        let in_flight = {
            let mut st = self.state.lock();
            st.token_calls += 1;
            st.in_flight += 1;
            st.max_in_flight = st.max_in_flight.max(st.in_flight);
            InFlight(self)
        };
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let grant = json
            .as_ref()
            .and_then(|json| json.get("grant_type"))
            .and_then(Value::as_str)
            .and_then(Grant::from_wire);
        let (fault, delay) = {
            let mut st = self.state.lock();
            match grant {
                Some(Grant::AuthorizationCode) => st.token_calls_code += 1,
                Some(Grant::RefreshToken) => st.token_calls_refresh += 1,
                None => {}
            }
            st.token_requests.push(RecordedTokenRequest {
                method: parts.method.clone(),
                authorization: header_string(&parts.headers, AUTHORIZATION),
                content_type: header_string(&parts.headers, CONTENT_TYPE),
                accept: header_string(&parts.headers, ACCEPT),
                body,
                json: json.clone(),
            });
            (st.token_faults.pop_front(), st.token_delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let response = match fault {
            None => self.token_answer(&parts, json),
            Some(TokenFault::Delay(wait)) => {
                tokio::time::sleep(wait).await;
                self.token_answer(&parts, json)
            }
            Some(TokenFault::Respond {
                status,
                content_type,
                body,
            }) => self.canned_token_answer(status, &content_type, body),
            Some(TokenFault::Reset) => {
                reset.notify_one();
                never().await
            }
            Some(TokenFault::Hang) => never().await,
        };
        drop(in_flight);
        response
    }

    fn canned_token_answer(
        &self,
        status: u16,
        content_type: &str,
        body: String,
    ) -> Response<Full<Bytes>> {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status == StatusCode::BAD_REQUEST
            && serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|json| json.get("error").cloned())
                .is_some_and(|error| error == "invalid_grant")
        {
            self.state.lock().invalid_grants += 1;
        }
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = HeaderValue::from_str(content_type) {
            response.headers_mut().insert(CONTENT_TYPE, value);
        }
        response
    }

    /// Normal token endpoint handling, after the request was recorded.
    fn token_answer(
        &self,
        parts: &http::request::Parts,
        json: Option<Value>,
    ) -> Response<Full<Bytes>> {
        if parts.method != Method::POST {
            let mut response = oauth_error(StatusCode::METHOD_NOT_ALLOWED, "invalid_request");
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        if !self.client_authenticated(&parts.headers) {
            let mut response = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"nifty\""),
            );
            return response;
        }
        let is_json = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
        }
        let Some(Value::Object(params)) = json else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
        };
        let param = |name: &str| params.get(name).and_then(Value::as_str);
        let Some(grant_type) = param("grant_type") else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
        };
        match Grant::from_wire(grant_type) {
            Some(Grant::AuthorizationCode) => match param("code") {
                Some(code) => {
                    self.exchange_code(code, param("redirect_uri"), param("code_verifier"))
                }
                None => oauth_error(StatusCode::BAD_REQUEST, "invalid_request"),
            },
            Some(Grant::RefreshToken) => match param("refresh_token") {
                Some(refresh_token) => self.refresh(refresh_token),
                None => oauth_error(StatusCode::BAD_REQUEST, "invalid_request"),
            },
            None => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
        }
    }

    fn client_authenticated(&self, headers: &http::HeaderMap) -> bool {
        let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some((scheme, encoded)) = value.trim().split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return false;
        };
        decoded
            .split_once(':')
            .is_some_and(|(id, secret)| id == self.client_id && secret == self.client_secret)
    }

    fn exchange_code(
        &self,
        code: &str,
        redirect_uri: Option<&str>,
        code_verifier: Option<&str>,
    ) -> Response<Full<Bytes>> {
        let mut st = self.state.lock();
        let grant = match st.codes.get_mut(code) {
            None => return st.invalid_grant("unknown authorization code"),
            Some(state) if state.used => {
                return st.invalid_grant("authorization code already used")
            }
            Some(state) if redirect_uri != Some(state.redirect_uri.as_str()) => {
                return st.invalid_grant("redirect_uri does not match the authorization request")
            }
            Some(state)
                if state.challenge.as_ref().is_some_and(|challenge| {
                    code_verifier.map(crate::authorize::s256_challenge).as_ref() != Some(challenge)
                }) =>
            {
                return st.invalid_grant("PKCE code_verifier does not match the code_challenge")
            }
            Some(state) => {
                state.used = true;
                state.grant
            }
        };
        if !matches!(st.grants.get(&grant), Some(g) if !g.revoked) {
            return st.invalid_grant("grant revoked");
        }
        let refresh_token = st.new_refresh_token(grant);
        st.token_success(grant, Some(refresh_token))
    }

    fn refresh(&self, refresh_token: &str) -> Response<Full<Bytes>> {
        let mut st = self.state.lock();
        let Some(&grant) = st.refresh_tokens.get(refresh_token) else {
            return st.invalid_grant("unknown refresh token");
        };
        st.last_grant = Some(grant);
        let (revoked, current) = match st.grants.get(&grant) {
            Some(state) => (
                state.revoked,
                state.refresh_token.as_deref() == Some(refresh_token),
            ),
            None => (true, false),
        };
        if revoked {
            return st.invalid_grant("grant revoked");
        }
        if !current {
            st.replays += 1;
            if self.replay_revokes_grant {
                if let Some(state) = st.grants.get_mut(&grant) {
                    state.revoked = true;
                }
            }
            return st.invalid_grant("refresh token already used");
        }
        let new_refresh_token = if st.rotation {
            Some(st.new_refresh_token(grant))
        } else {
            None
        };
        st.token_success(grant, new_refresh_token)
    }

    async fn api(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        self.state.lock().api_calls += 1;
        let (parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
        let authorization = header_string(&parts.headers, AUTHORIZATION);
        let body = body
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();

        let mut st = self.state.lock();
        let response = if let Some(status) = st.api_statuses.pop_front() {
            let message = status.canonical_reason().unwrap_or("fake status");
            let mut response = json_response(status, &json!({ "message": message }));
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            response
        } else {
            let token = authorization.as_deref().and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
            if let Some(overdue) = token.and_then(|token| st.access_token_overdue(token)) {
                st.expired_received += 1;
                st.max_overdue = st.max_overdue.max(overdue);
            }
            if token.is_some_and(|token| st.access_token_valid(token)) {
                let body = match (&parts.method, parts.uri.path()) {
                    (&Method::GET, "/api/v1.0/users/me") => {
                        json!({ "id": "u-1", "email": "dev@example.com", "name": "Fake Dev" })
                    }
                    (&Method::GET, "/api/v1.0/projects") => json!({
                        "projects": [
                            { "id": "p-1", "name": "Launch" },
                            { "id": "p-2", "name": "Roadmap" }
                        ]
                    }),
                    (method, _) => json!({
                        "ok": true,
                        "method": method.as_str(),
                        "path": path,
                        "body_len": body.len(),
                    }),
                };
                json_response(StatusCode::OK, &body)
            } else {
                let mut response = json_response(
                    StatusCode::UNAUTHORIZED,
                    &json!({ "message": "unauthorized" }),
                );
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
                response
            }
        };
        if response.status() == StatusCode::UNAUTHORIZED {
            st.unauthorized += 1;
        }
        st.api_requests.push(RecordedApiRequest {
            method: parts.method,
            path,
            authorization,
            body,
            status: response.status().as_u16(),
        });
        response
    }
}

/// A future that never completes (for [`TokenFault::Hang`] and [`TokenFault::Reset`]).
fn never() -> impl Future<Output = Response<Full<Bytes>>> + Send {
    std::future::pending()
}

fn header_string(headers: &http::HeaderMap, name: http::header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn oauth_error(status: StatusCode, error: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": error }))
}
