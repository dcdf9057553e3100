//! Grants spread over the cluster's masters, and two OS processes sharing 200 grants through it.

use std::collections::BTreeMap;
use std::time::Duration;

use nifty_auth::{RedisStore, TokenSet, TokenStore};

use crate::redis_cluster::RedisCluster;
use crate::{
    cluster_store, finish_round, grant_id, rotating_fake, seed, spawn_workers, start_round, CALLERS,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_grants_land_on_all_three_masters_each_grant_in_one_slot() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let store = cluster_store(&cluster.urls(), "spread-client");
    let tokens = TokenSet::new("at-0123456789").with_refresh_token("rt-0123456789");
    for i in 0..1_000 {
        store.save(&grant_id(i), &tokens).await.unwrap();
    }

    // The slot of each grant, from the cluster itself; a grant's lock key shares it.
    let owners = cluster.slot_owners();
    let mut client = redis::Client::open(cluster.urls()[0].as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut expected: BTreeMap<u16, u64> = BTreeMap::new();
    for i in 0..1_000 {
        let key = store.grant_key(&grant_id(i));
        let lock = store.grant_lock_key(&grant_id(i));
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut client)
            .await
            .unwrap();
        let lock_slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&lock)
            .query_async(&mut client)
            .await
            .unwrap();
        assert_eq!(slot, lock_slot, "grant {i}: {key} and {lock}");
        *expected.entry(owners[&slot]).or_default() += 1;
    }
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    let counted: BTreeMap<u16, u64> = masters.iter().map(|&m| (m, cluster.dbsize(m))).collect();
    println!("keys per master: {counted:?}");
    assert_eq!(counted, expected);
    assert_eq!(counted.values().sum::<u64>(), 1_000);
    for (master, keys) in &counted {
        // 1,000 grants over 3 masters with a third of the slots each: far from empty.
        assert!(*keys >= 250, "master {master} holds {keys} of 1,000 grants");
    }

    // The lock script's two keys in one slot: a fenced save under a grant's lock works.
    let lock = store
        .lock(&grant_id(7), Duration::from_secs(5))
        .await
        .unwrap();
    let newer = TokenSet::new("at-newer-0123456789").with_refresh_token("rt-newer-0123456789");
    store
        .save_locked(&grant_id(7), &newer, &lock)
        .await
        .unwrap();
    lock.release().await;
    assert_eq!(store.load(&grant_id(7)).await.unwrap().unwrap(), newer);
}

#[tokio::test]
async fn a_cluster_store_refuses_a_prefix_with_its_own_hash_tag() {
    let err = RedisStore::cluster_builder(["redis://127.0.0.1:1"], "client", "default")
        .key_prefix("{nifty-auth}")
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("hash tag"), "{err}");
    let err = RedisStore::cluster_builder(["redis://127.0.0.1:1"], "client", "default")
        .wait_for_replicas(1, Duration::from_secs(5))
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("less than the command timeout"), "{err}");
    assert_eq!(
        RedisStore::cluster_builder(["redis://127.0.0.1:1"], "client", "main")
            .build()
            .unwrap()
            .key(),
        "nifty-auth:{client:main}:tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_times_200_grants_times_3_expiries_make_one_token_call_per_grant_per_expiry()
{
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    // A round must end within one lifetime, or a worker asking late in the round finds the token
    // of that round expired and rightly refreshes again (seen with 1 s on a loaded machine).
    let lifetime = Duration::from_secs(5);
    let fake = rotating_fake(lifetime).await;
    let store = cluster_store(&cluster.urls(), fake.client_id());
    let grants = 200;
    let fake_grants = seed(&fake, &store, grants).await;
    let mut workers = spawn_workers(2, &cluster, &fake, grants);

    let rounds = 3;
    for round in 0..rounds {
        if round > 0 {
            // Every token of the last round has expired.
            tokio::time::sleep(lifetime + Duration::from_millis(100)).await;
        }
        let started = std::time::Instant::now();
        start_round(&mut workers);
        let answers = finish_round(&mut workers);
        eprintln!("round {round} took {:?}", started.elapsed());
        for (w, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.errors, vec![], "round {round}, worker {w}");
            assert_eq!(answer.ok, grants * CALLERS, "round {round}, worker {w}");
        }
    }
    for worker in workers {
        worker.finish();
    }

    for (i, fake_grant) in fake_grants.iter().enumerate() {
        assert_eq!(fake_grant.token_calls(), rounds, "grant {i}");
        assert_eq!(fake_grant.invalid_grants_served(), 0, "grant {i}");
        let stored = store.load(&grant_id(i)).await.unwrap().unwrap();
        assert!(
            fake.refresh_token_is_live(stored.refresh_token().unwrap()),
            "grant {i}: the stored refresh token is not the live one"
        );
    }
    assert_eq!(fake.token_calls(), grants * rounds);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(fake.refresh_token_replays(), 0);
}
