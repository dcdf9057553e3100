//! The first authorization: the authorize URL, and a loopback listener for the redirect.
//!
//! Nifty issues the first tokens through the OAuth authorization-code flow: the user opens
//! `https://nifty.pm/authorize?…` in a browser, approves the app, and Nifty redirects the browser to
//! the app's registered redirect URI with `?code=…&state=…`. The code is then exchanged with
//! [`NiftyAuth::exchange_code`](crate::NiftyAuth::exchange_code).
//!
//! - [`AuthorizationRequest`] builds the URL with a random, URL-safe `state` (22 base64url
//!   characters, 132 bits from the OS generator) and checks the callback. [PKCE](https://www.rfc-editor.org/rfc/rfc7636)
//!   (S256) is available with [`pkce(true)`](AuthorizationRequest::pkce) but **off by default**:
//!   whether Nifty supports it is not documented (one public connector declares no PKCE support).
//! - [`CallbackServer`] listens on a loopback redirect URI (e.g. `http://127.0.0.1:8765/callback`),
//!   waits for the one callback that carries the request's `state`, answers the browser with a short
//!   page and hands back the code.
//!
//! # What the callback server tolerates
//!
//! Any web page the user has open can make the browser send requests to the loopback port, and any
//! local process can connect to it. So the server never lets one stray request end the wait:
//!
//! - a request to another path, a callback with a wrong or missing `state`, or bytes that are not
//!   HTTP get an error answer, and the server goes on waiting for the right callback (or the
//!   deadline of [`wait_for_code_within`](CallbackServer::wait_for_code_within));
//! - each connection must send its request head within a timeout
//!   ([`DEFAULT_HEADER_READ_TIMEOUT`]), its read buffer is capped at [`MAX_REQUEST_HEAD_BYTES`],
//!   every connection is closed after twice that timeout at the latest, and each is served
//!   once (no keep-alive); at most [`DEFAULT_MAX_CONNECTIONS`] are open at once, the oldest is
//!   closed to admit a new one, and finished connections are reaped at every accept. So a flood of
//!   idle connections cannot keep the browser's callback out.
//! - A `localhost` redirect URI is served on both `127.0.0.1` and `[::1]`, because browsers may try
//!   either (the IPv6 listener is skipped where IPv6 is unavailable).
//!
//! `examples/authorize.rs` and the `nifty-auth login` command (feature `cli`) are built from these.
//!
//! ```no_run
//! # async fn run() -> Result<(), nifty_auth::BoxError> {
//! use nifty_auth::authorize::{AuthorizationRequest, CallbackServer};
//! use nifty_auth::{Credentials, NiftyAuth};
//! use nifty_auth::store::FileStore;
//!
//! let server = CallbackServer::bind("http://127.0.0.1:8765/callback").await?;
//! let request = AuthorizationRequest::new("client-id", server.redirect_uri())
//!     .scopes(["project", "task"]);
//! println!("Open this URL in your browser:\n{}", request.url());
//!
//! let code = server
//!     .wait_for_code_within(&request, std::time::Duration::from_secs(300))
//!     .await?;
//! let auth = NiftyAuth::builder(Credentials::new("client-id", "client-secret"))
//!     .store(FileStore::new("nifty-tokens.json"))
//!     .build()?;
//! request.exchange(&auth, code).await?; // saved to nifty-tokens.json
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::auth::NiftyAuth;
use crate::error::AuthError;
use crate::grant_id::GrantId;
use crate::grants::NiftyGrants;
use crate::token::TokenSet;

mod server;

pub use server::{
    CallbackServer, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS, MAX_REQUEST_HEAD_BYTES,
};

/// Nifty's authorize page (on `nifty.pm`, not `niftypm.com`).
pub const AUTHORIZE_URL: &str = "https://nifty.pm/authorize";

/// The length of the random `state`: 22 base64url characters carry 132 bits, and stay short because
/// Nifty is reported to truncate long `state` values.
pub const STATE_LEN: usize = 22;

/// Why the authorization step failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum AuthorizeError {
    /// The callback's `state` does not match the request's: the callback was not caused by this
    /// authorization (a forged or stale link). [`CallbackServer`] ignores such callbacks and goes on
    /// waiting; [`AuthorizationRequest::code_from_callback`] reports them with this error.
    StateMismatch,
    /// Nifty (or the user) refused: the callback carried `?error=…`.
    Denied {
        /// The OAuth error code, e.g. `access_denied`.
        error: String,
        /// Nifty's explanation, if any.
        description: Option<String>,
    },
    /// The callback had neither `code` nor `error`.
    MissingCode,
    /// The redirect URI cannot be listened on: it must be `http://127.0.0.1:PORT/path` (or
    /// `localhost`, `[::1]`).
    InvalidRedirectUri(String),
    /// No callback with the right `state` arrived before the deadline.
    TimedOut {
        /// How long the server waited.
        after: Duration,
    },
    /// The operating system's secure random generator failed, so no unguessable `state` (or PKCE
    /// verifier) could be made. There is no fallback to a weaker generator.
    Random(String),
    /// Listening or serving the callback failed.
    Io(std::io::Error),
}

impl fmt::Display for AuthorizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthorizeError::StateMismatch => f.write_str(
                "the callback's state does not match this authorization request (a stale or forged \
                 link?): no code was exchanged",
            ),
            AuthorizeError::Denied { error, description } => {
                write!(f, "the authorization was refused: {error}")?;
                if let Some(description) = description {
                    write!(f, " ({description})")?;
                }
                Ok(())
            }
            AuthorizeError::MissingCode => {
                f.write_str("the callback carried neither a code nor an error")
            }
            AuthorizeError::InvalidRedirectUri(reason) => {
                write!(f, "unusable redirect URI: {reason}")
            }
            AuthorizeError::TimedOut { after } => write!(
                f,
                "no authorization callback within {} s: start the authorization again",
                after.as_secs()
            ),
            AuthorizeError::Random(reason) => {
                write!(f, "the OS random generator failed: {reason}")
            }
            AuthorizeError::Io(e) => write!(f, "callback listener failed: {e}"),
        }
    }
}

impl std::error::Error for AuthorizeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuthorizeError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for AuthorizeError {
    fn from(e: std::io::Error) -> Self {
        AuthorizeError::Io(e)
    }
}

/// One authorization attempt: the authorize URL to open, and the `state` its callback must carry.
///
/// ```
/// use nifty_auth::authorize::AuthorizationRequest;
///
/// let request = AuthorizationRequest::new("my-client", "http://127.0.0.1:8765/callback")
///     .scopes(["project", "task"]);
/// let url = request.url();
/// assert!(url.starts_with("https://nifty.pm/authorize?response_type=code&client_id=my-client"));
/// assert!(url.contains("scope=project%20task"));
/// assert!(url.contains(&format!("state={}", request.state())));
/// assert!(!url.contains("code_challenge")); // PKCE is opt-in
///
/// let callback = format!("code=abc&state={}", request.state());
/// assert_eq!(request.code_from_callback(&callback).unwrap(), "abc");
/// assert!(request.code_from_callback("code=abc&state=forged").is_err());
/// ```
#[derive(Clone)]
pub struct AuthorizationRequest {
    authorize_url: String,
    client_id: String,
    redirect_uri: String,
    scopes: Vec<String>,
    state: String,
    code_verifier: String,
    pkce: bool,
}

impl AuthorizationRequest {
    /// A request for `client_id` redirecting to `redirect_uri`, with a fresh random `state`
    /// ([`STATE_LEN`] base64url characters from the OS's secure generator).
    ///
    /// # Panics
    /// If the OS's secure random generator fails (no weaker fallback is used). Use
    /// [`try_new`](Self::try_new) to get that as an error.
    pub fn new(client_id: impl Into<String>, redirect_uri: impl Into<String>) -> Self {
        match Self::try_new(client_id, redirect_uri) {
            Ok(request) => request,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`new`](Self::new), failing closed with [`AuthorizeError::Random`] when the OS's secure
    /// random generator is unavailable.
    ///
    /// # Errors
    /// [`AuthorizeError::Random`].
    pub fn try_new(
        client_id: impl Into<String>,
        redirect_uri: impl Into<String>,
    ) -> Result<Self, AuthorizeError> {
        let mut verifier = [0u8; 32];
        random_bytes(&mut verifier)?;
        Ok(AuthorizationRequest {
            authorize_url: AUTHORIZE_URL.to_owned(),
            client_id: client_id.into(),
            redirect_uri: redirect_uri.into(),
            scopes: Vec::new(),
            state: random_state()?,
            // 32 random bytes: 43 characters, the shortest verifier RFC 7636 allows.
            code_verifier: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(verifier),
            pkce: false,
        })
    }

    /// The scopes to ask for (sent space-separated), e.g. `["project", "task"]`.
    pub fn scopes<I, T>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// The authorize page. Defaults to [`AUTHORIZE_URL`]; tests point it at a fake.
    pub fn authorize_url(mut self, url: impl Into<String>) -> Self {
        self.authorize_url = url.into();
        self
    }

    /// Whether to use PKCE (RFC 7636): the URL then carries `code_challenge` (S256) and
    /// [`exchange`](Self::exchange) sends the matching `code_verifier`. Defaults to `false`: whether
    /// Nifty supports PKCE is not documented, and a server without support may reject the request.
    pub fn pkce(mut self, on: bool) -> Self {
        self.pkce = on;
        self
    }

    /// The `state` the callback must return.
    pub fn state(&self) -> &str {
        &self.state
    }

    /// The redirect URI (pass the same one to `exchange_code`).
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// The PKCE `code_verifier` to send with the code, when PKCE is on. A secret until the exchange:
    /// never log it.
    pub fn code_verifier(&self) -> Option<&str> {
        self.pkce.then_some(self.code_verifier.as_str())
    }

    /// The PKCE `code_challenge` (`BASE64URL(SHA256(verifier))`, method S256), when PKCE is on.
    pub fn code_challenge(&self) -> Option<String> {
        self.pkce.then(|| s256_challenge(&self.code_verifier))
    }

    /// The URL for the user to open.
    pub fn url(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri);
        if !self.scopes.is_empty() {
            query.append_pair("scope", &self.scopes.join(" "));
        }
        query.append_pair("state", &self.state);
        if let Some(challenge) = self.code_challenge() {
            query
                .append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256");
        }
        // The serializer writes a space as `+`; `%20` survives every decoder (a literal `+` is `%2B`).
        let query = query.finish().replace('+', "%20");
        let separator = if self.authorize_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!("{}{separator}{query}", self.authorize_url)
    }

    /// Checks a callback's query string (`code=…&state=…` or `error=…`) and returns the code.
    ///
    /// # Errors
    /// [`AuthorizeError::StateMismatch`] (checked first, so a forged callback reveals nothing),
    /// [`AuthorizeError::Denied`] or [`AuthorizeError::MissingCode`].
    pub fn code_from_callback(&self, query: &str) -> Result<String, AuthorizeError> {
        let mut code = None;
        let mut state = None;
        let mut error = None;
        let mut description = None;
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "code" => code = Some(value.into_owned()),
                "state" => state = Some(value.into_owned()),
                "error" => error = Some(value.into_owned()),
                "error_description" => description = Some(value.into_owned()),
                _ => {}
            }
        }
        // `+` has been seen to come back as a space; our state never holds either.
        if state.as_deref() != Some(self.state.as_str()) {
            return Err(AuthorizeError::StateMismatch);
        }
        if let Some(error) = error {
            return Err(AuthorizeError::Denied {
                error: printable(&error, 64),
                description: description.map(|d| printable(&d, 200)),
            });
        }
        code.filter(|c| !c.is_empty())
            .ok_or(AuthorizeError::MissingCode)
    }

    /// Exchanges the callback's `code` with `auth` (the authorization_code grant), sending this
    /// request's redirect URI and, with PKCE on, its `code_verifier`. Otherwise the same as
    /// [`NiftyAuth::exchange_code`]: the tokens are saved to the store and used from now on.
    ///
    /// # Errors
    /// As [`NiftyAuth::exchange_code`]; a wrong verifier is an `invalid_grant`, so
    /// [`AuthError::ReauthorizationRequired`].
    pub async fn exchange(
        &self,
        auth: &NiftyAuth,
        code: impl Into<String>,
    ) -> Result<TokenSet, AuthError> {
        match self.code_verifier() {
            Some(verifier) => {
                auth.exchange_code_with_verifier(code, self.redirect_uri.as_str(), verifier)
                    .await
            }
            None => auth.exchange_code(code, self.redirect_uri.as_str()).await,
        }
    }

    /// [`exchange`](Self::exchange) for one grant of a [`NiftyGrants`]: the tokens are saved under
    /// `grant` in the grants' store and used from now on (lifting its re-authorization latch), with
    /// this request's redirect URI and, with PKCE on, its `code_verifier`. The same as
    /// [`NiftyGrants::exchange_code`] / [`NiftyGrants::exchange_code_with_verifier`].
    ///
    /// # Errors
    /// As [`NiftyGrants::exchange_code`]; a wrong verifier is an `invalid_grant`, so
    /// [`AuthError::ReauthorizationRequired`].
    pub async fn exchange_grant(
        &self,
        grants: &NiftyGrants,
        grant: &GrantId,
        code: impl Into<String>,
    ) -> Result<TokenSet, AuthError> {
        let redirect_uri = self.redirect_uri.as_str();
        match self.code_verifier() {
            Some(verifier) => {
                grants
                    .exchange_code_with_verifier(grant, code, redirect_uri, verifier)
                    .await
            }
            None => grants.exchange_code(grant, code, redirect_uri).await,
        }
    }
}

impl fmt::Debug for AuthorizationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationRequest")
            .field("authorize_url", &self.authorize_url)
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .field("scopes", &self.scopes)
            .field("pkce", &self.pkce)
            .finish_non_exhaustive()
    }
}

/// `BASE64URL(SHA256(verifier))`, RFC 7636 §4.2.
pub(crate) fn s256_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn random_bytes(buf: &mut [u8]) -> Result<(), AuthorizeError> {
    getrandom::getrandom(buf).map_err(|e| AuthorizeError::Random(e.to_string()))
}

/// [`STATE_LEN`] characters, each uniform over the 64 base64url characters (a byte's low 6 bits:
/// 256 is a multiple of 64, so no bias): 132 bits.
fn random_state() -> Result<String, AuthorizeError> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; STATE_LEN];
    random_bytes(&mut bytes)?;
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 63)]))
        .collect())
}

fn printable(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}
