//! The refresh lock is a lease kept alive by a watchdog while held, saves under it are fenced, and
//! a rotated refresh token is never handed to another process unsaved.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nifty_auth::testing::{FakeNifty, Grant};
use nifty_auth::{BoxError, RedisStore, StoreLock, TokenSet, TokenStore};

use crate::common::*;
use crate::hooked::{Hook, Hooked};
use crate::server::*;

const SHORT_LEASE: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_outlasting_the_lease_keeps_the_lock_and_the_waiter_adopts_its_tokens() {
    let redis = or_skip!(RedisServer::start());
    let fake = FakeNifty::builder()
        .token_delay(Duration::from_secs(3))
        .replay_revokes_grant(true)
        .start()
        .await
        .unwrap();
    let bootstrap = fake.issue_refresh_token();
    let instance = || {
        auth_over(
            &fake,
            bootstrap.clone(),
            store_with_lease(&redis, &fake, "slow", SHORT_LEASE),
        )
    };
    let (first, second) = (instance(), instance());

    let refreshing = tokio::spawn(async move { first.access_token().await });
    // The first instance holds the lock and waits for the slow token endpoint.
    until_at_fake(
        &fake,
        |fake| fake.token_calls_in_flight() > 0,
        "the first instance never called the token endpoint",
    )
    .await;
    assert_eq!(fake.token_calls_in_flight(), 1);
    let started = std::time::Instant::now();
    let adopted = second.access_token().await.unwrap();
    let waited = started.elapsed();
    let refreshed = refreshing.await.unwrap().unwrap();

    assert_eq!(adopted, refreshed);
    assert!(waited >= Duration::from_secs(2), "waited only {waited:?}");
    assert_eq!(fake.token_calls(), 1, "the lease lapsed mid-refresh");
    assert_eq!(fake.invalid_grants_served(), 0);
    let slow = store(&redis, &fake, "slow");
    let stored = slow.load(&slow.single_grant()).await.unwrap().unwrap();
    assert_eq!(
        stored.refresh_token(),
        fake.current_refresh_token().as_deref()
    );
}

/// The error of `store`'s save of `tokens` under `lock`, which must fail.
async fn refused_save(store: &RedisStore, tokens: &TokenSet, lock: &StoreLock) -> String {
    store
        .save_locked(&store.single_grant(), tokens, lock)
        .await
        .expect_err("the save under a lapsed lease is refused")
        .to_string()
}

#[tokio::test]
async fn a_holder_whose_lease_lapsed_cannot_overwrite_the_newer_token_set() {
    let (redis, fake) = or_skip!(redis_and_fake().await);
    let (a, b) = (store(&redis, &fake, "fence"), store(&redis, &fake, "fence"));
    let set_a = TokenSet::new("at-a-0123456789").with_refresh_token("rt-a-0123456789");
    let set_b = TokenSet::new("at-b-0123456789").with_refresh_token("rt-b-0123456789");

    let lock_a = a
        .lock(&a.single_grant(), Duration::from_secs(30))
        .await
        .unwrap();
    // The lease lapses (as after a long pause): the lock key is gone.
    let _: () = redis::cmd("DEL")
        .arg(a.lock_key())
        .query_async(&mut raw(&redis).await)
        .await
        .unwrap();
    let err = refused_save(&a, &set_a, &lock_a).await;
    assert!(err.contains("was lost"), "{err}");
    assert!(
        a.load(&a.single_grant()).await.unwrap().is_none(),
        "nothing was written"
    );

    // Another process takes the lock and saves newer tokens; the old holder still cannot write.
    let lock_b = b
        .lock(&b.single_grant(), Duration::from_secs(30))
        .await
        .unwrap();
    b.save_locked(&b.single_grant(), &set_b, &lock_b)
        .await
        .unwrap();
    let err = refused_save(&a, &set_a, &lock_a).await;
    assert!(
        err.contains("was lost") && err.contains("not overwriting"),
        "{err}"
    );
    assert!(!err.contains("rt-a") && !err.contains("at-a"), "{err}");
    assert_eq!(a.load(&a.single_grant()).await.unwrap().unwrap(), set_b);

    // The old holder's release leaves the new holder's lock alone.
    let owner_b = raw_get(&redis, b.lock_key()).await.unwrap();
    lock_a.release().await;
    assert_eq!(raw_get(&redis, b.lock_key()).await.unwrap(), owner_b);
    lock_b.release().await;
    assert!(raw_get(&redis, b.lock_key()).await.is_none());
}

#[tokio::test]
async fn save_locked_refuses_a_lock_this_store_did_not_take() {
    let (redis, fake) = or_skip!(redis_and_fake().await);
    let mine = store(&redis, &fake, "mine");
    let other = store(&redis, &fake, "other");
    let tokens = TokenSet::new("at-0123456789");

    let err = mine
        .save_locked(&mine.single_grant(), &tokens, &StoreLock::none())
        .await;
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("needs a lock taken by"));
    let other_lock = other
        .lock(&other.single_grant(), Duration::from_secs(30))
        .await
        .unwrap();
    let err = mine
        .save_locked(&mine.single_grant(), &tokens, &other_lock)
        .await;
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("needs a lock taken by"));
    assert!(mine.load(&mine.single_grant()).await.unwrap().is_none());

    // A huge max_hold only bounds the wait: no overflow.
    let lock = mine
        .lock(&mine.single_grant(), Duration::MAX)
        .await
        .unwrap();
    mine.save_locked(&mine.single_grant(), &tokens, &lock)
        .await
        .unwrap();
    assert_eq!(
        mine.load(&mine.single_grant()).await.unwrap().unwrap(),
        tokens
    );
    lock.release().await;
    other_lock.release().await;
}

/// Waits (at most 5 s, then fails) until this (current-thread) runtime has `n` alive tasks: an
/// aborted or finished watchdog is gone once it has been reaped.
async fn wait_for_alive_tasks(n: usize, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let alive = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        if alive == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {alive} alive tasks, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Alive tasks on this (current-thread) runtime, once the aborted ones have been reaped.
async fn alive_tasks_settled() -> usize {
    tokio::time::sleep(Duration::from_millis(50)).await;
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Re-creates `key` with `owner` and a short TTL: only a watchdog still running would extend it.
async fn expires_unextended(redis: &RedisServer, key: &str, owner: &[u8]) -> bool {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(owner)
        .arg("PX")
        .arg(300)
        .query_async(&mut raw(redis).await)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    pttl(redis, key).await == -2
}

#[tokio::test]
async fn the_watchdog_extends_the_lease_while_held_and_stops_on_release_or_drop() {
    let (redis, fake) = or_skip!(redis_and_fake().await);
    let store = store_with_lease(&redis, &fake, "watchdog", Duration::from_millis(300));
    store.load(&store.single_grant()).await.unwrap(); // connect first: the connection's own tasks are not the watchdog's
    let baseline = alive_tasks_settled().await;

    let lock = store
        .lock(&store.single_grant(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(alive_tasks_settled().await, baseline + 1, "one watchdog");
    let owner = raw_get(&redis, store.lock_key()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await; // over three leases
    assert_eq!(raw_get(&redis, store.lock_key()).await.unwrap(), owner);
    assert!(pttl(&redis, store.lock_key()).await > 0);

    lock.release().await;
    assert!(raw_get(&redis, store.lock_key()).await.is_none());
    wait_for_alive_tasks(baseline, "released: no watchdog").await;
    assert!(expires_unextended(&redis, store.lock_key(), &owner).await);

    let lock = store
        .lock(&store.single_grant(), Duration::from_secs(30))
        .await
        .unwrap();
    let owner = raw_get(&redis, store.lock_key()).await.unwrap();
    assert_eq!(alive_tasks_settled().await, baseline + 1);
    drop(lock); // its release runs in a spawned task
    wait_for_alive_tasks(baseline, "dropped: no watchdog").await;
    assert!(raw_get(&redis, store.lock_key()).await.is_none());
    assert!(expires_unextended(&redis, store.lock_key(), &owner).await);
}

/// The hook of a store whose first save (locked or not) fails (a Redis hiccup).
#[derive(Default)]
struct FirstSaveFails(AtomicBool);

impl Hook for FirstSaveFails {
    fn save(&self) -> Result<(), BoxError> {
        if self.0.swap(true, Ordering::SeqCst) {
            Ok(())
        } else {
            Err("injected: the first save fails".into())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_whose_save_failed_is_never_replayed_by_another_process() {
    let redis = or_skip!(RedisServer::start());
    let fake = FakeNifty::builder()
        .replay_revokes_grant(true)
        .start()
        .await
        .unwrap();
    let bootstrap = fake.issue_refresh_token();
    let a = builder(&fake)
        .store(Hooked::new(
            store_with_lease(&redis, &fake, "issue-8", SHORT_LEASE),
            FirstSaveFails::default(),
        ))
        .refresh_token(bootstrap.clone())
        .build()
        .unwrap();
    let b = auth_over(
        &fake,
        bootstrap,
        store_with_lease(&redis, &fake, "issue-8", SHORT_LEASE),
    );

    // A refreshes; its first save fails and is retried at once, the lock held throughout.
    let first = a.access_token().await.expect("the retried save succeeds");
    assert_eq!(fake.token_calls_for(Grant::RefreshToken), 1);
    // B needs a token meanwhile: it must not read the old refresh token and replay it.
    let b_task = {
        let b = b.clone();
        tokio::spawn(async move { b.access_token().await })
    };
    // Longer than the lease: A's watchdog keeps the lock while its rotated tokens wait.
    tokio::time::sleep(SHORT_LEASE + Duration::from_millis(500)).await;
    let a_token = a.access_token().await.unwrap();
    let b_token = b_task.await.unwrap().unwrap();

    assert_eq!(a_token, first);
    assert_eq!(a_token, b_token);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(fake.token_calls_for(Grant::RefreshToken), 1, "one rotation");
    let stored = store(&redis, &fake, "issue-8");
    let stored = stored.load(&stored.single_grant()).await.unwrap().unwrap();
    assert_eq!(stored.access_token(), a_token);
    assert_eq!(
        stored.refresh_token(),
        fake.current_refresh_token().as_deref()
    );
}
