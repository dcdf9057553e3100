//! Where the bearer token goes (allowed origins, caller-set headers) and where secrets never appear
//! (`Debug` output, errors), plus builder validation.

mod common;

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use nifty_auth::testing::{FakeNifty, TokenFault};
use nifty_auth::{
    AuthError, Credentials, FileStore, MemoryStore, NiftyAuth, TokenSet, TokenStore,
    DEFAULT_TOKEN_URL,
};
use tower::{Layer, Service, ServiceExt};

/// Another origin: a second fake Nifty on another loopback port, whose API records the
/// `Authorization` header of every request it gets.
async fn other_origin() -> FakeNifty {
    FakeNifty::start().await.unwrap()
}

/// The `Authorization` headers `other` received, in order.
fn seen(other: &FakeNifty) -> Vec<Option<String>> {
    other
        .api_requests()
        .into_iter()
        .map(|r| r.authorization)
        .collect()
}

fn uri(s: &str) -> Uri {
    s.parse().expect("URI")
}

fn bearer_of(auth: &NiftyAuth) -> Option<String> {
    Some(format!(
        "Bearer {}",
        auth.tokens().expect("tokens").access_token()
    ))
}

/// What a [`recording`] inner service saw: the URI and the `Authorization` value of each request.
type Seen = Arc<Mutex<Vec<(String, Option<HeaderValue>)>>>;

/// A real tower service (not a mock of the crate): records each request and answers 200.
fn recording(
    seen: Seen,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone
{
    tower::service_fn(move |request: Request<Full<Bytes>>| {
        seen.lock().unwrap().push((
            request.uri().to_string(),
            request.headers().get(AUTHORIZATION).cloned(),
        ));
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
    })
}

fn empty(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn bearer_goes_only_to_allowed_origins_and_another_port_is_another_origin() {
    let fake = FakeNifty::start().await.unwrap();
    let other = other_origin().await;
    assert_eq!(other.addr().ip(), fake.addr().ip());
    assert_ne!(other.addr().port(), fake.addr().port());
    let auth = auth(&fake); // allowed_origins([fake.base_url()])
    let svc = service(&auth);

    // Another origin: passed through untouched, and no token is even fetched for it.
    let (status, _) = send(&svc, get(other.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "it got no bearer");
    assert_eq!(seen(&other), [None]);
    assert_eq!(fake.token_calls(), 0);

    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.api_requests()[0].authorization, bearer_of(&auth));

    // With a token cached, the other origin still gets none.
    let (status, _) = send(&svc, post_json(other.api_url("/upload"), r#"{"a":1}"#))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(seen(&other), [None, None]);
    assert_eq!(other.token_calls(), 0);
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.api_calls(), 1);

    let port = fake.addr().port();
    assert!(auth.is_allowed(&uri(&fake.api_url("/projects"))));
    assert!(auth.is_allowed(&uri(&format!("HTTP://127.0.0.1:{port}/x"))));
    assert!(!auth.is_allowed(&uri(&other.api_url("/x"))), "another port");
    assert!(
        !auth.is_allowed(&uri(&format!("https://127.0.0.1:{port}/x"))),
        "another scheme"
    );
    assert!(
        !auth.is_allowed(&uri(&format!("http://localhost:{port}/x"))),
        "another host"
    );
    assert!(
        !auth.is_allowed(&uri("http://127.0.0.1/x")),
        "the default port"
    );
}

#[tokio::test]
async fn the_default_allowed_origin_is_the_token_urls_origin() {
    let fake = FakeNifty::start().await.unwrap();
    let other = other_origin().await;
    let auth = NiftyAuth::builder(fake.credentials())
        .token_url(fake.token_url())
        .refresh_token(fake.issue_refresh_token())
        .build()
        .unwrap();
    let svc = service(&auth);

    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.api_requests()[0].authorization, bearer_of(&auth));
    let (status, _) = send(&svc, get(other.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(seen(&other), [None]);
    assert_eq!(fake.token_calls(), 1);
    assert!(auth.is_allowed(&uri(&format!("{}/anything", fake.base_url()))));
    assert!(!auth.is_allowed(&uri(&other.token_url())));

    // With no token URL either: Nifty's own origin.
    let nifty = NiftyAuth::builder(fake.credentials()).build().unwrap();
    assert_eq!(DEFAULT_TOKEN_URL, "https://openapi.niftypm.com/oauth/token");
    assert!(nifty.is_allowed(&uri("https://openapi.niftypm.com/api/v1.0/projects")));
    assert!(nifty.is_allowed(&uri("https://openapi.niftypm.com:443/api/v1.0/projects")));
    assert!(!nifty.is_allowed(&uri("http://openapi.niftypm.com/api/v1.0/projects")));
    assert!(!nifty.is_allowed(&uri("https://openapi.niftypm.com:8443/api/v1.0/projects")));
    assert!(!nifty.is_allowed(&uri("https://niftypm.com/api/v1.0/projects")));
    assert!(!nifty.is_allowed(&uri(&fake.api_url("/projects"))));
}

#[tokio::test]
async fn relative_uris_are_same_origin_and_the_bearer_value_is_sensitive() {
    let fake = FakeNifty::start().await.unwrap();
    let auth = auth(&fake);
    let seen = Seen::default();
    let svc = auth.layer().layer(recording(Arc::clone(&seen)));

    for target in [
        "/api/v1.0/users/me".to_owned(),
        fake.api_url("/projects"),
        "http://127.0.0.1:1/elsewhere".to_owned(),
    ] {
        let response = svc.clone().oneshot(empty(&target)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(fake.token_calls(), 1);
    let expected = bearer_of(&auth).unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].0, "/api/v1.0/users/me");
    for (target, header) in &seen[..2] {
        let header = header
            .as_ref()
            .unwrap_or_else(|| panic!("no bearer for {target}"));
        assert_eq!(header, expected.as_str(), "{target}");
        assert!(
            header.is_sensitive(),
            "{target}: the bearer value is not sensitive"
        );
    }
    assert_eq!(seen[2].1, None, "the bearer went to another origin");
}

#[tokio::test]
async fn the_bearer_sent_on_the_retry_after_a_401_is_sensitive_too() {
    let fake = FakeNifty::start().await.unwrap();
    let auth = auth(&fake);
    let seen = Seen::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let recorded = Arc::clone(&seen);
    let inner = tower::service_fn(move |request: Request<Full<Bytes>>| {
        recorded.lock().unwrap().push((
            request.uri().to_string(),
            request.headers().get(AUTHORIZATION).cloned(),
        ));
        let status = if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        async move {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    });
    let svc = auth.layer().layer(inner);

    let response = svc
        .oneshot(empty(&fake.api_url("/projects")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.token_calls(), 2);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let (first, second) = (seen[0].1.clone().unwrap(), seen[1].1.clone().unwrap());
    assert_ne!(first, second);
    assert_eq!(Some(second.to_str().unwrap().to_owned()), bearer_of(&auth));
    assert!(first.is_sensitive());
    assert!(second.is_sensitive());
}

#[tokio::test]
async fn a_caller_set_authorization_header_is_left_alone() {
    let (fake, auth, svc) = started().await;

    let own = fake.issue_access_token(None);
    let request = Request::get(fake.api_url("/users/me"))
        .header(AUTHORIZATION, format!("Bearer {own}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _) = send(&svc, request).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 0);
    assert_eq!(
        fake.api_requests()[0].authorization,
        Some(format!("Bearer {own}"))
    );

    // A rejected caller value: its 401 comes back as it is, with no refresh and no retry.
    let request = Request::get(fake.api_url("/users/me"))
        .header(AUTHORIZATION, "Bearer not-a-live-token")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _) = send(&svc, request).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(fake.token_calls(), 0);
    assert_eq!(fake.api_calls(), 2);
    assert_eq!(
        fake.api_requests()[1].authorization.as_deref(),
        Some("Bearer not-a-live-token")
    );
    assert_eq!(auth.tokens(), None);

    // The inner service gets the caller's value itself (not re-marked, not replaced), even with a
    // token of our own cached.
    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);
    let seen = Seen::default();
    let inner = auth.layer().layer(recording(Arc::clone(&seen)));
    let request = Request::get(fake.api_url("/users/me"))
        .header(AUTHORIZATION, "Basic dXNlcjpwYXNz")
        .body(Full::new(Bytes::new()))
        .unwrap();
    inner.oneshot(request).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let header = seen[0].1.clone().expect("header");
    assert_eq!(header, "Basic dXNlcjpwYXNz");
    assert!(!header.is_sensitive());
    assert_eq!(fake.token_calls(), 1);
}

/// Every rendering of `err` (Display, Debug, alternate Debug, the source chain).
fn renderings(err: &AuthError) -> Vec<String> {
    let mut out = vec![format!("{err}"), format!("{err:?}"), format!("{err:#?}")];
    let mut source = err.source();
    while let Some(cause) = source {
        out.push(format!("{cause}"));
        out.push(format!("{cause:?}"));
        source = cause.source();
    }
    out
}

fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{what} leaks {secret:?}: {text}"
        );
    }
}

#[tokio::test]
async fn debug_output_and_errors_never_show_the_secret_or_a_token() {
    let fake = fake_for_client("visible-client-id", "the-client-secret-value").await;
    let dir = tempfile::tempdir().unwrap();
    let file_store = FileStore::new(dir.path().join("tokens.json"));
    let bootstrap = fake.issue_refresh_token();
    let auth = auth_over(&fake, bootstrap.clone(), file_store.clone());
    let svc = service(&auth);
    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);

    let tokens = auth.tokens().expect("tokens");
    let memory = MemoryStore::new();
    memory.save(&memory.single_grant(), &tokens).await.unwrap();
    let stored = file_store.load().await.unwrap().expect("stored tokens");
    assert_eq!(stored.access_token(), tokens.access_token());
    let mut secrets = vec![
        fake.client_secret().to_owned(),
        bootstrap.clone(),
        tokens.access_token().to_owned(),
        tokens.refresh_token().expect("refresh token").to_owned(),
    ];

    let outputs = [
        ("Credentials", format!("{:?}", fake.credentials())),
        ("TokenSet", format!("{tokens:?}")),
        ("TokenSet alternate", format!("{tokens:#?}")),
        ("NiftyAuth", format!("{auth:?}")),
        ("NiftyAuth alternate", format!("{auth:#?}")),
        ("NiftyAuthLayer", format!("{:?}", auth.layer())),
        ("NiftyAuthService", format!("{svc:?}")),
        ("FileStore", format!("{file_store:?}")),
        ("MemoryStore", format!("{memory:?}")),
        (
            "Builder",
            format!("{:?}", builder(&fake).refresh_token(bootstrap.clone())),
        ),
    ];
    for (what, text) in &outputs {
        assert_no_secret(what, text, &secrets);
    }
    assert!(
        outputs[3].1.contains("visible-client-id"),
        "{}",
        outputs[3].1
    );

    let mut errors: Vec<(&str, AuthError)> = Vec::new();

    // invalid_grant for an unknown refresh token.
    let unknown = "rt-unknown-but-secret".to_owned();
    secrets.push(unknown.clone());
    let err = builder(&fake)
        .refresh_token(unknown)
        .build()
        .unwrap()
        .access_token()
        .await
        .unwrap_err();
    assert!(err.is_reauthorization_required(), "{err:?}");
    errors.push(("invalid_grant", err));

    // A wrong client secret.
    let wrong = "wrong-client-secret-value".to_owned();
    secrets.push(wrong.clone());
    let err = NiftyAuth::builder(Credentials::new(fake.client_id(), wrong))
        .token_url(fake.token_url())
        .refresh_token(fake.issue_refresh_token())
        .build()
        .unwrap()
        .access_token()
        .await
        .unwrap_err();
    assert!(err.is_invalid_client(), "{err:?}");
    errors.push(("invalid_client", err));

    // Error answers that echo the refresh token that was sent, and the client secret.
    let echoed = fake.issue_refresh_token();
    secrets.push(echoed.clone());
    let echoing = builder(&fake)
        .token_attempts(1)
        .refresh_token(echoed.clone())
        .build()
        .unwrap();
    let description = format!(
        "cannot refresh {echoed} for client {}",
        fake.client_secret()
    );
    fake.push_token_fault(TokenFault::status(
        500,
        serde_json::json!({ "error": "server_error", "error_description": description })
            .to_string(),
    ));
    let err = echoing.access_token().await.unwrap_err();
    assert!(matches!(err, AuthError::Endpoint { .. }), "{err:?}");
    errors.push(("500 with a description", err));
    fake.push_token_fault(TokenFault::Respond {
        status: 502,
        content_type: "text/html".to_owned(),
        body: format!(
            "<html>bad gateway for {echoed} / {}</html>",
            fake.client_secret()
        ),
    });
    let err = echoing.access_token().await.unwrap_err();
    assert!(matches!(err, AuthError::Endpoint { .. }), "{err:?}");
    errors.push(("502 HTML", err));
    fake.push_token_fault(TokenFault::status(
        503,
        serde_json::json!({ "refresh_token": echoed, "access_token": "at-echoed-in-json" })
            .to_string(),
    ));
    secrets.push("at-echoed-in-json".to_owned());
    let err = echoing.access_token().await.unwrap_err();
    assert!(matches!(err, AuthError::Endpoint { .. }), "{err:?}");
    errors.push(("503 JSON without a description", err));

    // Unusable success answers.
    secrets.push("at-unusable-answer".to_owned());
    for body in [
        r#"{"access_token":"at-unusable-answer","token_type":"mac"}"#,
        r#"{"access_token":"at-unusable-answer","token_type":"bearer","expires_in":"soon"}"#,
        r#"{"access_token":"at-unusable-answer","token_type":"bearer","refresh_token":7}"#,
    ] {
        fake.push_token_fault(TokenFault::status(200, body));
        let err = echoing.access_token().await.unwrap_err();
        assert!(
            matches!(err, AuthError::InvalidResponse { .. }),
            "{body}: {err:?}"
        );
        errors.push(("invalid response", err));
    }

    // A token file holding tokens but not a valid token set.
    let corrupt_path = dir.path().join("corrupt.json");
    fs::write(
        &corrupt_path,
        format!(
            r#"{{"access_token": "{}", "refresh_token": "{}", "expires_at": "never"}}"#,
            tokens.access_token(),
            tokens.refresh_token().unwrap()
        ),
    )
    .unwrap();
    let err = builder(&fake)
        .store(FileStore::new(&corrupt_path))
        .build()
        .unwrap()
        .access_token()
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Store { .. }), "{err:?}");
    errors.push(("corrupt token file", err));

    assert_eq!(errors.len(), 9);
    for (what, err) in &errors {
        for text in renderings(err) {
            assert_no_secret(what, &text, &secrets);
        }
    }
    let after = format!("{auth:?} {:?}", auth.layer());
    assert_no_secret("NiftyAuth after the errors", &after, &secrets);
}

fn configuration_reason(result: Result<NiftyAuth, AuthError>) -> String {
    match result {
        Err(AuthError::Configuration { reason }) => reason,
        other => panic!("expected AuthError::Configuration, got {other:?}"),
    }
}

#[test]
fn builder_rejects_bad_token_urls_and_origins() {
    let creds = || Credentials::new("id", "secret");

    let reason = configuration_reason(NiftyAuth::builder(creds()).token_url("not a url").build());
    assert!(reason.contains("not a URL"), "{reason}");

    let reason = configuration_reason(NiftyAuth::builder(creds()).token_url("ftp://x/y").build());
    assert!(reason.contains("ftp://x/y"), "{reason}");

    let reason = configuration_reason(
        NiftyAuth::builder(creds())
            .allowed_origins(["https://a.example/path"])
            .build(),
    );
    assert!(reason.contains("https://a.example/path"), "{reason}");

    for origin in ["a.example", "ftp://a.example", "https://a.example/?q=1"] {
        let reason = configuration_reason(
            NiftyAuth::builder(creds())
                .allowed_origins([origin])
                .build(),
        );
        assert!(reason.contains(origin), "{origin}: {reason}");
    }

    // What is accepted: bare origins, with or without a trailing slash.
    let auth = NiftyAuth::builder(creds())
        .allowed_origins(["https://a.example", "http://127.0.0.1:8080/"])
        .build()
        .unwrap();
    assert!(auth.is_allowed(&uri("https://a.example/api")));
    assert!(auth.is_allowed(&uri("http://127.0.0.1:8080/api")));
    assert!(!auth.is_allowed(&uri("https://openapi.niftypm.com/api")));
}

/// `TokenSet` is what `set_tokens` takes; its `Debug` hides even hand-made tokens.
#[test]
fn token_set_debug_hides_hand_made_tokens() {
    let tokens = TokenSet::new("hand-made-access")
        .with_refresh_token("hand-made-refresh")
        .with_scope("task");
    let debug = format!("{tokens:?}");
    assert!(!debug.contains("hand-made-access"), "{debug}");
    assert!(!debug.contains("hand-made-refresh"), "{debug}");
    assert!(debug.contains("task"), "{debug}");
}
