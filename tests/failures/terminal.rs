//! Terminal answers: latch, fail fast, and the store keeps the old refresh token.

use super::*;

/// A fake, a `NiftyAuth` whose `MemoryStore` (kept aside) holds an expired access token and a
/// valid refresh token, and that refresh token.
async fn auth_with_stored_tokens() -> (FakeNifty, NiftyAuth, MemoryStore, String) {
    let fake = FakeNifty::start().await.unwrap();
    let refresh_token = fake.issue_refresh_token();
    let store = MemoryStore::with_tokens(expired_tokens(&refresh_token));
    let auth = builder(&fake).store(store.clone()).build().expect("build");
    (fake, auth, store, refresh_token)
}

/// The refresh token `store` holds, read anew at each call (what `assert_latched` checks).
fn refresh_token_in(store: &MemoryStore) -> impl Fn() -> Option<String> + '_ {
    || {
        store
            .get()
            .and_then(|t| t.refresh_token().map(str::to_owned))
    }
}

/// After a terminal failure: `access_token()` and a request through the layer fail fast with the same
/// kind of error, without a token or API call; the store and the fake still hold the old refresh token.
async fn assert_latched(
    fake: &FakeNifty,
    auth: &NiftyAuth,
    stored_refresh_token: impl Fn() -> Option<String>,
    refresh_token: &str,
    is_same_kind: impl Fn(&AuthError) -> bool,
) {
    let calls = fake.token_calls();
    for _ in 0..3 {
        let err = auth.access_token().await.expect_err("latched");
        assert!(is_same_kind(&err), "{err:?}");
        assert!(err.is_terminal(), "{err:?}");
        let err = failing_request(&service(auth), fake).await;
        assert!(is_same_kind(&err), "{err:?}");
    }
    assert_eq!(
        fake.token_calls(),
        calls,
        "a latched error made a token call"
    );
    assert_eq!(fake.api_calls(), 0);
    assert_eq!(stored_refresh_token().as_deref(), Some(refresh_token));
    assert_eq!(
        fake.current_refresh_token().as_deref(),
        Some(refresh_token),
        "the grant is untouched"
    );
}

#[tokio::test]
async fn http_401_is_invalid_client_latches_and_keeps_the_stored_refresh_token() {
    let (fake, auth, store, refresh_token) = auth_with_stored_tokens().await;
    fake.push_token_fault(TokenFault::status(401, r#"{"error":"invalid_client"}"#));

    let err = auth.access_token().await.expect_err("401");
    assert!(
        matches!(err, AuthError::InvalidClient { status } if status == StatusCode::UNAUTHORIZED),
        "{err:?}"
    );
    assert!(err.is_invalid_client() && err.is_terminal() && !err.is_transient());
    assert_eq!(fake.token_calls(), 1, "a 401 is not retried");
    assert_eq!(refresh_tokens_sent(&fake), [refresh_token.as_str()]);
    assert_reveals_none_of(&err, &[&refresh_token, fake.client_secret()]);

    assert_latched(
        &fake,
        &auth,
        refresh_token_in(&store),
        &refresh_token,
        |e| matches!(e, AuthError::InvalidClient { status } if *status == StatusCode::UNAUTHORIZED),
    )
    .await;
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.invalid_grants_served(), 0);
}

#[tokio::test]
async fn http_401_without_a_body_is_invalid_client_too() {
    let (fake, auth, store, refresh_token) = auth_with_stored_tokens().await;
    fake.push_token_fault(TokenFault::Respond {
        status: 401,
        content_type: "text/plain".to_owned(),
        body: String::new(),
    });

    let err = failing_request(&service(&auth), &fake).await;
    assert!(
        matches!(err, AuthError::InvalidClient { status } if status == StatusCode::UNAUTHORIZED),
        "{err:?}"
    );
    assert_eq!(fake.token_calls(), 1);
    assert_latched(
        &fake,
        &auth,
        refresh_token_in(&store),
        &refresh_token,
        AuthError::is_invalid_client,
    )
    .await;
}

#[tokio::test]
async fn http_403_is_forbidden_latches_and_keeps_the_stored_refresh_token() {
    let (fake, auth, store, refresh_token) = auth_with_stored_tokens().await;
    fake.push_token_fault(TokenFault::Respond {
        status: 403,
        content_type: "text/html".to_owned(),
        body: "<html><body>Forbidden</body></html>".to_owned(),
    });

    let err = failing_request(&service(&auth), &fake).await;
    assert!(matches!(err, AuthError::Forbidden), "{err:?}");
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    assert!(err.is_terminal() && !err.is_transient());
    assert_eq!(fake.token_calls(), 1, "a 403 is not retried");

    assert_latched(
        &fake,
        &auth,
        refresh_token_in(&store),
        &refresh_token,
        |e| matches!(e, AuthError::Forbidden),
    )
    .await;
    assert_eq!(fake.token_calls(), 1);
}

#[tokio::test]
async fn http_405_is_method_not_allowed_not_latched_and_the_next_call_recovers() {
    let Setup {
        fake,
        refresh_token,
        svc,
        ..
    } = setup().await;
    fake.push_token_fault(TokenFault::status(405, r#"{"error":"invalid_request"}"#));

    let err = failing_request(&svc, &fake).await;
    assert!(matches!(err, AuthError::MethodNotAllowed), "{err:?}");
    assert_eq!(err.status(), Some(StatusCode::METHOD_NOT_ALLOWED));
    assert!(!err.is_terminal() && !err.is_transient());
    assert_eq!(fake.token_calls(), 1, "a 405 is not retried");

    succeeding_request(&svc, &fake).await;
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.api_calls(), 1);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(
        refresh_tokens_sent(&fake),
        [refresh_token.clone(), refresh_token]
    );
}

#[tokio::test]
async fn invalid_grant_requires_reauthorization_latches_and_the_file_store_keeps_the_refresh_token()
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nifty-tokens.json");
    let fake = FakeNifty::start().await.unwrap();
    let refresh_token = fake.issue_refresh_token();
    let store = FileStore::new(&path);
    store.save(&expired_tokens(&refresh_token)).await.unwrap();
    let auth = builder(&fake).store(store.clone()).build().expect("build");
    fake.push_token_fault(TokenFault::status(
        400,
        r#"{"error":"invalid_grant","error_description":"The refresh token is invalid."}"#,
    ));

    let err = failing_request(&service(&auth), &fake).await;
    let AuthError::ReauthorizationRequired { reason } = &err else {
        panic!("expected ReauthorizationRequired, got {err:?}");
    };
    assert!(reason.contains("invalid_grant"), "{reason}");
    assert!(err.is_terminal() && !err.is_transient());
    assert_eq!(fake.token_calls(), 1, "invalid_grant is not retried");
    assert_eq!(fake.invalid_grants_served(), 1);
    assert_eq!(refresh_tokens_sent(&fake), [refresh_token.as_str()]);
    assert_reveals_none_of(&err, &[&refresh_token]);

    let stored = || {
        std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<TokenSet>(&bytes).ok())
            .and_then(|t| t.refresh_token().map(str::to_owned))
    };
    assert_latched(
        &fake,
        &auth,
        stored,
        &refresh_token,
        AuthError::is_reauthorization_required,
    )
    .await;
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.invalid_grants_served(), 1);
    assert_eq!(
        store.load().await.unwrap().unwrap().access_token(),
        "at-expired-an-hour-ago",
        "the file was not rewritten"
    );
}

#[tokio::test]
async fn set_tokens_lifts_the_reauthorization_latch_and_a_later_refresh_works() {
    let (fake, auth, store, old_refresh_token) = auth_with_stored_tokens().await;
    let svc = service(&auth);
    fake.push_token_fault(TokenFault::status(400, r#"{"error":"invalid_grant"}"#));
    let err = failing_request(&svc, &fake).await;
    assert!(err.is_reauthorization_required(), "{err:?}");
    let err = auth.access_token().await.expect_err("latched");
    assert!(err.is_reauthorization_required(), "{err:?}");
    assert_eq!(fake.token_calls(), 1);

    // The user authorized again: new tokens come in from outside.
    let lifetime = Duration::from_secs(3600);
    let access_token = fake.issue_access_token(Some(lifetime));
    let new_refresh_token = fake.issue_refresh_token();
    auth.set_tokens(
        TokenSet::new(access_token.clone())
            .with_refresh_token(new_refresh_token.clone())
            .with_expires_in(lifetime),
    )
    .await
    .expect("set_tokens");
    assert_eq!(
        store.get().unwrap().refresh_token(),
        Some(new_refresh_token.as_str())
    );

    // Requests use them at once, without a token call.
    assert_eq!(
        succeeding_request(&svc, &fake).await,
        format!("Bearer {access_token}")
    );
    assert_eq!(auth.access_token().await.unwrap(), access_token);
    assert_eq!(fake.token_calls(), 1);

    // A later refresh (the API rejects the token) works again: the latch is gone.
    fake.revoke_access_tokens();
    let bearer = succeeding_request(&svc, &fake).await;
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(
        refresh_tokens_sent(&fake),
        [old_refresh_token, new_refresh_token.clone()]
    );
    let tokens = auth.tokens().unwrap();
    assert_eq!(bearer, format!("Bearer {}", tokens.access_token()));
    assert_ne!(tokens.access_token(), access_token);
    let rotated = fake.current_refresh_token().expect("live grant");
    assert_ne!(rotated, new_refresh_token);
    assert_eq!(tokens.refresh_token(), Some(rotated.as_str()));
    assert_eq!(store.get().unwrap(), tokens, "the rotation was saved");
    assert_eq!(fake.invalid_grants_served(), 1, "only the injected one");
    assert_eq!(fake.unauthorized_served(), 1, "only the revoked token");
    assert_eq!(fake.api_calls(), 3);
}

#[tokio::test]
async fn exchange_code_lifts_the_reauthorization_latch() {
    let (fake, auth, store, _old_refresh_token) = auth_with_stored_tokens().await;
    let svc = service(&auth);
    fake.push_token_fault(TokenFault::status(400, r#"{"error":"invalid_grant"}"#));
    let err = failing_request(&svc, &fake).await;
    assert!(err.is_reauthorization_required(), "{err:?}");
    assert_eq!(fake.token_calls(), 1);

    let redirect_uri = "http://127.0.0.1/callback";
    let code = fake.issue_code(redirect_uri);
    let tokens = auth
        .exchange_code(code, redirect_uri)
        .await
        .expect("exchange_code");
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(
        tokens.refresh_token(),
        fake.current_refresh_token().as_deref()
    );
    assert_eq!(store.get().unwrap(), tokens);

    assert_eq!(
        succeeding_request(&svc, &fake).await,
        format!("Bearer {}", tokens.access_token())
    );
    assert_eq!(auth.access_token().await.unwrap(), tokens.access_token());
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.api_calls(), 1);
    assert_eq!(fake.invalid_grants_served(), 1);
}
