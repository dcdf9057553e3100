//! The token endpoint protocol as Nifty documents it: request shapes of both grants, what the token
//! manager does with the answers, and its behaviour at the edges (custom HTTP client, no tokens at
//! all, a store that panics inside the refresh task).

mod common;
#[path = "common/hooked.rs"]
mod hooked;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use common::*;
use hooked::{Hook, Hooked};
use http::StatusCode;
use nifty_auth::testing::{FakeNifty, Grant, TokenFault};
use nifty_auth::{
    AuthError, BoxError, MemoryStore, NiftyAuth, NiftyAuthLayer, NiftyAuthService, TokenSet,
};

fn decode_basic(header: &str) -> String {
    let encoded = header.strip_prefix("Basic ").expect("Basic scheme");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64");
    String::from_utf8(raw).expect("utf-8")
}

#[test]
fn handles_are_send_sync_clone_static() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<NiftyAuth>();
    assert_traits::<NiftyAuthLayer>();
    assert_traits::<NiftyAuthService<HttpClient>>();
    assert_traits::<AuthError>();
    fn assert_send<T: Send + 'static>() {}
    assert_send::<nifty_auth::ResponseFuture<HttpClient, http_body_util::Full<bytes::Bytes>>>();
}

#[tokio::test]
async fn refresh_grant_request_has_basic_auth_json_body_and_accept_header() {
    let fake = fake_for_client("my-client", "my-secret").await;
    let refresh_token = fake.issue_refresh_token();
    let auth = builder(&fake)
        .refresh_token(refresh_token.clone())
        .build()
        .unwrap();

    auth.access_token().await.unwrap();

    let requests = fake.token_requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, http::Method::POST);
    assert_eq!(
        decode_basic(request.authorization.as_deref().unwrap()),
        "my-client:my-secret"
    );
    assert_eq!(request.content_type.as_deref(), Some("application/json"));
    assert_eq!(request.accept.as_deref(), Some("application/json"));
    assert_eq!(
        request.json.as_ref().unwrap(),
        &serde_json::json!({"grant_type": "refresh_token", "refresh_token": refresh_token})
    );
    assert_eq!(fake.token_calls_for(Grant::RefreshToken), 1);
}

#[tokio::test]
async fn exchange_code_sends_the_code_grant_saves_the_tokens_and_the_layer_uses_them() {
    let (fake, store, auth) = unauthorized_auth().await;
    let redirect = "http://127.0.0.1:8765/callback";
    let code = fake.issue_code(redirect);

    let tokens = auth.exchange_code(code.clone(), redirect).await.unwrap();

    let requests = fake.token_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        decode_basic(requests[0].authorization.as_deref().unwrap()),
        format!("{}:{}", fake.client_id(), fake.client_secret())
    );
    assert_eq!(
        requests[0].json.as_ref().unwrap(),
        &serde_json::json!({"grant_type": "authorization_code", "code": code, "redirect_uri": redirect})
    );
    assert_eq!(tokens.token_type().to_ascii_lowercase(), "bearer");
    assert_eq!(tokens.scope(), Some("project task"));
    assert!(tokens.expires_at().is_some());
    assert_eq!(
        tokens.refresh_token(),
        fake.current_refresh_token().as_deref()
    );
    assert_eq!(store.get().unwrap(), tokens, "saved to the store");

    let svc = service(&auth);
    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        fake.api_requests()[0].authorization.as_deref(),
        Some(format!("Bearer {}", tokens.access_token()).as_str())
    );
    assert_eq!(fake.token_calls(), 1);

    // A code is single use: a second exchange is a re-authorization error.
    let err = auth.exchange_code(code, redirect).await.unwrap_err();
    assert!(err.is_reauthorization_required(), "{err}");
}

#[tokio::test]
async fn without_any_tokens_access_token_asks_for_authorization_and_calls_nobody() {
    let fake = FakeNifty::start().await.unwrap();
    let auth = builder(&fake).build().unwrap();

    let err = auth.access_token().await.unwrap_err();

    assert!(err.is_reauthorization_required(), "{err}");
    assert!(err.to_string().contains("exchange_code"), "{err}");
    assert_eq!(fake.token_calls(), 0);

    // set_tokens makes it usable.
    let access = fake.issue_access_token(Some(std::time::Duration::from_secs(600)));
    auth.set_tokens(
        TokenSet::new(access.clone()).with_expires_in(std::time::Duration::from_secs(600)),
    )
    .await
    .unwrap();
    assert_eq!(auth.access_token().await.unwrap(), access);
    assert_eq!(fake.token_calls(), 0);
}

#[tokio::test]
async fn a_custom_http_client_carries_the_token_calls() {
    let fake = FakeNifty::start().await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let real = http_client();
    let client = tower::service_fn(move |request| {
        counter.fetch_add(1, Ordering::SeqCst);
        real.request(request)
    });
    let auth = builder(&fake)
        .http_client(client)
        .refresh_token(fake.issue_refresh_token())
        .build()
        .unwrap();

    auth.access_token().await.unwrap();

    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(fake.token_calls(), 1);
}

#[tokio::test]
async fn a_redirect_from_the_token_endpoint_is_not_followed() {
    let fake = FakeNifty::start().await.unwrap();
    fake.push_token_fault(TokenFault::Respond {
        status: 302,
        content_type: "text/html".to_owned(),
        body: "<a href=\"/elsewhere\">moved</a>".to_owned(),
    });
    let auth = auth(&fake);

    let err = auth.access_token().await.unwrap_err();

    match &err {
        AuthError::Endpoint { status, .. } => assert_eq!(*status, StatusCode::FOUND),
        other => panic!("expected Endpoint, got {other:?}"),
    }
    assert_eq!(
        fake.token_calls(),
        1,
        "a 3xx is neither followed nor retried"
    );
    assert_eq!(fake.api_calls(), 0);
}

/// A `MemoryStore` whose saves panic while the hook is set.
type PanickyStore = Hooked<MemoryStore, PanicOnSave>;

#[derive(Clone, Default)]
struct PanicOnSave(Arc<AtomicBool>);

impl Hook for PanicOnSave {
    fn save(&self) -> Result<(), BoxError> {
        assert!(!self.0.load(Ordering::SeqCst), "store exploded (test)");
        Ok(())
    }
}

#[tokio::test]
async fn a_panicking_refresh_task_fails_its_waiters_and_does_not_wedge_the_next_refresh() {
    let fake = FakeNifty::start().await.unwrap();
    let store = PanickyStore::default();
    store.hook.0.store(true, Ordering::SeqCst);
    let auth = auth_over(&fake, fake.issue_refresh_token(), store.clone());
    let svc = service(&auth);

    for result in send_concurrently(&svc, fake.api_url("/users/me"), 20).await {
        let err = result.unwrap_err();
        assert!(
            matches!(auth_error(&err), AuthError::Internal { .. }),
            "{err}"
        );
    }
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.api_calls(), 0, "no unsaved token was used");

    // The rotated tokens were parked before the save panicked: the next attempt saves and uses them
    // without another token call (and without replaying the retired refresh token).
    store.hook.0.store(false, Ordering::SeqCst);
    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(
        store.inner.get().unwrap().refresh_token(),
        fake.current_refresh_token().as_deref()
    );
}

#[tokio::test]
async fn a_personal_access_token_goes_through_the_layer_scoped_and_without_refresh() {
    let fake = FakeNifty::start().await.unwrap();
    let other = FakeNifty::start().await.unwrap();
    let (token, auth) = personal_auth(&fake);
    assert!(!auth.can_refresh());
    let svc = NiftyAuthService::new(http_client(), auth.clone());

    let (status, _) = send(&svc, get(fake.api_url("/projects"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        fake.api_requests()[0].authorization.as_deref(),
        Some(format!("Bearer {token}").as_str())
    );
    let (status, _) = send(&svc, get(other.api_url("/projects"))).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        other.api_requests()[0].authorization,
        None,
        "origin scoping"
    );

    // Revoked: the 401 comes back as it is (nothing to refresh with, no retry).
    fake.revoke_access_tokens();
    let (status, _) = send(&svc, post_json(fake.api_url("/tasks"), "{}"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(fake.api_calls(), 2);
    assert_eq!(fake.token_calls(), 0);
    assert_eq!(auth.access_token().await.unwrap(), token);

    // The default origin is Nifty's API; a token that cannot be a header is refused up front.
    let default = NiftyAuth::personal_token("nft_user_x").build().unwrap();
    assert!(default.is_allowed(
        &"https://openapi.niftypm.com/api/v1.0/projects"
            .parse()
            .unwrap()
    ));
    assert!(NiftyAuth::personal_token("bad\ntoken").build().is_err());
}
