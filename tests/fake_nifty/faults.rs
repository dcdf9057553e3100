//! Queued token endpoint faults and the token delay.

use std::time::Duration;

use http::StatusCode;
use nifty_auth::testing::{FakeNifty, Grant, TokenFault};
use serde_json::json;

use super::*;

#[tokio::test]
async fn fault_respond() {
    let (fake, client) = started().await;
    let rt = fake.issue_refresh_token();
    fake.push_token_fault(TokenFault::status(
        503,
        r#"{"error":"temporarily_unavailable"}"#,
    ));
    fake.push_token_fault(TokenFault::Respond {
        status: 502,
        content_type: "text/html".to_owned(),
        body: "<h1>Bad gateway</h1>".to_owned(),
    });
    fake.push_token_fault(TokenFault::status(400, r#"{"error":"invalid_grant"}"#));

    let first = refresh(&client, &fake, &rt).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.headers["content-type"], "application/json");
    assert_eq!(&first.body[..], br#"{"error":"temporarily_unavailable"}"#);
    let second = refresh(&client, &fake, &rt).await;
    assert_eq!(second.status, StatusCode::BAD_GATEWAY);
    assert_eq!(second.headers["content-type"], "text/html");
    assert_eq!(&second.body[..], b"<h1>Bad gateway</h1>");
    let third = refresh(&client, &fake, &rt).await;
    assert_eq!(third.status, StatusCode::BAD_REQUEST);
    assert_eq!(third.json(), json!({ "error": "invalid_grant" }));
    // The faults did not consume the refresh token.
    assert_eq!(
        refresh(&client, &fake, &rt).await.status,
        StatusCode::CREATED
    );

    assert_eq!(fake.token_calls(), 4);
    assert_eq!(fake.token_calls_for(Grant::RefreshToken), 4);
    assert_eq!(fake.invalid_grants_served(), 1);
    assert_eq!(fake.token_requests().len(), 4);
}

#[tokio::test]
async fn fault_reset_is_a_client_error() {
    let (fake, client) = started().await;
    let rt = fake.issue_refresh_token();
    fake.push_token_fault(TokenFault::Reset);

    let error = send(
        &client,
        token_request(
            &fake,
            &json!({ "grant_type": "refresh_token", "refresh_token": rt }),
        ),
    )
    .await
    .err()
    .expect("a connection error");
    assert!(!error.is_connect(), "{error:?}");
    assert!(is_reset_or_incomplete(&error), "{error:?}");

    // The next request gets a normal answer on a new connection.
    assert_eq!(
        refresh(&client, &fake, &rt).await.status,
        StatusCode::CREATED
    );
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.token_calls_for(Grant::RefreshToken), 2);
    assert_eq!(fake.token_calls_in_flight(), 0);
}

#[tokio::test]
async fn fault_hang_until_the_client_gives_up() {
    let (fake, client) = started().await;
    let rt = fake.issue_refresh_token();
    fake.push_token_fault(TokenFault::Hang);

    let request = token_request(
        &fake,
        &json!({ "grant_type": "refresh_token", "refresh_token": rt }),
    );
    let mut pending = Box::pin(client.request(request));
    // Drive the request until the fake holds it...
    tokio::select! {
        answer = &mut pending => panic!("a hung request was answered: {answer:?}"),
        () = until(|| fake.token_calls_in_flight() == 1) => {}
    }
    // ...then give up on the client side.
    let outcome = tokio::time::timeout(Duration::from_millis(200), pending).await;
    assert!(outcome.is_err(), "the hung request timed out");
    assert_eq!(fake.token_calls(), 1);
    // The client dropped the connection: the request is no longer in flight.
    until(|| fake.token_calls_in_flight() == 0).await;

    assert_eq!(
        refresh(&client, &fake, &rt).await.status,
        StatusCode::CREATED
    );
    assert_eq!(fake.token_calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn fault_delay_then_normal_answer() {
    let fake = FakeNifty::in_process();
    let client = fake.service();
    let rt = fake.issue_refresh_token();
    fake.push_token_fault(TokenFault::Delay(Duration::from_secs(10)));

    let started = tokio::time::Instant::now();
    let answer = refresh(&client, &fake, &rt).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert!(started.elapsed() >= Duration::from_secs(10));
    assert_eq!(fake.token_calls_in_flight(), 0);

    // No fault left: answered at once.
    let rt = str_field(&answer.json(), "refresh_token").to_owned();
    let started = tokio::time::Instant::now();
    assert_eq!(
        refresh(&client, &fake, &rt).await.status,
        StatusCode::CREATED
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn token_delay_shows_requests_in_flight() {
    let fake = FakeNifty::builder()
        .token_delay(Duration::from_millis(200))
        .start()
        .await
        .expect("start");
    let client = client();
    let a = fake.issue_refresh_token();
    let b = fake.issue_refresh_token();

    let observer = until(|| fake.token_calls_in_flight() == 2);
    let (first, second, ()) = tokio::join!(
        refresh(&client, &fake, &a),
        refresh(&client, &fake, &b),
        observer
    );
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(fake.token_calls_in_flight(), 0);

    // A delay set back to zero is gone: after an hour-long one, the next answer comes (the hour
    // would trip the guard).
    fake.set_token_delay(Duration::from_secs(3600));
    fake.set_token_delay(Duration::ZERO);
    fake.push_token_fault(TokenFault::status(500, "{}"));
    let answer = tokio::time::timeout(
        Duration::from_secs(60),
        refresh(&client, &fake, "rt-unknown"),
    )
    .await
    .expect("the delay was not reset");
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(fake.token_calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn in_process_a_reset_fails_the_call_and_the_next_request_is_answered() {
    let fake = FakeNifty::in_process();
    let service = fake.service();
    let rt = fake.issue_refresh_token();
    fake.push_token_fault(TokenFault::Reset);

    let request = token_request(
        &fake,
        &json!({ "grant_type": "refresh_token", "refresh_token": rt }),
    );
    let error = tower::ServiceExt::oneshot(service.clone(), request)
        .await
        .expect_err("a reset");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.token_calls_in_flight(), 0);

    assert_eq!(
        refresh(&service, &fake, &rt).await.status,
        StatusCode::CREATED
    );
    assert_eq!(fake.token_calls(), 2);
}

#[tokio::test]
async fn in_process_the_fake_has_invalid_urls_and_no_address() {
    let fake = FakeNifty::in_process();
    assert!(fake.is_in_process());
    assert_eq!(fake.base_url(), "http://fake-nifty.invalid");
    assert_eq!(fake.token_url(), "http://fake-nifty.invalid/oauth/token");
    let addr = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fake.addr()));
    assert!(addr.is_err(), "an in-process fake has no address");
    assert!(!FakeNifty::start().await.unwrap().is_in_process());
}
