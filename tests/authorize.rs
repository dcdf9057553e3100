//! The first authorization end to end against the fake Nifty: the test plays the browser, following
//! the authorize page's redirect to the loopback callback.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use nifty_auth::authorize::{AuthorizationRequest, AuthorizeError, CallbackServer};
use nifty_auth::testing::{FakeNifty, Grant};
use nifty_auth::FileStore;

/// The browser: GETs `url`, follows one redirect; returns the final status and page.
async fn browse(url: &str) -> (StatusCode, String) {
    let client = http_client();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let response = if response.status().is_redirection() {
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        client.get(location.parse().unwrap()).await.unwrap()
    } else {
        response
    };
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn setup(fake: &FakeNifty) -> (CallbackServer, AuthorizationRequest) {
    let server = CallbackServer::bind("http://127.0.0.1:0/callback")
        .await
        .unwrap();
    let request = AuthorizationRequest::new(fake.client_id(), server.redirect_uri())
        .scopes(["project", "task"])
        .authorize_url(fake.authorize_url());
    (server, request)
}

#[tokio::test]
async fn authorize_exchange_and_save_with_a_browser_following_the_redirect() {
    let fake = FakeNifty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nifty-tokens.json");
    let auth = builder(&fake).store(FileStore::new(&path)).build().unwrap();
    let (server, request) = setup(&fake).await;
    let waiting = {
        let request = request.clone();
        tokio::spawn(async move { server.wait_for_code(&request).await })
    };

    let (status, page) = browse(&request.url()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Authorized"), "{page}");
    let code = waiting.await.unwrap().unwrap();
    let tokens = auth
        .exchange_code(code, request.redirect_uri())
        .await
        .unwrap();

    assert_eq!(fake.authorize_calls(), 1);
    assert_eq!(fake.token_calls_for(Grant::AuthorizationCode), 1);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(saved["refresh_token"].as_str(), tokens.refresh_token());
    assert_eq!(
        saved["refresh_token"].as_str(),
        fake.current_refresh_token().as_deref()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // The layer uses the new tokens straight away: no refresh.
    let svc = service(&auth);
    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);
}

#[tokio::test]
async fn a_callback_with_a_forged_state_is_rejected_and_nothing_is_exchanged() {
    let fake = FakeNifty::start().await.unwrap();
    let (server, request) = setup(&fake).await;
    let callback = format!(
        "{}?code={}&state=forged",
        server.redirect_uri(),
        fake.issue_code("x")
    );
    let waiting = {
        let request = request.clone();
        tokio::spawn(async move { server.wait_for_code(&request).await })
    };

    let (status, page) = browse(&callback).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("state"), "{page}");
    let err = waiting.await.unwrap().unwrap_err();
    assert!(matches!(err, AuthorizeError::StateMismatch), "{err}");
    assert_eq!(fake.token_calls(), 0);
}

#[tokio::test]
async fn a_refusal_from_nifty_is_a_denied_error() {
    let fake = FakeNifty::start().await.unwrap();
    fake.deny_next_authorization();
    let (server, request) = setup(&fake).await;
    let waiting = {
        let request = request.clone();
        tokio::spawn(async move { server.wait_for_code(&request).await })
    };

    let (status, page) = browse(&request.url()).await;

    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("refused"), "{page}");
    match waiting.await.unwrap().unwrap_err() {
        AuthorizeError::Denied { error, .. } => assert_eq!(error, "access_denied"),
        other => panic!("expected Denied, got {other}"),
    }
    assert_eq!(fake.token_calls(), 0);
}

#[tokio::test]
async fn other_paths_get_404_and_the_wait_goes_on() {
    let fake = FakeNifty::start().await.unwrap();
    let (server, request) = setup(&fake).await;
    let favicon = server.redirect_uri().replace("/callback", "/favicon.ico");
    let waiting = {
        let request = request.clone();
        tokio::spawn(async move { server.wait_for_code(&request).await })
    };

    let (status, _) = browse(&favicon).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiting.is_finished());

    let (status, _) = browse(&request.url()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(waiting.await.unwrap().unwrap().starts_with("code-"));
}

#[test]
fn the_authorize_url_has_every_parameter_and_a_url_safe_random_state() {
    let a = AuthorizationRequest::new("my-client", "http://127.0.0.1:8765/callback").scopes([
        "project",
        "task",
        "time_tracking",
    ]);
    let b = AuthorizationRequest::new("my-client", "http://127.0.0.1:8765/callback");
    let url = a.url();
    assert!(url.starts_with("https://nifty.pm/authorize?"), "{url}");
    assert!(url.contains("response_type=code"), "{url}");
    assert!(url.contains("client_id=my-client"), "{url}");
    assert!(
        url.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A8765%2Fcallback"),
        "{url}"
    );
    assert!(
        url.contains("scope=project%20task%20time_tracking"),
        "{url}"
    );
    assert!(url.contains(&format!("state={}", a.state())), "{url}");
    assert_ne!(a.state(), b.state());
    assert!(a.state().len() >= 32);
    assert!(a
        .state()
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
}

#[tokio::test]
async fn a_non_loopback_redirect_uri_is_refused() {
    for uri in [
        "http://example.com:8765/callback",
        "https://127.0.0.1:8765/callback",
        "not a uri",
    ] {
        let err = CallbackServer::bind(uri).await.unwrap_err();
        assert!(
            matches!(err, AuthorizeError::InvalidRedirectUri(_)),
            "{uri}: {err}"
        );
    }
}
