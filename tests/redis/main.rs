//! RedisStore against a real redis-server on 127.0.0.1 (started by the tests on a free port, with
//! persistence off): cross-process single flight, a dead lock holder, Redis going away and coming
//! back, and at-rest encryption.
//!
//! The tests need `redis-server` on the PATH (`.ci/run` installs it). Outside CI they are skipped
//! with a message when it is missing; under CI (`CI` set) a missing server fails them.
//!
//! `lease.rs`: the lock's lease, its watchdog and the fenced save; `grants.rs`: a key and a lock
//! per grant (`TokenStore`); `keys.rs`: key escaping and configuration bounds; `partition.rs`:
//! Redis behind a proxy that blackholes (every store call bounded, nothing leaks).
#![cfg(feature = "redis")]

#[path = "../common/blackhole.rs"]
mod blackhole;
#[path = "../common/mod.rs"]
mod common;
mod grants;
#[path = "../common/hooked.rs"]
mod hooked;
mod keys;
mod lease;
mod partition;
#[path = "../common/partition.rs"]
mod partition_scenario;
mod server;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use http::StatusCode;
use nifty_auth::testing::{FakeNifty, Grant};
use nifty_auth::{AuthError, RedisStore, TokenSet, TokenStore};
use server::*;

/// Seeds the grant in Redis the way `exchange_code` after the authorize step does.
async fn seed(redis: &RedisServer, fake: &FakeNifty, grant: &str) {
    let auth = builder(fake)
        .store(store(redis, fake, grant))
        .build()
        .unwrap();
    let redirect = "http://127.0.0.1:8765/callback";
    auth.exchange_code(fake.issue_code(redirect), redirect)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_sharing_one_key_make_one_token_call_per_expiry() {
    let redis = or_skip!(RedisServer::start());
    let fake = fake_lasting(Duration::from_secs(2)).await;
    let bootstrap = fake.issue_refresh_token();
    let instances: Vec<_> = (0..4)
        .map(|_| {
            let auth = auth_over(&fake, bootstrap.clone(), store(&redis, &fake, "shared"));
            service(&auth)
        })
        .collect();

    for round in 0..5 {
        if round > 0 {
            // Past the expiry of the token the previous round used.
            tokio::time::sleep(Duration::from_millis(2_200)).await;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..300 {
            let svc = instances[i % 4].clone();
            let url = fake.api_url("/projects");
            tasks.spawn(async move { send(&svc, get(url)).await });
        }
        while let Some(joined) = tasks.join_next().await {
            assert_eq!(joined.unwrap().unwrap().0, StatusCode::OK);
        }
        assert_eq!(fake.token_calls(), round + 1, "round {round}");
    }
    assert_eq!(fake.token_calls_for(Grant::RefreshToken), 5);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(fake.unauthorized_served(), 0);
    assert_eq!(fake.api_calls(), 1_500);
}

/// The example binary, built by `cargo test` beside the test binaries (it is also the demo).
fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join("examples").join("multi_process");
    assert!(
        path.exists(),
        "{} is missing: build the examples",
        path.display()
    );
    path
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[allow(clippy::too_many_arguments, reason = "one flag each")]
fn spawn_worker(
    redis: &RedisServer,
    fake: &FakeNifty,
    grant: &str,
    rounds: u64,
    period_ms: u64,
    start_at_ms: u64,
    requests: usize,
) -> Child {
    Command::new(worker_binary())
        .args(["--worker", "--redis", &redis.url()])
        .args(["--token-url", &fake.token_url()])
        .args(["--api-url", &fake.api_url("/projects")])
        .args(["--origin", &fake.base_url()])
        .args(["--client-id", fake.client_id(), "--grant", grant])
        .args([
            "--rounds",
            &rounds.to_string(),
            "--period-ms",
            &period_ms.to_string(),
        ])
        .args(["--start-at-ms", &start_at_ms.to_string()])
        .args(["--requests", &requests.to_string()])
        .env("NIFTY_CLIENT_SECRET", fake.client_secret())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_os_processes_make_exactly_one_refresh_per_expiry() {
    let redis = or_skip!(RedisServer::start());
    let fake = fake_lasting(Duration::from_secs(2)).await;
    seed(&redis, &fake, "processes").await;
    assert_eq!(fake.token_calls_for(Grant::AuthorizationCode), 1);

    // Round 0 uses the seeded token; rounds 1..5 each start after the previous token expired.
    let (rounds, period_ms, requests) = (5u64, 2_400u64, 40usize);
    let start_at = now_ms() + 1_000;
    let children: Vec<_> = (0..4)
        .map(|_| {
            spawn_worker(
                &redis,
                &fake,
                "processes",
                rounds,
                period_ms,
                start_at,
                requests,
            )
        })
        .collect();
    let mut ok = 0;
    for child in children {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(output.status.success(), "worker failed: {output:?}");
        let line = String::from_utf8_lossy(&output.stdout);
        ok += line
            .trim()
            .strip_prefix("ok=")
            .unwrap()
            .parse::<usize>()
            .unwrap();
    }

    assert_eq!(ok, 4 * rounds as usize * requests);
    assert_eq!(
        fake.token_calls_for(Grant::RefreshToken),
        rounds as usize - 1
    );
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(fake.unauthorized_served(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_holder_killed_before_its_token_call_is_taken_over_within_one_lease() {
    let (redis, fake) = or_skip!(redis_and_fake().await);
    let bootstrap = fake.issue_refresh_token();

    let mut holder = Command::new(worker_binary())
        .args(["--hold-lock", "--redis", &redis.url()])
        .args(["--client-id", fake.client_id(), "--grant", "killed"])
        .args(["--ttl-ms", "1500"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "LOCKED");
    holder.kill().unwrap();
    holder.wait().unwrap();
    let killed_at = std::time::Instant::now();

    let auth = auth_over(&fake, bootstrap, store(&redis, &fake, "killed"));
    let svc = service(&auth);
    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();

    assert_eq!(status, StatusCode::OK);
    let waited = killed_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1_000),
        "took the lock after {waited:?}"
    );
    // (It got in within its own bound — the longest refresh plus one lease — so the dead
    // holder's lease lapsed; how soon is a latency, not something a test measures.)
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.invalid_grants_served(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_keeps_valid_tokens_flowing_fails_refreshes_clearly_and_recovers() {
    let mut redis = or_skip!(RedisServer::start());
    let fake = FakeNifty::start().await.unwrap();
    let auth = auth_over(
        &fake,
        fake.issue_refresh_token(),
        store(&redis, &fake, "outage"),
    );
    let svc = service(&auth);
    assert_eq!(
        send(&svc, get(fake.api_url("/users/me"))).await.unwrap().0,
        StatusCode::OK
    );
    assert_eq!(fake.token_calls(), 1);

    redis.stop();
    assert_served_without_the_store(&svc, &fake, 20, "Redis").await;

    // A refresh is needed now; without the lock it must not happen.
    assert_no_refresh_without_the_store(&svc, &fake, "redis").await;

    redis.launch();
    // The connection manager reconnects on use; the first command after the restart may fail.
    let recovered = served_within(&svc, &fake, 20).await;
    assert!(recovered, "refreshes did not resume after Redis came back");
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.invalid_grants_served(), 0);
}

#[tokio::test]
async fn encrypted_token_sets_hide_the_tokens_and_a_wrong_key_is_a_clear_error() {
    let (redis, fake) = or_skip!(redis_and_fake().await);
    let encrypted = sealed_store(&redis, &fake, "secret", [42; 32]);
    let tokens = TokenSet::new("at-visible-0123456789")
        .with_refresh_token("rt-visible-0123456789")
        .with_expires_in(Duration::from_secs(600));
    encrypted
        .save(&encrypted.single_grant(), &tokens)
        .await
        .unwrap();

    let raw = raw_get(&redis, encrypted.key()).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("enc:v1:"), "{text}");
    assert!(
        !text.contains("at-visible") && !text.contains("rt-visible"),
        "{text}"
    );
    assert_eq!(
        encrypted
            .load(&encrypted.single_grant())
            .await
            .unwrap()
            .unwrap(),
        tokens
    );

    let wrong = sealed_store(&redis, &fake, "secret", [7; 32]);
    let err = wrong
        .load(&wrong.single_grant())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrong encryption key"), "{err}");
    assert!(!err.contains("visible"), "{err}");

    // Through NiftyAuth it is a store error, and no token call is made.
    let auth = builder(&fake).store(wrong).build().unwrap();
    let err = auth.access_token().await.unwrap_err();
    assert!(matches!(err, AuthError::Store { .. }), "{err:?}");
    assert_eq!(fake.token_calls(), 0);

    // Without a key, an encrypted value is refused rather than misread.
    let plain = RedisStore::builder(redis.url(), fake.client_id(), "secret")
        .build()
        .unwrap();
    let err = plain
        .load(&plain.single_grant())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no encryption key"), "{err}");
}

#[tokio::test]
async fn keys_are_namespaced_by_client_and_grant_and_expire() {
    let (redis, fake) = or_skip!(redis_and_fake().await);
    let a = store(&redis, &fake, "alice");
    let b = store(&redis, &fake, "bob");
    assert_eq!(
        a.key(),
        format!("nifty-auth:{}:alice:tokens", fake.client_id())
    );
    assert_ne!(a.key(), b.key());
    a.save(&a.single_grant(), &TokenSet::new("at-a"))
        .await
        .unwrap();
    assert!(b.load(&b.single_grant()).await.unwrap().is_none());
    assert_eq!(
        a.load(&a.single_grant())
            .await
            .unwrap()
            .unwrap()
            .access_token(),
        "at-a"
    );

    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(a.key())
        .query_async(&mut connection)
        .await
        .unwrap();
    let expected = nifty_auth::store::DEFAULT_REDIS_TOKEN_TTL.as_millis() as i64;
    assert!(ttl_ms > expected - 60_000 && ttl_ms <= expected, "{ttl_ms}");
}

#[tokio::test]
async fn the_lock_is_exclusive_and_released_only_by_its_owner() {
    let (redis, fake) = or_skip!(redis_and_fake().await);
    let first = store(&redis, &fake, "lock");
    let second = store(&redis, &fake, "lock");

    let held = first
        .lock(&first.single_grant(), Duration::from_secs(30))
        .await
        .unwrap();
    let take = async move {
        second
            .lock(&second.single_grant(), Duration::from_secs(30))
            .await
            .unwrap()
    };
    let lock = lock_after_release(&redis, take, held, "the lock was not exclusive").await;
    let owner = raw_get(&redis, first.lock_key()).await.unwrap();
    lock.release().await;
    assert!(raw_get(&redis, first.lock_key()).await.is_none());
    assert!(String::from_utf8_lossy(&owner).starts_with(&std::process::id().to_string()));
}
