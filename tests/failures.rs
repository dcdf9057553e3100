//! Every bad answer of the token endpoint becomes the right `AuthError`, never a panic, and never
//! costs the refresh token: after a non-terminal failure the next healthy call refreshes with the
//! same refresh token; after a terminal one the store still holds it and no further token call is
//! made until new tokens are supplied. Everything runs against a real `FakeNifty` on 127.0.0.1.

mod common;

use std::error::Error as _;
use std::time::{Duration, SystemTime};

use common::*;
use http::StatusCode;
use nifty_auth::testing::{FakeNifty, TokenFault};
use nifty_auth::{AuthError, FileStore, MemoryStore, NiftyAuth, TokenSet, TokenStore};

/// An access token planted in bad answers; no error may ever show it.
const PLANTED_ACCESS_TOKEN: &str = "at-PLANTED-7c1e9a04f2b35d68e0a1";

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// unusable success answers -> InvalidResponse, one call, the next healthy call recovers
// ---------------------------------------------------------------------------------------------

/// Serves `fault` to the first refresh and checks: `InvalidResponse` naming `hint` (but not the planted
/// token), exactly one token call (these are not retried), no API call, and then a healthy refresh
/// with the *same* refresh token makes the next request succeed.
async fn invalid_response_case(fault: TokenFault, hint: &str) {
    let fake = FakeNifty::start().await.unwrap();
    let (auth, refresh_token) = auth_with_refresh_token(&fake);
    let svc = service(&auth);
    fake.push_token_fault(fault);

    let err = failing_request(&svc, &fake).await;
    let AuthError::InvalidResponse { reason } = &err else {
        panic!("expected InvalidResponse, got {err:?}");
    };
    assert!(reason.contains(hint), "reason `{reason}` lacks `{hint}`");
    assert_reveals_none_of(&err, &[PLANTED_ACCESS_TOKEN, &refresh_token]);
    assert!(!err.is_terminal() && !err.is_transient(), "{err:?}");
    assert_eq!(fake.token_calls(), 1, "an unusable answer is not retried");
    assert_eq!(fake.api_calls(), 0);
    assert!(auth.tokens().is_none(), "nothing was published");

    let bearer = succeeding_request(&svc, &fake).await;
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.api_calls(), 1);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(
        refresh_tokens_sent(&fake),
        [refresh_token.clone(), refresh_token],
        "the recovery refreshed with the old refresh token"
    );
    let tokens = auth.tokens().expect("published after recovery");
    assert_eq!(bearer, format!("Bearer {}", tokens.access_token()));
    assert_eq!(
        tokens.refresh_token(),
        fake.current_refresh_token().as_deref()
    );
}

#[tokio::test]
async fn malformed_json_is_invalid_response_and_keeps_the_refresh_token() {
    invalid_response_case(
        TokenFault::status(201, format!(r#"{{"access_token":"{PLANTED_ACCESS_TOKEN}"#)),
        "not JSON",
    )
    .await;
    // The exact truncated body of the issue, too.
    invalid_response_case(TokenFault::status(201, r#"{"access_token":"#), "not JSON").await;
}

#[tokio::test]
async fn html_body_is_invalid_response_and_keeps_the_refresh_token() {
    invalid_response_case(
        TokenFault::Respond {
            status: 200,
            content_type: "text/html".to_owned(),
            body: format!(
                "<html><body><h1>Welcome</h1><p>access_token={PLANTED_ACCESS_TOKEN}</p></body></html>"
            ),
        },
        "not JSON",
    )
    .await;
}

#[tokio::test]
async fn empty_body_is_invalid_response_and_keeps_the_refresh_token() {
    invalid_response_case(TokenFault::status(201, ""), "empty").await;
}

#[tokio::test]
async fn missing_access_token_is_invalid_response_and_keeps_the_refresh_token() {
    invalid_response_case(
        TokenFault::status(
            201,
            r#"{"token_type":"bearer","expires_in":3600,"refresh_token":"rt-new-but-useless"}"#,
        ),
        "`access_token` is missing",
    )
    .await;
}

#[tokio::test]
async fn missing_token_type_is_invalid_response_and_keeps_the_refresh_token() {
    invalid_response_case(
        TokenFault::status(
            201,
            format!(r#"{{"access_token":"{PLANTED_ACCESS_TOKEN}","expires_in":3600}}"#),
        ),
        "`token_type` is missing",
    )
    .await;
}

#[tokio::test]
async fn mac_token_type_is_invalid_response_and_keeps_the_refresh_token() {
    invalid_response_case(
        TokenFault::status(
            201,
            format!(
                r#"{{"access_token":"{PLANTED_ACCESS_TOKEN}","token_type":"mac","expires_in":3600}}"#
            ),
        ),
        "mac",
    )
    .await;
}

#[tokio::test]
async fn negative_expires_in_is_invalid_response_and_keeps_the_refresh_token() {
    invalid_response_case(
        TokenFault::status(
            201,
            format!(
                r#"{{"access_token":"{PLANTED_ACCESS_TOKEN}","token_type":"bearer","expires_in":-3600}}"#
            ),
        ),
        "`expires_in`",
    )
    .await;
}

#[tokio::test]
async fn huge_expires_in_is_invalid_response_and_keeps_the_refresh_token() {
    invalid_response_case(
        TokenFault::status(
            201,
            format!(
                r#"{{"access_token":"{PLANTED_ACCESS_TOKEN}","token_type":"bearer","expires_in":1e12}}"#
            ),
        ),
        "`expires_in`",
    )
    .await;
}

#[tokio::test]
async fn oversized_body_is_invalid_response_and_keeps_the_refresh_token() {
    let padding = "x".repeat(70 * 1024);
    invalid_response_case(
        TokenFault::status(
            201,
            format!(
                r#"{{"access_token":"{PLANTED_ACCESS_TOKEN}","token_type":"bearer","expires_in":3600,"padding":"{padding}"}}"#
            ),
        ),
        "64 KiB",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// terminal answers: latch, fail fast, the store keeps the old refresh token
// ---------------------------------------------------------------------------------------------

/// A fake, a `NiftyAuth` whose `MemoryStore` (kept aside) holds an expired access token and a
/// valid refresh token, and that refresh token.
async fn auth_with_stored_tokens() -> (FakeNifty, NiftyAuth, MemoryStore, String) {
    let fake = FakeNifty::start().await.unwrap();
    let refresh_token = fake.issue_refresh_token();
    let store = MemoryStore::with_tokens(expired_tokens(&refresh_token));
    let auth = builder(&fake).store(store.clone()).build().expect("build");
    (fake, auth, store, refresh_token)
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
        || {
            store
                .get()
                .and_then(|t| t.refresh_token().map(str::to_owned))
        },
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
        || {
            store
                .get()
                .and_then(|t| t.refresh_token().map(str::to_owned))
        },
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
        || {
            store
                .get()
                .and_then(|t| t.refresh_token().map(str::to_owned))
        },
        &refresh_token,
        |e| matches!(e, AuthError::Forbidden),
    )
    .await;
    assert_eq!(fake.token_calls(), 1);
}

#[tokio::test]
async fn http_405_is_method_not_allowed_not_latched_and_the_next_call_recovers() {
    let fake = FakeNifty::start().await.unwrap();
    let (auth, refresh_token) = auth_with_refresh_token(&fake);
    let svc = service(&auth);
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

// ---------------------------------------------------------------------------------------------
// transient answers: retried with backoff, then a transient error; the refresh token survives
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn three_500s_use_all_attempts_then_a_transient_endpoint_error_and_keep_the_refresh_token() {
    let fake = FakeNifty::start().await.unwrap();
    let (auth, refresh_token) = auth_with_refresh_token(&fake);
    let svc = service(&auth);
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
    let fake = FakeNifty::start().await.unwrap();
    let (auth, refresh_token) = auth_with_refresh_token(&fake);
    let svc = service(&auth);
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
    let fake = FakeNifty::start().await.unwrap();
    let (auth, refresh_token) = auth_with_refresh_token(&fake);
    let svc = service(&auth);
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
    let fake = FakeNifty::start().await.unwrap();
    let (auth, refresh_token) = auth_with_refresh_token(&fake);
    let svc = service(&auth);
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
    assert!(elapsed >= timeout, "gave up early: {elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(800),
        "too slow: {elapsed:?}"
    );
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
    // 3 timeouts plus two backoff delays of at most 20 ms.
    assert!(elapsed >= timeout * 3, "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(900), "{elapsed:?}");

    auth.access_token().await.expect("healthy call");
    assert_eq!(fake.token_calls(), 4);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(refresh_tokens_sent(&fake), vec![refresh_token; 4]);
}

// ---------------------------------------------------------------------------------------------
// a failed refresh never takes away a still-valid access token
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_valid_token_keeps_being_used_when_the_background_refresh_fails() {
    let fake = FakeNifty::builder()
        .token_lifetime(Some(Duration::from_secs(120)))
        .start()
        .await
        .unwrap();
    let refresh_token = fake.issue_refresh_token();
    let auth = builder(&fake)
        .refresh_token(refresh_token)
        .refresh_skew(Duration::from_secs(60))
        .build()
        .unwrap();
    let svc = service(&auth);

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
    let fake = FakeNifty::builder()
        .token_lifetime(Some(Duration::from_secs(120)))
        .start()
        .await
        .unwrap();
    let auth = builder(&fake)
        .refresh_token(fake.issue_refresh_token())
        .refresh_skew(Duration::from_secs(60))
        .build()
        .unwrap();
    let svc = service(&auth);
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
    let fake = FakeNifty::start().await.unwrap();
    let (auth, _) = auth_with_refresh_token(&fake);
    let svc = service(&auth);
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

// ---------------------------------------------------------------------------------------------
// error answers that must stay secret-free and classified by status whatever their body
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn endpoint_errors_never_echo_token_like_error_codes_or_field_names() {
    let secret = "Zq9xVv2LmT4Kp8QwErTy";
    let fake = FakeNifty::builder()
        .client("nifty-app-id", secret)
        .start()
        .await
        .unwrap();
    let long_token = "abcdefghijklmnopqrstuvwxyz0123456789ABCD";
    for body in [
        format!(r#"{{"error":"{secret}"}}"#),
        format!(r#"{{"error":"{long_token}"}}"#),
        format!(r#"{{"{long_token}":"x"}}"#),
        format!(r#"{{"{secret}":"x"}}"#),
    ] {
        let (auth, _) = auth_with_refresh_token(&fake);
        let calls = fake.token_calls();
        for _ in 0..3 {
            fake.push_token_fault(TokenFault::status(500, body.clone()));
        }
        let err = auth.access_token().await.expect_err("500");
        assert!(
            matches!(&err, AuthError::Endpoint { status, .. } if *status == StatusCode::INTERNAL_SERVER_ERROR),
            "{err:?}"
        );
        assert_eq!(fake.token_calls(), calls + 3);
        assert_reveals_none_of(&err, &[secret, long_token]);
    }
}

#[tokio::test]
async fn a_5xx_with_an_oversized_body_is_still_a_retried_transient_endpoint_error() {
    let fake = FakeNifty::start().await.unwrap();
    let (auth, refresh_token) = auth_with_refresh_token(&fake);
    let page = format!(
        "<html><body>{}</body></html>",
        "Maintenance. ".repeat(6 * 1024)
    );
    assert!(page.len() > nifty_auth::MAX_TOKEN_RESPONSE_BYTES);
    for _ in 0..2 {
        fake.push_token_fault(TokenFault::Respond {
            status: 503,
            content_type: "text/html".to_owned(),
            body: page.clone(),
        });
    }

    // Two 503s, then a healthy answer: with the default 3 attempts the refresh succeeds.
    auth.access_token()
        .await
        .expect("the third attempt succeeds");
    assert_eq!(fake.token_calls(), 3);
    assert_eq!(refresh_tokens_sent(&fake), vec![refresh_token; 3]);

    // Three of them: a transient 503, not an InvalidResponse.
    let fake = FakeNifty::start().await.unwrap();
    let (auth, _) = auth_with_refresh_token(&fake);
    for _ in 0..3 {
        fake.push_token_fault(TokenFault::Respond {
            status: 503,
            content_type: "text/html".to_owned(),
            body: page.clone(),
        });
    }
    let err = auth.access_token().await.expect_err("503");
    assert!(
        matches!(&err, AuthError::Endpoint { status, .. } if *status == StatusCode::SERVICE_UNAVAILABLE),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(fake.token_calls(), 3);
}
