//! `FileStore`'s lock file: two `NiftyAuth`s or two OS processes on one token file refresh once, a
//! dead holder's lock is free at once, and waiting for the lock is bounded.
//!
//! The cross-process tests re-execute this test binary as workers (`tests/common/workers.rs`, run
//! with `NIFTY_WORKER` set): the same test function then runs as a worker instead of as the parent,
//! driven through its stdin and answering on its stdout.

mod common;
#[path = "common/workers.rs"]
mod workers;

use std::time::{Duration, SystemTime};

use common::auth_over;
use common::rotating_fake_delayed;
use common::{get, send, service};
use http::StatusCode;
use nifty_auth::testing::FakeNifty;
use nifty_auth::{Credentials, FileStore, NiftyAuth, TokenSet};
use tokio::time::Instant;
use workers::{answer, commands, env, worker_mode, Worker};

/// The token file's path.
const TOKEN_PATH: &str = "NIFTY_FILE_LOCK_TOKEN_PATH";
const TOKEN_URL: &str = "NIFTY_FILE_LOCK_TOKEN_URL";
const CLIENT_ID: &str = "NIFTY_FILE_LOCK_CLIENT_ID";
const CLIENT_SECRET: &str = "NIFTY_FILE_LOCK_CLIENT_SECRET";

/// Worker side of the two-process test: says `ready`, waits for `go`, asks for a token once and
/// answers `token <access token>`.
async fn refresh_worker() {
    let auth = NiftyAuth::builder(Credentials::new(env(CLIENT_ID), env(CLIENT_SECRET)))
        .token_url(env(TOKEN_URL).as_str())
        .store(FileStore::new(env(TOKEN_PATH)))
        .build()
        .expect("build");
    let mut commands = commands();
    answer("ready");
    assert_eq!(commands.recv().await.as_deref(), Some("go"));
    let token = auth.access_token().await.expect("access_token");
    answer(&format!("token {token}"));
}

/// Both instances ask at once: four `access_token()` calls and two API requests each.
async fn burst(fake: &FakeNifty, a: &NiftyAuth, b: &NiftyAuth) {
    let calls = [a, b].map(|auth| async move {
        let svc = service(auth);
        let tokens = futures_util::future::join_all((0..4).map(|_| auth.access_token()));
        let requests =
            futures_util::future::join_all((0..2).map(|_| send(&svc, get(fake.api_url("/me")))));
        let (tokens, requests) = tokio::join!(tokens, requests);
        for token in tokens {
            token.expect("access_token");
        }
        for response in requests {
            assert_eq!(response.expect("request").0, StatusCode::OK);
        }
    });
    let [first, second] = calls;
    tokio::join!(first, second);
}

/// Both instances hold the same tokens, and their refresh token is the grant's live one.
fn assert_same_live_tokens(fake: &FakeNifty, a: &NiftyAuth, b: &NiftyAuth) {
    let (a, b) = (a.tokens().expect("a tokens"), b.tokens().expect("b tokens"));
    assert_eq!(a.access_token(), b.access_token());
    assert_eq!(a.refresh_token(), b.refresh_token());
    let live = fake.current_refresh_token().expect("the grant was revoked");
    assert_eq!(a.refresh_token(), Some(live.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_file_make_one_token_call_cold_and_after_expiry() {
    let lifetime = Duration::from_secs(2);
    let fake = FakeNifty::builder()
        .rotation(true)
        .replay_revokes_grant(true)
        .token_lifetime(Some(lifetime))
        // Both refreshes overlap for sure without the lock.
        .token_delay(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let bootstrap = fake.issue_refresh_token();
    let instance = || auth_over(&fake, bootstrap.clone(), FileStore::new(&path));
    let (a, b) = (instance(), instance());

    // Cold: neither has a token.
    burst(&fake, &a, &b).await;
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_same_live_tokens(&fake, &a, &b);

    // Both tokens expire; both ask again at once.
    tokio::time::sleep(lifetime + Duration::from_millis(200)).await;
    burst(&fake, &a, &b).await;
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_same_live_tokens(&fake, &a, &b);
    let stored = FileStore::new(&path).load().await.unwrap().unwrap();
    assert_eq!(
        Some(stored.access_token()),
        a.access_token().await.ok().as_deref()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_file_make_one_token_call_per_expiry() {
    const TEST: &str = "two_processes_on_one_file_make_one_token_call_per_expiry";
    if let Some(role) = worker_mode() {
        assert_eq!(role, "refresh");
        return refresh_worker().await;
    }
    let fake = rotating_fake_delayed(Duration::from_millis(100)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let store = FileStore::new(&path);
    let expired = |access: &str, refresh: &str| {
        TokenSet::new(access)
            .with_refresh_token(refresh)
            .with_expires_at(SystemTime::now() - Duration::from_secs(60))
    };
    store
        .save(&expired("at-expired", &fake.issue_refresh_token()))
        .await
        .unwrap();

    for round in 1..=3 {
        let mut workers: Vec<Worker> = (0..2)
            .map(|_| {
                Worker::spawn(
                    TEST,
                    "refresh",
                    &[
                        (TOKEN_PATH, path.display().to_string()),
                        (TOKEN_URL, fake.token_url()),
                        (CLIENT_ID, fake.client_id().to_owned()),
                        (CLIENT_SECRET, fake.client_secret().to_owned()),
                    ],
                )
            })
            .collect();
        for worker in &mut workers {
            assert_eq!(worker.next().await, "ready", "round {round}");
        }
        for worker in &mut workers {
            worker.send("go");
        }
        let mut tokens = Vec::new();
        for worker in workers {
            let answer = worker.result().await;
            let token = answer
                .strip_prefix("token ")
                .unwrap_or_else(|| panic!("round {round}: {answer:?}"));
            tokens.push(token.to_owned());
        }

        assert_eq!(fake.token_calls(), round, "round {round}");
        assert_eq!(fake.invalid_grants_served(), 0, "round {round}");
        assert_eq!(tokens[0], tokens[1], "round {round}");
        let stored = store.load().await.unwrap().expect("stored tokens");
        assert_eq!(stored.access_token(), tokens[0], "round {round}");
        let live = fake.current_refresh_token().expect("the grant was revoked");
        assert_eq!(stored.refresh_token(), Some(live.as_str()), "round {round}");

        // The stored access token expires before the next round.
        store
            .save(&expired(stored.access_token(), &live))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn lock_of_a_killed_process_is_free_at_once() {
    const TEST: &str = "lock_of_a_killed_process_is_free_at_once";
    if let Some(role) = worker_mode() {
        assert_eq!(role, "hold");
        let store = FileStore::new(env(TOKEN_PATH));
        let _lock = store.lock(Duration::from_secs(10)).await.expect("lock");
        answer("locked");
        // Killed long before this ends.
        tokio::time::sleep(Duration::from_secs(120)).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let mut holder = Worker::spawn(TEST, "hold", &[(TOKEN_PATH, path.display().to_string())]);
    assert_eq!(holder.next().await, "locked");
    let store = FileStore::new(&path);
    let err = store.lock(Duration::from_millis(100)).await.unwrap_err();
    assert!(
        err.to_string().contains("another process holds"),
        "the holder does not hold the lock: {err}"
    );

    let status = holder.killed();
    assert!(!status.success(), "the holder was not killed: {status:?}");
    // A zero bound makes exactly one attempt: the OS must have released the lock already.
    let lock = store
        .lock(Duration::ZERO)
        .await
        .expect("a dead process's lock was not released");
    lock.release().await;
}

/// The typed error of a lock wait that ran out.
fn lock_timeout(err: &nifty_auth::BoxError) -> &nifty_auth::store::LockTimeout {
    err.downcast_ref()
        .unwrap_or_else(|| panic!("not a LockTimeout: {err}"))
}

#[tokio::test]
async fn lock_wait_is_bounded_and_the_error_names_the_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    // Two stores on one path in one process: the lock belongs to the open file, so they exclude
    // each other like two processes would.
    let holder = FileStore::new(&path);
    let waiter = FileStore::new(&path);
    let held = holder.lock(Duration::from_secs(1)).await.unwrap();

    let bound = Duration::from_millis(300);
    let started = Instant::now();
    let err = waiter.lock(bound).await.unwrap_err();
    let waited = started.elapsed();
    assert!(waited >= bound, "gave up early: {waited:?}");
    // Bounded by the bound it was given (typed; no wall-clock upper limit in a test).
    assert_eq!(lock_timeout(&err).waited(), bound);
    let err = err.to_string();
    assert!(
        err.contains("another process holds the token file's lock"),
        "{err}"
    );
    assert!(
        err.contains(&holder.lock_path().display().to_string()),
        "{err}"
    );

    // `lock_timeout` overrides the manager's `max_hold`; a clone of the holder is excluded too.
    let short = holder.clone().lock_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let err = short.lock(Duration::from_secs(60)).await.unwrap_err();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert_eq!(lock_timeout(&err).waited(), Duration::from_millis(200));

    held.release().await;
    waiter.lock(Duration::ZERO).await.expect("released lock");
}

#[tokio::test]
async fn waiter_gets_the_lock_once_the_holder_releases_or_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let store = FileStore::new(&path);

    for drop_it in [false, true] {
        let held = store.lock(Duration::from_secs(1)).await.unwrap();
        let waiter = FileStore::new(&path);
        // While it is held, nobody else gets it.
        waiter
            .lock(Duration::ZERO)
            .await
            .expect_err("got a held lock");
        let waiting = tokio::spawn(async move { waiter.lock(Duration::from_secs(60)).await });

        if drop_it {
            drop(held);
        } else {
            held.release().await;
        }
        // Released (or dropped), it is the waiter's, well within its bound.
        let lock = waiting.await.unwrap().expect("waiter");
        drop(lock);
    }
}
