//! Single flight: however many requests need a token at once, the token endpoint sees one call.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use nifty_auth::testing::{FakeNifty, Grant};

async fn fire(svc: &AuthClient, url: String, n: usize) -> Vec<StatusCode> {
    send_concurrently(svc, url, n)
        .await
        .into_iter()
        .map(|result| result.expect("request").0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_500_concurrent_requests_make_one_token_call() {
    let fake = fake_delayed(Duration::from_millis(50)).await;
    let auth = auth(&fake);
    let svc = service(&auth);

    let statuses = fire(&svc, fake.api_url("/users/me"), 500).await;

    assert_eq!(statuses.len(), 500);
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.token_calls_for(Grant::RefreshToken), 1);
    assert_eq!(fake.api_calls(), 500);
    assert_eq!(fake.unauthorized_served(), 0);
}

#[tokio::test(start_paused = true)]
async fn expiry_then_300_concurrent_requests_make_one_token_call_and_never_send_the_expired_token()
{
    let fake = FakeNifty::builder()
        .token_lifetime(Some(Duration::from_secs(120)))
        .token_delay(Duration::from_millis(5))
        .start_in_process();
    let auth = auth(&fake);
    let svc = service_for(&fake, &auth);

    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);
    let first_token = auth.tokens().unwrap().access_token().to_owned();

    tokio::time::advance(Duration::from_secs(121)).await;
    let statuses = fire(&svc, fake.api_url("/projects"), 300).await;

    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(
        fake.token_calls(),
        2,
        "one call for the cold start, one for the expiry"
    );
    assert_eq!(fake.api_calls(), 301);
    assert_eq!(fake.unauthorized_served(), 0, "an expired token was sent");
    let stale = format!("Bearer {first_token}");
    let after_expiry = &fake.api_requests()[1..];
    assert!(after_expiry
        .iter()
        .all(|r| r.authorization.as_deref() != Some(stale.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_64_tasks_on_two_workers_share_one_token() {
    let (fake, _, svc) = started().await;

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let svc = svc.clone();
        let url = fake.api_url("/users/me");
        tasks.spawn(async move {
            for _ in 0..25 {
                let (status, _) = send(&svc, get(&url)).await.expect("request");
                assert_eq!(status, StatusCode::OK);
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("task");
    }
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.api_calls(), 64 * 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_access_token_calls_share_one_refresh() {
    let fake = fake_delayed(Duration::from_millis(30)).await;
    let auth = auth(&fake);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let auth = auth.clone();
        tasks.spawn(async move { auth.access_token().await });
    }
    let mut tokens = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        tokens.push(joined.unwrap().unwrap());
    }
    tokens.dedup();
    assert_eq!(tokens.len(), 1, "every caller got the same token");
    assert_eq!(fake.token_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_fails_every_waiter_with_the_same_error_after_one_call() {
    let fake = fake_delayed(Duration::from_millis(30)).await;
    fake.push_token_fault(nifty_auth::testing::TokenFault::status(
        400,
        r#"{"error":"invalid_grant","error_description":"refresh token revoked"}"#,
    ));
    let auth = auth(&fake);
    let svc = service(&auth);
    for result in send_concurrently(&svc, fake.api_url("/users/me"), 100).await {
        let err = result.expect_err("no token, no request");
        assert!(auth_error(&err).is_reauthorization_required(), "{err}");
    }
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.api_calls(), 0);
}
