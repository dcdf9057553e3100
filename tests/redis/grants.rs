//! `RedisStore` as a `TokenStore`: a token key and a lock key per grant, hostile ids escaped, per-grant
//! leases and fences (a lock of one grant never passes the fence of another), and encrypted values
//! bound to their grant's key.

use std::collections::HashSet;
use std::time::Duration;

use nifty_auth::{GrantId, RedisStore, StoreLock, TokenSet, TokenStore};

use crate::common::hostile_ids;
use crate::common::or_skip;
use crate::server::*;

fn grant(id: &str) -> GrantId {
    GrantId::new(id).unwrap()
}

fn tokens(tag: &str) -> TokenSet {
    TokenSet::new(format!("at-{tag}-0123456789")).with_refresh_token(format!("rt-{tag}-0123456789"))
}

/// Every key in Redis.
async fn all_keys(redis: &RedisServer) -> HashSet<String> {
    redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut raw(redis).await)
        .await
        .unwrap()
}

#[tokio::test]
async fn each_grant_round_trips_under_its_own_key_and_remove_deletes_only_that_key() {
    let (redis, fake) = or_skip!(redis_and_fake().await);
    let store = store(&redis, &fake, "default");
    let (a, b, c) = (grant("alice"), grant("bob"), grant("carol"));
    assert_eq!(
        store.grant_key(&a),
        format!("nifty-auth:{}:alice:tokens", fake.client_id())
    );
    assert_eq!(
        store.grant_lock_key(&a),
        format!("nifty-auth:{}:alice:lock", fake.client_id())
    );

    store.save(&a, &tokens("a1")).await.unwrap();
    store.save(&b, &tokens("b1")).await.unwrap();
    store.save(&a, &tokens("a2")).await.unwrap();
    let loaded = store.load(&a).await.unwrap().unwrap();
    assert_eq!(loaded.refresh_token(), Some("rt-a2-0123456789"));
    assert_eq!(
        store.load(&b).await.unwrap().unwrap().access_token(),
        "at-b1-0123456789"
    );
    assert!(store.load(&c).await.unwrap().is_none());
    // The builder's grant name is not a namespace: grant `alice` is the single store `alice`.
    let alice = crate::server::store(&redis, &fake, "alice");
    let single = alice.load(&alice.single_grant()).await.unwrap().unwrap();
    assert_eq!(single.access_token(), "at-a2-0123456789");
    assert!(pttl(&redis, &store.grant_key(&a)).await > 0, "no TTL");

    store.remove(&a).await.unwrap();
    assert!(store.load(&a).await.unwrap().is_none(), "remove left it");
    assert!(raw_get(&redis, &store.grant_key(&a)).await.is_none());
    assert!(store.load(&b).await.unwrap().is_some());
    store.remove(&c).await.unwrap();
    assert_eq!(all_keys(&redis).await, HashSet::from([store.grant_key(&b)]));
}

#[tokio::test]
async fn hostile_grant_ids_get_distinct_escaped_keys_and_round_trip() {
    let (redis, fake) = or_skip!(redis_and_fake().await);
    let store = store(&redis, &fake, "default");
    // Besides every hostile id: the key separator, escapes that look escaped, a glob.
    let mut ids = hostile_ids();
    ids.extend(["a:b:tokens", "a%3Ab", "*"].map(String::from));
    let prefix = format!("nifty-auth:{}:", fake.client_id());
    for (i, id) in ids.iter().enumerate() {
        store
            .save(&grant(id), &tokens(&i.to_string()))
            .await
            .unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        let loaded = store.load(&grant(id)).await.unwrap().unwrap();
        assert_eq!(
            loaded.access_token(),
            format!("at-{i}-0123456789"),
            "{id:?}"
        );
        let key = store.grant_key(&grant(id));
        // Exactly `<prefix>:<client>:<one part without ':'>:tokens`.
        let middle = key
            .strip_prefix(&prefix)
            .and_then(|k| k.strip_suffix(":tokens"))
            .unwrap_or_else(|| panic!("{key}"));
        assert!(!middle.contains(':') && !middle.contains(' '), "{key}");
    }
    assert_eq!(all_keys(&redis).await.len(), ids.len());
    assert_eq!(
        store.grant_key(&grant("a:b")),
        format!("{prefix}a%3Ab:tokens")
    );
}

#[tokio::test]
async fn one_grants_lock_does_not_block_another_and_two_stores_exclude_each_other_per_grant() {
    let (redis, fake) = or_skip!(redis_and_fake().await);
    let first = store(&redis, &fake, "default");
    let second = store(&redis, &fake, "default");
    let (a, b) = (grant("a"), grant("b"));

    let held_a = first.lock(&a, Duration::from_secs(30)).await.unwrap();
    // A blocked attempt would wait up to 30 s + the lease; another grant's is immediate.
    let held_b = tokio::time::timeout(
        Duration::from_secs(2),
        second.lock(&b, Duration::from_secs(30)),
    )
    .await
    .expect("grant a's lock blocked grant b")
    .unwrap();

    // The second store waits for grant a until the first releases it.
    let take = {
        let (second, a) = (second.clone(), a.clone());
        async move { second.lock(&a, Duration::from_secs(30)).await.unwrap() }
    };
    let lock_a = lock_after_release(&redis, take, held_a, "two stores held grant a at once").await;
    second.save_locked(&a, &tokens("a"), &lock_a).await.unwrap();
    second.save_locked(&b, &tokens("b"), &held_b).await.unwrap();
    lock_a.release().await;
    held_b.release().await;
    assert!(raw_get(&redis, &first.grant_lock_key(&a)).await.is_none());
    assert!(raw_get(&redis, &first.grant_lock_key(&b)).await.is_none());
}

#[tokio::test]
async fn a_lock_of_one_grant_never_fence_passes_a_save_of_another() {
    let (redis, fake) = or_skip!(redis_and_fake().await);
    let store = store(&redis, &fake, "default");
    let (a, b) = (grant("a"), grant("b"));
    store.save(&b, &tokens("b-old")).await.unwrap();

    let lock_a = store.lock(&a, Duration::from_secs(30)).await.unwrap();
    let err = refused_save(&store, &b, &tokens("b-new"), &lock_a).await;
    assert!(err.contains("save_locked needs a lock"), "{err}");
    assert!(err.contains(&store.grant_lock_key(&b)), "{err}");
    assert_eq!(
        store.load(&b).await.unwrap().unwrap().access_token(),
        "at-b-old-0123456789"
    );
    // Nor does the single-grant lock of the builder's grant name pass a grant's fence.
    let single = store
        .lock(&store.single_grant(), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(store
        .save_locked(&b, &tokens("b-new"), &single)
        .await
        .is_err());
    single.release().await;

    // The lock of a itself passes, while it holds; once its lease is gone it does not.
    store.save_locked(&a, &tokens("a"), &lock_a).await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(store.grant_lock_key(&a))
        .query_async(&mut raw(&redis).await)
        .await
        .unwrap();
    let err = refused_save(&store, &a, &tokens("a-late"), &lock_a).await;
    assert!(err.contains("was lost"), "{err}");
    assert_eq!(
        store.load(&a).await.unwrap().unwrap().access_token(),
        "at-a-0123456789"
    );
}

#[tokio::test]
async fn a_grants_lease_is_kept_alive_by_its_own_watchdog() {
    let (redis, fake) = or_skip!(redis_and_fake().await);
    let store = store_with_lease(&redis, &fake, "default", Duration::from_millis(300));
    let a = grant("a");
    let lock = store.lock(&a, Duration::from_secs(30)).await.unwrap();
    // Three leases later the lock is still held (the watchdog extends the grant's key).
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(pttl(&redis, &store.grant_lock_key(&a)).await > 0);
    store.save_locked(&a, &tokens("a"), &lock).await.unwrap();
    lock.release().await;
    assert!(raw_get(&redis, &store.grant_lock_key(&a)).await.is_none());
}

#[tokio::test]
async fn an_encrypted_value_copied_into_another_grants_key_does_not_load() {
    let (redis, fake) = or_skip!(redis_and_fake().await);
    let store = sealed_store(&redis, &fake, "default", [42; 32]);
    let (a, b) = (grant("a"), grant("b"));
    store.save(&a, &tokens("a")).await.unwrap();
    store.save(&b, &tokens("b")).await.unwrap();
    let raw_a = raw_get(&redis, &store.grant_key(&a)).await.unwrap();
    assert!(raw_a.starts_with(b"enc:v1:"));
    assert!(!String::from_utf8_lossy(&raw_a).contains("at-a"));

    // Someone with write access to Redis copies a's value into b's key.
    let _: () = redis::cmd("SET")
        .arg(store.grant_key(&b))
        .arg(&raw_a)
        .query_async(&mut raw(&redis).await)
        .await
        .unwrap();
    let err = store.load(&b).await.unwrap_err().to_string();
    assert!(err.contains("cannot decrypt"), "{err}");
    assert!(err.contains(&store.grant_key(&b)), "{err}");
    assert!(!err.contains("at-a") && !err.contains("rt-a"), "{err}");
    // a's own value still loads.
    let loaded = store.load(&a).await.unwrap().unwrap();
    assert_eq!(loaded.access_token(), "at-a-0123456789");
}

/// The message of the error with which `store` refuses to save `tokens` for `id` under `lock`.
async fn refused_save(
    store: &RedisStore,
    id: &GrantId,
    tokens: &TokenSet,
    lock: &StoreLock,
) -> String {
    store
        .save_locked(id, tokens, lock)
        .await
        .unwrap_err()
        .to_string()
}
