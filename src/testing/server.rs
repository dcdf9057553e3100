//! The fake's HTTP/1.1 server: the accept loop, connection resets, routing, and the token
//! endpoint with its fault injection. The authorize page and the API are in `pages.rs`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::{select, Either};
use http::header::{
    HeaderValue, ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Body;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinSet};

use super::hold::Held;
use super::model::{GrantKey, Issued, Model, Rejected};
use super::wire::{Grant, RecordedApiRequest, RecordedTokenRequest, TokenFault};

pub(super) const TOKEN_PATH: &str = "/oauth/token";
pub(super) const AUTHORIZE_PATH: &str = "/authorize";
pub(super) const API_PREFIX: &str = "/api/v1.0";
const SCOPE: &str = "project task";

/// What every handle of one fake shares.
pub(super) struct Inner {
    /// Where the server listens; `None` in process.
    pub(super) addr: Option<SocketAddr>,
    /// `http://127.0.0.1:PORT`, or the in-process name.
    pub(super) base_url: String,
    pub(super) client_id: String,
    pub(super) client_secret: String,
    pub(super) state: Mutex<State>,
    /// `true` while a [`TokenHold`](super::TokenHold) keeps token answers back.
    pub(super) token_hold: tokio::sync::watch::Sender<bool>,
    /// Ticks when a token request arrives or is answered and when an API request is answered
    /// (see `FakeNifty::wait_until`).
    pub(super) changes: tokio::sync::watch::Sender<()>,
}

/// The fake's mutable state: the grant model, the knobs, the counters and the records.
pub(super) struct State {
    pub(super) model: Model,
    pub(super) token_delay: Duration,
    pub(super) token_faults: VecDeque<TokenFault>,
    pub(super) api_statuses: VecDeque<StatusCode>,
    /// Queued API answers with a body of their own (after the queued statuses).
    pub(super) api_bodies: VecDeque<Bytes>,
    /// Holds for the next API requests (see `FakeNifty::hold_next_api_answer`).
    pub(super) api_holds: VecDeque<Held>,
    pub(super) deny_next_authorization: bool,
    pub(super) counts: Counts,
    pub(super) token_requests: Vec<RecordedTokenRequest>,
    pub(super) api_requests: Vec<RecordedApiRequest>,
}

/// The fake's counters over all grants.
#[derive(Default)]
pub(super) struct Counts {
    pub(super) authorize_calls: usize,
    pub(super) token_calls: usize,
    pub(super) token_calls_code: usize,
    pub(super) token_calls_refresh: usize,
    pub(super) in_flight: usize,
    pub(super) max_in_flight: usize,
    pub(super) expired_received: usize,
    pub(super) max_overdue: Duration,
    pub(super) invalid_grants: usize,
    pub(super) api_calls: usize,
    pub(super) unauthorized: usize,
}

impl State {
    pub(super) fn new(model: Model, token_delay: Duration) -> Self {
        Self {
            model,
            token_delay,
            token_faults: VecDeque::new(),
            api_statuses: VecDeque::new(),
            api_bodies: VecDeque::new(),
            api_holds: VecDeque::new(),
            deny_next_authorization: false,
            counts: Counts::default(),
            token_requests: Vec::new(),
            api_requests: Vec::new(),
        }
    }

    /// Counts a `400` `invalid_grant` answer, for all grants and for `grant`.
    fn count_invalid_grant(&mut self, grant: Option<GrantKey>) {
        self.counts.invalid_grants += 1;
        self.model.count(grant, |c| c.invalid_grants += 1);
    }
}

/// Stops the server when the last [`FakeNifty`](super::FakeNifty) clone is dropped. Aborting the
/// accept task drops its `JoinSet`, which aborts every connection task.
pub(super) struct ServerGuard {
    /// The accept task; `None` in process.
    accept: Option<AbortHandle>,
}

impl ServerGuard {
    /// The guard of a fake with no server (in process).
    pub(super) fn none() -> Self {
        Self { accept: None }
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(accept) = &self.accept {
            accept.abort();
        }
    }
}

/// Spawns the accept loop on the current tokio runtime.
pub(super) fn spawn(listener: TcpListener, inner: Arc<Inner>) -> ServerGuard {
    ServerGuard {
        accept: Some(tokio::spawn(accept_loop(listener, inner)).abort_handle()),
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
        #[allow(
            deprecated,
            reason = "tokio deprecates set_linger for its blocking close; linger 0 never blocks"
        )]
        let _ = stream.set_linger(Some(Duration::ZERO));
        drop(stream);
    }
}

/// Counts a token request as in flight (for all grants, and for its grant once known) until it
/// is answered or dropped.
struct InFlight<'a> {
    inner: &'a Inner,
    grant: Option<GrantKey>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut st = self.inner.state.lock();
        st.counts.in_flight = st.counts.in_flight.saturating_sub(1);
        st.model.count(self.grant, |c| {
            c.token_calls_in_flight = c.token_calls_in_flight.saturating_sub(1);
        });
        drop(st);
        self.inner.changed();
    }
}

impl Inner {
    /// Wakes everyone waiting in `FakeNifty::wait_until`.
    pub(super) fn changed(&self) {
        self.changes.send_replace(());
    }

    /// Answers one request, whatever carried it; a [`TokenFault::Reset`] notifies `reset` and
    /// never answers.
    pub(super) async fn handle<B>(
        &self,
        request: Request<B>,
        reset: &Notify,
    ) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
    {
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

    async fn token<B>(&self, request: Request<B>, reset: &Notify) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
    {
        let mut in_flight = {
            let mut st = self.state.lock();
            st.counts.token_calls += 1;
            st.counts.in_flight += 1;
            st.counts.max_in_flight = st.counts.max_in_flight.max(st.counts.in_flight);
            InFlight {
                inner: self,
                grant: None,
            }
        };
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let field = |name: &str| json.as_ref()?.get(name)?.as_str();
        let grant_type = field("grant_type").and_then(Grant::from_wire);
        let (fault, delay, grant) = {
            let mut st = self.state.lock();
            let grant = match grant_type {
                Some(Grant::AuthorizationCode) => {
                    st.counts.token_calls_code += 1;
                    st.model.grant_of_request(field("code"), None)
                }
                Some(Grant::RefreshToken) => {
                    st.counts.token_calls_refresh += 1;
                    st.model.grant_of_request(None, field("refresh_token"))
                }
                None => None,
            };
            st.model.count(grant, |c| {
                c.token_calls += 1;
                c.token_calls_in_flight += 1;
                c.max_token_calls_in_flight =
                    c.max_token_calls_in_flight.max(c.token_calls_in_flight);
            });
            in_flight.grant = grant;
            st.token_requests.push(RecordedTokenRequest {
                method: parts.method.clone(),
                authorization: header_string(&parts.headers, AUTHORIZATION),
                content_type: header_string(&parts.headers, CONTENT_TYPE),
                accept: header_string(&parts.headers, ACCEPT),
                body,
                json: json.clone(),
                grant,
            });
            (st.token_faults.pop_front(), st.token_delay, grant)
        };
        self.changed();
        // Counted as in flight, answered once no hold is left.
        let _ = self.token_hold.subscribe().wait_for(|held| !held).await;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let response = match fault {
            None => self.token_answer(&parts, json.as_ref(), grant),
            Some(TokenFault::Delay(wait)) => {
                tokio::time::sleep(wait).await;
                self.token_answer(&parts, json.as_ref(), grant)
            }
            Some(TokenFault::Respond {
                status,
                content_type,
                body,
            }) => self.canned_token_answer(status, &content_type, body, grant),
            Some(TokenFault::RateLimited { retry_after }) => rate_limited(retry_after),
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
        grant: Option<GrantKey>,
    ) -> Response<Full<Bytes>> {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status == StatusCode::BAD_REQUEST
            && serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|json| json.get("error").cloned())
                .is_some_and(|error| error == "invalid_grant")
        {
            self.state.lock().count_invalid_grant(grant);
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
        json: Option<&Value>,
        grant: Option<GrantKey>,
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
        let Some(Value::Object(params)) = json.filter(|_| is_json) else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
        };
        let param = |name: &str| params.get(name).and_then(Value::as_str);
        let Some(grant_type) = param("grant_type") else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
        };
        let mut st = self.state.lock();
        let outcome = match Grant::from_wire(grant_type) {
            Some(Grant::AuthorizationCode) => match param("code") {
                Some(code) => {
                    st.model
                        .exchange_code(code, param("redirect_uri"), param("code_verifier"))
                }
                None => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request"),
            },
            Some(Grant::RefreshToken) => match param("refresh_token") {
                Some(refresh_token) => st.model.refresh(refresh_token),
                None => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request"),
            },
            None => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
        };
        match outcome {
            Ok(issued) => token_success(issued),
            Err(Rejected(description)) => {
                st.count_invalid_grant(grant);
                json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({ "error": "invalid_grant", "error_description": description }),
                )
            }
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
}

/// A `201` token answer.
fn token_success(issued: Issued) -> Response<Full<Bytes>> {
    let mut body = serde_json::Map::new();
    body.insert("access_token".into(), Value::from(issued.access_token));
    body.insert("token_type".into(), Value::from("bearer"));
    if let Some(refresh_token) = issued.refresh_token {
        body.insert("refresh_token".into(), Value::from(refresh_token));
    }
    if let Some(lifetime) = issued.lifetime {
        body.insert("expires_in".into(), Value::from(lifetime.as_secs_f64()));
    }
    body.insert("scope".into(), Value::from(SCOPE));
    let mut response = json_response(StatusCode::CREATED, &Value::Object(body));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A `429` with `Retry-After` in whole seconds, rounded up.
fn rate_limited(retry_after: Duration) -> Response<Full<Bytes>> {
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut response = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        &json!({ "message": "Too Many Requests" }),
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// A future that never completes (for [`TokenFault::Hang`] and [`TokenFault::Reset`]).
fn never() -> impl Future<Output = Response<Full<Bytes>>> + Send {
    std::future::pending()
}

pub(super) fn header_string(
    headers: &http::HeaderMap,
    name: http::header::HeaderName,
) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(super) fn oauth_error(status: StatusCode, error: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": error }))
}
