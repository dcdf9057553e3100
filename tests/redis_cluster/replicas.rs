//! Saves acknowledged by a replica (`WAIT`): a save no replica acknowledges fails, and the token
//! manager keeps the rotated tokens parked, with the lock held, until its rescue's save is
//! acknowledged.

use std::time::Duration;

use nifty_auth::{AuthError, NiftyGrants, TokenSet, TokenStore};

use crate::redis_cluster::{poll, signal, RedisCluster};
use crate::{cluster_store, grant_id, rotating_fake, seed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_no_replica_acknowledges_fails_and_the_rotated_tokens_wait_with_the_lock_held() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let fake = rotating_fake(Duration::from_secs(600)).await;
    let store = cluster_store(&cluster.urls(), fake.client_id());
    let fake_grants = seed(&fake, &store, 1).await;
    let id = grant_id(0);
    let owners = cluster.slot_owners();
    let master = owners[&cluster.keyslot(&store.grant_key(&id))];
    let replicas = cluster.replicas_of(master);
    assert_eq!(replicas.len(), 1);
    let replica = cluster.pid(replicas[0]);

    // Straight to the store: with the replica frozen, a save is refused (it reached the master
    // but no replica), and accepted again once the replica is back.
    let probe = (1..)
        .map(grant_id)
        .find(|g| owners[&cluster.keyslot(&store.grant_key(g))] == master)
        .unwrap();
    let tokens = TokenSet::new("at-probe-0123456789").with_refresh_token("rt-probe-0123456789");
    signal(replica, "STOP");
    let err = store.save(&probe, &tokens).await.unwrap_err().to_string();
    assert!(err.contains("0 of the 1 replicas"), "{err}");
    signal(replica, "CONT");
    store.save(&probe, &tokens).await.unwrap();

    // Through the manager: the token call happens (the lock was acknowledged before the replica
    // froze), the save is not acknowledged.
    let grants = NiftyGrants::builder(fake.credentials())
        .token_url(fake.token_url().as_str())
        .token_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .store(store.clone())
        .build()
        .unwrap();
    let hold = fake.hold_token_answers();
    let refresh = tokio::spawn({
        let (grants, id) = (grants.clone(), id.clone());
        async move { grants.access_token(&id).await }
    });
    tokio::task::block_in_place(|| {
        poll("the token call", Duration::from_secs(30), || {
            (fake.token_calls_in_flight() == 1).then_some(())
        })
    });
    signal(replica, "STOP");
    hold.release();
    let err = refresh.await.unwrap().unwrap_err();
    assert!(matches!(err, AuthError::Store { .. }), "{err:?}");
    let chain = format!("{:?}", std::error::Error::source(&err));
    assert!(chain.contains("replicas"), "{chain}");
    assert_eq!(fake_grants[0].token_calls(), 1);
    // The rotated refresh token is the live one; the lock is still held by this process.
    let live = fake_grants[0].current_refresh_token().unwrap();
    let mut raw = redis::Client::open(format!("redis://127.0.0.1:{master}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let owner: Option<String> = redis::cmd("GET")
        .arg(store.grant_lock_key(&id))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        owner.is_some_and(|o| o.starts_with(&format!("{}-", std::process::id()))),
        "the refresh lock was released with the rotated tokens unsaved"
    );

    // The replica comes back: the rescue's save is acknowledged, then the lock released.
    signal(replica, "CONT");
    let lock_key = store.grant_lock_key(&id);
    poll_async(|| {
        let (mut raw, lock_key) = (raw.clone(), &lock_key);
        async move {
            let owner: Option<String> = redis::cmd("GET")
                .arg(lock_key)
                .query_async(&mut raw)
                .await
                .ok()?;
            owner.is_none().then_some(())
        }
    })
    .await;
    let saved = store.load(&id).await.unwrap().unwrap();
    assert_eq!(saved.refresh_token(), Some(live.as_str()));
    assert!(fake.refresh_token_is_live(saved.refresh_token().unwrap()));
    let token = grants.access_token(&id).await.unwrap();
    assert_eq!(token, saved.access_token());
    assert_eq!(fake_grants[0].token_calls(), 1, "no second token call");
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(fake.refresh_token_replays(), 0);
}

/// Polls an async check every 20 ms until it returns `Some` (an event wait).
async fn poll_async<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..3_000 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("gave up after 60 s");
}
