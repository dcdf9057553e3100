//! The refresh lock survives a PostgreSQL restart: it is a lease row in a table, not a session's
//! advisory lock, so a restart (which ends every session) mid-refresh does not let another process
//! refresh with the refresh token the holder's token call is rotating away.

use std::time::Duration;

use nifty_auth::{AuthError, NiftyGrants, PostgresStore, TokenStore};

use crate::common::or_skip;
use crate::common::rotating_fake;
use crate::common::seed_grant;
use crate::server::PgServer;

/// Waits until `done` holds (an event, not a guess at timing), failing after 30 s rather than
/// hanging.
async fn until(mut done: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the awaited event within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_refresh_keeps_the_lock_so_another_process_makes_no_token_call_and_adopts() {
    let mut pg = or_skip!(PgServer::start());
    let fake = rotating_fake().await;
    let store_a = pg.store(fake.client_id()).await;
    let (id, fake_grant, _) = seed_grant(&fake, &store_a, "restarted").await;
    let manager = |store: PostgresStore| {
        NiftyGrants::builder(fake.credentials())
            .token_url(fake.token_url().as_str())
            .token_timeout(Duration::from_secs(60))
            .store(store)
            .build()
            .unwrap()
    };

    // A takes the lock and calls the token endpoint; its answer is held back.
    let hold = fake.hold_token_answers();
    let a = tokio::spawn({
        let (grants, id) = (manager(store_a), id.clone());
        async move { grants.access_token(&id).await }
    });
    until(|| fake_grant.token_calls_in_flight() == 1).await;

    // PostgreSQL restarts while A's token call is in flight: every session ends.
    tokio::task::block_in_place(|| {
        pg.stop();
        pg.launch();
    });

    // B (another process: its own pool) needs a refresh of the same grant. It must wait for A's
    // lock (here: give up after a short wait) and never call the token endpoint meanwhile.
    let store_b = PostgresStore::connect_builder(&pg.url(), fake.client_id())
        .lock_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let grants_b = manager(store_b);
    tokio::select! {
        result = grants_b.access_token(&id) => assert!(
            matches!(result, Err(AuthError::RefreshLockHeld { .. })),
            "B did not wait for A's lock: {result:?}"
        ),
        () = until(|| fake.token_calls() > 1) => panic!(
            "B called the token endpoint while A's refresh held the lock (the lock did not \
             survive the restart)"
        ),
    }
    assert_eq!(fake_grant.token_calls(), 1);

    // A's answer arrives: A saves under its lock (on the restarted server) and serves the token.
    hold.release();
    let token_a = a.await.unwrap().unwrap();
    // B now finds A's tokens in the store and adopts them.
    let token_b = grants_b.access_token(&id).await.unwrap();
    assert_eq!(token_b, token_a);
    assert_eq!(fake_grant.token_calls(), 1);
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(fake.refresh_token_replays(), 0);
    let stored = TokenStore::load(
        &PostgresStore::connect(&pg.url(), fake.client_id()).unwrap(),
        &id,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(stored.access_token(), token_a);
    assert!(fake.refresh_token_is_live(stored.refresh_token().unwrap()));
}
