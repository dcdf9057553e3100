//! The API: answers by bearer token, queued statuses, expiry; the server's lifetime.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use nifty_auth::testing::FakeNifty;
use serde_json::json;

use super::*;

#[tokio::test]
async fn api_answers_by_token() {
    let (fake, client) = started().await;
    let token = fake.issue_access_token(None);

    let me = get(&client, &fake, "/users/me", Some(&token)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(
        me.json(),
        json!({ "id": "u-1", "email": "dev@example.com", "name": "Fake Dev", "grant": null })
    );
    let projects = get(&client, &fake, "/projects", Some(&token)).await;
    assert_eq!(projects.json()["projects"][1]["name"], "Roadmap");
    let created = api(
        &client,
        &fake,
        Method::POST,
        "/tasks?project=p-1",
        Some(&token),
        r#"{"name":"x"}"#,
    )
    .await;
    assert_eq!(created.status, StatusCode::OK);
    assert_eq!(
        created.json(),
        json!({ "ok": true, "method": "POST", "path": "/api/v1.0/tasks?project=p-1", "body_len": 12 })
    );

    let bogus = get(&client, &fake, "/users/me", Some("at-bogus")).await;
    assert_eq!(bogus.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        bogus.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(bogus.json(), json!({ "message": "unauthorized" }));
    let anonymous = get(&client, &fake, "/users/me", None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // Outside the API: 404, not counted.
    let other = Request::get(format!("{}/nope", fake.base_url()))
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(
        send(&client, other).await.expect("answer").status,
        StatusCode::NOT_FOUND
    );

    assert_eq!(fake.api_calls(), 5);
    assert_eq!(fake.unauthorized_served(), 2);
    let recorded = fake.api_requests();
    let statuses: Vec<u16> = recorded.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 401, 401]);
    assert_eq!(recorded[2].method, Method::POST);
    assert_eq!(recorded[2].path, "/api/v1.0/tasks?project=p-1");
    assert_eq!(&recorded[2].body[..], br#"{"name":"x"}"#);
    assert_eq!(
        recorded[0].authorization.as_deref(),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(recorded[4].authorization, None);
    assert_eq!(fake.token_calls(), 0);
}

#[tokio::test]
async fn pushed_api_statuses_and_revocation() {
    let (fake, client) = started().await;
    let token = fake.issue_access_token(Some(Duration::from_secs(60)));
    fake.push_api_status(503);
    fake.push_api_status(401);

    let first = get(&client, &fake, "/users/me", Some(&token)).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(first.json()["message"].is_string());
    let second = get(&client, &fake, "/users/me", Some(&token)).await;
    assert_eq!(second.status, StatusCode::UNAUTHORIZED);
    let third = get(&client, &fake, "/users/me", Some(&token)).await;
    assert_eq!(third.status, StatusCode::OK);

    fake.revoke_access_tokens();
    let revoked = get(&client, &fake, "/users/me", Some(&token)).await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED);
    let fresh = fake.issue_access_token(None);
    assert_eq!(
        get(&client, &fake, "/users/me", Some(&fresh)).await.status,
        StatusCode::OK
    );

    assert_eq!(fake.api_calls(), 5);
    assert_eq!(fake.unauthorized_served(), 2);
    let statuses: Vec<u16> = fake.api_requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 401, 200, 401, 200]);
}

#[tokio::test(start_paused = true)]
async fn access_tokens_expire_on_the_tokio_clock() {
    let fake = FakeNifty::builder()
        .token_lifetime(Some(Duration::from_secs(120)))
        .start_in_process();
    let client = fake.service();
    let standalone = fake.issue_access_token(Some(Duration::from_secs(60)));
    let rt = fake.issue_refresh_token();
    let refreshed = refresh(&client, &fake, &rt).await.json();
    assert_eq!(refreshed["expires_in"].as_f64(), Some(120.0));
    let issued = str_field(&refreshed, "access_token").to_owned();

    for token in [&standalone, &issued] {
        assert_eq!(
            get(&client, &fake, "/projects", Some(token)).await.status,
            StatusCode::OK
        );
    }
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(
        get(&client, &fake, "/projects", Some(&standalone))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&client, &fake, "/projects", Some(&issued)).await.status,
        StatusCode::OK
    );
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(
        get(&client, &fake, "/projects", Some(&issued)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(fake.unauthorized_served(), 2);
}

#[tokio::test]
async fn clones_share_state_and_the_server_stops_with_the_last_one() {
    let fake = FakeNifty::start().await.expect("start");
    let clone = fake.clone();
    let addr = fake.addr();
    assert_eq!(fake.base_url(), format!("http://{addr}"));
    assert_eq!(fake.token_url(), format!("http://{addr}/oauth/token"));
    assert_eq!(
        fake.api_url("/users/me"),
        format!("http://{addr}/api/v1.0/users/me")
    );

    let client = client();
    let token = clone.issue_access_token(None);
    assert_eq!(
        get(&client, &fake, "/users/me", Some(&token)).await.status,
        StatusCode::OK
    );
    assert_eq!(clone.api_calls(), 1);

    drop(fake);
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    drop(clone);
    // The accept task is aborted: wait for the listener to close (at most 5 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server kept listening after the last clone was dropped"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
