//! Unit tests of the token endpoint client.

use crate::stats::Counters;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;

/// An endpoint whose client answers with `answer(n)` for call number `n` (0-based), without TCP.
fn endpoint<F, Fut>(timeout: Duration, backoff: Backoff, answer: F) -> (Endpoint, Arc<AtomicUsize>)
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let client = tower::service_fn(move |_request: Request<Full<Bytes>>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let answer = answer.clone();
        async move { Ok::<_, std::convert::Infallible>(answer(n).await) }
    });
    let endpoint = Endpoint::new(
        Uri::from_static("http://127.0.0.1:1/oauth/token"),
        Credentials::new("id", "secret-value"),
        client.into_http_client(),
        timeout,
        backoff,
        Clock::new(),
        Arc::default(),
    )
    .expect("endpoint");
    (endpoint, calls)
}

fn answer(status: u16, retry_after: Option<&str>, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    if let Some(value) = retry_after {
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_str(value).unwrap(),
        );
    }
    response
}

const TOKENS: &str = r#"{"access_token":"at-1","token_type":"bearer","expires_in":60}"#;

const HUGE: Backoff = Backoff {
    attempts: 3,
    base: Duration::MAX,
    max: Duration::MAX,
};

#[tokio::test(start_paused = true)]
async fn huge_timeout_backoff_and_retry_after_saturate_instead_of_panicking() {
    let (endpoint, calls) = endpoint(Duration::MAX, HUGE, |n| async move {
        match n {
            0 => answer(503, Some("99999999999999999999"), ""),
            _ => answer(200, None, TOKENS),
        }
    });
    let grant = GrantType::RefreshToken {
        refresh_token: "rt-1",
    };
    let counters = Counters::default();
    let (result, attempts) = endpoint
        .request(&grant, Some("rt-1"), Counting::new(&counters, None), false)
        .await;
    assert_eq!(result.expect("tokens").access_token(), "at-1");
    assert_eq!((attempts, calls.load(Ordering::SeqCst)), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn a_hung_endpoint_with_a_huge_timeout_times_out_without_panicking() {
    let (endpoint, calls) = endpoint(
        Duration::MAX,
        Backoff {
            attempts: 1,
            ..HUGE
        },
        |_| std::future::pending(),
    );
    let grant = GrantType::RefreshToken {
        refresh_token: "rt-1",
    };
    let (result, attempts) = endpoint
        .request(
            &grant,
            None,
            Counting::new(&Counters::default(), None),
            false,
        )
        .await;
    let err = result.expect_err("timeout");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!((attempts, calls.load(Ordering::SeqCst)), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn terminal_answers_are_not_retried_and_transient_ones_use_every_attempt() {
    let backoff = Backoff {
        attempts: 3,
        base: Duration::from_millis(10),
        max: Duration::from_millis(20),
    };
    let (endpoint, calls) = endpoint(Duration::from_secs(1), backoff, |_| async {
        answer(500, None, "")
    });
    let grant = GrantType::RefreshToken {
        refresh_token: "rt-1",
    };
    let (result, attempts) = endpoint
        .request(
            &grant,
            None,
            Counting::new(&Counters::default(), None),
            false,
        )
        .await;
    assert!(result.expect_err("500").is_transient());
    assert_eq!((attempts, calls.load(Ordering::SeqCst)), (3, 3));

    let (endpoint, calls) = endpoint_with_body(backoff, r#"{"error":"invalid_grant"}"#);
    let (result, attempts) = endpoint
        .request(
            &grant,
            None,
            Counting::new(&Counters::default(), None),
            false,
        )
        .await;
    assert!(result.expect_err("400").is_reauthorization_required());
    assert_eq!((attempts, calls.load(Ordering::SeqCst)), (1, 1));
}

fn endpoint_with_body(backoff: Backoff, body: &'static str) -> (Endpoint, Arc<AtomicUsize>) {
    endpoint(Duration::from_secs(1), backoff, move |_| async move {
        answer(400, None, body)
    })
}
