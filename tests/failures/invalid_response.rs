//! Unusable success answers: `InvalidResponse`, one call, and the next healthy call recovers.

use super::*;

/// Serves `fault` to the first refresh and checks: `InvalidResponse` naming `hint` (but not the planted
/// token), exactly one token call (these are not retried), no API call, and then a healthy refresh
/// with the *same* refresh token makes the next request succeed.
async fn invalid_response_case(fault: TokenFault, hint: &str) {
    let Setup {
        fake,
        auth,
        refresh_token,
        svc,
    } = setup().await;
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

/// A 201 answer with the planted access token and the given `token_type` and (raw JSON)
/// `expires_in`.
fn answer_with(token_type: &str, expires_in: &str) -> TokenFault {
    TokenFault::status(
        201,
        format!(
            r#"{{"access_token":"{PLANTED_ACCESS_TOKEN}","token_type":"{token_type}","expires_in":{expires_in}}}"#
        ),
    )
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
    invalid_response_case(answer_with("mac", "3600"), "mac").await;
}

#[tokio::test]
async fn negative_expires_in_is_invalid_response_and_keeps_the_refresh_token() {
    invalid_response_case(answer_with("bearer", "-3600"), "`expires_in`").await;
}

#[tokio::test]
async fn huge_expires_in_is_invalid_response_and_keeps_the_refresh_token() {
    invalid_response_case(answer_with("bearer", "1e12"), "`expires_in`").await;
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
