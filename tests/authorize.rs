//! The first authorization end to end against the fake Nifty: the test plays the browser, following
//! the authorize page's redirect to the loopback callback.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use nifty_auth::authorize::{AuthorizationRequest, AuthorizeError, CallbackServer};
use nifty_auth::testing::{FakeNifty, Grant};
use nifty_auth::{FileStore, GrantId, NiftyGrants};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// A callback server waiting for the code of an authorization request of a fake (which lives as
/// long as the wait): the request, the server's address and the wait.
async fn waiting_at_callback() -> (
    AuthorizationRequest,
    std::net::SocketAddr,
    tokio::task::JoinHandle<Result<String, nifty_auth::authorize::AuthorizeError>>,
) {
    let fake = FakeNifty::start().await.unwrap();
    let (server, request) = setup(&fake).await;
    let addr = server.local_addr().unwrap();
    let waiting = wait_for_code(server, &request);
    (
        request,
        addr,
        tokio::spawn(async move {
            let _fake = fake;
            waiting.await.unwrap()
        }),
    )
}

/// `server` waiting, in a task of its own, for the code of `request`.
fn wait_for_code(
    server: CallbackServer,
    request: &AuthorizationRequest,
) -> tokio::task::JoinHandle<Result<String, nifty_auth::authorize::AuthorizeError>> {
    let request = request.clone();
    tokio::spawn(async move { server.wait_for_code(&request).await })
}

#[tokio::test]
async fn authorize_exchange_and_save_with_a_browser_following_the_redirect() {
    let fake = FakeNifty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nifty-tokens.json");
    let auth = builder(&fake).store(FileStore::new(&path)).build().unwrap();
    let (server, request) = setup(&fake).await;
    let waiting = wait_for_code(server, &request);

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
async fn a_callback_with_a_wrong_or_missing_state_is_refused_and_the_right_one_still_succeeds() {
    let fake = FakeNifty::start().await.unwrap();
    let (server, request) = setup(&fake).await;
    let stray_code = fake.issue_code("http://127.0.0.1/elsewhere");
    let forged = format!("{}?code={stray_code}&state=forged", server.redirect_uri());
    let stateless = format!("{}?code={stray_code}", server.redirect_uri());
    let waiting = wait_for_code(server, &request);

    for stray in [forged, stateless] {
        let (status, page) = browse(&stray).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(page.contains("state"), "{page}");
    }
    // The wait is still on: it ends with the right callback's code, not a stray one's (nor an error).
    let (status, _) = browse(&request.url()).await;
    assert_eq!(status, StatusCode::OK);
    let code = waiting.await.unwrap().unwrap();
    assert_ne!(code, stray_code);
    assert_eq!(fake.token_calls(), 0);
}

#[tokio::test]
async fn a_refusal_from_nifty_is_a_denied_error() {
    let fake = FakeNifty::start().await.unwrap();
    fake.deny_next_authorization();
    let (server, request) = setup(&fake).await;
    let waiting = wait_for_code(server, &request);

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
    let waiting = wait_for_code(server, &request);

    let (status, _) = browse(&favicon).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The wait went on: it ends with the real callback's code, not an error for the 404.
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
    assert_eq!(a.state().len(), 22, "132 bits, short enough for Nifty");
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

#[tokio::test]
async fn non_http_bytes_get_an_error_answer_and_the_wait_goes_on() {
    let (request, addr, waiting) = waiting_at_callback().await;

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(!waiting.is_finished());

    let (status, _) = browse(&request.url()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(waiting.await.unwrap().unwrap().starts_with("code-"));
}

#[tokio::test]
async fn a_thousand_idle_connections_and_a_100_kib_header_do_not_keep_the_callback_out() {
    let (request, addr, waiting) = waiting_at_callback().await;

    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut big = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /callback HTTP/1.1\r\nHost: {addr}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    // The server may close the connection before reading it all.
    let _ = big.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), big.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    // Refused one way or another (431 when it overflows the read buffer, else the callback's 400
    // for a missing state, or a closed connection), and it did not end the wait.
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    assert!(!waiting.is_finished());

    let (status, _) = tokio::time::timeout(Duration::from_secs(5), browse(&request.url()))
        .await
        .expect("the callback was kept out");
    assert_eq!(status, StatusCode::OK);
    assert!(waiting.await.unwrap().unwrap().starts_with("code-"));
    drop(idle);
}

#[tokio::test]
async fn the_wait_ends_at_the_deadline_with_timed_out() {
    let fake = FakeNifty::start().await.unwrap();
    let (server, request) = setup(&fake).await;

    let err = server
        .wait_for_code_within(&request, Duration::from_millis(50))
        .await
        .unwrap_err();

    assert!(matches!(err, AuthorizeError::TimedOut { .. }), "{err}");
}

#[tokio::test]
async fn a_localhost_redirect_uri_is_served_on_ipv4_and_ipv6() {
    let fake = FakeNifty::start().await.unwrap();
    let server = CallbackServer::bind("http://localhost:0/callback")
        .await
        .unwrap();
    let addrs = server.local_addrs();
    assert!(server.redirect_uri().starts_with("http://localhost:"));
    assert!(addrs.iter().any(|a| a.is_ipv4()), "{addrs:?}");
    let Some(v6) = addrs.iter().find(|a| a.is_ipv6()).copied() else {
        eprintln!("no IPv6 loopback here: only 127.0.0.1 is served");
        return;
    };
    let request = AuthorizationRequest::new(fake.client_id(), server.redirect_uri())
        .authorize_url(fake.authorize_url());
    let waiting = wait_for_code(server, &request);

    // The browser resolved `localhost` to ::1.
    let (status, _) = browse(&format!(
        "http://[::1]:{}/callback?code=c-6&state={}",
        v6.port(),
        request.state()
    ))
    .await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(waiting.await.unwrap().unwrap(), "c-6");
}

#[tokio::test]
async fn pkce_sends_an_s256_challenge_and_the_fake_checks_the_verifier() {
    let fake = FakeNifty::start().await.unwrap();
    let auth = builder(&fake).build().unwrap();

    // With the verifier: the exchange succeeds.
    let (server, request) = setup(&fake).await;
    let request = request.pkce(true);
    let url = request.url();
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    assert!(url.contains(&format!(
        "code_challenge={}",
        request.code_challenge().unwrap()
    )));
    assert_eq!(request.code_verifier().unwrap().len(), 43);
    let waiting = wait_for_code(server, &request);
    browse(&url).await;
    let code = waiting.await.unwrap().unwrap();
    request.exchange(&auth, code).await.unwrap();
    let sent = fake.token_requests()[0].json.clone().unwrap();
    assert_eq!(sent["code_verifier"].as_str(), request.code_verifier());

    // Without it (or with another request's): invalid_grant, re-authorization required.
    let (request, code) = authorized_with_pkce(&fake).await;
    let other = AuthorizationRequest::new(fake.client_id(), request.redirect_uri()).pkce(true);
    let wrong = other.exchange(&auth, code.clone()).await.unwrap_err();
    let missing = auth
        .exchange_code(code, request.redirect_uri())
        .await
        .unwrap_err();

    assert!(wrong.is_reauthorization_required(), "{wrong}");
    assert!(missing.is_reauthorization_required(), "{missing}");
    assert_eq!(fake.token_calls(), 3);
    assert_eq!(fake.invalid_grants_served(), 2);
}

/// A PKCE authorization request at `fake`, authorized by the browser: the request and its code.
async fn authorized_with_pkce(fake: &FakeNifty) -> (AuthorizationRequest, String) {
    let (server, request) = setup(fake).await;
    let request = request.pkce(true);
    let waiting = wait_for_code(server, &request);
    browse(&request.url()).await;
    let code = waiting.await.unwrap().unwrap();
    (request, code)
}

#[tokio::test]
async fn nifty_grants_exchanges_a_pkce_code_for_one_grant_and_refuses_a_wrong_verifier() {
    let fake = FakeNifty::start().await.unwrap();
    let grants = NiftyGrants::builder(fake.credentials())
        .token_url(fake.token_url().as_str())
        .allowed_origins([fake.base_url()])
        .build()
        .unwrap();
    let acme = GrantId::new("acme").unwrap();

    // With the right verifier: the grant's tokens are saved and used.
    let (request, code) = authorized_with_pkce(&fake).await;
    let tokens = request.exchange_grant(&grants, &acme, code).await.unwrap();
    let sent = fake.token_requests()[0].json.clone().unwrap();
    assert_eq!(sent["code_verifier"].as_str(), request.code_verifier());
    assert_eq!(
        grants.access_token(&acme).await.unwrap(),
        tokens.access_token()
    );

    // Another request's verifier: invalid_grant, re-authorization required.
    let (request, code) = authorized_with_pkce(&fake).await;
    let other = AuthorizationRequest::new(fake.client_id(), request.redirect_uri()).pkce(true);
    let beta = GrantId::new("beta").unwrap();
    let wrong = grants
        .exchange_code_with_verifier(
            &beta,
            code,
            request.redirect_uri(),
            other.code_verifier().unwrap(),
        )
        .await
        .unwrap_err();
    assert!(wrong.is_reauthorization_required(), "{wrong}");
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.invalid_grants_served(), 1);
}

#[test]
fn pkce_is_off_by_default() {
    let request = AuthorizationRequest::new("id", "http://127.0.0.1:8765/callback");
    assert!(request.code_verifier().is_none());
    assert!(!request.url().contains("code_challenge"));
}
