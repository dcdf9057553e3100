//! Tests of `nifty_auth::testing::FakeNifty` itself, through a real hyper client (and through its
//! in-process service on tokio's paused clock).
//!
//! * `protocol`: the token endpoint's grants, rotation, replay detection and validation.
//! * `api`: the API's answers by bearer token, queued statuses, expiry, the server's lifetime.
//! * `faults`: queued token endpoint faults and the token delay.
//! * `grants`: many grants side by side, per-grant counts, which grant a bearer belongs to.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nifty_auth::testing::{FakeNifty, FakeService};
use serde_json::{json, Value};
use tower::ServiceExt;

mod api;
mod faults;
mod grants;
mod protocol;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// A fake with the default configuration, and a client for it.
async fn started() -> (FakeNifty, HttpClient) {
    (FakeNifty::start().await.expect("start"), client())
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn basic(id: &str, secret: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    format!("Basic {encoded}")
}

async fn send(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> Result<Answer, hyper_util::client::legacy::Error> {
    Ok(answer_of(client.request(request).await?).await)
}

/// The status, headers and whole body of `response`.
async fn answer_of<B: http_body::Body<Data = Bytes>>(response: http::Response<B>) -> Answer
where
    B::Error: std::fmt::Debug,
{
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

fn token_request(fake: &FakeNifty, body: &Value) -> Request<Full<Bytes>> {
    Request::post(fake.token_url())
        .header(
            "authorization",
            basic(fake.client_id(), fake.client_secret()),
        )
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

/// How a test reaches the fake: the hyper client over TCP, or the fake's own service in process
/// (for tests on tokio's paused clock, which must not wait on a socket).
trait Transport {
    async fn answer(&self, request: Request<Full<Bytes>>) -> Answer;
}

impl Transport for HttpClient {
    async fn answer(&self, request: Request<Full<Bytes>>) -> Answer {
        send(self, request).await.expect("answer")
    }
}

impl Transport for FakeService {
    async fn answer(&self, request: Request<Full<Bytes>>) -> Answer {
        answer_of(self.clone().oneshot(request).await.expect("answer")).await
    }
}

async fn token(client: &impl Transport, fake: &FakeNifty, body: Value) -> Answer {
    client.answer(token_request(fake, &body)).await
}

async fn refresh(client: &impl Transport, fake: &FakeNifty, refresh_token: &str) -> Answer {
    token(
        client,
        fake,
        json!({ "grant_type": "refresh_token", "refresh_token": refresh_token }),
    )
    .await
}

async fn api(
    client: &impl Transport,
    fake: &FakeNifty,
    method: Method,
    path: &str,
    access_token: Option<&str>,
    body: &'static str,
) -> Answer {
    let mut request = Request::builder().method(method).uri(fake.api_url(path));
    if let Some(access_token) = access_token {
        request = request.header("authorization", format!("Bearer {access_token}"));
    }
    let request = request
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request");
    client.answer(request).await
}

async fn get(client: &impl Transport, fake: &FakeNifty, path: &str, token: Option<&str>) -> Answer {
    api(client, fake, Method::GET, path, token, "").await
}

fn str_field<'a>(json: &'a Value, name: &str) -> &'a str {
    json[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} in {json}"))
}

fn assert_invalid_grant(answer: &Answer) {
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let json = answer.json();
    assert_eq!(json["error"], "invalid_grant");
    assert!(json["error_description"].is_string());
}

/// Waits (real time, at most 2 s) until `condition` holds.
async fn until(condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "condition never held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The connection was reset, or closed before the response was complete.
fn is_reset_or_incomplete(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionReset {
                return true;
            }
        }
        if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
            if hyper.is_incomplete_message() {
                return true;
            }
        }
        source = error.source();
    }
    false
}
