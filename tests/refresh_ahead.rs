//! Refresh ahead of expiry, on tokio's paused clock: callers keep using the current token while one
//! background refresh runs; only an expired token makes callers wait; a short-lived token is not
//! refreshed in a loop.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

fn bearer(token: &str) -> Option<String> {
    Some(format!("Bearer {token}"))
}

#[tokio::test(start_paused = true)]
async fn within_the_skew_callers_are_not_blocked_and_one_background_refresh_runs() {
    let (fake, auth, svc) = paused_started(Duration::from_secs(120), Duration::from_secs(60));
    send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    let old = auth.tokens().unwrap().access_token().to_owned();
    assert_eq!(fake.token_calls(), 1);

    // Into the skew window, with a token endpoint that takes 10 s to answer.
    tokio::time::advance(Duration::from_secs(70)).await;
    fake.set_token_delay(Duration::from_secs(10));
    let started = tokio::time::Instant::now();
    for _ in 0..20 {
        let (status, _) = send(&svc, get(fake.api_url("/projects"))).await.unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "callers waited for the refresh"
    );
    // The background refresh is a task of its own: wait for its call to reach the fake.
    fake.wait_until(|fake| fake.token_calls_in_flight() > 0)
        .await;
    assert_eq!(
        fake.token_calls_in_flight(),
        1,
        "one background refresh is running"
    );
    assert_eq!(fake.token_calls(), 2);
    assert!(fake.api_requests()[1..]
        .iter()
        .all(|r| r.authorization == bearer(&old)));

    // Once it lands, requests use the new token; still one refresh in all.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(fake.token_calls_in_flight(), 0);
    send(&svc, get(fake.api_url("/projects"))).await.unwrap();
    let new = auth.tokens().unwrap().access_token().to_owned();
    assert_ne!(new, old);
    assert_eq!(
        fake.api_requests().last().unwrap().authorization,
        bearer(&new)
    );
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.unauthorized_served(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_is_never_sent() {
    let (fake, auth, svc) = paused_started(Duration::from_secs(120), Duration::from_secs(60));
    send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    let old = auth.access_token().await.unwrap();

    // Straight past expiry (no request in the skew window to start a background refresh).
    tokio::time::advance(Duration::from_secs(121)).await;
    fake.set_token_delay(Duration::from_secs(2));
    let (status, _) = send(&svc, get(fake.api_url("/projects"))).await.unwrap();

    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.unauthorized_served(), 0);
    let last = fake.api_requests().pop().unwrap();
    assert_ne!(last.authorization, bearer(&old));
    assert_eq!(fake.api_calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn access_token_refreshes_only_when_needed() {
    let fake = paused_fake_lasting(Duration::from_secs(300));
    let auth = auth(&fake);
    let first = auth.access_token().await.unwrap();
    assert_eq!(auth.access_token().await.unwrap(), first);
    assert_eq!(fake.token_calls(), 1);

    tokio::time::advance(Duration::from_secs(301)).await;
    let second = auth.access_token().await.unwrap();
    assert_ne!(second, first);
    assert_eq!(fake.token_calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_short_lived_token_is_refreshed_at_half_its_life_not_in_a_loop() {
    // A 10 s token with the default 60 s skew: the skew is clamped to 5 s.
    let fake = paused_fake_lasting(Duration::from_secs(10));
    let auth = auth(&fake);
    let svc = service_for(&fake, &auth);
    send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(fake.token_calls(), 1);

    // One request a second for 30 s: a refresh every 5 s, never more.
    for _ in 0..30 {
        tokio::time::advance(Duration::from_secs(1)).await;
        let (status, _) = send(&svc, get(fake.api_url("/projects"))).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        // Let a background refresh started by this request land before the next one.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(fake.token_calls(), 1 + 6);
    assert_eq!(fake.unauthorized_served(), 0);
}
