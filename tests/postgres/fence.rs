//! Saves under the lock are fenced by the row's version: a writer whose view is stale is refused,
//! and through the token manager its rotated tokens are not lost.

use std::time::Duration;

use nifty_auth::{GrantId, PostgresStore, StoreLock, TokenSet, TokenStore};
use sqlx::PgPool;

use crate::common::grants_over;
use crate::common::or_skip;
use crate::common::rotating_fake_delayed;
use crate::common::seed_grant;
use crate::common::until_at_fake;
use crate::server::{lease_holder, lease_rows, PgServer};

async fn version(pool: &PgPool, grant: &str) -> i64 {
    sqlx::query_scalar("SELECT version FROM nifty_auth_tokens WHERE grant_id = $1")
        .bind(grant)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Another writer bumps the row (as one that took the lock after ours was lost would).
async fn bump(pool: &PgPool, grant: &str) {
    sqlx::query("UPDATE nifty_auth_tokens SET version = version + 1 WHERE grant_id = $1")
        .bind(grant)
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_save_under_a_lock_whose_row_changed_is_refused_and_writes_nothing() {
    let pg = or_skip!(PgServer::start());
    let store = pg.store("client").await;
    let raw = pg.pool().await;
    let id = GrantId::new("fenced").unwrap();
    let old = TokenSet::new("at-old-0123456789").with_refresh_token("rt-old-0123456789");
    let new = TokenSet::new("at-new-0123456789").with_refresh_token("rt-new-0123456789");
    TokenStore::save(&store, &id, &old).await.unwrap();
    assert_eq!(version(&raw, "fenced").await, 1);

    let lock = TokenStore::lock(&store, &id, Duration::from_secs(5))
        .await
        .unwrap();
    bump(&raw, "fenced").await;
    let err = TokenStore::save_locked(&store, &id, &new, &lock)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("fenced save refused"), "{err}");
    assert!(!err.contains("0123456789"), "{err}");
    assert_eq!(TokenStore::load(&store, &id).await.unwrap().unwrap(), old);
    assert_eq!(version(&raw, "fenced").await, 2);
    lock.release().await;

    // An unchanged row saves, twice under one lock, one version each.
    let lock = TokenStore::lock(&store, &id, Duration::from_secs(5))
        .await
        .unwrap();
    TokenStore::save_locked(&store, &id, &new, &lock)
        .await
        .unwrap();
    TokenStore::save_locked(&store, &id, &old, &lock)
        .await
        .unwrap();
    assert_eq!(version(&raw, "fenced").await, 4);
    lock.release().await;

    // A row created since a lock that saw none: refused too.
    let fresh = GrantId::new("created-meanwhile").unwrap();
    let lock = TokenStore::lock(&store, &fresh, Duration::from_secs(5))
        .await
        .unwrap();
    TokenStore::save(&store, &fresh, &old).await.unwrap();
    let err = TokenStore::save_locked(&store, &fresh, &new, &lock)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fenced save refused"), "{err}");
    lock.release().await;
}

#[tokio::test]
async fn a_lock_whose_lease_moved_on_cannot_save_and_its_release_leaves_the_new_holders_lease() {
    let pg = or_skip!(PgServer::start());
    let (store, raw, id, lock) = locked_grant(&pg, "lease").await;
    let first = lease_holder(&raw, "lease").await.unwrap();
    // Its lease runs out (a holder paused or cut off for longer than a lease)...
    sqlx::query("UPDATE nifty_auth_tokens_lock SET expires_at = now() - interval '1 second'")
        .execute(&raw)
        .await
        .unwrap();
    // ...and another process takes the lock over.
    let next = TokenStore::lock(&store, &id, Duration::from_secs(5))
        .await
        .unwrap();
    let second = lease_holder(&raw, "lease").await.unwrap();
    assert_ne!(second, first);

    let err = TokenStore::save_locked(&store, &id, &TokenSet::new("at-x"), &lock)
        .await
        .unwrap_err();
    assert!(
        err.downcast_ref::<nifty_auth::store::LockLost>().is_some(),
        "{err}"
    );
    assert!(err.to_string().contains("fenced save refused"), "{err}");
    assert_eq!(TokenStore::load(&store, &id).await.unwrap(), None);
    TokenStore::save_locked(&store, &id, &TokenSet::new("at-y"), &next)
        .await
        .unwrap();
    // The first holder's release deletes only its own lease: the new holder keeps the lock.
    lock.release().await;
    assert_eq!(
        lease_holder(&raw, "lease").await.as_deref(),
        Some(second.as_str())
    );
    next.release().await;
    assert_eq!(lease_rows(&raw).await, 0, "released locks stay behind");
}

#[tokio::test]
async fn a_lock_whose_sessions_all_end_still_saves_and_keeps_others_out() {
    let pg = or_skip!(PgServer::start());
    let (store, raw, id, lock) = locked_grant(&pg, "session").await;
    // Every session but the test's own is terminated (a network cut, an administrator).
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE pid <> pg_backend_pid() AND datname = current_database() \
         AND backend_type = 'client backend'",
    )
    .fetch_one(&raw)
    .await
    .unwrap();
    assert!(killed >= 1, "the store had no session");
    let other = nifty_auth::PostgresStore::connect_builder(&pg.url(), "client")
        .lock_wait(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = TokenStore::lock(&other, &id, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        err.downcast_ref::<nifty_auth::store::LockTimeout>()
            .is_some(),
        "{err}"
    );
    TokenStore::save_locked(&store, &id, &TokenSet::new("at-y"), &lock)
        .await
        .unwrap();
    lock.release().await;
    assert_eq!(lease_rows(&raw).await, 0);
    let taken = TokenStore::lock(&other, &id, Duration::from_secs(1))
        .await
        .unwrap();
    taken.release().await;
}

/// Through the manager: its save is refused (the row moved on while it called the token
/// endpoint); it keeps the rotated tokens, and its next attempt takes a new lock and *re-saves*
/// them (it does not adopt the row: that row's refresh token was already rotated away by its own
/// call). One token call in all, no invalid_grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_save_keeps_the_rotated_tokens_and_the_next_attempt_resaves_them() {
    let pg = or_skip!(PgServer::start());
    let fake = rotating_fake_delayed(Duration::from_millis(600)).await;
    let store = pg.store(fake.client_id()).await;
    let raw = pg.pool().await;
    let (id, fake_grant, _) = seed_grant(&fake, &store, "stale-writer").await;
    let grants = grants_over(&fake, store.clone());

    let first = tokio::spawn({
        let (grants, id) = (grants.clone(), id.clone());
        async move { grants.access_token(&id).await }
    });
    until_at_fake(
        &fake,
        |_| fake_grant.token_calls_in_flight() > 0,
        "the refresh never called the token endpoint",
    )
    .await;
    assert_eq!(fake_grant.token_calls_in_flight(), 1);
    bump(&raw, "stale-writer").await;
    let err = first.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("store"), "{err}");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("fenced save refused"), "{source}");
    assert_eq!(fake_grant.token_calls(), 1);
    // Nothing was written over the row.
    assert_eq!(version(&raw, "stale-writer").await, 2);
    let stored = TokenStore::load(&store, &id).await.unwrap().unwrap();
    assert_eq!(stored.access_token(), "expired-seed");

    // The next attempt re-saves the kept tokens under a new lock and uses them.
    let token = grants.access_token(&id).await.unwrap();
    assert_eq!(fake_grant.token_calls(), 1, "no second token call");
    assert_eq!(version(&raw, "stale-writer").await, 3);
    let stored = TokenStore::load(&store, &id).await.unwrap().unwrap();
    assert_eq!(stored.access_token(), token);
    assert_eq!(
        stored.refresh_token(),
        fake_grant.current_refresh_token().as_deref()
    );
    assert_eq!(fake_grant.invalid_grants_served(), 0);
}

/// A store of `pg` (client `client`), a pool of its own, and the lock of grant `id` taken.
async fn locked_grant(
    pg: &PgServer,
    id: &str,
) -> (PostgresStore, sqlx::PgPool, GrantId, StoreLock) {
    let store = pg.store("client").await;
    let raw = pg.pool().await;
    let id = GrantId::new(id).unwrap();
    let lock = TokenStore::lock(&store, &id, Duration::from_secs(5))
        .await
        .unwrap();
    (store, raw, id, lock)
}
