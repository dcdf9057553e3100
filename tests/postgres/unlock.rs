//! A refresh lock never outlives its holder's intent: a lease row whose release failed on a live
//! session (here: a role that may not delete from the lock table) is no longer renewed, lapses by
//! itself within one lease, and another process takes the lock over then.

use std::time::Duration;

use nifty_auth::{GrantId, PostgresStore, TokenStore};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::common::grants_over;
use crate::common::or_skip;
use crate::common::rotating_fake;
use crate::common::seed_grant;
use crate::server::{lease_holder, lease_rows, live_leases, PgServer};

/// The lease of the stores of these tests: short, so that a lapse is quick.
const LEASE: Duration = Duration::from_millis(500);

/// A second process's store: its own pool, and a lock wait well past a lease (so it takes the
/// lock over once a stale lease lapses).
fn patient_store(url: &str, client_id: &str) -> PostgresStore {
    PostgresStore::connect_builder(url, client_id)
        .lock_lease(LEASE)
        .lock_wait(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A pool on the role's database, as the superuser.
async fn admin_of(pg: &PgServer, db: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg.url_as("postgres", db))
        .await
        .unwrap()
}

/// A store of `client_id` on a role that may not delete from the lock table (so every release
/// fails), its schema made; with the role's URL and a superuser pool on its database.
async fn store_whose_releases_fail(
    pg: &PgServer,
    client_id: &str,
) -> (PostgresStore, String, PgPool) {
    let url = pg.role("no_release").await;
    let store = PostgresStore::connect_builder(&url, client_id)
        .lock_lease(LEASE)
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    pg.forbid_release("no_release").await;
    let admin = admin_of(pg, "no_release").await;
    (store, url, admin)
}

/// The lease row's `expires_at`, in ms since the epoch (server clock).
async fn expires_at_ms(admin: &PgPool) -> f64 {
    sqlx::query_scalar(
        "SELECT (extract(epoch FROM expires_at) * 1000)::float8 FROM nifty_auth_tokens_lock",
    )
    .fetch_one(admin)
    .await
    .unwrap()
}

/// Waits until no lease is live (by the server's clock): the event a takeover needs.
async fn until_lapsed(admin: &PgPool) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while live_leases(admin).await != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every lease lapsed within 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_whose_release_fails_stops_being_renewed_lapses_and_is_taken_over() {
    let pg = or_skip!(PgServer::start());
    let (store, url, admin) = store_whose_releases_fail(&pg, "client").await;
    let id = GrantId::new("hostage").unwrap();

    let lock = TokenStore::lock(&store, &id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(lease_rows(&admin).await, 1, "the lock is a row");
    let holder = lease_holder(&admin, "hostage").await.unwrap();
    // The watchdog renews the lease while the lock is held (every third of it).
    let first = expires_at_ms(&admin).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while expires_at_ms(&admin).await == first {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the watchdog renewed the lease");
    lock.release().await;
    // The delete was refused: the row stays, no longer renewed, and lapses.
    assert_eq!(lease_rows(&admin).await, 1);
    let last = expires_at_ms(&admin).await;
    until_lapsed(&admin).await;
    assert_eq!(
        expires_at_ms(&admin).await,
        last,
        "renewed after its release"
    );
    assert_eq!(
        lease_holder(&admin, "hostage").await.as_deref(),
        Some(holder.as_str())
    );

    // Another process takes the lapsed lease over (in place), and the first store still works.
    let other = patient_store(&url, "client");
    let taken = TokenStore::lock(&other, &id, Duration::from_secs(1))
        .await
        .expect("the lapsed lease was not taken over");
    let new_holder = lease_holder(&admin, "hostage").await.unwrap();
    assert_ne!(new_holder, holder);
    assert_eq!(lease_rows(&admin).await, 1);
    taken.release().await;
    until_lapsed(&admin).await;
    let again = TokenStore::lock(&store, &id, Duration::from_secs(1))
        .await
        .unwrap();
    assert_ne!(
        lease_holder(&admin, "hostage").await.unwrap(),
        new_holder,
        "not taken by the first store"
    );
    again.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_whose_release_fails_lets_the_next_process_in_once_its_lease_lapsed() {
    let pg = or_skip!(PgServer::start());
    let fake = rotating_fake().await;
    let (store, url, admin) = store_whose_releases_fail(&pg, fake.client_id()).await;
    let (id, fake_grant, seed) = seed_grant(&fake, &store, "refreshed").await;

    let grants = grants_over(&fake, store.clone());
    grants.access_token(&id).await.unwrap();
    assert_eq!(fake_grant.token_calls(), 1);
    // Its release failed: the row is there until it lapses.
    assert_eq!(lease_rows(&admin).await, 1);

    let other = patient_store(&url, fake.client_id());
    let taken = TokenStore::lock(&other, &id, Duration::from_secs(1))
        .await
        .expect("the refresh's lease never lapsed");
    let stored = TokenStore::load(&other, &id).await.unwrap().unwrap();
    assert_ne!(stored, seed, "the refresh saved its rotated tokens");
    assert!(fake.refresh_token_is_live(stored.refresh_token().unwrap()));
    taken.release().await;
    assert_eq!(fake_grant.invalid_grants_served(), 0);
}
