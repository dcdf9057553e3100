//! Group 1, `hot_path`: one request through an already-ready service whose inner service answers at
//! once, on a current-thread runtime.
//!
//! (a) the bare inner service, (b) tower-http `AddAuthorizationLayer::bearer` (a static header: the
//! floor), (b-retry) the same under `tower::retry::Retry` with a policy that clones each request and
//! retries once on 401 (the peer that can also retry: what a user composes from tower parts), (c) `NiftyAuthLayer` with a valid cached token, (c') the same with
//! `retry_on_unauthorized(false)` (no retry copy of the request), (d) a naive hand-written layer
//! (`tokio::sync::Mutex<Option<String>>` + `format!` per request), (e) (c) over a `RedisStore`
//! (feature `redis`), (f) (c) over a `PostgresStore` (feature `postgres`; PostgreSQL is stopped
//! before measuring, so a passing run proves the hot path never asks it).
//!
//! Requests are built inside the timed loop, the same way for every variant: the timed section is
//! building the request + `ready().await` + `call().await` + dropping the response, per request. After the
//! criterion group, the same variants run again in interleaved rounds (`paired hot_path` lines) so the
//! ratios hold on a noisy machine. Group `hot_path_parts` times the pieces of (c) one by one.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};

use common::*;

/// Sends `iters` requests through `svc`, each built inside the timed loop (the same way for every
/// variant); returns the total time.
async fn run<S>(svc: &mut S, uri: &Uri, iters: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for _ in 0..iters {
        let response = svc
            .ready()
            .await
            .expect("ready")
            .call(request(uri))
            .await
            .expect("call");
        black_box(response);
    }
    start.elapsed()
}

fn bench_variant<S>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    svc: S,
    uri: &Uri,
) where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    if paired_only() {
        return;
    }
    group.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let mut svc = svc.clone();
            let uri = uri.clone();
            async move { run(&mut svc, &uri, iters).await }
        })
    });
}

/// A paired-comparison variant: 100,000 requests through its own clone of `svc`.
fn variant<'a, S>(name: &'static str, rt: &'a Runtime, svc: S, uri: &'a Uri) -> Variant<'a>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>> + 'a,
    S::Error: std::fmt::Debug,
{
    let mut svc = svc;
    Variant::new(name, move || {
        rt.block_on(run(&mut svc, uri, PAIRED_REQUESTS))
    })
}

/// Requests per variant and round of the paired comparison.
const PAIRED_REQUESTS: u64 = 100_000;

fn hot_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let uri: Uri = API.parse().expect("uri");
    let auth = rt.block_on(warm_auth());
    let nifty = auth.layer();
    let nifty_no_retry = auth.layer().retry_on_unauthorized(false);
    let naive = NaiveAuthLayer::new(TOKEN);

    // Every variant attaches the same header (checked once, not measured).
    let bearer = expected_bearer();
    rt.block_on(async {
        check_attaches(echo_service(), None).await;
        check_attaches(tower_http_layer().layer(echo_service()), Some(&bearer)).await;
        check_attaches(tower_http_retry(echo_service()), Some(&bearer)).await;
        check_attaches(nifty.layer(echo_service()), Some(&bearer)).await;
        check_attaches(nifty_no_retry.layer(echo_service()), Some(&bearer)).await;
        check_attaches(naive.layer(echo_service()), Some(&bearer)).await;
    });

    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(1));
    bench_variant(&mut group, &rt, "a_bare", ok_service(), &uri);
    bench_variant(
        &mut group,
        &rt,
        "b_tower_http_static",
        tower_http_layer().layer(ok_service()),
        &uri,
    );
    bench_variant(
        &mut group,
        &rt,
        "b2_tower_http_with_retry",
        tower_http_retry(ok_service()),
        &uri,
    );
    bench_variant(
        &mut group,
        &rt,
        "c_nifty_auth",
        nifty.layer(ok_service()),
        &uri,
    );
    bench_variant(
        &mut group,
        &rt,
        "c2_nifty_auth_no_retry",
        nifty_no_retry.layer(ok_service()),
        &uri,
    );
    bench_variant(
        &mut group,
        &rt,
        "d_naive_mutex",
        naive.layer(ok_service()),
        &uri,
    );
    #[cfg(feature = "redis")]
    let redis = RedisFixture::start(&rt);
    #[cfg(feature = "redis")]
    if let Some(redis) = &redis {
        bench_variant(
            &mut group,
            &rt,
            "e_nifty_auth_redis_store",
            redis.auth.layer().layer(ok_service()),
            &uri,
        );
    }
    #[cfg(feature = "postgres")]
    let postgres = PostgresFixture::start(&rt);
    #[cfg(feature = "postgres")]
    if let Some(postgres) = &postgres {
        rt.block_on(check_attaches(
            postgres.auth.layer().layer(echo_service()),
            Some(&bearer),
        ));
        bench_variant(
            &mut group,
            &rt,
            "f_nifty_auth_postgres",
            postgres.auth.layer().layer(ok_service()),
            &uri,
        );
    }
    group.finish();

    // The same variants, interleaved: ratios that a drifting machine load cannot skew.
    if paired_enabled() {
        paired_with_peer(
            "hot_path",
            15,
            PAIRED_REQUESTS,
            "req",
            Some("b2_tower_http_with_retry"),
            vec![
                variant("a_bare", &rt, ok_service(), &uri),
                variant(
                    "b_tower_http_static",
                    &rt,
                    tower_http_layer().layer(ok_service()),
                    &uri,
                ),
                variant(
                    "b2_tower_http_with_retry",
                    &rt,
                    tower_http_retry(ok_service()),
                    &uri,
                ),
                variant("c_nifty_auth", &rt, nifty.layer(ok_service()), &uri),
                variant(
                    "c2_nifty_auth_no_retry",
                    &rt,
                    nifty_no_retry.layer(ok_service()),
                    &uri,
                ),
                variant("d_naive_mutex", &rt, naive.layer(ok_service()), &uri),
            ],
        );
    }
    #[cfg(feature = "redis")]
    if let (true, Some(redis)) = (paired_enabled(), &redis) {
        // (e) beside (c) in its own interleaved rounds: the same layer, a Redis store behind it.
        paired(
            "hot_path_redis",
            10,
            PAIRED_REQUESTS,
            "req",
            vec![
                variant("c_nifty_auth", &rt, nifty.layer(ok_service()), &uri),
                variant(
                    "e_nifty_auth_redis_store",
                    &rt,
                    redis.auth.layer().layer(ok_service()),
                    &uri,
                ),
            ],
        );
    }
    #[cfg(feature = "postgres")]
    if let (true, Some(postgres)) = (paired_enabled(), &postgres) {
        // (f) beside (c) in its own interleaved rounds: the same layer, a PostgreSQL store behind it.
        paired(
            "hot_path_postgres",
            10,
            PAIRED_REQUESTS,
            "req",
            vec![
                variant("c_nifty_auth", &rt, nifty.layer(ok_service()), &uri),
                variant(
                    "f_nifty_auth_postgres",
                    &rt,
                    postgres.auth.layer().layer(ok_service()),
                    &uri,
                ),
            ],
        );
    }
}

/// The PostgreSQL server of variant (f): the one `tests/postgres/` starts (`initdb` into a temp dir,
/// `postgres` on a free loopback port), shared rather than copied so the two cannot drift.
#[cfg(feature = "postgres")]
#[path = "../tests/postgres/server.rs"]
#[allow(dead_code, reason = "the bench uses only start, store and stop")]
mod pg_server;

/// Variant (f): nifty-auth over a `PostgresStore` (feature `postgres`). The token is saved to a real
/// PostgreSQL server this bench starts, which is then **stopped** before anything is measured: a
/// request that touched the store would fail and the bench would panic, so a passing bench proves the
/// hot path never talks to PostgreSQL.
#[cfg(feature = "postgres")]
struct PostgresFixture {
    _server: pg_server::PgServer,
    auth: nifty_auth::NiftyAuth,
}

#[cfg(feature = "postgres")]
impl PostgresFixture {
    fn start(rt: &Runtime) -> Option<PostgresFixture> {
        let Some(mut server) = pg_server::PgServer::start() else {
            eprintln!("hot_path: PostgreSQL not found; skipping f_nifty_auth_postgres");
            return None;
        };
        let auth = rt.block_on(async {
            let store = server.store("bench-client").await;
            let auth = nifty_auth::NiftyAuth::builder(nifty_auth::Credentials::new(
                "bench-client",
                "bench-secret",
            ))
            .token_url(DEAD_TOKEN_URL)
            .allowed_origins(["https://openapi.niftypm.com"])
            .store(store)
            .build()
            .expect("NiftyAuth");
            auth.set_tokens(
                nifty_auth::TokenSet::new(TOKEN).with_expires_in(Duration::from_secs(3600)),
            )
            .await
            .expect("set_tokens saves to PostgreSQL");
            auth
        });
        server.stop();
        Some(PostgresFixture {
            _server: server,
            auth,
        })
    }
}

/// Variant (e): nifty-auth over a `RedisStore` (feature `redis`), on a redis-server this bench starts
/// on a free loopback port. Shows that the hot path never talks to the store.
#[cfg(feature = "redis")]
struct RedisFixture {
    child: std::process::Child,
    auth: nifty_auth::NiftyAuth,
}

#[cfg(feature = "redis")]
impl RedisFixture {
    fn start(rt: &Runtime) -> Option<RedisFixture> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else {
            eprintln!("hot_path: redis-server not found; skipping e_nifty_auth_redis_store");
            return None;
        };
        std::thread::sleep(Duration::from_millis(300));
        let store = nifty_auth::RedisStore::builder(
            format!("redis://127.0.0.1:{port}"),
            "bench-client",
            "bench",
        )
        .build()
        .expect("RedisStore");
        let auth = nifty_auth::NiftyAuth::builder(nifty_auth::Credentials::new(
            "bench-client",
            "bench-secret",
        ))
        .token_url(DEAD_TOKEN_URL)
        .allowed_origins(["https://openapi.niftypm.com"])
        .store(store)
        .build()
        .expect("NiftyAuth");
        rt.block_on(auth.set_tokens(
            nifty_auth::TokenSet::new(TOKEN).with_expires_in(Duration::from_secs(3600)),
        ))
        .expect("set_tokens saves to Redis");
        Some(RedisFixture { child, auth })
    }
}

#[cfg(feature = "redis")]
impl Drop for RedisFixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pieces of the hot path that can be timed from outside the crate (clock, token read, header
/// insert): where the time of (c) goes. The crate's private steps are not replicated here, since copies
/// of private code go stale; their cost shows as the difference between (c'), (c) and (b).
fn hot_path_parts(c: &mut Criterion) {
    let uri: Uri = API.parse().expect("uri");
    let mut group = c.benchmark_group("hot_path_parts");

    // `Instant::now()` as the token cache reads it (tokio's, `test-util` compiled in as in the tests).
    group.bench_function("clock_read", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()))
    });

    // The token read: `ArcSwap::load` + clone of the pre-built sensitive header (what tower-http
    // does without the load).
    let mut header = HeaderValue::try_from(format!("Bearer {TOKEN}")).expect("header");
    header.set_sensitive(true);
    let current = ArcSwap::from_pointee((header.clone(), 1u64));
    group.bench_function("arcswap_load_and_header_clone", |b| {
        b.iter(|| {
            let guard = current.load();
            black_box((guard.0.clone(), guard.1))
        })
    });
    group.bench_function("header_clone_only", |b| {
        b.iter(|| black_box(header.clone()))
    });

    // `contains_key(AUTHORIZATION)` before the insert (nifty-auth) vs the insert alone (tower-http).
    group.bench_function("contains_key_then_insert", |b| {
        b.iter_batched(
            || request(&uri),
            |mut request| {
                if !request.headers().contains_key(AUTHORIZATION) {
                    request.headers_mut().insert(AUTHORIZATION, header.clone());
                }
                request
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("insert_only", |b| {
        b.iter_batched(
            || request(&uri),
            |mut request| {
                request.headers_mut().insert(AUTHORIZATION, header.clone());
                request
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = parts;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    targets = hot_path_parts
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(40);
    targets = hot_path
}
criterion_main!(benches, parts);
