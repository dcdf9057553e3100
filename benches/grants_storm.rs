//! `grants_storm`: 1,000 grants × 20 concurrent `access_token` calls each, every access token expired,
//! on a multi-thread runtime with 2 workers. A plain bench binary
//! (`harness = false`) that prints.
//!
//! Each run starts a fresh `FakeNifty` on 127.0.0.1 (so its high-water mark of token calls in flight
//! is the run's own) and a `MemoryStore` seeded with 1,000 of its grants (`FakeNifty::new_grant`),
//! each with an expired access token and a live refresh token; then a fresh `NiftyGrants` over that
//! store with the default `max_concurrent_token_calls` (8) spawns the 20,000 calls at once (round by
//! round: every grant once, 20 times) and waits for all of them. Timed: from the first spawn until
//! the last call returned. Asserted every run: exactly 1,000 token calls (exactly 1 per grant), never
//! more than 8 in flight at the fake, and every call got its own grant's token (checked with
//! `FakeNifty::grant_of_bearer` after the timed section).
//!
//! Two token endpoints: one that answers at once (the loopback HTTP round trip only) and one that
//! answers after 5 ms, as in `refresh_storm` (floor: 1,000 / 8 × 5 ms = 625 ms). Beside each storm,
//! the same 20,000 calls once every grant holds a valid token (no token call): the floor of spawning
//! and joining 20,000 tasks through the grants cache.
//!
//! Run alone with `cargo bench --bench grants_storm`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nifty_auth::testing::{FakeGrant, FakeNifty};
use nifty_auth::{
    GrantId, MemoryStore, NiftyGrants, TokenSet, TokenStore, DEFAULT_MAX_CONCURRENT_TOKEN_CALLS,
};
use tokio::runtime::Runtime;

const GRANTS: usize = 1_000;
const CALLS_PER_GRANT: usize = 20;
const RUNS: usize = 5;

/// One run's fixture: the fake, its grants (seeded expired in the store) and a cold `NiftyGrants`.
struct Fixture {
    fake: FakeNifty,
    grants: NiftyGrants,
    ids: Arc<Vec<(GrantId, FakeGrant)>>,
}

async fn fixture(delay: Duration) -> Fixture {
    let fake = FakeNifty::start().await.expect("fake nifty");
    fake.set_token_delay(delay);
    let store = MemoryStore::new();
    let expired = SystemTime::now() - Duration::from_secs(60);
    let mut ids = Vec::with_capacity(GRANTS);
    for i in 0..GRANTS {
        let id = GrantId::new(format!("workspace-{i}")).expect("grant id");
        let grant = fake.new_grant();
        let tokens = TokenSet::new(format!("expired-{i}"))
            .with_refresh_token(grant.issue_refresh_token())
            .with_expires_at(expired);
        store.save(&id, &tokens).await.expect("seed");
        ids.push((id, grant));
    }
    let grants = NiftyGrants::builder(fake.credentials())
        .token_url(fake.token_url().as_str())
        .allowed_origins([fake.base_url()])
        .store(store)
        .build()
        .expect("build NiftyGrants");
    Fixture {
        fake,
        grants,
        ids: Arc::new(ids),
    }
}

/// Spawns `CALLS_PER_GRANT` rounds of one `access_token` call per grant, all at once; returns the
/// time until the last one returned and every (grant index, token) answered.
async fn storm(fixture: &Fixture) -> (Duration, Vec<(usize, String)>) {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CALLS_PER_GRANT {
        for i in 0..GRANTS {
            let grants = fixture.grants.clone();
            let ids = Arc::clone(&fixture.ids);
            tasks.spawn(async move { (i, grants.access_token(&ids[i].0).await) });
        }
    }
    let mut answers = Vec::with_capacity(GRANTS * CALLS_PER_GRANT);
    while let Some(joined) = tasks.join_next().await {
        let (i, token) = joined.expect("task");
        answers.push((i, token.expect("access_token")));
    }
    (start.elapsed(), answers)
}

/// What one run measured.
struct Run {
    storm: Duration,
    warm: Duration,
    max_in_flight: usize,
}

fn run(rt: &Runtime, delay: Duration) -> Run {
    rt.block_on(async {
        let fixture = fixture(delay).await;
        let (storm_time, answers) = storm(&fixture).await;

        let calls = fixture.fake.token_calls();
        assert_eq!(calls, GRANTS, "the storm made {calls} token calls");
        for (id, grant) in fixture.ids.iter() {
            assert_eq!(
                grant.token_calls(),
                1,
                "grant {} made {} token calls",
                id.as_str(),
                grant.token_calls()
            );
        }
        let max_in_flight = fixture.fake.max_token_calls_in_flight();
        assert!(
            max_in_flight <= DEFAULT_MAX_CONCURRENT_TOKEN_CALLS,
            "{max_in_flight} token calls in flight at once (limit {DEFAULT_MAX_CONCURRENT_TOKEN_CALLS})"
        );
        assert_eq!(answers.len(), GRANTS * CALLS_PER_GRANT);
        for (i, token) in &answers {
            let owner = fixture.fake.grant_of_bearer(token);
            assert_eq!(
                owner,
                Some(fixture.ids[*i].1.key()),
                "a call for grant {i} got another grant's token"
            );
        }

        // The floor: the same calls, every grant's token valid now.
        let (warm, _) = storm(&fixture).await;
        assert_eq!(fixture.fake.token_calls(), GRANTS, "a warm call made a token call");
        Run {
            storm: storm_time,
            warm,
            max_in_flight,
        }
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median_ms(mut values: Vec<Duration>) -> f64 {
    values.sort();
    let n = values.len();
    if n % 2 == 1 {
        ms(values[n / 2])
    } else {
        (ms(values[n / 2 - 1]) + ms(values[n / 2])) / 2.0
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "grants_storm: {GRANTS} grants × {CALLS_PER_GRANT} concurrent access_token calls, every token \
         expired; max_concurrent_token_calls {DEFAULT_MAX_CONCURRENT_TOKEN_CALLS} (default); \
         2 worker threads; {RUNS} runs per endpoint"
    );
    for (name, delay) in [
        ("token endpoint answers at once", Duration::ZERO),
        (
            "token endpoint answers after 5 ms",
            Duration::from_millis(5),
        ),
    ] {
        let runs: Vec<Run> = (0..RUNS).map(|_| run(&rt, delay)).collect();
        let storms: Vec<Duration> = runs.iter().map(|r| r.storm).collect();
        let warms: Vec<Duration> = runs.iter().map(|r| r.warm).collect();
        let in_flight: Vec<usize> = runs.iter().map(|r| r.max_in_flight).collect();
        println!("grants_storm: {name}");
        println!(
            "  storm  median {:>8.1} ms  runs {}",
            median_ms(storms.clone()),
            storms
                .iter()
                .map(|d| format!("{:.1}", ms(*d)))
                .collect::<Vec<_>>()
                .join(" ")
        );
        println!(
            "  warm   median {:>8.1} ms  runs {}   (the same calls, every token valid: the floor)",
            median_ms(warms.clone()),
            warms
                .iter()
                .map(|d| format!("{:.1}", ms(*d)))
                .collect::<Vec<_>>()
                .join(" ")
        );
        println!(
            "  token calls per run {GRANTS} (1 per grant, asserted); most in flight at once per run: {in_flight:?} \
             (≤ {DEFAULT_MAX_CONCURRENT_TOKEN_CALLS}, asserted)"
        );
        if !delay.is_zero() {
            let floor = GRANTS as f64 / DEFAULT_MAX_CONCURRENT_TOKEN_CALLS as f64 * ms(delay);
            println!("  floor of {GRANTS} calls of {} ms, {DEFAULT_MAX_CONCURRENT_TOKEN_CALLS} at a time: {floor:.0} ms", ms(delay));
        }
    }
}
