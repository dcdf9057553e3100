//! Tracing spans and events describe refreshes and retries without ever carrying a token or a
//! secret.
//!
//! A test binary of its own, with one test: the subscriber is a scoped default (`set_default`), and a
//! test running beside it in the same process with no subscriber can have tracing cache a callsite as
//! "never enabled" first, so the events would go missing now and then.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use nifty_auth::testing::{FakeNifty, TokenFault};

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
    assert!(log.contains("grant_type=\"refresh_token\""), "{log}");
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
