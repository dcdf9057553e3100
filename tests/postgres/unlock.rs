//! A refresh lock never outlives its holder's intent: a connection whose `pg_advisory_unlock`
//! failed on a live session (here: a role that may not run it) is closed, never returned to the
//! pool, so the server drops the session and its lock, and another process takes the lock at once.

use std::time::Duration;

use nifty_auth::testing::FakeNifty;
use nifty_auth::{GrantId, GrantStore, NiftyGrants, PostgresStore, TokenSet};
use sqlx::PgPool;

use crate::server::{advisory_locks, settle, PgServer};

/// A second process's store: its own pool, and a lock wait so short that only a free lock is
/// taken (one try, no second poll).
fn impatient_store(url: &str, client_id: &str) -> PostgresStore {
    PostgresStore::connect_builder(url, client_id)
        .lock_wait(Duration::from_millis(1))
        .build()
        .unwrap()
}

/// The backend pid of the one session holding an advisory lock.
async fn lock_holder(admin: &PgPool) -> i32 {
    sqlx::query_scalar("SELECT pid FROM pg_locks WHERE locktype = 'advisory'")
        .fetch_one(admin)
        .await
        .unwrap()
}

/// 1 while the backend `pid` lives, 0 once its session ended.
async fn session_alive(admin: &PgPool, pid: i32) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_one(admin)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_whose_unlock_fails_is_closed_with_its_session_and_leaves_no_advisory_lock() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.role_that_cannot_unlock("no_unlock").await;
    let admin = pg.pool().await;
    let store = PostgresStore::connect_builder(&url, "client")
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    let id = GrantId::new("hostage").unwrap();

    let lock = GrantStore::lock_grant(&store, &id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(advisory_locks(&admin).await, 1, "the lock is held");
    let holder = lock_holder(&admin).await;
    lock.release().await;

    let left = settle(0, || advisory_locks(&admin)).await;
    assert_eq!(
        left, 0,
        "an advisory lock stayed behind after a failed unlock"
    );
    assert_eq!(
        session_alive(&admin, holder).await,
        0,
        "the lock's session went back into the pool"
    );

    // Another process takes the lock at its first try, and the first store still works.
    let other = impatient_store(&url, "client");
    let taken = GrantStore::lock_grant(&other, &id, Duration::from_secs(1))
        .await
        .expect("the lock was left held");
    taken.release().await;
    assert_eq!(settle(0, || advisory_locks(&admin)).await, 0);
    let again = GrantStore::lock_grant(&store, &id, Duration::from_secs(1))
        .await
        .unwrap();
    again.release().await;
    assert_eq!(settle(0, || advisory_locks(&admin)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_whose_unlock_fails_leaves_no_lock_for_the_next_process() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.role_that_cannot_unlock("no_unlock").await;
    let admin = pg.pool().await;
    let fake = FakeNifty::builder()
        .rotation(true)
        .replay_revokes_grant(true)
        .start()
        .await
        .unwrap();
    let store = PostgresStore::connect_builder(&url, fake.client_id())
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    let fake_grant = fake.new_grant();
    let id = GrantId::new("refreshed").unwrap();
    let seed = TokenSet::new("expired-seed")
        .with_refresh_token(fake_grant.issue_refresh_token())
        .with_expires_in(Duration::from_millis(1));
    GrantStore::save_grant(&store, &id, &seed).await.unwrap();

    let grants = NiftyGrants::builder(fake.credentials())
        .token_url(fake.token_url().as_str())
        .store(store.clone())
        .build()
        .unwrap();
    grants.access_token(&id).await.unwrap();
    assert_eq!(fake_grant.token_calls(), 1);

    assert_eq!(settle(0, || advisory_locks(&admin)).await, 0);
    let other = impatient_store(&url, fake.client_id());
    let taken = GrantStore::lock_grant(&other, &id, Duration::from_secs(1))
        .await
        .expect("the refresh left its lock held");
    assert_ne!(
        GrantStore::load_grant(&other, &id).await.unwrap().unwrap(),
        seed,
        "the refresh saved its rotated tokens"
    );
    taken.release().await;
    assert_eq!(fake_grant.invalid_grants_served(), 0);
}
