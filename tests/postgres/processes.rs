//! Several OS processes (this test binary re-run as workers) sharing grants through PostgreSQL.

use std::time::Duration;

use nifty_auth::testing::FakeNifty;
use nifty_auth::{GrantId, TokenSet, TokenStore};

use crate::common::or_skip;
use crate::common::seed_grant;
use crate::common::{assert_one_refresh_per_grant_per_round, grants_over};
use crate::common::{rotating_fake, rotating_fake_lasting};
use crate::now_ms;
use crate::server::{lease_holder, lease_rows, PgServer};
use crate::workers::{served, Worker};

/// This test binary in worker `mode`, with the server and fake in its environment, and `vars`.
fn worker(mode: &str, pg: &PgServer, fake: &FakeNifty, vars: &[(&str, String)]) -> Worker {
    let mut env = vec![
        ("NIFTY_PG_URL", pg.url()),
        ("NIFTY_PG_CLIENT_ID", fake.client_id().to_owned()),
        ("NIFTY_PG_CLIENT_SECRET", fake.client_secret().to_owned()),
        ("NIFTY_PG_TOKEN_URL", fake.token_url()),
    ];
    env.extend(vars.iter().cloned());
    Worker::spawn("worker_process_entry", mode, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_times_twenty_rotating_grants_make_one_token_call_per_grant_per_expiry() {
    let pg = or_skip!(PgServer::start());
    let fake = rotating_fake_lasting(Duration::from_millis(1_200)).await;
    let store = pg.store(fake.client_id()).await;
    // Rounds 2.5 s apart, tokens living 1.2 s: a round's refresh may come 1.3 s late (four
    // processes contending on a loaded machine) and each grant still expires once a round.
    let (grants, rounds, period_ms) = (20usize, 5u64, 2_500u64);
    // Each grant starts with a refresh token and an access token that is already expired.
    let fake_grants: Vec<_> = (0..grants).map(|_| fake.new_grant()).collect();
    for (i, fake_grant) in fake_grants.iter().enumerate() {
        let tokens = TokenSet::new(format!("expired-seed-{i}"))
            .with_refresh_token(fake_grant.issue_refresh_token())
            .with_expires_in(Duration::from_millis(1));
        let id = GrantId::new(format!("tenant-{i}")).unwrap();
        TokenStore::save(&store, &id, &tokens).await.unwrap();
    }

    let start_at = now_ms() + 1_500;
    let workers: Vec<Worker> = (0..4)
        .map(|_| {
            worker(
                "grants",
                &pg,
                &fake,
                &[
                    ("NIFTY_PG_GRANTS", grants.to_string()),
                    ("NIFTY_PG_ROUNDS", rounds.to_string()),
                    ("NIFTY_PG_PERIOD_MS", period_ms.to_string()),
                    ("NIFTY_PG_START_AT_MS", start_at.to_string()),
                ],
            )
        })
        .collect();
    let mut ok = 0;
    for worker in workers {
        ok += served(&worker.result().await);
    }

    // 4 processes × 5 rounds × 20 grants × 3 concurrent calls, all served.
    assert_eq!(ok, 4 * rounds as usize * grants * 3);
    assert_one_refresh_per_grant_per_round(&fake, &fake_grants, rounds as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_holder_killed_is_taken_over_once_its_lease_lapsed_with_one_token_call() {
    let pg = or_skip!(PgServer::start());
    let fake = rotating_fake().await;
    let store = pg.store(fake.client_id()).await;
    let admin = pg.pool().await;
    let (id, fake_grant, _) = seed_grant(&fake, &store, "killed").await;

    let mut holder = worker(
        "hold",
        &pg,
        &fake,
        &[
            ("NIFTY_PG_GRANT", id.as_str().to_owned()),
            ("NIFTY_PG_LEASE_MS", "1000".to_owned()),
        ],
    );
    assert_eq!(
        holder.next().await,
        "locked",
        "the holder did not take the lock"
    );
    assert!(
        lease_holder(&admin, id.as_str()).await.is_some(),
        "the lock is a lease row"
    );
    // The lock is really held: a short wait times out.
    let impatient = nifty_auth::PostgresStore::connect_builder(&pg.url(), fake.client_id())
        .lock_wait(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = impatient
        .lock(&id, Duration::from_secs(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("waited"), "{err}");

    // Killed: its lease row stays (no session end releases it), is no longer renewed and lapses;
    // a process that needs the grant waits for that (its default wait covers a lease), then
    // refreshes once.
    holder.kill();
    assert_eq!(lease_rows(&admin).await, 1);
    let store = nifty_auth::PostgresStore::connect(&pg.url(), fake.client_id()).unwrap();
    let grants = grants_over(&fake, store);
    grants.access_token(&id).await.unwrap();

    assert_eq!(fake_grant.token_calls(), 1);
    assert_eq!(fake_grant.invalid_grants_served(), 0);
    // The new holder took the dead one's row over and released it.
    assert_eq!(lease_rows(&admin).await, 0);
}
