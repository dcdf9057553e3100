//! A master SIGKILLed while two processes refresh 200 grants: its replica is promoted, refreshes
//! resume, no refresh token is ever replayed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nifty_auth::TokenStore;

use crate::redis_cluster::{poll, RedisCluster};
use crate::{
    cluster_store, finish_round, grant_id, rotating_fake, seed, spawn_workers, start_round, CALLERS,
};

/// The round the master dies in is the failover window: requests on its shard get typed store
/// errors (or wait for a lock). A holder whose save failed keeps its rotated tokens and its lock
/// (handed over to its own retry, never deleted in between) until the promoted replica, with the
/// old master back as its replica, acknowledges the save; no other process refreshes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_run_fails_over_and_refreshes_resume_without_invalid_grant() {
    let Some(mut cluster) = RedisCluster::start() else {
        return;
    };
    // Long enough that a process which waited for the lock through the failover's stall still
    // finds the other's fresh token (a shorter one makes a legitimate second refresh).
    // And every later round must end within one lifetime, or a worker asking late in the round
    // finds that round's token expired and rightly refreshes again (seen with 3 s under load).
    let lifetime = Duration::from_secs(6);
    let fake = rotating_fake(lifetime).await;
    let store = cluster_store(&cluster.urls(), fake.client_id());
    let grants = 200;
    let fake_grants = seed(&fake, &store, grants).await;

    // The master to kill, and the grants whose keys it holds.
    let victim = cluster.masters()[0];
    let victim_slots = cluster.slots_of(victim);
    let owners = cluster.slot_owners();
    let on_victim: BTreeSet<usize> = (0..grants)
        .filter(|&i| owners[&cluster.keyslot(&store.grant_key(&grant_id(i)))] == victim)
        .collect();
    assert!(!on_victim.is_empty() && on_victim.len() < grants);
    println!(
        "killing master {victim}: {} of {grants} grants on it",
        on_victim.len()
    );

    let mut workers = spawn_workers(2, &cluster, &fake, grants);
    start_round(&mut workers);
    for answer in finish_round(&mut workers) {
        assert_eq!(answer.errors, vec![], "round 0");
        assert_eq!(answer.ok, grants * CALLERS, "round 0");
    }
    for (i, fake_grant) in fake_grants.iter().enumerate() {
        assert_eq!(fake_grant.token_calls(), 1, "grant {i}, round 0");
    }

    // Round 1 starts after the tokens expired; the master dies as soon as its first token call is
    // in flight (locks taken, Nifty rotating refresh tokens, saves on their way).
    tokio::time::sleep(lifetime + Duration::from_millis(100)).await;
    let hold = fake.hold_token_answers();
    start_round(&mut workers);
    tokio::task::block_in_place(|| {
        poll("a token call", Duration::from_secs(60), || {
            (fake.token_calls_in_flight() > 0).then_some(())
        })
    });
    cluster.kill(victim);
    hold.release();
    let promoted = tokio::task::block_in_place(|| cluster.wait_promoted(victim, &victim_slots));
    println!("replica {promoted} promoted");
    let failover_round = finish_round(&mut workers);
    // The old master comes back as the new master's replica: saves on that shard need one
    // replica's acknowledgement again.
    tokio::task::block_in_place(|| {
        cluster.restart(victim);
        cluster.wait_ok();
    });

    // Every request of the failover round got an answer; each failure is a typed store error.
    // (redis-rs's cluster client stalls every shard's commands while it rebuilds its slot map
    // during the failover, so grants on the other shards may fail in this round too.)
    let (mut on_shard, mut off_shard) = (BTreeSet::new(), BTreeSet::new());
    for answer in &failover_round {
        assert_eq!(answer.ok + answer.errors.len(), grants * CALLERS);
        for (grant, kind) in &answer.errors {
            assert!(
                kind == "store" || kind == "lock-held",
                "grant {grant}: {kind} is not a typed store error"
            );
            if on_victim.contains(grant) {
                on_shard.insert(*grant);
            } else {
                off_shard.insert(*grant);
            }
        }
    }
    println!(
        "during the failover: {} requests failed (typed store errors), on {} grants of the \
         failed shard and {} of the others",
        failover_round.iter().map(|r| r.errors.len()).sum::<usize>(),
        on_shard.len(),
        off_shard.len()
    );

    // After the failover every request is served again, with one token call per grant per expiry.
    // (In the failover round, a process that waited for a lock past the token's lifetime makes
    // one more refresh, with the live refresh token: counted there, never a replay.)
    // The failover round is over when every rescue has saved its parked tokens and released its
    // lock (a rescue whose saved tokens expired while parked refreshes once more first).
    let locks: Vec<String> = (0..grants)
        .map(|i| store.grant_lock_key(&grant_id(i)))
        .collect();
    let mut cluster_connection = redis::cluster::ClusterClient::new(cluster.urls())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    let mut polls = 0;
    loop {
        let mut held = 0;
        for lock in &locks {
            let exists: u32 = redis::cmd("EXISTS")
                .arg(lock)
                .query_async(&mut cluster_connection)
                .await
                .unwrap();
            held += exists;
        }
        if held == 0 {
            break;
        }
        polls += 1;
        assert!(
            polls < 3_000,
            "{held} refresh locks still held after a minute"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A rescue whose lock went with the old master holds no lock key any more, yet may still have
    // parked tokens to save (and, if they expired meanwhile, a refresh to make). A settling round
    // ends that by an event: every grant asked once in each worker, each call saving any parked
    // tokens first. Its calls count with the failover's.
    start_round(&mut workers);
    for answer in finish_round(&mut workers) {
        assert_eq!(answer.errors, vec![], "settling round");
        assert_eq!(answer.ok, grants * CALLERS, "settling round");
    }
    let window_calls: Vec<usize> = fake_grants.iter().map(|g| g.token_calls()).collect();
    for round in 2..4 {
        tokio::time::sleep(lifetime + Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        start_round(&mut workers);
        let answers = finish_round(&mut workers);
        eprintln!("round {round} took {:?}", started.elapsed());
        for answer in answers {
            assert_eq!(answer.errors, vec![], "round {round}");
            assert_eq!(answer.ok, grants * CALLERS, "round {round}");
        }
    }
    for worker in workers {
        worker.finish();
    }

    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(fake.refresh_token_replays(), 0);
    let (mut on_victim_calls, mut off_victim_calls) = (BTreeMap::new(), BTreeMap::new());
    for (i, fake_grant) in fake_grants.iter().enumerate() {
        assert_eq!(fake_grant.invalid_grants_served(), 0, "grant {i}");
        assert!(!fake_grant.is_revoked(), "grant {i}");
        let stored = store.load(&grant_id(i)).await.unwrap().unwrap();
        assert!(
            fake.refresh_token_is_live(stored.refresh_token().unwrap()),
            "grant {i}: the stored refresh token is not the live one"
        );
        assert_eq!(
            fake_grant.token_calls(),
            window_calls[i] + 2,
            "grant {i}: one token call in each of rounds 2 and 3"
        );
        let in_window = window_calls[i] - 1;
        if on_victim.contains(&i) {
            *on_victim_calls.entry(in_window).or_insert(0) += 1;
        } else {
            *off_victim_calls.entry(in_window).or_insert(0) += 1;
        }
    }
    println!(
        "grants by token calls in the failover and settling rounds (calls: grants): failed shard {on_victim_calls:?}, others \
         {off_victim_calls:?}"
    );
}
