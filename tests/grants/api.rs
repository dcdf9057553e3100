//! The `NiftyGrants` API: per-grant single flight, isolation of revoked grants, eviction, pressure
//! on the token endpoint, removal, re-authorization.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nifty_auth::testing::{FakeNifty, TokenFault};
use nifty_auth::{AuthError, GrantId, MemoryStore, TokenSet, TokenStore};
use tokio::task::JoinSet;

use crate::common::two_thread_runtime;
use crate::common::{fake_delayed, fake_lasting, paused_fake_lasting};
use crate::{grants_builder, seed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_cold_grants_times_ten_callers_make_exactly_two_hundred_token_calls() {
    let fake = FakeNifty::start().await.unwrap();
    let store = MemoryStore::new();
    let seeded = seed(&fake, &store, 200).await;
    let grants = grants_builder(&fake)
        .store(store.clone())
        .max_concurrent_token_calls(16)
        .build()
        .unwrap();

    let mut tasks = JoinSet::new();
    for (id, _) in &seeded {
        for _ in 0..10 {
            let grants = grants.clone();
            let id = id.clone();
            tasks.spawn(async move { (id.clone(), grants.access_token(&id).await) });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        let (id, token) = joined.unwrap();
        let token = token.unwrap();
        // Every token belongs to the grant it was asked for.
        let (_, grant) = seeded.iter().find(|(g, _)| *g == id).unwrap();
        assert_eq!(fake.grant_of_bearer(&token), Some(grant.key()), "{id}");
    }
    assert_eq!(fake.token_calls(), 200);
    for (id, grant) in &seeded {
        assert_eq!(grant.token_calls(), 1, "{id}");
        // The rotation is saved under the grant.
        let saved = TokenStore::load(&store, id).await.unwrap().unwrap();
        assert_eq!(
            saved.refresh_token(),
            grant.current_refresh_token().as_deref()
        );
    }
    assert!(fake.max_token_calls_in_flight() <= 16);
    assert_eq!(grants.stats().totals.token_calls_succeeded, 200);
}

#[tokio::test]
async fn a_revoked_grant_fails_alone_and_is_reported_once() {
    let fake = fake_lasting(Duration::from_secs(3600)).await;
    let store = MemoryStore::new();
    let seeded = seed(&fake, &store, 5).await;
    let reported = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&reported);
    let grants = grants_builder(&fake)
        .store(store.clone())
        .on_reauthorization_required(move |grant, error| {
            assert!(error.is_reauthorization_required());
            seen.lock().unwrap().push(grant.clone());
        })
        .build()
        .unwrap();

    let (dead, dead_grant) = &seeded[2];
    dead_grant.revoke();
    for _ in 0..3 {
        for (id, _) in &seeded {
            let result = grants.access_token(id).await;
            if id == dead {
                assert!(result.unwrap_err().is_reauthorization_required());
            } else {
                result.unwrap();
            }
        }
    }
    // One token call each; the dead grant's latch made no second call.
    assert_eq!(fake.token_calls(), 5);
    assert_eq!(dead_grant.token_calls(), 1);
    assert_eq!(grants.reauthorization_required(), vec![dead.clone()]);
    assert_eq!(*reported.lock().unwrap(), vec![dead.clone()]);

    // The others keep refreshing.
    fake.revoke_access_tokens();
    for (id, grant) in seeded.iter().filter(|(id, _)| id != dead) {
        let token = grants.grant(id).access_token().await.unwrap();
        assert_eq!(fake.grant_of_bearer(&token), Some(grant.key()));
    }

    // Re-authorizing the dead grant lifts its latch.
    let redirect = "https://app.example/callback";
    let fresh = fake.new_grant();
    grants
        .exchange_code(dead, fresh.issue_code(redirect), redirect)
        .await
        .unwrap();
    assert!(grants.reauthorization_required().is_empty());
    let token = grants.access_token(dead).await.unwrap();
    assert_eq!(fake.grant_of_bearer(&token), Some(fresh.key()));
}

#[tokio::test]
async fn idle_grants_are_evicted_and_reloaded_from_the_store_without_token_calls() {
    let fake = fake_lasting(Duration::from_secs(3600)).await;
    let store = MemoryStore::new();
    let seeded = seed(&fake, &store, 100).await;
    let grants = grants_builder(&fake)
        .store(store.clone())
        .max_cached_grants(10)
        .build()
        .unwrap();

    for round in 0..3 {
        for (id, grant) in &seeded {
            let token = grants.access_token(id).await.unwrap();
            assert_eq!(
                fake.grant_of_bearer(&token),
                Some(grant.key()),
                "{round} {id}"
            );
            assert!(grants.cached_grants() <= 10, "{}", grants.cached_grants());
        }
    }
    // One refresh per grant in the first round; later rounds reload the saved tokens.
    assert_eq!(fake.token_calls(), 100);
    assert_eq!(grants.cached_grants(), 10);
    assert_eq!(grants.stats().evictions, 300 - 10);
}

#[tokio::test]
async fn token_calls_across_grants_never_exceed_the_limit() {
    let fake = fake_delayed(Duration::from_millis(100)).await;
    let store = MemoryStore::new();
    let seeded = seed(&fake, &store, 20).await;
    let grants = grants_builder(&fake)
        .store(store.clone())
        .max_concurrent_token_calls(4)
        .build()
        .unwrap();

    let mut tasks = JoinSet::new();
    for (id, _) in &seeded {
        let grants = grants.clone();
        let id = id.clone();
        tasks.spawn(async move { grants.access_token(&id).await });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap().unwrap();
    }
    assert_eq!(fake.token_calls(), 20);
    assert_eq!(fake.max_token_calls_in_flight(), 4);
}

#[tokio::test]
async fn a_429_with_retry_after_slows_every_grant() {
    let fake = FakeNifty::start().await.unwrap();
    let store = MemoryStore::new();
    let seeded = seed(&fake, &store, 2).await;
    let grants = grants_builder(&fake)
        .store(store.clone())
        .token_backoff(Duration::from_millis(5), Duration::from_secs(10))
        .build()
        .unwrap();
    fake.push_token_fault(TokenFault::RateLimited {
        retry_after: Duration::from_secs(1),
    });

    // Grant 0 gets the 429 (Retry-After: 1 s) …
    let started = std::time::Instant::now();
    let zero = grants.clone();
    let id = seeded[0].0.clone();
    let first = tokio::spawn(async move { zero.access_token(&id).await });
    // Its 429 has been answered and counted (the shared pause is set in the same step, with no
    // await between, and this runtime has one thread).
    tokio::time::timeout(Duration::from_secs(10), async {
        while grants.stats().totals.token_calls_failed_transient < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("grant 0's token call was answered with its 429");
    // … and grant 1, asking right after, waits for the same Retry-After.
    grants.access_token(&seeded[1].0).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "grant 1 did not wait for grant 0's 429: {:?}",
        started.elapsed()
    );
    first.await.unwrap().unwrap();
    assert_eq!(fake.token_calls(), 3);
    assert_eq!(seeded[0].1.token_calls(), 2);
    assert_eq!(seeded[1].1.token_calls(), 1);
}

#[tokio::test]
async fn remove_forgets_the_grant_and_deletes_it_from_the_store() {
    let fake = FakeNifty::start().await.unwrap();
    let store = MemoryStore::new();
    let seeded = seed(&fake, &store, 2).await;
    let grants = grants_builder(&fake).store(store.clone()).build().unwrap();
    let (gone, kept) = (&seeded[0].0, &seeded[1].0);
    grants.access_token(gone).await.unwrap();
    grants.access_token(kept).await.unwrap();
    assert_eq!(grants.cached_grants(), 2);
    // A handle taken before the removal (a request in flight, a `NiftyAuth` kept by the app).
    let handle = grants.grant(gone);
    handle.access_token().await.unwrap();

    grants.remove(gone).await.unwrap();
    let err = handle.access_token().await.unwrap_err();
    assert!(
        err.is_grant_removed(),
        "the old handle still served it: {err:?}"
    );
    assert!(handle.tokens().is_none(), "its token is forgotten");
    assert_eq!(TokenStore::load(&store, gone).await.unwrap(), None);
    assert_eq!(grants.cached_grants(), 1);
    let calls = fake.token_calls();
    let err = grants.access_token(gone).await.unwrap_err();
    assert!(err.is_reauthorization_required(), "{err:?}");
    assert_eq!(fake.token_calls(), calls);
    // The other grant is untouched.
    grants.access_token(kept).await.unwrap();
    assert!(TokenStore::load(&store, kept).await.unwrap().is_some());
    // Removing an unknown grant is fine.
    grants
        .remove(&GrantId::new("never-seen").unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_handle_for_one_grant_shares_the_grants_single_flight() {
    let fake = FakeNifty::start().await.unwrap();
    let store = MemoryStore::new();
    let seeded = seed(&fake, &store, 1).await;
    let grants = grants_builder(&fake).store(store.clone()).build().unwrap();
    let (id, grant) = &seeded[0];
    let handle = grants.grant(id);
    let mut tasks = JoinSet::new();
    for i in 0..20 {
        let grants = grants.clone();
        let handle = handle.clone();
        let id = id.clone();
        tasks.spawn(async move {
            if i % 2 == 0 {
                handle.access_token().await
            } else {
                grants.access_token(&id).await
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap().unwrap();
    }
    assert_eq!(grant.token_calls(), 1);
    // Set tokens through one, seen by the other.
    let tokens = TokenSet::new(grant.issue_access_token(None))
        .with_refresh_token(grant.issue_refresh_token())
        .with_expires_in(Duration::from_secs(600));
    grants.set_tokens(id, tokens.clone()).await.unwrap();
    assert_eq!(handle.access_token().await.unwrap(), tokens.access_token());
}

#[tokio::test(start_paused = true)]
async fn refresh_points_of_grants_issued_together_are_spread_over_the_skew() {
    let fake = paused_fake_lasting(Duration::from_secs(3600));
    let store = MemoryStore::new();
    let seeded = seed(&fake, &store, 200).await;
    let grants = grants_builder(&fake)
        .store(store.clone())
        .refresh_skew(Duration::from_secs(60))
        .max_concurrent_token_calls(64)
        .build()
        .unwrap();
    for (id, _) in &seeded {
        grants.access_token(id).await.unwrap();
    }
    assert_eq!(fake.token_calls(), 200);

    // Refresh points lie between 120 s and 60 s before expiry: half way, about half have passed.
    tokio::time::advance(Duration::from_secs(3600 - 90)).await;
    for (id, _) in &seeded {
        grants.access_token(id).await.unwrap();
    }
    // Background refreshes started only by the grants whose (jittered) point has passed. In
    // process, a token call needs no I/O: once every task is idle (the paused clock moves only
    // then) each of them has landed.
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(fake.token_calls_in_flight(), 0);
    let refreshed = fake.token_calls() - 200;
    assert!(
        (40..=160).contains(&refreshed),
        "{refreshed} of 200 refreshed at the midpoint of the spread"
    );
}

#[test]
fn hostile_grant_ids_are_rejected_or_kept_as_plain_data() {
    assert!(GrantId::new("").is_err());
    assert!(GrantId::new("x".repeat(300)).is_err());
    assert!(GrantId::new("a\nb").is_err());
    assert!(GrantId::new("tab\there").is_err());
    for id in [
        "../../etc/passwd",
        "a:b",
        "C:\\x",
        "..",
        "é",
        "'; DROP TABLE t; --",
    ] {
        assert_eq!(GrantId::new(id).unwrap().as_str(), id);
    }
    let err = GrantId::new("").unwrap_err();
    assert!(matches!(err, AuthError::Configuration { .. }), "{err:?}");
}

/// A grants store over a `MemoryStore` whose saves can be made to fail.
#[derive(Clone, Default)]
struct SavesFail {
    inner: MemoryStore,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl TokenStore for SavesFail {
    fn load<'a>(
        &'a self,
        grant: &'a GrantId,
    ) -> nifty_auth::store::BoxFuture<'a, Result<Option<TokenSet>, nifty_auth::BoxError>> {
        self.inner.load(grant)
    }

    fn save<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
    ) -> nifty_auth::store::BoxFuture<'a, Result<(), nifty_auth::BoxError>> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Box::pin(async { Err("the store refuses writes".into()) });
        }
        self.inner.save(grant, tokens)
    }

    fn remove<'a>(
        &'a self,
        grant: &'a GrantId,
    ) -> nifty_auth::store::BoxFuture<'a, Result<(), nifty_auth::BoxError>> {
        self.inner.remove(grant)
    }
}

/// Rotated tokens waiting unsaved keep their grant cached even when no task holds it any more
/// (its runtime shut down with the rescue): evicting it would lose the only live refresh token.
#[test]
fn a_grant_with_unsaved_tokens_is_never_evicted_even_with_no_task_left() {
    let main = two_thread_runtime();
    let fake = main.block_on(FakeNifty::start()).unwrap();
    let store = SavesFail::default();
    let seeded = main.block_on(seed(&fake, &store.inner, 2));
    let ((x, x_grant), (y, _)) = (&seeded[0], &seeded[1]);
    let grants = grants_builder(&fake)
        .max_cached_grants(1)
        .store(store.clone())
        .build()
        .unwrap();

    // X refreshes in a runtime of its own and cannot save; that runtime shuts down.
    store
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    first
        .block_on(grants.access_token(x))
        .expect_err("the save failed");
    drop(first);
    assert_eq!(x_grant.token_calls(), 1);
    store
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);

    main.block_on(async {
        // Y pushes the registry past its capacity of one: X holds unsaved tokens, so it stays.
        grants.access_token(y).await.unwrap();
        assert_eq!(
            grants.cached_grants(),
            2,
            "X was evicted with its unsaved tokens"
        );
        // X's next use saves its tokens: no second token call, nothing replayed.
        grants.access_token(x).await.unwrap();
        assert_eq!(x_grant.token_calls(), 1);
        assert_eq!(fake.invalid_grants_served(), 0);
        let stored = store.inner.load(x).await.unwrap().unwrap();
        assert!(fake.refresh_token_is_live(stored.refresh_token().unwrap()));
    });
}
