//! A failed refresh never takes away a still-valid access token.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_valid_token_keeps_being_used_when_the_background_refresh_fails() {
    let fake = paused_fake_lasting(Duration::from_secs(120));
    let refresh_token = fake.issue_refresh_token();
    let auth = builder(&fake)
        .refresh_token(refresh_token)
        .refresh_skew(Duration::from_secs(60))
        .build()
        .unwrap();
    let svc = service_for(&fake, &auth);

    let first = succeeding_request(&svc, &fake).await;
    assert_eq!(fake.token_calls(), 1);
    let first_tokens = auth.tokens().unwrap();
    let rotated = first_tokens.refresh_token().unwrap().to_owned();

    // Inside the skew window: the request still goes out with the current token, and a background
    // refresh starts and fails three times.
    tokio::time::advance(Duration::from_secs(70)).await;
    for _ in 0..3 {
        fake.push_token_fault(TokenFault::status(500, r#"{"error":"server_error"}"#));
    }
    assert_eq!(succeeding_request(&svc, &fake).await, first);
    for _ in 0..200 {
        if fake.token_calls() == 4 && fake.token_calls_in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        fake.token_calls(),
        4,
        "one cold start, three failed attempts"
    );
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    // The failure changed nothing: the old token is still used, and refreshing cools down.
    for _ in 0..5 {
        assert_eq!(succeeding_request(&svc, &fake).await, first);
    }
    assert_eq!(
        auth.access_token().await.unwrap(),
        first_tokens.access_token()
    );
    assert_eq!(fake.token_calls(), 4);
    assert_eq!(auth.tokens().unwrap(), first_tokens);

    // After the cool-down a healthy background refresh replaces it, with the saved refresh token.
    let mut replaced = false;
    for _ in 0..50 {
        tokio::time::advance(Duration::from_millis(25)).await;
        succeeding_request(&svc, &fake).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        if auth.tokens().unwrap() != first_tokens {
            replaced = true;
            break;
        }
    }
    assert!(replaced, "the background refresh never succeeded");
    assert_eq!(fake.token_calls(), 5);
    assert_eq!(refresh_tokens_sent(&fake)[1..], vec![rotated; 4]);
    let new = succeeding_request(&svc, &fake).await;
    assert_ne!(new, first);
    assert_eq!(
        new,
        format!("Bearer {}", auth.tokens().unwrap().access_token())
    );
    assert_eq!(fake.unauthorized_served(), 0);
    assert_eq!(fake.invalid_grants_served(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_terminal_background_refresh_failure_keeps_the_valid_token_until_it_expires() {
    let (fake, _, svc) = paused_started(Duration::from_secs(120), Duration::from_secs(60));
    let first = succeeding_request(&svc, &fake).await;
    assert_eq!(fake.token_calls(), 1);

    tokio::time::advance(Duration::from_secs(70)).await;
    fake.push_token_fault(TokenFault::status(400, r#"{"error":"invalid_grant"}"#));
    assert_eq!(succeeding_request(&svc, &fake).await, first);
    for _ in 0..200 {
        if fake.token_calls() == 2 && fake.token_calls_in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(fake.token_calls(), 2);

    // Latched, but the token is still valid for another ~50 s: keep using it, no more calls.
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(succeeding_request(&svc, &fake).await, first);
    }
    assert_eq!(fake.token_calls(), 2);

    // Once it expires, requests fail fast instead of sending it.
    tokio::time::advance(Duration::from_secs(30)).await;
    let err = failing_request(&svc, &fake).await;
    assert!(err.is_reauthorization_required(), "{err:?}");
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.api_calls(), 7);
    assert_eq!(fake.unauthorized_served(), 0);
}

#[tokio::test]
async fn a_valid_token_keeps_being_used_when_a_forced_refresh_after_401_fails() {
    let Setup {
        fake, auth, svc, ..
    } = setup().await;
    let first = succeeding_request(&svc, &fake).await;
    let first_tokens = auth.tokens().unwrap();
    assert_eq!(fake.token_calls(), 1);

    // The API rejects the token once; the forced refresh fails every attempt.
    fake.push_api_status(401);
    for _ in 0..3 {
        fake.push_token_fault(TokenFault::status(502, "Bad Gateway"));
    }
    let err = failing_request(&svc, &fake).await;
    assert!(
        matches!(&err, AuthError::Endpoint { status, .. } if *status == StatusCode::BAD_GATEWAY),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(fake.token_calls(), 4);
    assert_eq!(
        fake.api_calls(),
        2,
        "the 401 was not retried without a new token"
    );

    // The old, still valid token goes on being used.
    assert_eq!(auth.tokens().unwrap(), first_tokens);
    assert_eq!(succeeding_request(&svc, &fake).await, first);
    assert_eq!(
        auth.access_token().await.unwrap(),
        first_tokens.access_token()
    );
    assert_eq!(fake.token_calls(), 4);
    assert_eq!(fake.api_calls(), 3);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(
        refresh_tokens_sent(&fake)[1..],
        vec![first_tokens.refresh_token().unwrap().to_owned(); 3]
    );
}
