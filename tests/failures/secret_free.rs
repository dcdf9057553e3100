//! Error answers that stay secret-free and are classified by status whatever their body.

use super::*;

#[tokio::test]
async fn endpoint_errors_never_echo_token_like_error_codes_or_field_names() {
    let secret = "Zq9xVv2LmT4Kp8QwErTy";
    let fake = fake_for_client("nifty-app-id", secret).await;
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
