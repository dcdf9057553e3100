//! PostgreSQL behind a proxy of the tests' own that blackholes (accepts, keeps connections open,
//! forwards nothing), as a network partition does: every store call is bounded, a needed refresh
//! fails with a store error and no token call, the next refresh after healing makes one, and
//! nothing leaks — tasks, connections, sessions — and a lease taken by an attempt that timed out
//! (or held when the partition started) lapses, so the lock is free again.

use std::time::{Duration, Instant};

use nifty_auth::{GrantId, PostgresStore, TokenSet, TokenStore};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::blackhole::{alive_tasks, eventually, no_hang, recovered, Blackhole};
use crate::common::*;
use crate::server::{lease_holder, lease_rows, live_leases, settle, PgServer};

/// The application name the proxied store's sessions carry, to count them in `pg_stat_activity`.
const APP: &str = "nifty_partition";

fn proxied_url(proxy: &Blackhole) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{}/postgres?application_name={APP}",
        proxy.port()
    )
}

/// The lease of these tests' stores: short, so that a lease left behind lapses quickly.
const LEASE: Duration = Duration::from_secs(2);

/// A store whose every connection goes through `proxy`, with `timeout` as both its acquire and
/// its query timeout.
fn proxied_store(proxy: &Blackhole, client_id: &str, timeout: Duration) -> PostgresStore {
    PostgresStore::connect_builder(&proxied_url(proxy), client_id)
        .acquire_timeout(timeout)
        .query_timeout(timeout)
        .lock_lease(LEASE)
        .build()
        .unwrap()
}

/// The server's sessions of the proxied store.
async fn sessions(admin: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(APP)
        .fetch_one(admin)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_postgres_fails_a_needed_refresh_in_bound_with_no_token_call_and_heals() {
    let pg = or_skip!(PgServer::start());
    let proxy = Blackhole::start(pg.addr());
    let fake = rotating_fake().await;
    pg.store(fake.client_id()).await; // creates the table
    let timeout = Duration::from_secs(1);
    let auth = auth_over(
        &fake,
        fake.issue_refresh_token(),
        proxied_store(&proxy, fake.client_id(), timeout),
    );
    crate::partition_scenario::a_needed_refresh_fails_in_bound_and_heals(
        &proxy,
        &fake,
        &auth,
        timeout,
        "PostgreSQL",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_blackholed_store_calls_leak_no_task_no_connection_no_session_and_no_lock() {
    let pg = or_skip!(PgServer::start());
    let proxy = Blackhole::start(pg.addr());
    let admin = pg.pool().await;
    pg.store("client").await; // creates the table
                              // The app's own pool, 8 connections, without sqlx's ping before handing one out: so that the
                              // calls that get an idle connection send their statement into the partition (with the ping,
                              // the ping fails the acquire first; the test above goes that way).
    let timeout = Duration::from_millis(30);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .min_connections(0)
        .test_before_acquire(false)
        .acquire_timeout(timeout)
        .connect_lazy(&proxied_url(&proxy))
        .unwrap();
    let store = PostgresStore::builder(pool, "client")
        .acquire_timeout(timeout)
        .query_timeout(timeout)
        .lock_lease(LEASE)
        .build()
        .unwrap();
    let id = GrantId::new("leaks").unwrap();
    let tokens = TokenSet::new("at-0123456789").with_refresh_token("rt-0123456789");
    recovered("a first save", || TokenStore::save(&store, &id, &tokens)).await;
    let lock = recovered("a first lock", || {
        TokenStore::lock(&store, &id, Duration::from_secs(1))
    })
    .await;
    lock.release().await;
    // Eight connections, idle (30 ms bounds: connecting may take longer; tried until it works).
    for _ in 0..100 {
        if store.pool().size() == 8 {
            break;
        }
        let loads = (0..8).map(|_| TokenStore::load(&store, &id));
        futures_util::future::join_all(loads).await;
    }
    assert_eq!(store.pool().size(), 8);
    // sqlx checks a connection going back to the pool (a ping, in a task of its own): wait until
    // every connection is back, idle, before the partition starts.
    assert_eq!(eventually(8, || store.pool().num_idle()).await, 8);
    let tasks_at_rest = alive_tasks();
    assert_eq!(proxy.client_connections(), 8);

    proxy.blackhole();
    // Lock attempts, loads and saves (the pool has 8 connections).
    crate::partition_scenario::a_thousand_calls_time_out(|n| {
        let (store, id, tokens) = (store.clone(), id.clone(), tokens.clone());
        async move {
            match n % 3 {
                0 => TokenStore::lock(&store, &id, Duration::from_secs(1))
                    .await
                    .map(drop),
                1 => TokenStore::load(&store, &id).await.map(drop),
                _ => TokenStore::save(&store, &id, &tokens).await,
            }
        }
    })
    .await;
    // Still blackholed: every connection a call gave up on (the 8 that sent a statement, and every
    // connect attempt) is closed, none went back to the pool (it is empty), and no task is left
    // waiting on one.
    assert_eq!(
        eventually(0, || proxy.client_connections()).await,
        0,
        "connections held open ({} accepted)",
        proxy.accepted()
    );
    // The pool counts a connection from the start of its connect; right after the calls gave up
    // it was seen (1 run in about 10) still counting one, gone a moment later: wait for empty.
    assert_eq!(eventually(0, || store.pool().size()).await, 0);
    assert_eq!(eventually(tasks_at_rest, alive_tasks).await, tasks_at_rest);
    let accepted = proxy.accepted();

    proxy.heal();
    let loaded = recovered("a load", || TokenStore::load(&store, &id)).await;
    assert_eq!(loaded, Some(tokens));
    // Every held connection is delivered, then closed: the server ran what each carried (lock
    // attempts included) and ended its session. A lease a delivered lock attempt took (for
    // nobody: its caller gave up) is not renewed, and lapses.
    let pool_size = i64::from(store.pool().size());
    assert_eq!(
        eventually(pool_size as usize, || proxy.connections()).await,
        pool_size as usize
    );
    assert_eq!(settle(pool_size, || sessions(&admin)).await, pool_size);
    assert_eq!(settle(0, || live_leases(&admin)).await, 0);
    let lock = recovered("a lock", || {
        TokenStore::lock(&store, &id, Duration::from_secs(1))
    })
    .await;
    assert_eq!(live_leases(&admin).await, 1);
    lock.release().await;
    assert_eq!(lease_rows(&admin).await, 0);
    assert_eq!(eventually(tasks_at_rest, alive_tasks).await, tasks_at_rest);
    assert_eq!(
        proxy.client_connections(),
        store.pool().size() as usize,
        "the proxy and the pool disagree"
    );
    eprintln!(
        "1,000 blackholed calls: {accepted} connections made and closed while blackholed, \
         {pool_size} open after healing, {tasks_at_rest} tasks at rest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_when_the_partition_starts_times_out_is_closed_and_its_lease_lapses() {
    let pg = or_skip!(PgServer::start());
    let proxy = Blackhole::start(pg.addr());
    let admin = pg.pool().await;
    pg.store("client").await; // creates the table
    let timeout = Duration::from_secs(1);
    let store = proxied_store(&proxy, "client", timeout);
    let id = GrantId::new("held").unwrap();
    let old = TokenSet::new("at-old-0123456789").with_refresh_token("rt-old-0123456789");
    let new = TokenSet::new("at-new-0123456789").with_refresh_token("rt-new-0123456789");
    TokenStore::save(&store, &id, &old).await.unwrap();
    let size = store.pool().size() as usize;
    assert_eq!(eventually(size, || store.pool().num_idle()).await, size);
    let tasks_at_rest = alive_tasks();
    let lock = TokenStore::lock(&store, &id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(lease_rows(&admin).await, 1);
    let holder = lease_holder(&admin, "held").await.unwrap();

    // The partition starts while the lock is held: the save under it, a re-read and the release
    // each fail within their timeouts (and so do the watchdog's renewals).
    proxy.blackhole();
    let started = Instant::now();
    let err = no_hang(
        "a save under a held lock",
        TokenStore::save_locked(&store, &id, &new, &lock),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("timed out"), "{err}");
    assert!(started.elapsed() >= timeout);
    let err = no_hang("a re-read under the lock", TokenStore::load(&store, &id))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("timed out"), "{err}");
    no_hang("the release", lock.release()).await;
    // Its connections are closed, not pooled, and nothing waits on them (the watchdog stopped).
    assert_eq!(eventually(0, || proxy.client_connections()).await, 0);
    assert_eq!(eventually(0, || store.pool().size()).await, 0);
    assert_eq!(eventually(tasks_at_rest, alive_tasks).await, tasks_at_rest);

    proxy.heal();
    // The server gets the held statements, then the closes: it ends the sessions. The lease row
    // (unless a held release reached it) is renewed no more and lapses; another process then
    // takes the lock over.
    assert_eq!(settle(0, || sessions(&admin)).await, 0);
    assert_eq!(settle(0, || live_leases(&admin)).await, 0);
    let other = PostgresStore::connect_builder(&pg.url(), "client")
        .lock_wait(Duration::from_millis(1))
        .build()
        .unwrap();
    let taken = TokenStore::lock(&other, &id, Duration::from_secs(1))
        .await
        .expect("the lapsed lease was not taken over");
    assert_ne!(lease_holder(&admin, "held").await.unwrap(), holder);
    // The held save reaches the server with the close: whether it runs before the server sees
    // the close is up to the server. Either way the row is whole, and a save whose answer never
    // came that does land bumped the row's version, so the fence refuses any save under a lock
    // taken before it.
    let stored = TokenStore::load(&other, &id).await.unwrap().unwrap();
    assert!(stored == old || stored == new, "{stored:?}");
    taken.release().await;
    let loaded = recovered("a load", || TokenStore::load(&store, &id)).await;
    assert_eq!(loaded, Some(stored));
}
