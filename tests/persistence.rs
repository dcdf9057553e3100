//! Token persistence: rotated refresh tokens reach the store before use, survive dropped requests,
//! failed saves and restarts, and are shared between instances without replaying a stale token.

mod common;
#[path = "common/hooked.rs"]
mod hooked;

use std::error::Error as _;
use std::fmt;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hooked::{Hook, Hooked};
use http::StatusCode;
use nifty_auth::testing::{FakeNifty, Grant};
use nifty_auth::{AuthError, BoxError, FileStore, MemoryStore, TokenSet};
use serde_json::Value;

/// The error a [`FlakyStore`] save fails with.
#[derive(Debug)]
struct DiskFull;

impl fmt::Display for DiskFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("simulated disk full")
    }
}

impl std::error::Error for DiskFull {}

/// A `MemoryStore` whose saves fail while the hook is set failing. Clones share everything.
type FlakyStore = Hooked<MemoryStore, Flaky>;

#[derive(Clone, Debug, Default)]
struct Flaky {
    fail_saves: Arc<AtomicBool>,
    failed_saves: Arc<AtomicUsize>,
}

impl Hook for Flaky {
    fn save(&self) -> Result<(), BoxError> {
        if self.fail_saves.load(Ordering::SeqCst) {
            self.failed_saves.fetch_add(1, Ordering::SeqCst);
            return Err(Box::new(DiskFull));
        }
        Ok(())
    }
}

impl FlakyStore {
    fn set_failing(&self, failing: bool) {
        self.hook.fail_saves.store(failing, Ordering::SeqCst);
    }

    fn failed_saves(&self) -> usize {
        self.hook.failed_saves.load(Ordering::SeqCst)
    }
}

/// A request while saves still fail: not sent, failed with `AuthError::Store`.
async fn refused_by_the_store(svc: &AuthClient, fake: &FakeNifty) {
    let err = send(svc, get(fake.api_url("/users/me"))).await.unwrap_err();
    assert!(
        matches!(auth_error(&err), AuthError::Store { .. }),
        "{err:?}"
    );
}

/// The access tokens die and a request to `path` goes through after a refresh, the second token
/// call, which presents `refresh_token` and meets no `invalid_grant`.
async fn second_refresh_presents(
    svc: &AuthClient,
    fake: &FakeNifty,
    path: &str,
    refresh_token: &str,
) {
    fake.revoke_access_tokens();
    let (status, _) = send(svc, get(fake.api_url(path))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.invalid_grants_served(), 0);
    let sent = fake.token_requests()[1]
        .json
        .clone()
        .expect("JSON token request");
    assert_eq!(sent["refresh_token"].as_str(), Some(refresh_token));
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).expect("token file")).expect("token file is JSON")
}

fn bearer(tokens: &TokenSet) -> Option<String> {
    Some(format!("Bearer {}", tokens.access_token()))
}

#[cfg(unix)]
fn assert_mode_0600(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "token file mode is {mode:o}");
}

#[cfg(not(unix))]
fn assert_mode_0600(_path: &Path) {}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn file_store_persists_the_rotation_and_a_new_instance_resumes_from_it() {
    let fake = FakeNifty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let bootstrap = fake.issue_refresh_token();

    // First "process": bootstrapped with a refresh token.
    let first = auth_over(&fake, bootstrap.clone(), FileStore::new(&path));
    let (status, _) = send(&service(&first), get(fake.api_url("/users/me")))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);

    let rotated = fake.current_refresh_token().expect("live grant");
    assert_ne!(rotated, bootstrap);
    let used = first.tokens().expect("tokens");
    assert_file_holds(&path, used.access_token(), &rotated);
    drop(first);

    // Second "process": no bootstrap, same file. The stored access token is still valid.
    let second = builder(&fake).store(FileStore::new(&path)).build().unwrap();
    let svc = service(&second);
    let (status, _) = send(&svc, get(fake.api_url("/projects"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        fake.token_calls(),
        1,
        "the stored access token was not used"
    );
    // (The file keeps `expires_at` as float seconds: compare the tokens, not the whole set.)
    let loaded = second.tokens().expect("tokens");
    assert_eq!(loaded.access_token(), used.access_token());
    assert_eq!(loaded.refresh_token(), Some(rotated.as_str()));
    assert_eq!(fake.api_requests()[1].authorization, bearer(&used));

    // Its access token dies: one refresh, with the stored rotated refresh token.
    second_refresh_presents(&svc, &fake, "/projects", &rotated).await;
    assert_eq!(fake.token_calls_for(Grant::RefreshToken), 2);
    assert_eq!(fake.unauthorized_served(), 1);

    let rotated_again = fake.current_refresh_token().expect("live grant");
    assert_ne!(rotated_again, rotated);
    let now_used = second.tokens().expect("tokens");
    assert_file_holds(&path, now_used.access_token(), &rotated_again);
    assert_ne!(now_used.access_token(), used.access_token());
    assert_eq!(fake.api_requests()[3].authorization, bearer(&now_used));
}

/// Yields (without letting the paused clock move) until `condition` holds.
async fn yield_until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if condition() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("gave up waiting for {what}");
}

/// Sleeps in 1 ms steps (the paused clock advances) until `condition` holds.
async fn sleep_until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("gave up waiting for {what}");
}

#[tokio::test(start_paused = true)]
async fn dropping_every_waiting_request_does_not_cancel_the_refresh_or_lose_the_rotation() {
    const DELAY: Duration = Duration::from_secs(2);
    let fake = FakeNifty::in_process();
    fake.set_token_delay(DELAY);
    let bootstrap = fake.issue_refresh_token();
    let store = MemoryStore::new();
    let auth = auth_over(&fake, bootstrap.clone(), store.clone());
    let svc = service_for(&fake, &auth);

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let svc = svc.clone();
        let url = fake.api_url("/users/me");
        tasks.spawn(async move { send(&svc, get(url)).await });
    }
    yield_until("the token call", || fake.token_calls_in_flight() == 1).await;

    // Every request gives up while the token endpoint is still answering.
    tasks.abort_all();
    let mut cancelled = 0;
    while let Some(joined) = tasks.join_next().await {
        assert!(joined.expect_err("aborted").is_cancelled());
        cancelled += 1;
    }
    assert_eq!(cancelled, 50);
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.token_calls_in_flight(), 1);
    assert_eq!(store.get(), None);
    assert_eq!(auth.tokens(), None);

    // Time passes: the refresh task finishes on its own and saves the rotated token.
    tokio::time::sleep(DELAY).await;
    sleep_until("the saved tokens", || store.get().is_some()).await;
    let saved = store.get().expect("saved");
    let rotated = fake.current_refresh_token().expect("live grant");
    assert_ne!(rotated, bootstrap);
    assert_eq!(saved.refresh_token(), Some(rotated.as_str()));
    assert_eq!(auth.tokens(), Some(saved.clone()));
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.token_calls_in_flight(), 0);
    assert_eq!(fake.api_calls(), 0, "an aborted request reached the API");

    // The next request uses the published token: no token call.
    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.api_requests()[0].authorization, bearer(&saved));

    // A forced refresh later uses the saved rotated token successfully.
    second_refresh_presents(&svc, &fake, "/projects", &rotated).await;
    assert_eq!(fake.unauthorized_served(), 1);
    let resaved = store.get().expect("saved");
    assert_eq!(
        resaved.refresh_token(),
        fake.current_refresh_token().as_deref()
    );
    assert_ne!(resaved.refresh_token(), Some(rotated.as_str()));
    assert_eq!(auth.tokens(), Some(resaved));
}

#[tokio::test]
async fn a_failed_save_keeps_the_new_tokens_unused_until_a_later_save_succeeds() {
    let fake = FakeNifty::start().await.unwrap();
    let bootstrap = fake.issue_refresh_token();
    let store = FlakyStore::default();
    store.set_failing(true);
    let auth = auth_over(&fake, bootstrap.clone(), store.clone());
    let svc = service(&auth);

    // The token call succeeds (the fake rotates), the save fails: the request gets the store error.
    let err = send(&svc, get(fake.api_url("/users/me")))
        .await
        .unwrap_err();
    let auth_err = auth_error(&err);
    assert!(matches!(auth_err, AuthError::Store { .. }), "{auth_err:?}");
    let source = auth_err.source().expect("a store error has a source");
    assert!(source.is::<DiskFull>(), "{source:?}");
    assert_eq!(source.to_string(), "simulated disk full");
    assert_eq!(fake.token_calls(), 1);
    // The save is retried while the lock is held: three tries per refresh.
    assert_eq!(store.failed_saves(), 3);
    let rotated = fake.current_refresh_token().expect("live grant");
    assert_ne!(rotated, bootstrap, "the fake did not rotate");
    assert_eq!(fake.api_calls(), 0, "the unsaved access token was used");
    assert_eq!(store.inner.get(), None);
    assert_eq!(auth.tokens(), None);

    // Still failing: the pending tokens are saved first, so no second token call is made.
    refused_by_the_store(&svc, &fake).await;
    assert_eq!(fake.token_calls(), 1);
    // Three more under the kept lock, then three under a new one.
    assert_eq!(store.failed_saves(), 9);
    assert_eq!(fake.api_calls(), 0);
    assert_eq!(auth.tokens(), None);

    // Saves work again: the pending tokens are saved, then used, without a token call.
    store.set_failing(false);
    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);
    let saved = store.inner.get().expect("saved");
    assert_eq!(saved.refresh_token(), Some(rotated.as_str()));
    assert_eq!(fake.current_refresh_token(), Some(rotated.clone()));
    assert_eq!(auth.tokens(), Some(saved.clone()));
    let api = fake.api_requests();
    assert_eq!(api.len(), 1);
    assert_eq!(api[0].authorization, bearer(&saved));
    assert_eq!(api[0].status, 200);
    assert_eq!(fake.invalid_grants_served(), 0);

    // The next forced refresh presents the saved (rotated) token.
    second_refresh_presents(&svc, &fake, "/users/me", &rotated).await;
    assert_eq!(
        store.inner.get().expect("saved").refresh_token(),
        fake.current_refresh_token().as_deref()
    );
    assert_eq!(store.failed_saves(), 9);
}

#[tokio::test]
async fn a_corrupt_token_file_is_a_store_error_naming_the_file_and_is_never_overwritten() {
    let fake = FakeNifty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let corrupt: &[u8] = br#"{"access_token": "at-half-written-secret", "refresh_token": "#;
    fs::write(&path, corrupt).unwrap();
    let auth = auth_over(&fake, fake.issue_refresh_token(), FileStore::new(&path));
    let svc = service(&auth);

    for attempt in 1..=2 {
        let err = send(&svc, get(fake.api_url("/users/me")))
            .await
            .unwrap_err();
        let auth_err = auth_error(&err);
        assert!(matches!(auth_err, AuthError::Store { .. }), "{auth_err:?}");
        let source = auth_err
            .source()
            .expect("a store error has a source")
            .to_string();
        assert!(
            source.contains(&path.display().to_string()),
            "attempt {attempt}: {source}"
        );
        assert!(!source.contains("at-half-written-secret"), "{source}");
        assert!(!format!("{auth_err:?}").contains("at-half-written-secret"));
        assert_eq!(fs::read(&path).unwrap(), corrupt, "attempt {attempt}");
    }
    let err = auth.access_token().await.unwrap_err();
    assert!(matches!(err, AuthError::Store { .. }), "{err:?}");

    assert_eq!(fs::read(&path).unwrap(), corrupt);
    assert_eq!(file_names(dir.path()), ["tokens.json", "tokens.json.lock"]);
    assert_eq!(fake.token_calls(), 0);
    assert_eq!(fake.api_calls(), 0);
    assert_eq!(auth.tokens(), None);
}

#[tokio::test]
async fn an_instance_adopts_the_tokens_another_instance_rotated_into_the_shared_store() {
    let fake = FakeNifty::start().await.unwrap();
    let store = MemoryStore::new();
    let bootstrap = fake.issue_refresh_token();
    let a = auth_over(&fake, bootstrap, store.clone());
    let b = builder(&fake).store(store.clone()).build().unwrap();
    let (svc_a, svc_b) = (service(&a), service(&b));

    // A fetches the first tokens; B starts from the store without a token call.
    let (status, _) = send(&svc_a, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let first = a.tokens().expect("tokens");
    let (status, _) = send(&svc_b, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(b.tokens(), Some(first.clone()));

    // Both cached access tokens die; A refreshes first and rotates the refresh token.
    fake.revoke_access_tokens();
    let (status, _) = send(&svc_a, get(fake.api_url("/projects"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 2);
    let second = a.tokens().expect("tokens");
    assert_ne!(second.refresh_token(), first.refresh_token());
    assert_eq!(store.get(), Some(second.clone()));
    assert_eq!(b.tokens(), Some(first.clone()), "B still holds the old set");

    // B gets a 401 with its old token and adopts A's set from the store instead of replaying
    // its stale refresh token (which would be invalid_grant and revoke the whole grant).
    let (status, _) = send(&svc_b, get(fake.api_url("/projects"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(b.tokens(), Some(second.clone()));
    let api = fake.api_requests();
    assert_eq!(api.len(), 6);
    assert_eq!(api[4].authorization, bearer(&first));
    assert_eq!(api[4].status, 401);
    assert_eq!(api[5].authorization, bearer(&second));
    assert_eq!(api[5].status, 200);
    assert_eq!(
        second.refresh_token(),
        fake.current_refresh_token().as_deref()
    );

    // The grant is still alive: the next forced refresh (by B) works with the shared token.
    fake.revoke_access_tokens();
    let (status, _) = send(&svc_b, get(fake.api_url("/projects"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 3);
    assert_eq!(fake.invalid_grants_served(), 0);
    let third = b.tokens().expect("tokens");
    assert_eq!(store.get(), Some(third.clone()));
    assert_eq!(
        third.refresh_token(),
        fake.current_refresh_token().as_deref()
    );
}

#[tokio::test]
async fn set_tokens_saves_to_the_store_before_the_tokens_are_used() {
    let fake = FakeNifty::start().await.unwrap();
    let store = FlakyStore::default();
    let auth = builder(&fake).store(store.clone()).build().unwrap();
    let svc = service(&auth);
    let tokens = TokenSet::new(fake.issue_access_token(None))
        .with_refresh_token(fake.issue_refresh_token())
        .with_expires_in(Duration::from_secs(3600));

    // A failed save: the tokens are not used, but kept for the next attempt to save.
    store.set_failing(true);
    let err = auth.set_tokens(tokens.clone()).await.unwrap_err();
    assert!(matches!(err, AuthError::Store { .. }), "{err:?}");
    assert!(err.source().expect("source").is::<DiskFull>());
    assert_eq!(store.failed_saves(), 3);
    assert_eq!(auth.tokens(), None);
    assert_eq!(store.inner.get(), None);
    refused_by_the_store(&svc, &fake).await;
    assert_eq!(store.failed_saves(), 9);
    assert_eq!(fake.api_calls(), 0);
    assert_eq!(fake.token_calls(), 0);

    // The store recovers: the next request saves the kept tokens, then uses them.
    store.set_failing(false);
    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(store.inner.get(), Some(tokens.clone()));
    assert_eq!(auth.tokens(), Some(tokens.clone()));
    assert_eq!(fake.token_calls(), 0);
    let api = fake.api_requests();
    assert_eq!(api.len(), 1);
    assert_eq!(api[0].authorization, bearer(&tokens));

    // set_tokens with a healthy store: saved, then used.
    let newer = TokenSet::new(fake.issue_access_token(None))
        .with_refresh_token(fake.issue_refresh_token())
        .with_expires_in(Duration::from_secs(3600));
    auth.set_tokens(newer.clone()).await.unwrap();
    assert_eq!(store.inner.get(), Some(newer.clone()));
    assert_eq!(auth.tokens(), Some(newer.clone()));
    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 0);
    assert_eq!(fake.api_requests()[1].authorization, bearer(&newer));
}

#[tokio::test]
async fn exchange_code_returns_saves_and_uses_the_new_tokens() {
    let (fake, store, auth) = unauthorized_auth().await;
    let redirect = "http://127.0.0.1/oauth/callback";

    let tokens = auth
        .exchange_code(fake.issue_code(redirect), redirect)
        .await
        .unwrap();
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.token_calls_for(Grant::AuthorizationCode), 1);
    assert_eq!(
        tokens.refresh_token(),
        fake.current_refresh_token().as_deref()
    );
    assert_eq!(tokens.scope(), Some("project task"));
    assert_eq!(store.get(), Some(tokens.clone()));
    assert_eq!(auth.tokens(), Some(tokens.clone()));

    let (status, _) = send(&service(&auth), get(fake.api_url("/users/me")))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);
    let api = fake.api_requests();
    assert_eq!(api.len(), 1);
    assert_eq!(api[0].authorization, bearer(&tokens));
    assert_eq!(fake.invalid_grants_served(), 0);
}

/// The token file `tokens.json` at `path` holds a bearer `access` token and `refresh`, readable by
/// its owner only, with no temporary file left beside it (only its lock file).
fn assert_file_holds(path: &Path, access: &str, refresh: &str) {
    let json = read_json(path);
    assert_eq!(json["refresh_token"].as_str(), Some(refresh));
    assert_eq!(json["access_token"].as_str(), Some(access));
    assert_eq!(json["token_type"].as_str(), Some("bearer"));
    assert_mode_0600(path);
    assert_eq!(
        file_names(path.parent().expect("a directory")),
        ["tokens.json", "tokens.json.lock"],
        "temp files left"
    );
}
