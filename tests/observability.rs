//! Observability: `auth.stats()` counts exactly what happened; tracing spans and events describe
//! refreshes and retries without ever carrying a token or a secret.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
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
        .start()
        .await
        .unwrap();
    let auth = auth(&fake);
    let svc = service(&auth);
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

/// A `MakeWriter` collecting everything the fmt subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn tracing_describes_refreshes_and_retries_without_tokens_or_secrets() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fake = FakeNifty::start().await.unwrap();
    let refresh_token = fake.issue_refresh_token();
    let auth = builder(&fake)
        .refresh_token(refresh_token.clone())
        .build()
        .unwrap();
    let svc = service(&auth);
    send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    let first = auth.tokens().unwrap();
    fake.revoke_access_tokens();
    send(&svc, post_json(fake.api_url("/tasks"), "{}"))
        .await
        .unwrap();
    let second = auth.tokens().unwrap();
    fake.push_token_fault(TokenFault::status(
        400,
        format!(
            r#"{{"error":"invalid_grant","error_description":"{} is dead"}}"#,
            second.refresh_token().unwrap()
        ),
    ));
    fake.revoke_access_tokens();
    send(&svc, get(fake.api_url("/users/me")))
        .await
        .unwrap_err();

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("nifty_auth.refresh"), "{log}");
    assert!(log.contains("grant=\"refresh_token\""), "{log}");
    assert!(log.contains("outcome=\"ok\""), "{log}");
    assert!(log.contains("outcome=\"failed\""), "{log}");
    assert!(log.contains("attempts=1"), "{log}");
    assert!(log.contains("duration_ms"), "{log}");
    assert!(log.contains("401 answered; retrying once"), "{log}");
    assert!(log.contains("re-authorization"), "{log}");
    for secret in [
        fake.client_secret(),
        refresh_token.as_str(),
        first.access_token(),
        first.refresh_token().unwrap(),
        second.access_token(),
        second.refresh_token().unwrap(),
    ] {
        assert!(
            !log.contains(secret),
            "the log shows a secret: {secret}\n{log}"
        );
    }
}
