//! Two OS processes (this test binary re-run as workers) × 50 grants, each process with its own
//! `NiftyGrants` and grants layer over one shared store: `FileStore::directory`, and `RedisStore`
//! (under CI, or wherever a redis-server is installed). A rotating fake that revokes a grant on a
//! refresh-token replay proves that no process ever refreshes with a stale refresh token.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nifty_auth::{Credentials, GrantId, NiftyGrants, TokenSet, TokenStore};
use tokio::task::JoinSet;
use tower::Layer;

use crate::common::assert_one_refresh_per_grant_per_round;
use crate::common::rotating_fake_lasting;
use crate::workers::{answer, env, served, worker_mode, worker_runtime, Worker};

#[cfg(feature = "redis")]
#[path = "../redis/server.rs"]
#[allow(dead_code, reason = "only the server itself is used here")]
mod redis_server;

const GRANTS: usize = 50;
const ROUNDS: u64 = 3;
/// Rounds start this far apart; tokens live [`LIFETIME`]: a round's refresh may come up to
/// `PERIOD_MS - LIFETIME` late (two processes contending for 50 grants' locks on a loaded machine)
/// and its requests may take up to `LIFETIME`, and each grant still expires exactly once a round.
const PERIOD_MS: u64 = 2_500;
const LIFETIME: Duration = Duration::from_millis(1_200);
/// Concurrent requests per grant per round in each process.
const CALLERS: usize = 2;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn grant_id(i: usize) -> GrantId {
    GrantId::new(format!("tenant/{i}")).unwrap()
}

/// Seeds 50 grants (expired access tokens, live refresh tokens) into `store`, runs two worker
/// processes against it, and checks: every request served, one refresh per grant per round, no
/// `invalid_grant`, no refresh-token replay.
async fn two_processes_share(kind: &str, location: &str, store: impl TokenStore) {
    let fake = rotating_fake_lasting(LIFETIME).await;
    let fake_grants: Vec<_> = (0..GRANTS).map(|_| fake.new_grant()).collect();
    for (i, fake_grant) in fake_grants.iter().enumerate() {
        let tokens = TokenSet::new(format!("expired-seed-{i}"))
            .with_refresh_token(fake_grant.issue_refresh_token())
            .with_expires_in(Duration::from_millis(1));
        store.save(&grant_id(i), &tokens).await.unwrap();
    }
    let keys: Vec<String> = fake_grants
        .iter()
        .map(|g| g.key().get().to_string())
        .collect();

    let start_at = now_ms() + 1_500;
    let workers: Vec<_> = (0..2)
        .map(|_| {
            Worker::spawn(
                "processes::worker_process_entry",
                kind,
                &[
                    ("NIFTY_GRANTS_STORE", location.to_owned()),
                    ("NIFTY_GRANTS_CLIENT_ID", fake.client_id().to_owned()),
                    (
                        "NIFTY_GRANTS_CLIENT_SECRET",
                        fake.client_secret().to_owned(),
                    ),
                    ("NIFTY_GRANTS_BASE_URL", fake.base_url()),
                    ("NIFTY_GRANTS_KEYS", keys.join(",")),
                    ("NIFTY_GRANTS_START_AT_MS", start_at.to_string()),
                ],
            )
        })
        .collect();
    let mut ok = 0;
    for worker in workers {
        ok += served(&worker.result().await);
    }

    assert_eq!(
        ok,
        2 * ROUNDS as usize * GRANTS * CALLERS,
        "every request served"
    );
    assert_one_refresh_per_grant_per_round(&fake, &fake_grants, ROUNDS as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_times_fifty_grants_in_a_file_store_directory_refresh_each_grant_once_per_expiry(
) {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().to_str().unwrap().to_owned();
    let store = nifty_auth::FileStore::directory(dir.path());
    two_processes_share("file", &location, store).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_times_fifty_grants_in_redis_refresh_each_grant_once_per_expiry() {
    let Some(redis) = redis_server::RedisServer::start() else {
        return;
    };
    two_processes_share("redis", &redis.url(), redis_store(&redis.url())).await;
}

#[cfg(feature = "redis")]
fn redis_store(url: &str) -> nifty_auth::RedisStore {
    nifty_auth::RedisStore::builder(url, "grants-processes", "default")
        .build()
        .unwrap()
}

/// The worker side: does nothing in a normal test run. Rounds of concurrent `users/me` requests
/// through one grants layer for every grant, each round at its set wall time; checks that the API
/// saw the right grant.
#[test]
fn worker_process_entry() {
    let Some(kind) = worker_mode() else {
        return;
    };
    let runtime = worker_runtime(tracing::Level::WARN);
    runtime.block_on(async {
        let location = env("NIFTY_GRANTS_STORE");
        let base = env("NIFTY_GRANTS_BASE_URL");
        let builder = NiftyGrants::builder(Credentials::new(
            env("NIFTY_GRANTS_CLIENT_ID"),
            env("NIFTY_GRANTS_CLIENT_SECRET"),
        ))
        .token_url(format!("{base}/oauth/token").as_str())
        .allowed_origins([base.as_str()])
        .refresh_skew(Duration::ZERO)
        .token_backoff(Duration::from_millis(5), Duration::from_millis(20));
        let grants = match kind.as_str() {
            "file" => builder.store(nifty_auth::FileStore::directory(&location)),
            #[cfg(feature = "redis")]
            "redis" => builder.store(redis_store(&location)),
            other => panic!("unknown worker store {other}"),
        }
        .build()
        .unwrap();
        let keys: Arc<Vec<u64>> = Arc::new(
            env("NIFTY_GRANTS_KEYS")
                .split(',')
                .map(|k| k.parse().unwrap())
                .collect(),
        );
        let svc = grants.layer().layer(crate::common::http_client());
        let start_at: u64 = env("NIFTY_GRANTS_START_AT_MS").parse().unwrap();
        let mut ok = 0;
        for round in 0..ROUNDS {
            let at = start_at + round * PERIOD_MS;
            tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await;
            let mut tasks = JoinSet::new();
            for i in 0..GRANTS * CALLERS {
                let (svc, keys, base) = (svc.clone(), keys.clone(), base.clone());
                tasks.spawn(async move {
                    use http_body_util::BodyExt;
                    use tower::ServiceExt;
                    let grant = i % GRANTS;
                    let mut request = crate::common::get(format!("{base}/api/v1.0/users/me"));
                    request.extensions_mut().insert(grant_id(grant));
                    let response = svc.oneshot(request).await.map_err(|e| e.to_string())?;
                    let status = response.status();
                    let body = response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| e.to_string())?;
                    let json: serde_json::Value =
                        serde_json::from_slice(&body.to_bytes()).map_err(|e| e.to_string())?;
                    if status == 200 && json["grant"].as_u64() == Some(keys[grant]) {
                        Ok(())
                    } else {
                        Err(format!("grant {grant}: {status} {json}"))
                    }
                });
            }
            while let Some(joined) = tasks.join_next().await {
                match joined.unwrap() {
                    Ok(()) => ok += 1,
                    Err(e) => eprintln!("WORKER error in round {round}: {e}"),
                }
            }
        }
        answer(&format!("ok={ok}"));
    });
}
