//! A refresh storm on a small pool: a refresh holds no connection across its token call (nor while
//! it holds the lock: the lock is a lease row), only one per statement, so a pool of 2 connections
//! serves a storm of any size, with more token calls in flight than connections, without a
//! connection timeout.

use std::time::Duration;

use nifty_auth::{NiftyGrants, PostgresStore, TokenStore};
use tokio::task::JoinSet;

use crate::common::fake_delayed;
use crate::common::or_skip;
use crate::common::seed_grants;
use crate::server::PgServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_1000_expired_grants_with_4_token_calls_on_a_pool_of_2_has_no_store_error() {
    const GRANTS: usize = 1000;
    const MAX_CALLS: usize = 4;
    const POOL: u32 = 2;
    let pg = or_skip!(PgServer::start());
    let fake = fake_delayed(Duration::from_millis(5)).await;
    let store = PostgresStore::connect_builder(&pg.url(), fake.client_id())
        .max_connections(POOL)
        .acquire_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    let ids: Vec<_> = seed_grants(&fake, &store, GRANTS)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let grants = NiftyGrants::builder(fake.credentials())
        .token_url(fake.token_url().as_str())
        .allowed_origins([fake.base_url()])
        .store(store.clone())
        .max_concurrent_token_calls(MAX_CALLS)
        .build()
        .unwrap();

    let mut storm = JoinSet::new();
    for id in &ids {
        let handle = grants.grant(id);
        storm.spawn(async move { handle.access_token().await });
    }
    let mut store_errors = 0;
    let mut other_errors = Vec::new();
    while let Some(done) = storm.join_next().await {
        match done.unwrap() {
            Ok(_) => {}
            Err(nifty_auth::AuthError::Store { .. }) => store_errors += 1,
            Err(other) => other_errors.push(other),
        }
    }
    assert_eq!(store_errors, 0, "no refresh waited for a pool connection");
    assert!(other_errors.is_empty(), "{other_errors:?}");
    assert_eq!(fake.token_calls(), GRANTS, "one token call per grant");
    assert!(fake.max_token_calls_in_flight() <= MAX_CALLS);
    // More token calls were in flight at once than the pool has connections: none held one.
    assert!(
        fake.max_token_calls_in_flight() > POOL as usize,
        "{} token calls in flight at most",
        fake.max_token_calls_in_flight()
    );
    assert_eq!(fake.invalid_grants_served(), 0);
    for id in &ids {
        let stored = store.load(id).await.unwrap().expect("stored");
        assert!(fake.refresh_token_is_live(stored.refresh_token().unwrap()));
    }
}
