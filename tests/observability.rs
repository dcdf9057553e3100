//! Observability: `auth.stats()` counts exactly what happened. (What tracing shows is in
//! `tests/tracing_log.rs`, a binary of its own.)

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use nifty_auth::testing::{FakeNifty, TokenFault};
use nifty_auth::Stats;

async fn burst(svc: &AuthClient, url: String, n: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let svc = svc.clone();
        let url = url.clone();
        tasks.spawn(async move { send(&svc, get(url)).await });
    }
    while let Some(joined) = tasks.join_next().await {
        assert_eq!(joined.unwrap().unwrap().0, StatusCode::OK);
    }
}

#[tokio::test(start_paused = true)]
async fn stats_count_token_calls_refreshes_coalescing_and_retries_exactly() {
    let fake = FakeNifty::builder()
        .token_delay(Duration::from_secs(1))
        .start_in_process();
    let auth = auth(&fake);
    let svc = service_for(&fake, &auth);
    assert_eq!(auth.stats(), Stats::default());

    // Cold start: 50 requests, one refresh, 49 joined it.
    burst(&svc, fake.api_url("/projects"), 50).await;
    let stats = auth.stats();
    assert_eq!(stats.token_calls_succeeded, 1);
    assert_eq!(stats.refreshes, 1);
    assert_eq!(stats.refreshes_coalesced, 49);
    assert_eq!(stats.requests_authorized, 50);
    assert_eq!(stats.unauthorized_retries, 0);
    assert_eq!(stats.requests_without_retry, 50);

    // Revoked: 10 requests answered 401, one refresh, 10 retries.
    fake.revoke_access_tokens();
    burst(&svc, fake.api_url("/projects"), 10).await;
    let stats = auth.stats();
    assert_eq!(stats.token_calls_succeeded, 2);
    assert_eq!(stats.refreshes, 2);
    assert_eq!(stats.refreshes_coalesced, 49 + 9);
    assert_eq!(stats.unauthorized_retries, 10);
    assert_eq!(stats.requests_authorized, 60);
    assert_eq!(stats.requests_without_retry, 50);

    // Failures, by outcome: three 500s (transient), then invalid_grant (terminal).
    fake.set_token_delay(Duration::ZERO);
    for _ in 0..3 {
        fake.push_token_fault(TokenFault::status(500, "{}"));
    }
    fake.revoke_access_tokens();
    let err = send(&svc, get(fake.api_url("/projects")))
        .await
        .unwrap_err();
    assert!(auth_error(&err).is_transient());
    fake.push_token_fault(TokenFault::status(400, r#"{"error":"invalid_grant"}"#));
    let err = send(&svc, get(fake.api_url("/projects")))
        .await
        .unwrap_err();
    assert!(auth_error(&err).is_reauthorization_required());

    let stats = auth.stats();
    assert_eq!(stats.token_calls_failed_transient, 3);
    assert_eq!(stats.token_calls_failed_terminal, 1);
    assert_eq!(stats.token_calls_failed_other, 0);
    assert_eq!(stats.refreshes, 4);
    assert_eq!(fake.token_calls(), 2 + 3 + 1);
}
