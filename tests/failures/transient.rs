//! Transient answers: retried with backoff, then a transient error; the refresh token survives.

use super::*;

#[tokio::test]
async fn three_500s_use_all_attempts_then_a_transient_endpoint_error_and_keep_the_refresh_token() {
    let Setup {
        fake,
        refresh_token,
        svc,
        ..
    } = setup().await;
    for _ in 0..3 {
        fake.push_token_fault(TokenFault::status(500, r#"{"error":"server_error"}"#));
    }

    let err = failing_request(&svc, &fake).await;
    let AuthError::Endpoint { status, error, .. } = &err else {
        panic!("expected Endpoint, got {err:?}");
    };
    assert_eq!(*status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error.as_deref(), Some("server_error"));
    assert!(err.is_transient() && !err.is_terminal(), "{err:?}");
    assert_eq!(
        fake.token_calls(),
        nifty_auth::DEFAULT_TOKEN_ATTEMPTS as usize
    );
    assert_eq!(fake.token_calls(), 3);
    assert_eq!(fake.api_calls(), 0);

    // Not latched: the next call refreshes with the very same refresh token.
    succeeding_request(&svc, &fake).await;
    assert_eq!(fake.token_calls(), 4);
    assert_eq!(fake.api_calls(), 1);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(refresh_tokens_sent(&fake), vec![refresh_token; 4]);
}

#[tokio::test]
async fn endpoint_error_excerpts_hide_token_like_strings_the_refresh_token_and_the_client_secret() {
    let secret = "Zq9xVv2LmT4Kp8";
    let fake = FakeNifty::builder()
        .client("nifty-app-id", secret)
        .start()
        .await
        .unwrap();
    let long_token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl";
    let cases = [
        (
            "text/html",
            format!(
                "<html>\n<body><h1>500</h1><pre>client_secret={secret}\ntoken {long_token}\n\
                 refresh_token=RT</pre></body></html>"
            ),
        ),
        (
            "application/json",
            format!(
                r#"{{"error":"server_error","error_description":"bad secret {secret} for token {long_token} (RT)"}}"#
            ),
        ),
        (
            "application/json",
            format!(r#"{{"message":"Crashed on {long_token} with {secret}; RT"}}"#),
        ),
        ("text/plain", format!("{secret}{long_token}RT ").repeat(20)),
    ];
    for (content_type, body) in cases {
        let (auth, refresh_token) = auth_with_refresh_token(&fake);
        let body = body.replace("RT", &refresh_token);
        let calls = fake.token_calls();
        for _ in 0..3 {
            fake.push_token_fault(TokenFault::Respond {
                status: 500,
                content_type: content_type.to_owned(),
                body: body.clone(),
            });
        }

        let err = auth.access_token().await.expect_err("500");
        let AuthError::Endpoint {
            status, excerpt, ..
        } = &err
        else {
            panic!("expected Endpoint, got {err:?}");
        };
        assert_eq!(*status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(err.is_transient());
        assert_eq!(fake.token_calls(), calls + 3);
        for needle in [secret, long_token, refresh_token.as_str()] {
            assert!(
                !excerpt.contains(needle),
                "`{needle}` in excerpt `{excerpt}`"
            );
        }
        assert!(
            excerpt.chars().count() <= 121,
            "excerpt too long: {excerpt}"
        );
        assert_reveals_none_of(&err, &[secret, long_token, &refresh_token]);

        // And it recovers with that refresh token.
        auth.access_token().await.expect("healthy call");
        assert_eq!(fake.token_calls(), calls + 4);
        assert_eq!(refresh_tokens_sent(&fake)[calls..], vec![refresh_token; 4]);
    }
    assert_eq!(fake.invalid_grants_served(), 0);
}

#[tokio::test]
async fn two_503s_then_success_still_serve_the_request_with_three_token_calls() {
    let Setup {
        fake,
        refresh_token,
        svc,
        ..
    } = setup().await;
    for _ in 0..2 {
        fake.push_token_fault(TokenFault::Respond {
            status: 503,
            content_type: "text/html".to_owned(),
            body: "<html>Service Unavailable</html>".to_owned(),
        });
    }

    succeeding_request(&svc, &fake).await;
    assert_eq!(fake.token_calls(), 3);
    assert_eq!(fake.api_calls(), 1);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(refresh_tokens_sent(&fake), vec![refresh_token; 3]);
}

#[tokio::test]
async fn a_429_then_success_serves_the_request() {
    // FakeNifty's `TokenFault::Respond` cannot set a `Retry-After` header, so this is the 429 without
    // one; the retry runs on the (fast) backoff.
    let Setup {
        fake,
        refresh_token,
        svc,
        ..
    } = setup().await;
    fake.push_token_fault(TokenFault::status(429, r#"{"error":"rate_limited"}"#));

    succeeding_request(&svc, &fake).await;
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.api_calls(), 1);
    assert_eq!(refresh_tokens_sent(&fake), vec![refresh_token; 2]);
}

#[tokio::test]
async fn three_429s_are_a_transient_endpoint_error() {
    let fake = FakeNifty::start().await.unwrap();
    let (auth, refresh_token) = auth_with_refresh_token(&fake);
    for _ in 0..3 {
        fake.push_token_fault(TokenFault::status(429, r#"{"message":"slow down"}"#));
    }

    let err = auth.access_token().await.expect_err("429");
    assert!(
        matches!(&err, AuthError::Endpoint { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS),
        "{err:?}"
    );
    assert!(err.is_transient() && !err.is_terminal());
    assert_eq!(fake.token_calls(), 3);

    auth.access_token().await.expect("healthy call");
    assert_eq!(fake.token_calls(), 4);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(refresh_tokens_sent(&fake), vec![refresh_token; 4]);
}

#[tokio::test]
async fn connection_resets_are_a_transport_error_with_a_source_and_keep_the_refresh_token() {
    let Setup {
        fake,
        refresh_token,
        svc,
        ..
    } = setup().await;
    for _ in 0..3 {
        fake.push_token_fault(TokenFault::Reset);
    }

    let err = failing_request(&svc, &fake).await;
    assert!(matches!(err, AuthError::Transport { .. }), "{err:?}");
    assert!(err.source().is_some(), "a transport error keeps its cause");
    assert!(err.is_transient() && !err.is_terminal());
    assert_eq!(fake.token_calls(), 3, "every attempt was made");
    assert_eq!(fake.api_calls(), 0);

    succeeding_request(&svc, &fake).await;
    assert_eq!(fake.token_calls(), 4);
    assert_eq!(fake.api_calls(), 1);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(refresh_tokens_sent(&fake), vec![refresh_token; 4]);
}

#[tokio::test]
async fn a_single_attempt_reset_is_a_transport_error_and_the_next_call_recovers() {
    let fake = FakeNifty::start().await.unwrap();
    let refresh_token = fake.issue_refresh_token();
    let auth = builder(&fake)
        .refresh_token(refresh_token.clone())
        .token_attempts(1)
        .build()
        .unwrap();
    fake.push_token_fault(TokenFault::Reset);

    let err = auth.access_token().await.expect_err("reset");
    assert!(matches!(err, AuthError::Transport { .. }), "{err:?}");
    assert!(err.source().is_some());
    assert_eq!(fake.token_calls(), 1);

    auth.access_token().await.expect("healthy call");
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(refresh_tokens_sent(&fake), vec![refresh_token; 2]);
}

#[tokio::test]
async fn a_hung_endpoint_times_out_quickly_and_the_next_call_recovers() {
    let fake = FakeNifty::start().await.unwrap();
    let refresh_token = fake.issue_refresh_token();
    let timeout = Duration::from_millis(200);
    let auth = builder(&fake)
        .refresh_token(refresh_token.clone())
        .token_timeout(timeout)
        .token_attempts(1)
        .build()
        .unwrap();
    let svc = service(&auth);
    fake.push_token_fault(TokenFault::Hang);

    let started = std::time::Instant::now();
    let err = failing_request(&svc, &fake).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(err, AuthError::Timeout { after } if after == timeout),
        "{err:?}"
    );
    assert!(err.is_timeout() && err.is_transient() && !err.is_terminal());
    // Exactly one call that hung for the whole timeout (how long it took at most is for benchmarks).
    assert!(elapsed >= timeout, "gave up early: {elapsed:?}");
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.api_calls(), 0);

    succeeding_request(&svc, &fake).await;
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.api_calls(), 1);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(refresh_tokens_sent(&fake), vec![refresh_token; 2]);
}

#[tokio::test]
async fn a_slow_endpoint_times_out_every_attempt_within_the_budget() {
    let fake = FakeNifty::start().await.unwrap();
    let refresh_token = fake.issue_refresh_token();
    let timeout = Duration::from_millis(100);
    let auth = builder(&fake)
        .refresh_token(refresh_token.clone())
        .token_timeout(timeout)
        .build()
        .unwrap();
    for _ in 0..3 {
        fake.push_token_fault(TokenFault::Hang);
    }

    let started = std::time::Instant::now();
    let err = auth.access_token().await.expect_err("timeout");
    let elapsed = started.elapsed();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(fake.token_calls(), 3);
    // 3 attempts, each waited out to its timeout (no upper bound on a loaded machine's wall clock).
    assert!(elapsed >= timeout * 3, "{elapsed:?}");

    auth.access_token().await.expect("healthy call");
    assert_eq!(fake.token_calls(), 4);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(refresh_tokens_sent(&fake), vec![refresh_token; 4]);
}
