//! PostgresStore against a real PostgreSQL server on 127.0.0.1 (started by each test in a temp
//! dir on a free port): many OS processes × many grants, a killed lock holder, PostgreSQL going
//! away and coming back, fenced saves, encryption, hostile grant ids and the table name.
//!
//! The tests need PostgreSQL's server binaries (`pg_config --bindir`, or `/usr/lib/postgresql/*/bin`;
//! `.ci/run` installs the `postgresql` package). Outside CI they are skipped with a message when
//! they are missing; under CI (`CI` set) a missing server fails them.
//!
//! The multi-process tests re-run this test binary as workers (`worker_process_entry`, inert unless
//! `NIFTY_WORKER` is set; the harness is `tests/common/workers.rs`). `processes.rs`: OS processes; `outage.rs`: PostgreSQL down;
//! `partition.rs`: PostgreSQL behind a proxy that blackholes; `unlock.rs`: a release that fails;
//! `restart.rs`: a restart mid-refresh; `fence.rs`: fenced saves; `storm.rs`: a refresh storm on a
//! small pool; `table.rs`: encryption, grant ids, migrations, table names.
#![cfg(feature = "postgres")]

#[path = "../common/blackhole.rs"]
mod blackhole;
#[path = "../common/mod.rs"]
mod common;
mod fence;
mod outage;
mod partition;
#[path = "../common/partition.rs"]
mod partition_scenario;
mod processes;
mod restart;
mod server;
mod storm;
mod table;
mod unlock;
#[path = "../common/workers.rs"]
mod workers;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nifty_auth::{Credentials, GrantId, NiftyGrants, PostgresStore, TokenStore};

use workers::env;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The worker side of the multi-process tests: does nothing in a normal test run.
#[test]
fn worker_process_entry() {
    let Some(mode) = workers::worker_mode() else {
        return;
    };
    let runtime = workers::worker_runtime(tracing::Level::WARN);
    runtime.block_on(async {
        let mut store =
            PostgresStore::connect_builder(&env("NIFTY_PG_URL"), env("NIFTY_PG_CLIENT_ID"));
        if let Ok(lease) = std::env::var("NIFTY_PG_LEASE_MS") {
            store = store.lock_lease(Duration::from_millis(lease.parse().unwrap()));
        }
        let store = store.build().unwrap();
        match mode.as_str() {
            "grants" => run_grants(store).await,
            "hold" => {
                let grant = GrantId::new(env("NIFTY_PG_GRANT")).unwrap();
                let _lock = store.lock(&grant, Duration::from_secs(60)).await.unwrap();
                workers::answer("locked");
                tokio::time::sleep(Duration::from_secs(600)).await;
            }
            other => panic!("unknown worker mode {other}"),
        }
    });
}

/// Rounds of concurrent `access_token` calls for every grant, each round at its set wall time.
async fn run_grants(store: PostgresStore) {
    let grants = NiftyGrants::builder(Credentials::new(
        env("NIFTY_PG_CLIENT_ID"),
        env("NIFTY_PG_CLIENT_SECRET"),
    ))
    .token_url(env("NIFTY_PG_TOKEN_URL").as_str())
    .refresh_skew(Duration::ZERO)
    .token_backoff(Duration::from_millis(5), Duration::from_millis(20))
    .store(store)
    .build()
    .unwrap();
    let count: usize = env("NIFTY_PG_GRANTS").parse().unwrap();
    let rounds: u64 = env("NIFTY_PG_ROUNDS").parse().unwrap();
    let period: u64 = env("NIFTY_PG_PERIOD_MS").parse().unwrap();
    let start_at: u64 = env("NIFTY_PG_START_AT_MS").parse().unwrap();
    let mut ok = 0;
    for round in 0..rounds {
        let at = start_at + round * period;
        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..count * 3 {
            let grants = grants.clone();
            let id = GrantId::new(format!("tenant-{}", i % count)).unwrap();
            tasks.spawn(async move { grants.access_token(&id).await });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => eprintln!("WORKER error in round {round}: {e}"),
            }
        }
    }
    workers::answer(&format!("ok={ok}"));
}
