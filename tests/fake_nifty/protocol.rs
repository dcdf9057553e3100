//! The token endpoint: grants, rotation, replay detection, validation.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use nifty_auth::testing::{FakeNifty, Grant};
use serde_json::json;

use super::*;

#[tokio::test]
async fn authorization_code_grant() {
    let (fake, client) = started().await;
    let redirect_uri = "http://localhost:8080/callback";
    let code = fake.issue_code(redirect_uri);
    let exchange =
        json!({ "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri });

    let answer = token(&client, &fake, exchange.clone()).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.headers["content-type"], "application/json");
    let body = answer.json();
    assert!(str_field(&body, "access_token").starts_with("at-"));
    assert_eq!(body["token_type"], "bearer");
    assert!(str_field(&body, "refresh_token").starts_with("rt-"));
    assert_eq!(body["expires_in"].as_f64(), Some(3600.0));
    assert!(std::str::from_utf8(&answer.body)
        .expect("utf-8")
        .contains("\"expires_in\":3600.0"));
    assert_eq!(body["scope"], "project task");
    assert_eq!(
        fake.current_refresh_token().as_deref(),
        Some(str_field(&body, "refresh_token"))
    );
    let access_token = str_field(&body, "access_token");
    assert_eq!(
        get(&client, &fake, "/users/me", Some(access_token))
            .await
            .status,
        StatusCode::OK
    );

    // Single use.
    assert_invalid_grant(&token(&client, &fake, exchange).await);
    // Bound to its redirect_uri.
    let code = fake.issue_code(redirect_uri);
    let wrong_redirect = json!({
        "grant_type": "authorization_code", "code": code, "redirect_uri": "http://localhost/other"
    });
    assert_invalid_grant(&token(&client, &fake, wrong_redirect).await);
    // Unknown code.
    let unknown =
        json!({ "grant_type": "authorization_code", "code": "nope", "redirect_uri": redirect_uri });
    assert_invalid_grant(&token(&client, &fake, unknown).await);

    assert_eq!(fake.token_calls(), 4);
    assert_eq!(fake.token_calls_for(Grant::AuthorizationCode), 4);
    assert_eq!(fake.token_calls_for(Grant::RefreshToken), 0);
    assert_eq!(fake.invalid_grants_served(), 3);
    assert_eq!(fake.token_calls_in_flight(), 0);

    let recorded = fake.token_requests();
    assert_eq!(recorded.len(), 4);
    let first = &recorded[0];
    assert_eq!(first.method, Method::POST);
    assert_eq!(
        first.authorization.as_deref(),
        Some("Basic ZmFrZS1jbGllbnQtaWQ6ZmFrZS1jbGllbnQtc2VjcmV0")
    );
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(first.accept.as_deref(), Some("application/json"));
    let json = first.json.as_ref().expect("recorded JSON");
    assert_eq!(json["grant_type"], "authorization_code");
    assert_eq!(json["redirect_uri"], redirect_uri);
    assert_eq!(
        serde_json::from_slice::<Value>(&first.body).ok().as_ref(),
        Some(json)
    );
}

#[tokio::test]
async fn refresh_rotation_and_replay_revokes_grant() {
    let (fake, client) = started().await;
    let rt0 = fake.issue_refresh_token();
    assert_eq!(fake.current_refresh_token().as_deref(), Some(rt0.as_str()));

    let answer = refresh(&client, &fake, &rt0).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let body = answer.json();
    let rt1 = str_field(&body, "refresh_token").to_owned();
    let at1 = str_field(&body, "access_token").to_owned();
    assert_ne!(rt1, rt0);
    assert_eq!(fake.current_refresh_token().as_deref(), Some(rt1.as_str()));
    assert_eq!(
        get(&client, &fake, "/projects", Some(&at1)).await.status,
        StatusCode::OK
    );

    // Replaying the retired token fails and revokes the grant.
    assert_invalid_grant(&refresh(&client, &fake, &rt0).await);
    assert_eq!(fake.current_refresh_token(), None);
    assert_invalid_grant(&refresh(&client, &fake, &rt1).await);
    let answer = get(&client, &fake, "/projects", Some(&at1)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    // Unknown refresh token.
    assert_invalid_grant(&refresh(&client, &fake, "rt-bogus").await);

    // Other grants are unaffected.
    let other = fake.issue_refresh_token();
    assert_eq!(
        refresh(&client, &fake, &other).await.status,
        StatusCode::CREATED
    );

    assert_eq!(fake.token_calls(), 5);
    assert_eq!(fake.token_calls_for(Grant::RefreshToken), 5);
    assert_eq!(fake.token_calls_for(Grant::AuthorizationCode), 0);
    assert_eq!(fake.invalid_grants_served(), 3);
    assert_eq!(fake.api_calls(), 2);
    assert_eq!(fake.unauthorized_served(), 1);
}

#[tokio::test]
async fn replay_without_revocation_keeps_the_grant() {
    let fake = FakeNifty::builder()
        .replay_revokes_grant(false)
        .start()
        .await
        .expect("start");
    let client = client();
    let rt0 = fake.issue_refresh_token();
    let rt1 = refresh(&client, &fake, &rt0).await.json()["refresh_token"]
        .as_str()
        .expect("rotated")
        .to_owned();
    assert_invalid_grant(&refresh(&client, &fake, &rt0).await);
    assert_eq!(fake.current_refresh_token().as_deref(), Some(rt1.as_str()));
    assert_eq!(
        refresh(&client, &fake, &rt1).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn without_rotation_the_refresh_token_stays_valid() {
    let fake = FakeNifty::builder()
        .rotation(false)
        .token_lifetime(None)
        .start()
        .await
        .expect("start");
    let client = client();
    let rt = fake.issue_refresh_token();
    for _ in 0..2 {
        let answer = refresh(&client, &fake, &rt).await;
        assert_eq!(answer.status, StatusCode::CREATED);
        let body = answer.json();
        assert!(body.get("refresh_token").is_none(), "{body}");
        assert!(body.get("expires_in").is_none(), "{body}");
        assert!(body["access_token"].is_string());
    }
    assert_eq!(fake.current_refresh_token().as_deref(), Some(rt.as_str()));

    // Knobs change at any time.
    fake.set_rotation(true);
    fake.set_token_lifetime(Some(Duration::from_secs(90)));
    let body = refresh(&client, &fake, &rt).await.json();
    assert_eq!(body["expires_in"].as_f64(), Some(90.0));
    let rotated = str_field(&body, "refresh_token");
    assert_ne!(rotated, rt);
    assert_eq!(fake.current_refresh_token().as_deref(), Some(rotated));
}

#[tokio::test]
async fn client_authentication_and_request_validation() {
    let fake = FakeNifty::builder()
        .client("my-id", "my-secret")
        .start()
        .await
        .expect("start");
    assert_eq!(fake.client_id(), "my-id");
    assert_eq!(fake.client_secret(), "my-secret");
    assert_eq!(fake.credentials().client_id(), "my-id");
    assert_eq!(fake.credentials().client_secret(), "my-secret");
    assert!(!format!("{fake:?}").contains("my-secret"));
    let client = client();
    let rt = fake.issue_refresh_token();
    let body = json!({ "grant_type": "refresh_token", "refresh_token": rt }).to_string();

    let post = |auth: Option<String>, content_type: &str, body: String| {
        let mut request = Request::post(fake.token_url()).header("content-type", content_type);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.body(Full::new(Bytes::from(body))).expect("request")
    };
    let good_auth = || Some(basic("my-id", "my-secret"));

    let wrong_secret = send(
        &client,
        post(
            Some(basic("my-id", "nope")),
            "application/json",
            body.clone(),
        ),
    )
    .await
    .expect("answer");
    assert_eq!(wrong_secret.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_secret.json()["error"], "invalid_client");

    let missing = send(&client, post(None, "application/json", body.clone()))
        .await
        .expect("answer");
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.json()["error"], "invalid_client");

    let form = send(
        &client,
        post(
            good_auth(),
            "application/x-www-form-urlencoded",
            body.clone(),
        ),
    )
    .await
    .expect("answer");
    assert_eq!(form.status, StatusCode::BAD_REQUEST);
    assert_eq!(form.json()["error"], "invalid_request");

    for bad_body in ["[1,2]", "not json", r#"{"refresh_token":"x"}"#] {
        let answer = send(
            &client,
            post(good_auth(), "application/json", bad_body.to_owned()),
        )
        .await
        .expect("answer");
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad_body}");
        assert_eq!(answer.json()["error"], "invalid_request");
    }

    let unsupported = send(
        &client,
        post(
            good_auth(),
            "application/json",
            json!({ "grant_type": "password" }).to_string(),
        ),
    )
    .await
    .expect("answer");
    assert_eq!(unsupported.status, StatusCode::BAD_REQUEST);
    assert_eq!(unsupported.json()["error"], "unsupported_grant_type");

    let get = Request::get(fake.token_url())
        .body(Full::new(Bytes::new()))
        .expect("request");
    let get = send(&client, get).await.expect("answer");
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);

    // The refresh token was never consumed by the rejected requests.
    let ok = send(
        &client,
        post(good_auth(), "application/json; charset=utf-8", body),
    )
    .await
    .expect("answer");
    assert_eq!(ok.status, StatusCode::CREATED);

    assert_eq!(fake.token_calls(), 9);
    // Counted before validation: wrong secret, missing auth, form, and the success.
    assert_eq!(fake.token_calls_for(Grant::RefreshToken), 4);
    assert_eq!(fake.token_calls_for(Grant::AuthorizationCode), 0);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(fake.token_requests().len(), 9);
}
