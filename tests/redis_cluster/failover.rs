//! A master SIGKILLed while two processes refresh 200 grants: its replica is promoted, refreshes
//! resume, no refresh token is ever replayed.

use std::collections::BTreeSet;
use std::time::Duration;

use nifty_auth::GrantStore;

use crate::redis_cluster::{poll, RedisCluster};
use crate::{
    cluster_store, finish_round, grant_id, rotating_fake, seed, spawn_workers, start_round, CALLERS,
};

/// Ignored for now: about one run in two ends with a refresh-token replay in the round after the
/// failover (a holder whose save failed with the dead master keeps its rotated tokens parked while
/// the promoted replica cannot acknowledge a save, having no replica of its own until the old
/// master returns; its lease on the promoted replica lapses, or its extensions go to the restarted
/// old master while that still claims the slots, and another process takes the lock and refreshes
/// with the stored, older refresh token). Run it with `--ignored`.
#[ignore = "finds a refresh-token replay after a failover about one run in two; see the docs"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_run_fails_over_and_refreshes_resume_without_invalid_grant() {
    let Some(mut cluster) = RedisCluster::start() else {
        return;
    };
    // Long enough that a process which waited for the lock through the failover's stall still
    // finds the other's fresh token (a shorter one makes a legitimate second refresh).
    let lifetime = Duration::from_secs(3);
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

    // After the failover every request is served again.
    for round in 2..4 {
        tokio::time::sleep(lifetime + Duration::from_millis(100)).await;
        start_round(&mut workers);
        for answer in finish_round(&mut workers) {
            assert_eq!(answer.errors, vec![], "round {round}");
            assert_eq!(answer.ok, grants * CALLERS, "round {round}");
        }
    }
    for worker in workers {
        worker.finish();
    }

    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(fake.refresh_token_replays(), 0);
    let (mut on_victim_calls, mut off_victim_calls) = ([0usize; 8], [0usize; 8]);
    for (i, fake_grant) in fake_grants.iter().enumerate() {
        assert_eq!(fake_grant.invalid_grants_served(), 0, "grant {i}");
        assert!(!fake_grant.is_revoked(), "grant {i}");
        let stored = store.load_grant(&grant_id(i)).await.unwrap().unwrap();
        assert!(
            fake.refresh_token_is_live(stored.refresh_token().unwrap()),
            "grant {i}: the stored refresh token is not the live one"
        );
        if on_victim.contains(&i) {
            on_victim_calls[fake_grant.token_calls()] += 1;
            // A holder whose save failed with the master keeps its tokens and the lock until its
            // rescue saves them on the promoted replica; a waiter that gets the lock after their
            // access token expired refreshes once more (with the saved, live refresh token).
            assert!(
                (3..=5).contains(&fake_grant.token_calls()),
                "grant {i}: {} token calls",
                fake_grant.token_calls()
            );
        } else {
            // One per round; a refresh the failover delayed past the token's lifetime may be
            // followed by one more (with the saved, live refresh token), never by a replay.
            assert!(
                (4..=5).contains(&fake_grant.token_calls()),
                "grant {i}: {} token calls",
                fake_grant.token_calls()
            );
            off_victim_calls[fake_grant.token_calls()] += 1;
        }
    }
    println!(
        "grants by token calls (index = calls): failed shard {on_victim_calls:?}, others \
         {off_victim_calls:?}"
    );
}
