//! Redis behind a proxy of the tests' own that blackholes (accepts, keeps connections open,
//! forwards nothing), as a network partition does: every store call is bounded, a needed refresh
//! fails with a store error and no token call, the next refresh after healing makes one, and
//! nothing leaks — tasks, connections, or a lock taken by an attempt that timed out.

use std::time::Duration;

use nifty_auth::testing::FakeNifty;
use nifty_auth::{RedisStore, TokenSet, TokenStore};

use crate::blackhole::{alive_tasks, eventually, recovered, Blackhole};
use crate::common::*;
use crate::server::*;

fn proxied_store(
    proxy: &Blackhole,
    fake: &FakeNifty,
    grant: &str,
    timeout: Duration,
) -> RedisStore {
    RedisStore::builder(
        format!("redis://127.0.0.1:{}", proxy.port()),
        fake.client_id(),
        grant,
    )
    .command_timeout(timeout)
    .connect_timeout(timeout)
    .build()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_redis_fails_a_needed_refresh_in_bound_with_no_token_call_and_heals() {
    let (_redis, proxy, fake) = or_skip!(blackholed_redis().await);
    let timeout = Duration::from_secs(1);
    let store = proxied_store(&proxy, &fake, "partition", timeout);
    let auth = auth_over(&fake, fake.issue_refresh_token(), store);
    crate::partition_scenario::a_needed_refresh_fails_in_bound_and_heals(
        &proxy, &fake, &auth, timeout, "Redis",
    )
    .await;
}

/// A redis-server behind a [`Blackhole`] (not blackholed yet), and a fake; `None` where
/// redis-server is missing (outside CI).
async fn blackholed_redis() -> Option<(RedisServer, Blackhole, FakeNifty)> {
    let (redis, fake) = redis_and_fake().await?;
    let proxy = Blackhole::start(redis.addr());
    Some((redis, proxy, fake))
}

/// `connected_clients` of Redis's `INFO clients`.
async fn redis_clients(redis: &RedisServer) -> i64 {
    info_number(redis, "clients", "connected_clients:").await as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_blackholed_store_calls_leak_no_task_no_connection_and_no_lock() {
    let (redis, proxy, fake) = or_skip!(blackholed_redis().await);
    let timeout = Duration::from_millis(30);
    let tokens = TokenSet::new("at-0123456789").with_refresh_token("rt-0123456789");
    let tasks_without_store = alive_tasks();
    // The tasks of a store at rest, connected: measured on a store with Redis's own address and
    // the default bounds, where nothing fails.
    let direct = RedisStore::builder(redis.url(), fake.client_id(), "leaks")
        .build()
        .unwrap();
    direct.save(&direct.single_grant(), &tokens).await.unwrap();
    let tasks_at_rest = alive_tasks();
    drop(direct);
    assert_eq!(
        eventually(tasks_without_store, alive_tasks).await,
        tasks_without_store
    );

    // The store under test: connected and idle (its 30 ms bounds may fail the first calls on a
    // busy machine; Redis fsyncs every write).
    let store = proxied_store(&proxy, &fake, "leaks", timeout);
    let id = store.single_grant();
    recovered("a first save", || store.save(&id, &tokens)).await;
    let lock = recovered("a first lock", || store.lock(&id, Duration::from_secs(1))).await;
    lock.release().await;
    assert_eq!(eventually(tasks_at_rest, alive_tasks).await, tasks_at_rest);
    assert_eq!(eventually(1, || proxy.client_connections()).await, 1);

    proxy.blackhole();
    // Lock attempts, loads and saves.
    crate::partition_scenario::a_thousand_calls_time_out(|n| {
        let (store, tokens) = (store.clone(), tokens.clone());
        async move {
            match n % 3 {
                0 => store
                    .lock(&store.single_grant(), Duration::from_secs(1))
                    .await
                    .map(drop),
                1 => store.load(&store.single_grant()).await.map(drop),
                _ => store.save(&store.single_grant(), &tokens).await,
            }
        }
    })
    .await;
    // Still blackholed: every connection a call gave up on is closed (a connection that did not
    // answer is replaced, never reused), and every task the calls started has ended.
    assert_eq!(
        eventually(0, || proxy.client_connections()).await,
        0,
        "connections held open ({} accepted)",
        proxy.accepted()
    );
    assert_eq!(
        eventually(tasks_without_store, alive_tasks).await,
        tasks_without_store
    );
    let accepted = proxy.accepted();

    proxy.heal();
    // Right after healing, held bytes are delivered first; with 30 ms bounds the first calls may
    // time out.
    let loaded = recovered("a load", || store.load(&id)).await;
    assert_eq!(loaded, Some(tokens));
    // Every held connection has been delivered and closed, and Redis has run what each carried
    // (lock attempts included) and dropped it: only the store's connection is left.
    assert_eq!(eventually(1, || proxy.connections()).await, 1);
    let mut clients = 0;
    for _ in 0..500 {
        // The store's connection and the one asking.
        clients = redis_clients(&redis).await;
        if clients == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(clients, 2);
    let lock_left: i64 = redis::cmd("EXISTS")
        .arg(store.lock_key())
        .query_async(&mut raw(&redis).await)
        .await
        .unwrap();
    assert_eq!(lock_left, 0, "a timed-out lock attempt left the lock taken");
    let lock = recovered("a lock", || store.lock(&id, Duration::from_secs(1))).await;
    lock.release().await;
    assert_eq!(eventually(tasks_at_rest, alive_tasks).await, tasks_at_rest);
    assert_eq!(proxy.client_connections(), 1);
    assert_eq!(proxy.connections(), 1);
    eprintln!(
        "1,000 blackholed calls: {accepted} connections made and closed while blackholed, \
         1 open after healing, {tasks_at_rest} tasks at rest"
    );
}
