//! reqwest-middleware: the same semantics as the tower layer, through `ClientWithMiddleware`
//! against the fake Nifty on loopback.
#![cfg(feature = "reqwest")]

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use nifty_auth::testing::FakeNifty;
use nifty_auth::{AuthError, NiftyAuth};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_retry::RetryTransientMiddleware;

/// A fake on 127.0.0.1, and a reqwest client with the middleware bootstrapped for it.
async fn started_client() -> (FakeNifty, ClientWithMiddleware) {
    let fake = FakeNifty::start().await.unwrap();
    let client = client(&auth(&fake));
    (fake, client)
}

fn client(auth: &NiftyAuth) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(auth.middleware())
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_make_one_token_call() {
    let fake = fake_delayed(Duration::from_millis(30)).await;
    let auth = auth(&fake);
    let client = client(&auth);

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let client = client.clone();
        let url = fake.api_url("/projects");
        tasks.spawn(async move { client.get(url).send().await.map(|r| r.status()) });
    }
    while let Some(joined) = tasks.join_next().await {
        assert_eq!(joined.unwrap().unwrap(), StatusCode::OK);
    }
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.api_calls(), 200);
}

#[tokio::test]
async fn a_json_post_answered_401_is_retried_once_with_the_same_body() {
    let (fake, client) = started_client().await;
    client.get(fake.api_url("/users/me")).send().await.unwrap();
    fake.revoke_access_tokens();

    let body = serde_json::json!({"name": "Ship it", "project": "p-1"});
    let response = client
        .post(fake.api_url("/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.token_calls(), 2);
    let requests = fake.api_requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[1].status, 401);
    assert_eq!(requests[2].status, 200);
    assert_eq!(requests[1].body, requests[2].body);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&requests[2].body).unwrap(),
        body
    );
    assert_ne!(requests[1].authorization, requests[2].authorization);
}

#[tokio::test]
async fn a_streaming_body_is_sent_once_and_its_401_returned() {
    let (fake, client) = started_client().await;
    client.get(fake.api_url("/users/me")).send().await.unwrap();
    fake.revoke_access_tokens();

    let chunks = futures_util::stream::iter(["part-1 ", "part-2"].map(Ok::<_, std::io::Error>));
    let response = client
        .post(fake.api_url("/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(fake.api_calls(), 2);
    assert_eq!(&fake.api_requests()[1].body[..], b"part-1 part-2");
}

#[tokio::test]
async fn the_layer_and_the_middleware_share_one_token_cache() {
    let fake = FakeNifty::start().await.unwrap();
    let auth = auth(&fake);
    let reqwest_client = client(&auth);
    let svc = service(&auth);

    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let response = reqwest_client
        .get(fake.api_url("/projects"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    assert_eq!(fake.token_calls(), 1);
    let requests = fake.api_requests();
    assert_eq!(requests[0].authorization, requests[1].authorization);
}

#[tokio::test]
async fn other_origins_and_caller_set_authorization_are_left_alone() {
    let fake = FakeNifty::start().await.unwrap();
    let other = FakeNifty::start().await.unwrap();
    let auth = auth(&fake);
    let client = client(&auth);

    let response = client.get(other.api_url("/users/me")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(other.api_requests()[0].authorization, None);

    let response = client
        .get(fake.api_url("/users/me"))
        .header("authorization", "Bearer mine")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        fake.api_requests()[0].authorization.as_deref(),
        Some("Bearer mine")
    );
    assert_eq!(fake.token_calls(), 0);
}

#[tokio::test]
async fn token_failures_surface_as_an_auth_error_inside_the_middleware_error() {
    let fake = FakeNifty::start().await.unwrap();
    fake.push_token_fault(nifty_auth::testing::TokenFault::status(
        400,
        r#"{"error":"invalid_grant"}"#,
    ));
    let client = client(&auth(&fake));

    let err = client
        .get(fake.api_url("/users/me"))
        .send()
        .await
        .unwrap_err();

    let reqwest_middleware::Error::Middleware(inner) = &err else {
        panic!("expected a middleware error, got {err:?}");
    };
    let auth_error = inner.downcast_ref::<AuthError>().expect("an AuthError");
    assert!(auth_error.is_reauthorization_required());
    assert_eq!(fake.api_calls(), 0);
}

/// The recommended order: reqwest-retry outside, nifty-auth inside. A 503 is retried by
/// reqwest-retry; the next attempt gets a fresh bearer and its 401 is handled by nifty-auth.
#[tokio::test]
async fn retry_outside_auth_inside_gives_every_attempt_a_current_token() {
    let fake = FakeNifty::start().await.unwrap();
    let auth = auth(&fake);
    let policy = ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(1), Duration::from_millis(5))
        .build_with_max_retries(2);
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(RetryTransientMiddleware::new_with_policy(policy))
        .with(auth.middleware())
        .build();
    client.get(fake.api_url("/users/me")).send().await.unwrap();

    // The token is revoked while the API also has a hiccup: 503, then the revoked token's 401.
    fake.revoke_access_tokens();
    fake.push_api_status(503);
    let response = client.get(fake.api_url("/projects")).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        fake.token_calls(),
        2,
        "one cold start, one refresh for the 401"
    );
    let statuses: Vec<u16> = fake.api_requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 503, 401, 200]);
}

#[tokio::test]
async fn a_personal_access_token_is_attached_without_any_token_endpoint() {
    let fake = FakeNifty::start().await.unwrap();
    let (token, auth) = personal_auth(&fake);
    let client = client(&auth);

    let response = client.get(fake.api_url("/projects")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    fake.revoke_access_tokens();
    let response = client.get(fake.api_url("/projects")).send().await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "no refresh, no retry"
    );

    assert_eq!(fake.token_calls(), 0);
    assert_eq!(fake.api_calls(), 2);
    assert_eq!(
        fake.api_requests()[0].authorization.as_deref(),
        Some(format!("Bearer {token}").as_str())
    );
}
