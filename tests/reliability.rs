//! Fault paths of the token manager: runtimes that shut down, re-authorizations whose save
//! failed, readiness held while waiting for a token, clocks that stop while the machine sleeps, stores
//! whose lock fails.

mod common;
#[path = "common/hooked.rs"]
mod hooked;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hooked::{Hook, Hooked};
use http::StatusCode;
use nifty_auth::testing::{FakeNifty, TokenFault};
use nifty_auth::{AuthError, BoxError, MemoryStore, NiftyAuth, StoreLock, TokenSet};
use tower::{Service, ServiceBuilder, ServiceExt};

/// A `MemoryStore` whose next saves and locks can be made to fail, counting calls (its locks are
/// the hook's own, counting releases).
type FaultyStore = Hooked<MemoryStore, Faults>;

#[derive(Clone, Default)]
struct Faults {
    failing_saves: Arc<AtomicUsize>,
    failing_locks: Arc<AtomicUsize>,
    saves: Arc<AtomicUsize>,
    locks: Arc<AtomicUsize>,
    releases: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Unavailable;
impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("simulated store outage")
    }
}
impl std::error::Error for Unavailable {}

fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl Hook for Faults {
    fn save(&self) -> Result<(), BoxError> {
        self.saves.fetch_add(1, Ordering::SeqCst);
        if take_one(&self.failing_saves) {
            return Err(Box::new(Unavailable));
        }
        Ok(())
    }

    fn lock(&self) -> Result<Option<StoreLock>, BoxError> {
        self.locks.fetch_add(1, Ordering::SeqCst);
        if take_one(&self.failing_locks) {
            return Err(Box::new(Unavailable));
        }
        let releases = Arc::clone(&self.releases);
        Ok(Some(StoreLock::new(move || async move {
            releases.fetch_add(1, Ordering::SeqCst);
        })))
    }
}

/// Runs `f` on a fresh current-thread runtime, then drops the runtime at once.
fn on_short_runtime<T>(f: impl std::future::Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(f)
}

#[test]
fn a_refresh_whose_runtime_shut_down_never_blocks_the_next_runtime() {
    // The fake lives on a runtime of its own for the whole test.
    let server = tokio::runtime::Runtime::new().unwrap();
    let fake = server.block_on(FakeNifty::start()).unwrap();
    let auth = auth_with_skew(&fake, Duration::from_secs(600));

    for round in 1..=4 {
        // A token that is within the skew at once (the skew is clamped to half its 1 s life): the
        // call returns it and spawns a background refresh on a runtime that is dropped right away.
        let short = TokenSet::new(fake.issue_access_token(Some(Duration::from_secs(1))))
            .with_refresh_token(fake.issue_refresh_token())
            .with_expires_in(Duration::from_secs(1));
        on_short_runtime(auth.set_tokens(short)).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        let calls_before = fake.token_calls();
        let token = on_short_runtime(auth.access_token()).unwrap();
        assert!(!token.is_empty());

        // After expiry, on the next runtime: exactly one token call, and a token.
        std::thread::sleep(Duration::from_millis(600));
        let token = on_short_runtime(auth.access_token())
            .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        assert_eq!(
            Some(token.as_str()),
            auth.tokens().as_ref().map(TokenSet::access_token)
        );
        let calls = fake.token_calls() - calls_before;
        assert!(calls <= 2, "round {round}: {calls} token calls");
        assert!(calls >= 1, "round {round}: no token call after expiry");
    }
    assert_eq!(fake.invalid_grants_served(), 0);
}

#[test]
fn without_a_runtime_the_call_fails_and_the_next_runtime_refreshes() {
    let server = tokio::runtime::Runtime::new().unwrap();
    let fake = server.block_on(FakeNifty::start()).unwrap();
    let auth = builder(&fake)
        .refresh_token(fake.issue_refresh_token())
        .build()
        .unwrap();
    let err = futures_executor_block_on(auth.access_token()).unwrap_err();
    assert!(matches!(err, AuthError::Configuration { .. }), "{err:?}");
    assert_eq!(fake.token_calls(), 0);

    on_short_runtime(auth.access_token()).unwrap();
    assert_eq!(fake.token_calls(), 1);
}

/// A minimal executor with no tokio runtime behind it.
fn futures_executor_block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}

#[tokio::test]
async fn a_reauthorization_whose_save_failed_is_saved_and_used_by_the_next_attempt() {
    let fake = FakeNifty::start().await.unwrap();
    let store = FaultyStore::default();
    let auth = auth_over(&fake, fake.issue_refresh_token(), store.clone());

    // The grant is revoked: the manager latches.
    fake.push_token_fault(TokenFault::status(400, r#"{"error":"invalid_grant"}"#));
    assert!(auth
        .access_token()
        .await
        .unwrap_err()
        .is_reauthorization_required());
    assert!(auth
        .access_token()
        .await
        .unwrap_err()
        .is_reauthorization_required());
    assert_eq!(fake.token_calls(), 1);

    // The user authorizes again; every save of that attempt fails.
    store.hook.failing_saves.store(3, Ordering::SeqCst);
    let redirect = "http://127.0.0.1/callback";
    let err = auth
        .exchange_code(fake.issue_code(redirect), redirect)
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Store { .. }), "{err:?}");
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(store.inner.get(), None);

    // The store is healthy again: the exchanged tokens are saved and used, with no token call.
    let token = auth.access_token().await.unwrap();
    assert_eq!(fake.token_calls(), 2);
    let saved = store.inner.get().expect("saved");
    assert_eq!(saved.access_token(), token);
    assert_eq!(
        saved.refresh_token(),
        fake.current_refresh_token().as_deref()
    );
    let (status, _) = send(&service(&auth), get(fake.api_url("/users/me")))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.invalid_grants_served(), 1);
}

#[tokio::test]
async fn rotated_tokens_whose_save_failed_keep_the_store_lock_until_saved() {
    let fake = FakeNifty::builder().rotation(true).start().await.unwrap();
    let store = FaultyStore::default();
    let auth = auth_over(&fake, fake.issue_refresh_token(), store.clone());

    store.hook.failing_saves.store(3, Ordering::SeqCst);
    let err = auth.access_token().await.unwrap_err();
    assert!(matches!(err, AuthError::Store { .. }), "{err:?}");
    // Three tries under one lock, which is still held: the rotated refresh token exists only here.
    assert_eq!(store.hook.saves.load(Ordering::SeqCst), 3);
    assert_eq!(store.hook.locks.load(Ordering::SeqCst), 1);
    assert_eq!(store.hook.releases.load(Ordering::SeqCst), 0);

    // The next attempt saves under the same lock (no new lock), then releases it; no token call.
    auth.access_token().await.unwrap();
    assert_eq!(store.hook.locks.load(Ordering::SeqCst), 1);
    assert_eq!(store.hook.releases.load(Ordering::SeqCst), 1);
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(
        store.inner.get().unwrap().refresh_token(),
        fake.current_refresh_token().as_deref()
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_background_lock_backs_off_instead_of_retrying_per_request() {
    let fake = paused_fake_lasting(Duration::from_secs(3600));
    let store = FaultyStore::default();
    let auth = builder(&fake)
        .refresh_token(fake.issue_refresh_token())
        .refresh_skew(Duration::from_secs(3600))
        .token_backoff(Duration::from_millis(5), Duration::from_secs(30))
        .store(store.clone())
        .build()
        .unwrap();
    let svc = service_for(&fake, &auth);
    // A token that enters its refresh window (the skew is clamped to half its life) after 30 s.
    let token = TokenSet::new(fake.issue_access_token(None))
        .with_refresh_token(fake.issue_refresh_token())
        .with_expires_in(Duration::from_secs(60));
    auth.set_tokens(token).await.unwrap();
    let locks_before = store.hook.locks.load(Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(31)).await;

    store.hook.failing_locks.store(usize::MAX, Ordering::SeqCst);
    for _ in 0..20 {
        let (status, _) = send(&svc, get(fake.api_url("/projects"))).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.hook.locks.load(Ordering::SeqCst) - locks_before, 1);
    assert_eq!(fake.token_calls(), 0);
}

#[tokio::test]
async fn a_cold_start_does_not_hold_a_concurrency_permit_the_token_call_needs() {
    let fake = FakeNifty::start().await.unwrap();
    // One ConcurrencyLimit(1) shared by the API stack and the token client.
    let limited = ServiceBuilder::new()
        .concurrency_limit(1)
        .service(http_client());
    let auth = builder(&fake)
        .refresh_token(fake.issue_refresh_token())
        .http_client(limited.clone())
        .token_timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(auth.layer()).service(limited);

    // A stall lasts until the token call times out (120 s): the guard trips long before.
    let response = tokio::time::timeout(Duration::from_secs(60), async {
        let ready = svc.ready().await.unwrap();
        ready.call(get(fake.api_url("/users/me"))).await
    })
    .await
    .expect("stalled: the request held the permit the token call needed")
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);
    // The same service, kept alive, keeps working.
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(get(fake.api_url("/projects")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_token_that_expired_while_the_monotonic_clock_stood_still_is_not_sent() {
    // Tokio's paused clock plays a monotonic clock stopped by a suspend; the wall clock runs on.
    let fake = FakeNifty::in_process();
    let auth = auth(&fake);
    let svc = service_for(&fake, &auth);
    let short = TokenSet::new(fake.issue_access_token(None))
        .with_refresh_token(fake.issue_refresh_token())
        .with_expires_in(Duration::from_millis(1500));
    auth.set_tokens(short.clone()).await.unwrap();
    // Past the expiry by more than the wall clock's one-second tolerance.
    std::thread::sleep(Duration::from_millis(2700));

    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1, "the expired token was sent");
    let sent = fake.api_requests()[0].authorization.clone();
    assert_ne!(sent, Some(format!("Bearer {}", short.access_token())));
}

#[tokio::test(start_paused = true)]
async fn tokens_adopted_from_the_store_are_judged_on_the_managers_clock() {
    let fake = FakeNifty::in_process();
    let stored = TokenSet::new(fake.issue_access_token(None))
        .with_refresh_token(fake.issue_refresh_token())
        .with_expires_in(Duration::from_secs(60));
    let store = MemoryStore::with_tokens(stored.clone());
    let auth = builder(&fake).store(store.clone()).build().unwrap();
    tokio::time::advance(Duration::from_secs(120)).await;

    let token = auth.access_token().await.unwrap();
    assert_ne!(
        token,
        stored.access_token(),
        "an expired stored token was adopted"
    );
    assert_eq!(fake.token_calls(), 1);
}

#[tokio::test]
async fn a_token_answer_too_short_lived_to_use_is_sent_once_without_a_loop() {
    let (fake, _, svc) = started().await;
    let access = fake.issue_access_token(None);
    let body = format!(
        r#"{{"access_token":"{access}","token_type":"bearer","refresh_token":"{}","expires_in":0.001,"scope":"project"}}"#,
        fake.issue_refresh_token()
    );
    fake.push_token_fault(TokenFault::status(201, body));
    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.api_calls(), 1);
    assert_eq!(
        fake.api_requests()[0].authorization,
        Some(format!("Bearer {access}"))
    );
}

#[tokio::test]
async fn overflowing_durations_in_the_configuration_never_panic_a_refresh() {
    let fake = FakeNifty::start().await.unwrap();
    let auth = NiftyAuth::builder(fake.credentials())
        .token_url(fake.token_url().as_str())
        .refresh_token(fake.issue_refresh_token())
        .token_timeout(Duration::MAX)
        .token_backoff(Duration::MAX, Duration::MAX)
        .refresh_skew(Duration::MAX)
        .unauthorized_cooldown(Duration::MAX);
    match auth.build() {
        Ok(auth) => {
            auth.access_token().await.unwrap();
            assert_eq!(fake.token_calls(), 1);
            auth.set_tokens(
                TokenSet::new(fake.issue_access_token(None)).with_expires_in(Duration::MAX),
            )
            .await
            .unwrap();
            auth.access_token().await.unwrap();
        }
        Err(err) => assert!(matches!(err, AuthError::Configuration { .. }), "{err:?}"),
    }
}
