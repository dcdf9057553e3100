//! The first authorization: the authorize URL, and a loopback listener for the redirect.
//!
//! Nifty issues the first tokens through the OAuth authorization-code flow: the user opens
//! `https://nifty.pm/authorize?…` in a browser, approves the app, and Nifty redirects the browser to
//! the app's registered redirect URI with `?code=…&state=…`. The code is then exchanged with
//! [`NiftyAuth::exchange_code`](crate::NiftyAuth::exchange_code).
//!
//! - [`AuthorizationRequest`] builds the URL with a random, URL-safe `state` and checks the callback.
//! - [`CallbackServer`] listens on a loopback redirect URI (e.g. `http://127.0.0.1:8765/callback`),
//!   accepts exactly one callback, answers the browser with a short page and hands back the code.
//!
//! `examples/authorize.rs` is a complete command built from these.
//!
//! ```no_run
//! # async fn run() -> Result<(), nifty_auth::BoxError> {
//! use nifty_auth::authorize::{AuthorizationRequest, CallbackServer};
//! use nifty_auth::{Credentials, FileStore, NiftyAuth};
//!
//! let server = CallbackServer::bind("http://127.0.0.1:8765/callback").await?;
//! let request = AuthorizationRequest::new("client-id", server.redirect_uri())
//!     .scopes(["project", "task"]);
//! println!("Open this URL in your browser:\n{}", request.url());
//!
//! let code = server.wait_for_code(&request).await?;
//! let auth = NiftyAuth::builder(Credentials::new("client-id", "client-secret"))
//!     .store(FileStore::new("nifty-tokens.json"))
//!     .build()?;
//! auth.exchange_code(code, request.redirect_uri()).await?; // saved to nifty-tokens.json
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Nifty's authorize page (on `nifty.pm`, not `niftypm.com`).
pub const AUTHORIZE_URL: &str = "https://nifty.pm/authorize";

/// Why the authorization step failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum AuthorizeError {
    /// The callback's `state` does not match the request's: the callback was not caused by this
    /// authorization (a forged or stale link). No code was exchanged. Start again.
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
    /// Listening or serving the callback failed.
    Io(io::Error),
}

impl fmt::Display for AuthorizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthorizeError::StateMismatch => f.write_str(
                "the callback's state does not match this authorization request (a stale or forged \
                 link?): no code was exchanged; start the authorization again",
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

impl From<io::Error> for AuthorizeError {
    fn from(e: io::Error) -> Self {
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
}

impl AuthorizationRequest {
    /// A request for `client_id` redirecting to `redirect_uri`, with a fresh random `state`
    /// (32 bytes from the OS's secure generator, base64url: only URL-safe characters).
    pub fn new(client_id: impl Into<String>, redirect_uri: impl Into<String>) -> Self {
        AuthorizationRequest {
            authorize_url: AUTHORIZE_URL.to_owned(),
            client_id: client_id.into(),
            redirect_uri: redirect_uri.into(),
            scopes: Vec::new(),
            state: random_state(),
        }
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

    /// The `state` the callback must return.
    pub fn state(&self) -> &str {
        &self.state
    }

    /// The redirect URI (pass the same one to `exchange_code`).
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
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
}

impl fmt::Debug for AuthorizationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationRequest")
            .field("authorize_url", &self.authorize_url)
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

fn random_state() -> String {
    let mut bytes = [0u8; 32];
    if getrandom::getrandom(&mut bytes).is_err() {
        // No OS randomness (exotic platforms): fall back to a non-cryptographic source rather than fail.
        bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn printable(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// A one-shot HTTP listener for the authorization redirect on a loopback address.
#[derive(Debug)]
pub struct CallbackServer {
    listener: TcpListener,
    path: String,
    redirect_uri: String,
}

impl CallbackServer {
    /// Listens on the host and port of `redirect_uri`, which must be a loopback `http` URI such as
    /// `http://127.0.0.1:8765/callback`. Port `0` picks a free port (see
    /// [`redirect_uri`](Self::redirect_uri)); Nifty only redirects to registered URIs, so real use
    /// needs the registered port.
    ///
    /// # Errors
    /// [`AuthorizeError::InvalidRedirectUri`] for a non-loopback or non-http URI,
    /// [`AuthorizeError::Io`] if the port cannot be bound.
    pub async fn bind(redirect_uri: &str) -> Result<Self, AuthorizeError> {
        let uri: Uri = redirect_uri
            .parse()
            .map_err(|e| AuthorizeError::InvalidRedirectUri(format!("`{redirect_uri}`: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(AuthorizeError::InvalidRedirectUri(format!(
                "`{redirect_uri}` must use http (the callback is served on loopback)"
            )));
        }
        let host = uri.host().unwrap_or_default();
        let ip = match host {
            "localhost" => "127.0.0.1",
            "[::1]" => "::1",
            other => other,
        };
        let ip: std::net::IpAddr = ip.parse().map_err(|_| {
            AuthorizeError::InvalidRedirectUri(format!(
                "`{redirect_uri}` must name a loopback address"
            ))
        })?;
        if !ip.is_loopback() {
            return Err(AuthorizeError::InvalidRedirectUri(format!(
                "`{redirect_uri}` is not a loopback address"
            )));
        }
        let port = uri.port_u16().unwrap_or(80);
        let listener = TcpListener::bind(SocketAddr::new(ip, port)).await?;
        let bound = listener.local_addr()?;
        let path = uri.path().to_owned();
        let redirect_uri = if port == 0 {
            format!("http://{host}:{}{path}", bound.port())
        } else {
            redirect_uri.to_owned()
        };
        Ok(CallbackServer {
            listener,
            path,
            redirect_uri,
        })
    }

    /// The redirect URI to register and send (with the real port if `0` was asked for).
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// The address listened on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Waits for the one callback for `request`, answers the browser, and returns the code.
    ///
    /// Requests to other paths (a browser's `/favicon.ico`) get 404 and are otherwise ignored. The
    /// first request to the callback path ends the wait, successfully or not: a callback with the
    /// wrong `state` is an error, not something to wait past. Wrap it in `tokio::time::timeout` to
    /// bound the wait.
    ///
    /// # Errors
    /// The [`AuthorizeError`] of [`AuthorizationRequest::code_from_callback`], or
    /// [`AuthorizeError::Io`].
    pub async fn wait_for_code(
        self,
        request: &AuthorizationRequest,
    ) -> Result<String, AuthorizeError> {
        let (tx, mut rx) = mpsc::channel::<Result<String, AuthorizeError>>(1);
        let request = Arc::new(request.clone());
        let path: Arc<str> = Arc::from(self.path.as_str());
        // Only the first callback counts.
        let done = Arc::new(Mutex::new(false));
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                result = rx.recv() => {
                    connections.abort_all();
                    return result.unwrap_or(Err(AuthorizeError::MissingCode));
                }
                accepted = self.listener.accept() => {
                    let (stream, _) = accepted?;
                    let (tx, request, path, done) = (tx.clone(), Arc::clone(&request), Arc::clone(&path), Arc::clone(&done));
                    let service = service_fn(move |incoming: Request<Incoming>| {
                        let answer = callback(&incoming, &request, &path, &done, &tx);
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    connections.spawn(async move {
                        let _ = http1::Builder::new()
                            .keep_alive(false)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        }
    }
}

/// Handles one request to the callback listener.
fn callback(
    incoming: &Request<Incoming>,
    request: &AuthorizationRequest,
    path: &str,
    done: &Mutex<bool>,
    tx: &mpsc::Sender<Result<String, AuthorizeError>>,
) -> Response<Full<Bytes>> {
    if incoming.method() != Method::GET || incoming.uri().path() != path {
        return page(
            StatusCode::NOT_FOUND,
            "Not found",
            "This is not the authorization callback.",
        );
    }
    {
        let mut done = done.lock();
        if *done {
            return page(
                StatusCode::GONE,
                "Already handled",
                "The authorization callback was already received.",
            );
        }
        *done = true;
    }
    let result = request.code_from_callback(incoming.uri().query().unwrap_or_default());
    let response = match &result {
        Ok(_) => page(
            StatusCode::OK,
            "Authorized",
            "nifty-auth received the authorization. You can close this tab.",
        ),
        Err(AuthorizeError::StateMismatch) => page(
            StatusCode::BAD_REQUEST,
            "Authorization rejected",
            "The state does not match: this link was not made by the waiting command. Start again.",
        ),
        Err(AuthorizeError::Denied { .. }) => page(
            StatusCode::OK,
            "Authorization refused",
            "Nifty did not authorize the app. You can close this tab.",
        ),
        Err(_) => page(
            StatusCode::BAD_REQUEST,
            "Authorization failed",
            "The callback carried no code.",
        ),
    };
    let _ = tx.try_send(result);
    response
}

fn page(status: StatusCode, title: &str, text: &str) -> Response<Full<Bytes>> {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body style=\"font-family:sans-serif;margin:3em\"><h1>{title}</h1><p>{text}</p></body></html>"
    );
    let mut response = Response::new(Full::new(Bytes::from(html)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}
