//! Retry once on 401: one refresh shared by every request rejected with the same token, the same
//! request sent again, a second 401 passed through, 403 never retried, bodies replayed only when they
//! can be.

mod common;

use std::convert::Infallible;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nifty_auth::testing::FakeNifty;
use tower::{ServiceBuilder, ServiceExt};

/// Warms the token cache with one request; returns the service.
async fn warm(fake: &FakeNifty) -> (nifty_auth::NiftyAuth, AuthClient) {
    let auth = auth(fake);
    let svc = service_for(fake, &auth);
    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);
    (auth, svc)
}

#[tokio::test]
async fn post_answered_401_refreshes_once_and_is_retried_with_identical_bytes() {
    let fake = FakeNifty::start().await.unwrap();
    let (_auth, svc) = warm(&fake).await;
    fake.revoke_access_tokens();

    let body = r#"{"name":"Write the docs","project":"p-1","notes":"ünïcode ✓"}"#;
    let request = Request::post(fake.api_url("/tasks?project_id=p-1"))
        .header("content-type", "application/json")
        .header("x-request-id", "req-42")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let (status, _) = send(&svc, request).await.unwrap();

    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.unauthorized_served(), 1);
    let requests = fake.api_requests();
    assert_eq!(requests.len(), 3);
    let (first, retry) = (&requests[1], &requests[2]);
    assert_eq!(first.status, 401);
    assert_eq!(retry.status, 200);
    assert_eq!(first.method, http::Method::POST);
    assert_eq!(retry.method, http::Method::POST);
    assert_eq!(first.path, "/api/v1.0/tasks?project_id=p-1");
    assert_eq!(retry.path, first.path);
    assert_eq!(&first.body[..], body.as_bytes());
    assert_eq!(retry.body, first.body);
    assert_ne!(retry.authorization, first.authorization);
}

#[tokio::test]
async fn a_second_401_goes_back_to_the_caller_as_it_is() {
    let fake = FakeNifty::start().await.unwrap();
    let (_auth, svc) = warm(&fake).await;
    fake.push_api_status(401);
    fake.push_api_status(401);

    let (status, _) = send(&svc, post_json(fake.api_url("/tasks"), r#"{"a":1}"#))
        .await
        .unwrap();

    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(fake.api_calls(), 3, "warm-up, first send, one retry");
    assert_eq!(fake.token_calls(), 2, "one refresh for the first 401");
}

// Paused clock: the refresh takes one (virtual) second, so every one of the 200 requests is sent
// with the revoked token and answered 401 before it completes — deterministically.
#[tokio::test(start_paused = true)]
async fn two_hundred_concurrent_401s_for_one_token_make_one_refresh() {
    let fake = FakeNifty::in_process();
    let (_auth, svc) = warm(&fake).await;
    fake.revoke_access_tokens();
    fake.set_token_delay(std::time::Duration::from_secs(1));

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let svc = svc.clone();
        let url = fake.api_url(&format!("/projects?offset={i}"));
        tasks.spawn(async move { send(&svc, get(url)).await });
    }
    while let Some(joined) = tasks.join_next().await {
        let (status, _) = joined.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(fake.token_calls(), 2, "warm-up plus exactly one refresh");
    assert_eq!(fake.unauthorized_served(), 200);
    assert_eq!(fake.api_calls(), 1 + 400);
}

#[tokio::test]
async fn forbidden_is_not_retried() {
    let fake = FakeNifty::start().await.unwrap();
    let (_auth, svc) = warm(&fake).await;
    fake.push_api_status(403);

    let (status, _) = send(&svc, get(fake.api_url("/projects"))).await.unwrap();

    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(fake.api_calls(), 2);
    assert_eq!(fake.token_calls(), 1);
}

#[tokio::test]
async fn a_copied_body_over_the_replay_cap_is_sent_once_and_its_401_returned() {
    let fake = FakeNifty::start().await.unwrap();
    let auth = auth(&fake);
    // A `String` body: replaying it copies its bytes, so the cap applies.
    let client: Client<_, String> = Client::builder(TokioExecutor::new()).build_http();
    let svc = ServiceBuilder::new()
        .layer(auth.layer())
        .service(client.clone());
    let warm = Request::get(fake.api_url("/users/me"))
        .body(String::new())
        .unwrap();
    assert_eq!(svc.clone().oneshot(warm).await.unwrap().status(), 200);
    fake.revoke_access_tokens();

    let big = "x".repeat(70 * 1024);
    let request = Request::post(fake.api_url("/files"))
        .body(big.clone())
        .unwrap();
    let response = svc.clone().oneshot(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(fake.api_calls(), 2, "not retried");
    assert_eq!(fake.api_requests()[1].body, big.as_bytes());

    // The replay cap is configurable: with a larger cap the same body is retried.
    let svc = ServiceBuilder::new()
        .layer(auth.layer().max_replay_body_bytes(128 * 1024))
        .service(client);
    let request = Request::post(fake.api_url("/files"))
        .body(big.clone())
        .unwrap();
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.api_calls(), 4, "retried once");
    let requests = fake.api_requests();
    assert_eq!(requests.last().unwrap().body, big.as_bytes());
}

#[tokio::test]
async fn a_one_mib_full_bytes_post_answered_401_is_retried_with_identical_bytes() {
    let fake = FakeNifty::start().await.unwrap();
    let (_auth, svc) = warm(&fake).await;
    fake.revoke_access_tokens();

    // Over the 64 KiB cap, but a copy of `Full<Bytes>` only shares the bytes: it is replayed.
    let body: Bytes = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let request = Request::post(fake.api_url("/files"))
        .body(Full::new(body.clone()))
        .unwrap();
    let (status, _) = send(&svc, request).await.unwrap();

    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 2);
    let requests = fake.api_requests();
    assert_eq!(requests.len(), 3, "warm-up, first send, one retry");
    assert_eq!(requests[1].status, 401);
    assert_eq!(requests[2].status, 200);
    assert_eq!(requests[1].body, body);
    assert_eq!(requests[2].body, body);
}

#[tokio::test]
async fn a_stream_body_request_is_sent_once_and_its_401_returned() {
    type Frames =
        futures_util::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, Infallible>>>;
    let fake = FakeNifty::start().await.unwrap();
    let auth = auth(&fake);
    // A foreign body type, not boxed: the layer takes it as it is.
    let client: Client<_, StreamBody<Frames>> = Client::builder(TokioExecutor::new()).build_http();
    let svc = ServiceBuilder::new().layer(auth.layer()).service(client);
    let frames = |chunks: &[&'static str]| {
        let frames: Vec<_> = chunks
            .iter()
            .map(|c| Ok(http_body::Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    };
    let warm = Request::get(fake.api_url("/users/me"))
        .body(frames(&[]))
        .unwrap();
    assert_eq!(svc.clone().oneshot(warm).await.unwrap().status(), 200);
    fake.revoke_access_tokens();

    let request = Request::post(fake.api_url("/upload"))
        .body(frames(&["chunk-1 ", "chunk-2"]))
        .unwrap();
    let response = svc.clone().oneshot(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(fake.api_calls(), 2, "not retried");
    assert_eq!(
        fake.token_calls(),
        1,
        "no refresh for a request that is not retried"
    );
    assert_eq!(&fake.api_requests()[1].body[..], b"chunk-1 chunk-2");
}

#[tokio::test]
async fn a_body_the_default_does_not_know_is_replayed_by_clone_body_fn() {
    type MyBody = Either<Full<Bytes>, String>;
    let fake = FakeNifty::start().await.unwrap();
    let auth = auth(&fake);
    let client: Client<_, MyBody> = Client::builder(TokioExecutor::new()).build_http();
    let replays_left = ServiceBuilder::new()
        .layer(auth.layer().clone_body_fn(|body: &MyBody| match body {
            Either::Left(full) => Some(Either::Left(full.clone())),
            Either::Right(_) => None,
        }))
        .service(client.clone());
    let default = ServiceBuilder::new().layer(auth.layer()).service(client);
    let post = |body: &'static str| {
        Request::post(fake.api_url("/tasks"))
            .body(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))))
            .unwrap()
    };
    assert_eq!(
        default.clone().oneshot(post("{}")).await.unwrap().status(),
        200
    );

    fake.revoke_access_tokens();
    let response = default.oneshot(post(r#"{"n":1}"#)).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "default: sent once"
    );
    assert_eq!(fake.api_calls(), 2);

    let response = replays_left.oneshot(post(r#"{"n":2}"#)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the closure kept a copy");
    let requests = fake.api_requests();
    assert_eq!(requests.len(), 4);
    assert_eq!(&requests[3].body[..], br#"{"n":2}"#);
    assert_eq!(requests[3].body, requests[2].body);
}

#[tokio::test]
async fn a_streaming_body_is_sent_once_and_its_401_returned() {
    let fake = FakeNifty::start().await.unwrap();
    let auth = auth(&fake);
    let client: Client<_, BoxBody<Bytes, Infallible>> =
        Client::builder(TokioExecutor::new()).build_http();
    let svc = ServiceBuilder::new().layer(auth.layer()).service(client);
    let warm = Request::get(fake.api_url("/users/me"))
        .body(Full::new(Bytes::new()).boxed())
        .unwrap();
    assert_eq!(svc.clone().oneshot(warm).await.unwrap().status(), 200);
    fake.revoke_access_tokens();

    let chunks = futures_util::stream::iter(
        ["chunk-1 ", "chunk-2"]
            .map(|c| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(c)))),
    );
    let request = Request::post(fake.api_url("/upload"))
        .body(StreamBody::new(chunks).boxed())
        .unwrap();
    let response = svc.clone().oneshot(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(fake.api_calls(), 2, "not retried");
    assert_eq!(&fake.api_requests()[1].body[..], b"chunk-1 chunk-2");
}

#[tokio::test(start_paused = true)]
async fn the_401_retry_waits_for_readiness_under_a_concurrency_limit() {
    let fake = FakeNifty::in_process();
    let auth = auth(&fake);
    // ConcurrencyLimit panics if `call` comes without a successful `poll_ready`.
    let svc = ServiceBuilder::new()
        .layer(auth.layer())
        .concurrency_limit(1)
        .service(fake.service());
    assert_eq!(status_of(&svc, get(fake.api_url("/users/me"))).await, 200);
    fake.revoke_access_tokens();
    // The refresh takes a virtual second: all ten requests are sent (one at a time) with the revoked
    // token and each retry has to win the single permit again.
    fake.set_token_delay(std::time::Duration::from_secs(1));

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let svc = svc.clone();
        let request = post_json(fake.api_url("/tasks"), r#"{"n":1}"#);
        tasks.spawn(async move { svc.oneshot(request).await.map(|r| r.status()) });
    }
    while let Some(joined) = tasks.join_next().await {
        assert_eq!(joined.unwrap().unwrap(), StatusCode::OK);
    }
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.api_calls(), 1 + 20);
}

#[tokio::test]
async fn composes_with_buffer_and_timeout_in_either_order() {
    let fake = FakeNifty::start().await.unwrap();
    let auth = auth(&fake);
    let outer = ServiceBuilder::new()
        .buffer(32)
        .timeout(std::time::Duration::from_secs(10))
        .layer(auth.layer())
        .service(http_client());
    let inner = ServiceBuilder::new()
        .layer(auth.layer())
        .buffer(32)
        .timeout(std::time::Duration::from_secs(10))
        .service(http_client());

    assert_eq!(status_of(&outer, get(fake.api_url("/projects"))).await, 200);
    assert_eq!(
        status_of(&inner, post_json(fake.api_url("/tasks"), "{}")).await,
        200
    );
    for _ in 0..2 {
        fake.revoke_access_tokens();
        assert_eq!(status_of(&outer, get(fake.api_url("/projects"))).await, 200);
        fake.revoke_access_tokens();
        assert_eq!(
            status_of(&inner, post_json(fake.api_url("/tasks"), "{}")).await,
            200
        );
    }
    assert_eq!(
        fake.token_calls(),
        5,
        "one cold start, one refresh per revocation"
    );
    assert_eq!(fake.unauthorized_served(), 4);
    assert_eq!(fake.api_calls(), 2 + 8);
}

#[tokio::test]
async fn a_401_from_a_request_with_the_callers_own_authorization_is_not_retried() {
    let (fake, _, svc) = started().await;
    let request = Request::get(fake.api_url("/users/me"))
        .header("authorization", "Bearer caller-chosen")
        .body(Full::new(Bytes::new()))
        .unwrap();

    let (status, _) = send(&svc, request).await.unwrap();

    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(fake.token_calls(), 0);
    assert_eq!(fake.api_calls(), 1);
    assert_eq!(
        fake.api_requests()[0].authorization.as_deref(),
        Some("Bearer caller-chosen")
    );
}

/// A 401 that comes back for a token the manager has already replaced (another request's 401
/// refreshed meanwhile) is retried with the newer token at once: no refresh is started for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_for_a_token_already_replaced_is_retried_with_the_newer_one_without_a_refresh() {
    let (fake, auth, svc) = started().await;
    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);

    // B goes out with that token and is held at the API.
    let mut hold = fake.hold_next_api_answer();
    let b = tokio::spawn({
        let (svc, url) = (svc.clone(), fake.api_url("/projects"));
        async move { send(&svc, get(url)).await }
    });
    hold.arrived().await;

    // The token is revoked: A's 401 refreshes, and A's retry gets through.
    fake.revoke_access_tokens();
    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 2);
    let refreshes = auth.stats().refreshes;

    // B's answer is a 401 for the token A's refresh replaced.
    hold.release();
    let (status, _) = b.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK, "B was retried with the newer token");
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(
        auth.stats().refreshes,
        refreshes,
        "no refresh was started for a 401 of a token already replaced"
    );
    assert_eq!(fake.unauthorized_served(), 2);
}
