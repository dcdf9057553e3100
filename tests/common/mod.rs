//! Shared helpers for the integration tests: a real hyper-util client and a `NiftyAuth` pointed at a
//! `FakeNifty` on 127.0.0.1.
#![allow(
    dead_code,
    reason = "each test file uses a different subset of the helpers"
)]

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nifty_auth::testing::FakeNifty;
use nifty_auth::{AuthError, BoxError, Builder, NiftyAuth, NiftyAuthService};
use tower::ServiceExt;

/// The real client every test drives.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;
/// The client wrapped in the layer.
pub type AuthClient = NiftyAuthService<HttpClient>;

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A builder aimed at `fake`, with fast backoff so failure tests stay quick.
pub fn builder(fake: &FakeNifty) -> Builder {
    NiftyAuth::builder(fake.credentials())
        .token_url(fake.token_url().as_str())
        .allowed_origins([fake.base_url()])
        .token_backoff(Duration::from_millis(5), Duration::from_millis(20))
}

/// A `NiftyAuth` bootstrapped with a fresh refresh token of `fake`.
pub fn auth(fake: &FakeNifty) -> NiftyAuth {
    builder(fake)
        .refresh_token(fake.issue_refresh_token())
        .build()
        .expect("build")
}

pub fn service(auth: &NiftyAuth) -> AuthClient {
    NiftyAuthService::new(http_client(), auth.clone())
}

pub fn get(url: impl AsRef<str>) -> Request<Full<Bytes>> {
    Request::get(url.as_ref())
        .body(Full::new(Bytes::new()))
        .expect("request")
}

pub fn post_json(url: impl AsRef<str>, json: &'static str) -> Request<Full<Bytes>> {
    Request::post(url.as_ref())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(json.as_bytes())))
        .expect("request")
}

/// Sends `request` through a clone of `svc`; returns the status and the whole body.
pub async fn send(
    svc: &AuthClient,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), BoxError> {
    let response = svc.clone().oneshot(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// The `AuthError` inside a layer error; panics (failing the test) if it is something else.
pub fn auth_error(err: &BoxError) -> &AuthError {
    err.downcast_ref::<AuthError>()
        .unwrap_or_else(|| panic!("expected an AuthError, got {err:?}"))
}
