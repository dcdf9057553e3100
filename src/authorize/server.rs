//! [`CallbackServer`]: the loopback listener for the authorization redirect.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use super::{AuthorizationRequest, AuthorizeError};

/// The default [`CallbackServer::header_read_timeout`]: how long a connection may take to send its
/// request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The default [`CallbackServer::max_connections`]: connections served at once; the oldest is
/// closed to admit a new one.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// The cap on a connection's read buffer (hyper's `max_buf_size`): a request head that overflows it
/// is answered `431` and the connection closed.
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// A one-shot HTTP listener for the authorization redirect on a loopback address.
///
/// See the [module docs](super) for what it tolerates while it waits.
#[derive(Debug)]
pub struct CallbackServer {
    listener: TcpListener,
    /// The `[::1]` listener of a `localhost` redirect URI, when IPv6 is available.
    listener_v6: Option<TcpListener>,
    path: String,
    redirect_uri: String,
    header_read_timeout: Duration,
    max_connections: usize,
}

impl CallbackServer {
    /// Listens on the host and port of `redirect_uri`, which must be a loopback `http` URI such as
    /// `http://127.0.0.1:8765/callback`. For `localhost`, listens on both `127.0.0.1` and `[::1]`
    /// (the second only where IPv6 is available). Port `0` picks a free port (see
    /// [`redirect_uri`](Self::redirect_uri)); Nifty only redirects to registered URIs, so real use
    /// needs the registered port.
    ///
    /// # Errors
    /// [`AuthorizeError::InvalidRedirectUri`] for a non-loopback or non-http URI,
    /// [`AuthorizeError::Io`] if the port cannot be bound.
    pub async fn bind(redirect_uri: &str) -> Result<Self, AuthorizeError> {
        let invalid =
            |why: &str| AuthorizeError::InvalidRedirectUri(format!("`{redirect_uri}` {why}"));
        let uri: Uri = redirect_uri
            .parse()
            .map_err(|e| AuthorizeError::InvalidRedirectUri(format!("`{redirect_uri}`: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(invalid(
                "must use http (the callback is served on loopback)",
            ));
        }
        let host = uri.host().unwrap_or_default();
        let localhost = host.eq_ignore_ascii_case("localhost");
        let ip: IpAddr = if localhost {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| invalid("must name a loopback address"))?
        };
        if !ip.is_loopback() {
            return Err(invalid("is not a loopback address"));
        }
        let port = uri.port_u16().unwrap_or(80);
        let listener = TcpListener::bind(SocketAddr::new(ip, port)).await?;
        let bound = listener.local_addr()?.port();
        // Browsers resolve `localhost` to either address; serve both. Where IPv6 is off (or the port
        // is taken there), the IPv4 listener alone still serves browsers that fall back to it.
        let listener_v6 = if localhost {
            TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), bound))
                .await
                .ok()
        } else {
            None
        };
        let path = uri.path().to_owned();
        let redirect_uri = if port == 0 {
            format!("http://{host}:{bound}{path}")
        } else {
            redirect_uri.to_owned()
        };
        Ok(CallbackServer {
            listener,
            listener_v6,
            path,
            redirect_uri,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        })
    }

    /// How long a connection may take to send its request head before it is closed. Defaults to
    /// [`DEFAULT_HEADER_READ_TIMEOUT`].
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// How many connections are served at once (at least 1); accepting one more closes the oldest.
    /// Defaults to [`DEFAULT_MAX_CONNECTIONS`].
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// The redirect URI to register and send (with the real port if `0` was asked for).
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// The address listened on (the IPv4 one for `localhost`).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Every address listened on: one, or two for `localhost` with IPv6 available.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        std::iter::once(&self.listener)
            .chain(&self.listener_v6)
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Waits, without a deadline, for the callback carrying `request`'s `state`; answers the browser
    /// and returns the code. Prefer [`wait_for_code_within`](Self::wait_for_code_within).
    ///
    /// Requests to other paths (a browser's `/favicon.ico`), callbacks with a wrong or missing
    /// `state`, and requests that are not HTTP get an error answer and do not end the wait. The
    /// first callback with the right `state` ends it: with the code, or with the error it carried.
    ///
    /// # Errors
    /// [`AuthorizeError::Denied`] or [`AuthorizeError::MissingCode`] from the right callback;
    /// [`AuthorizeError::Io`] if the listener fails.
    pub async fn wait_for_code(
        self,
        request: &AuthorizationRequest,
    ) -> Result<String, AuthorizeError> {
        let (tx, mut rx) = mpsc::channel::<Result<String, AuthorizeError>>(1);
        let handler = Arc::new(Handler {
            request: request.clone(),
            path: self.path.clone(),
            done: AtomicBool::new(false),
            tx,
        });
        // Dropping the set (return, or the caller's timeout) closes every connection.
        let mut connections = JoinSet::new();
        let mut oldest_first: VecDeque<AbortHandle> = VecDeque::new();
        loop {
            tokio::select! {
                biased;
                result = rx.recv() => {
                    return result.unwrap_or(Err(AuthorizeError::MissingCode));
                }
                accepted = self.accept() => {
                    let Some(stream) = accepted else { continue };
                    while connections.try_join_next().is_some() {}
                    oldest_first.retain(|c| !c.is_finished());
                    while oldest_first.len() >= self.max_connections {
                        if let Some(oldest) = oldest_first.pop_front() {
                            oldest.abort();
                        }
                    }
                    let connection = serve(stream, Arc::clone(&handler), self.header_read_timeout);
                    oldest_first.push_back(connections.spawn(connection));
                }
            }
        }
    }

    /// [`wait_for_code`](Self::wait_for_code) with a deadline: after `within`,
    /// [`AuthorizeError::TimedOut`].
    ///
    /// # Errors
    /// As [`wait_for_code`](Self::wait_for_code), and [`AuthorizeError::TimedOut`].
    pub async fn wait_for_code_within(
        self,
        request: &AuthorizationRequest,
        within: Duration,
    ) -> Result<String, AuthorizeError> {
        tokio::time::timeout(within, self.wait_for_code(request))
            .await
            .unwrap_or(Err(AuthorizeError::TimedOut { after: within }))
    }

    /// The next connection on either listener; `None` after a failed accept (out of file
    /// descriptors, a connection reset before it was accepted), which never ends the wait.
    async fn accept(&self) -> Option<TcpStream> {
        let accepted = match &self.listener_v6 {
            None => self.listener.accept().await,
            Some(v6) => tokio::select! {
                a = self.listener.accept() => a,
                a = v6.accept() => a,
            },
        };
        match accepted {
            Ok((stream, _)) => Some(stream),
            Err(_) => {
                // Back off instead of spinning while descriptors are exhausted.
                tokio::time::sleep(Duration::from_millis(10)).await;
                None
            }
        }
    }
}

/// Serves one connection: one request, within bounded time.
async fn serve(stream: TcpStream, handler: Arc<Handler>, header_read_timeout: Duration) {
    let service = service_fn(move |incoming: Request<Incoming>| {
        let answer = handler.answer(&incoming);
        async move { Ok::<_, Infallible>(answer) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    // The head timeout bounds the wait for a request; this bounds everything else (a slow reader).
    let _ = tokio::time::timeout(header_read_timeout * 2, connection).await;
}

/// Answers requests to the callback listener.
struct Handler {
    request: AuthorizationRequest,
    path: String,
    /// Whether the right callback was received (only the first one counts).
    done: AtomicBool,
    tx: mpsc::Sender<Result<String, AuthorizeError>>,
}

impl Handler {
    fn answer(&self, incoming: &Request<Incoming>) -> Response<Full<Bytes>> {
        if incoming.method() != Method::GET || incoming.uri().path() != self.path {
            return page(
                StatusCode::NOT_FOUND,
                "Not found",
                "This is not the authorization callback.",
            );
        }
        let result = self
            .request
            .code_from_callback(incoming.uri().query().unwrap_or_default());
        if let Err(AuthorizeError::StateMismatch) = result {
            // Not caused by this authorization (a stray page, a stale tab): the wait goes on.
            return page(
                StatusCode::BAD_REQUEST,
                "Authorization rejected",
                "The state does not match: this link was not made by the waiting command.",
            );
        }
        if self.done.swap(true, Ordering::SeqCst) {
            return page(
                StatusCode::GONE,
                "Already handled",
                "The authorization callback was already received.",
            );
        }
        let response = match &result {
            Ok(_) => page(
                StatusCode::OK,
                "Authorized",
                "nifty-auth received the authorization. You can close this tab.",
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
        let _ = self.tx.try_send(result);
        response
    }
}

fn page(status: StatusCode, title: &str, text: &str) -> Response<Full<Bytes>> {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body style=\"font-family:sans-serif;margin:3em\"><h1>{title}</h1><p>{text}</p></body></html>"
    );
    let mut response = Response::new(Full::new(Bytes::from(html)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}
