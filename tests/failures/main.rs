//! Every bad answer of the token endpoint becomes the right `AuthError`, never a panic, and never
//! costs the refresh token: after a non-terminal failure the next healthy call refreshes with the
//! same refresh token; after a terminal one the store still holds it and no further token call is
//! made until new tokens are supplied. Everything runs against a real `FakeNifty` on 127.0.0.1.

#[path = "../common/mod.rs"]
mod common;

mod encoded_secrets;
mod invalid_response;
mod secret_free;
mod terminal;
mod transient;
mod valid_token_kept;

use std::error::Error as _;
use std::time::{Duration, SystemTime};

use common::*;
use http::StatusCode;
use nifty_auth::testing::{FakeNifty, TokenFault};
use nifty_auth::{AuthError, FileStore, MemoryStore, NiftyAuth, TokenSet};

/// An access token planted in bad answers; no error may ever show it.
const PLANTED_ACCESS_TOKEN: &str = "at-PLANTED-7c1e9a04f2b35d68e0a1";

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// A fake on 127.0.0.1, a `NiftyAuth` bootstrapped with one of its refresh tokens, that refresh
/// token, and the layer over the real client.
struct Setup {
    fake: FakeNifty,
    auth: NiftyAuth,
    refresh_token: String,
    svc: AuthClient,
}

async fn setup() -> Setup {
    let fake = FakeNifty::start().await.unwrap();
    let (auth, refresh_token) = auth_with_refresh_token(&fake);
    let svc = service(&auth);
    Setup {
        fake,
        auth,
        refresh_token,
        svc,
    }
}

/// A `NiftyAuth` bootstrapped with a fresh refresh token of `fake`, and that refresh token.
fn auth_with_refresh_token(fake: &FakeNifty) -> (NiftyAuth, String) {
    let refresh_token = fake.issue_refresh_token();
    let auth = builder(fake)
        .refresh_token(refresh_token.clone())
        .build()
        .expect("build");
    (auth, refresh_token)
}

/// The `refresh_token` of every request the token endpoint received, oldest first.
fn refresh_tokens_sent(fake: &FakeNifty) -> Vec<String> {
    fake.token_requests()
        .iter()
        .map(|request| {
            let json = request.json.as_ref().expect("token request body is JSON");
            assert_eq!(json["grant_type"], "refresh_token", "{json}");
            json["refresh_token"]
                .as_str()
                .expect("refresh_token in the request")
                .to_owned()
        })
        .collect()
}

/// Sends `GET /users/me` through `svc`, expecting an `AuthError`.
async fn failing_request(svc: &AuthClient, fake: &FakeNifty) -> AuthError {
    let err = send(svc, get(fake.api_url("/users/me")))
        .await
        .expect_err("the token call failed, so the request must fail");
    auth_error(&err).clone()
}

/// Sends `GET /users/me` through `svc`, expecting a 200; returns the bearer header it went with.
async fn succeeding_request(svc: &AuthClient, fake: &FakeNifty) -> String {
    let (status, _) = send(svc, get(fake.api_url("/users/me")))
        .await
        .expect("request");
    assert_eq!(status, StatusCode::OK);
    fake.api_requests()
        .last()
        .expect("the API saw the request")
        .authorization
        .clone()
        .expect("the request carried a token")
}

/// The error text a user could see (`Display`, `Debug`) holds none of `secrets`.
fn assert_reveals_none_of(err: &AuthError, secrets: &[&str]) {
    let shown = format!("{err} / {err:?}");
    for secret in secrets {
        assert!(!shown.contains(secret), "`{secret}` leaked into: {shown}");
    }
}

/// An expired token set carrying a still-valid refresh token: what a store holds after a restart.
fn expired_tokens(refresh_token: &str) -> TokenSet {
    TokenSet::new("at-expired-an-hour-ago")
        .with_refresh_token(refresh_token)
        .with_expires_at(SystemTime::now() - Duration::from_secs(3600))
}
