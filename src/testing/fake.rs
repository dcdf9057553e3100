//! [`FakeNifty`]: the handle tests hold — its addresses, its knobs, its counters and records —
//! and starting it ([`FakeNiftyBuilder::start`], [`FakeNiftyBuilder::start_in_process`]).

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::StatusCode;
use tokio::net::TcpListener;

use super::builder::FakeNiftyBuilder;
use super::grant::FakeGrant;
use super::hold::{self, ApiHold, TokenHold};
use super::model::GrantKey;
use super::server::{self, Inner, ServerGuard, API_PREFIX, AUTHORIZE_PATH, TOKEN_PATH};
use super::service::FakeService;
use super::wire::{Grant, RecordedApiRequest, RecordedTokenRequest, TokenFault};

/// The base URL of a fake started in process: a reserved name (RFC 6761) no resolver answers, so a
/// request that misses [`FakeNifty::service`] fails instead of reaching some other server.
const IN_PROCESS_BASE_URL: &str = "http://fake-nifty.invalid";

impl FakeNiftyBuilder {
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
        let inner = Arc::new(self.into_inner(Some(addr), format!("http://{addr}")));
        let server = server::spawn(listener, Arc::clone(&inner));
        Ok(FakeNifty {
            inner,
            _server: Arc::new(server),
        })
    }

    /// The fake without a socket: the same token endpoint, authorize page and API, reached only
    /// through [`FakeNifty::service`] (as the crate's HTTP client and as the API service). Its URLs
    /// use the host `fake-nifty.invalid`, which nothing else answers.
    ///
    /// This is the fake for tests on tokio's paused clock: with no socket, nothing is pending on
    /// the operating system while the clock auto-advances, so a timeout fires only when the
    /// test's virtual time says it should.
    pub fn start_in_process(self) -> FakeNifty {
        let inner = Arc::new(self.into_inner(None, IN_PROCESS_BASE_URL.to_owned()));
        FakeNifty {
            inner,
            _server: Arc::new(ServerGuard::none()),
        }
    }
}

/// A fake Nifty token endpoint and API on `127.0.0.1` or in process; see the [module docs](super).
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
            .field("base_url", &self.inner.base_url)
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

    /// Starts a fake with the default configuration and no socket; same as
    /// `FakeNifty::builder().start_in_process()`.
    pub fn in_process() -> FakeNifty {
        Self::builder().start_in_process()
    }

    /// The fake as a tower `Service`, without TCP: a request is answered by the same handler the
    /// server runs (routed by its path; scheme and authority are ignored), with the same counts,
    /// records, holds and faults. A [`TokenFault::Reset`] fails the call with an
    /// [`io::ErrorKind::ConnectionReset`] error; a [`TokenFault::Hang`] never answers.
    ///
    /// Pass it as the crate's HTTP client (`Builder::http_client`) and as the service the layer
    /// wraps. It keeps the fake's state alive, and works whether or not the fake also listens.
    pub fn service(&self) -> FakeService {
        FakeService::new(Arc::clone(&self.inner))
    }

    /// Whether this fake has no socket ([`FakeNiftyBuilder::start_in_process`]).
    pub fn is_in_process(&self) -> bool {
        self.inner.addr.is_none()
    }

    /// `http://127.0.0.1:PORT` (`http://fake-nifty.invalid` in process), without a trailing slash.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// The address the server listens on.
    ///
    /// # Panics
    ///
    /// Panics for a fake started in process: it listens nowhere.
    pub fn addr(&self) -> SocketAddr {
        self.inner
            .addr
            .expect("FakeNifty: a fake started in process has no address")
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
            held: self.inner.token_hold.clone(),
        }
    }

    /// Waits until `condition` holds for this fake, checking it now and again each time a token
    /// request arrives or is answered (or dropped) and each time an API request is answered. No
    /// timeout of its own: a test waits for the event, not for a duration, and wraps this in
    /// `tokio::time::timeout` if the event may never come.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let fake = nifty_auth::testing::FakeNifty::in_process();
    /// fake.wait_until(|fake| fake.token_calls() == 0).await;
    /// # }
    /// ```
    pub async fn wait_until(&self, mut condition: impl FnMut(&FakeNifty) -> bool) {
        let mut changes = self.inner.changes.subscribe();
        while !condition(self) {
            // The sender lives in `inner`, which `self` keeps: `changed` cannot fail.
            let _ = changes.changed().await;
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
