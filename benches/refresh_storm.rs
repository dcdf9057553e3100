//! Group 3, `refresh_storm`: the token path under a burst, on a multi-thread runtime with 2 workers.
//!
//! - `expired_10k`: 10,000 requests spawned together while the cached token is expired; the token
//!   endpoint (a real `FakeNifty` on 127.0.0.1, over HTTP) answers after 5 ms. Time until all 10,000
//!   are answered; exactly 1 token call per iteration (asserted).
//! - `warm_10k` / `tower_http_10k`: the same 10,000 requests with a valid cached token / a static
//!   header: the floor (spawning and joining 10,000 tasks).
//! - `unauthorized_1k`: 1,000 concurrent requests sent with one token that the API rejects (401); one
//!   refresh (5 ms) and 1,000 retries. Exactly 1 token call per iteration (asserted).
//! - `warm_1k`: the same 1,000 requests answered 200 at once: the floor.
//!
//! The API is an inner `service_fn` that answers at once, so the storm measures the token path, not
//! 10,000 loopback connections. Per-iteration setup (publishing the expired/stale token) is not timed.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Full;
use nifty_auth::testing::FakeNifty;
use nifty_auth::{NiftyAuth, TokenSet};
use tower::{Layer, Service, ServiceExt};

use common::*;

const TOKEN_DELAY: Duration = Duration::from_millis(5);

/// Spawns `n` requests at once through clones of `svc`; returns the time until all are answered.
async fn storm<S>(svc: &S, uri: &Uri, n: usize) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let svc = svc.clone();
        let request = request(uri);
        tasks.spawn(async move { svc.oneshot(request).await.map(|r| r.status()) });
    }
    while let Some(joined) = tasks.join_next().await {
        let status = joined.expect("task").expect("request");
        assert_eq!(status, StatusCode::OK);
    }
    start.elapsed()
}

/// Per-benchmark bookkeeping, printed after each storm benchmark.
#[derive(Default)]
struct Tally {
    iterations: AtomicU64,
    token_calls: AtomicU64,
    max_ns: AtomicU64,
}

impl Tally {
    fn record(&self, elapsed: Duration, calls: usize) {
        self.iterations.fetch_add(1, Ordering::Relaxed);
        self.token_calls.fetch_add(calls as u64, Ordering::Relaxed);
        self.max_ns
            .fetch_max(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    fn print(&self, name: &str) {
        let iterations = self.iterations.load(Ordering::Relaxed);
        let calls = self.token_calls.load(Ordering::Relaxed);
        println!(
            "refresh_storm/{name}: {iterations} iterations (warm-up and paired rounds included), {calls} token calls \
             ({:.2} per iteration), slowest iteration {:.2} ms",
            calls as f64 / iterations.max(1) as f64,
            self.max_ns.load(Ordering::Relaxed) as f64 / 1e6
        );
    }
}

fn auth_for(fake: &FakeNifty) -> NiftyAuth {
    NiftyAuth::builder(fake.credentials())
        .token_url(fake.token_url().as_str())
        .allowed_origins([fake.base_url()])
        .build()
        .expect("build")
}

/// Everything a storm needs.
struct Storms<S, T> {
    fake: FakeNifty,
    auth: NiftyAuth,
    /// nifty-auth over an inner service answering 200 at once.
    svc: S,
    /// nifty-auth over an inner service answering 401 to `stale-…` tokens.
    svc_401: T,
    uri: Uri,
    counter: AtomicU64,
}

impl<S, T> Storms<S, T>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
    T: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: std::fmt::Debug + Send,
{
    /// `n` requests with a valid cached token (no token call): the floor.
    async fn warm(&self, n: usize, tally: &Tally) -> Duration {
        self.auth
            .set_tokens(TokenSet::new(TOKEN).with_expires_in(Duration::from_secs(3600)))
            .await
            .expect("set_tokens");
        let before = self.fake.token_calls();
        let elapsed = storm(&self.svc, &self.uri, n).await;
        let calls = self.fake.token_calls() - before;
        assert_eq!(calls, 0, "a warm cache made a token call");
        tally.record(elapsed, calls);
        elapsed
    }

    /// 10,000 requests with an expired cached token: one refresh.
    async fn expired(&self, tally: &Tally) -> Duration {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let expired = TokenSet::new(format!("expired-{n}"))
            .with_refresh_token(self.fake.issue_refresh_token())
            .with_expires_at(SystemTime::now() - Duration::from_secs(60));
        self.auth.set_tokens(expired).await.expect("set_tokens");
        let before = self.fake.token_calls();
        let elapsed = storm(&self.svc, &self.uri, 10_000).await;
        let calls = self.fake.token_calls() - before;
        assert_eq!(calls, 1, "the storm made {calls} token calls");
        tally.record(elapsed, calls);
        elapsed
    }

    /// 1,000 requests sent with a token the API rejects: one refresh, 1,000 retries.
    async fn unauthorized(&self, tally: &Tally) -> Duration {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let stale = TokenSet::new(format!("stale-{n}"))
            .with_refresh_token(self.fake.issue_refresh_token())
            .with_expires_in(Duration::from_secs(3600));
        self.auth.set_tokens(stale).await.expect("set_tokens");
        let before = self.fake.token_calls();
        let elapsed = storm(&self.svc_401, &self.uri, 1_000).await;
        let calls = self.fake.token_calls() - before;
        assert_eq!(calls, 1, "1,000 401s made {calls} token calls");
        tally.record(elapsed, calls);
        elapsed
    }
}

fn refresh_storm(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let fake = rt.block_on(FakeNifty::start()).expect("fake nifty");
    fake.set_token_delay(TOKEN_DELAY);
    let auth = auth_for(&fake);
    let storms = Storms {
        uri: fake.api_url("/projects").parse().expect("uri"),
        svc: auth.layer().layer(ok_service()),
        svc_401: auth.layer().layer(stale_401_service()),
        fake,
        auth,
        counter: AtomicU64::new(0),
    };
    let static_header = tower_http_layer().layer(ok_service());
    let storms = &storms;

    let mut group = c.benchmark_group("refresh_storm");
    group.sampling_mode(SamplingMode::Flat);
    let tallies: [Tally; 4] = Default::default();
    let [warm_10k, warm_1k, expired_10k, unauthorized_1k] = &tallies;

    // Floors: a valid token (no token call) and a static header.
    group.bench_function("warm_10k", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += storms.warm(10_000, warm_10k).await;
            }
            total
        })
    });
    group.bench_function("tower_http_10k", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (svc, uri) = (&static_header, &storms.uri);
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += storm(svc, uri, 10_000).await;
                }
                total
            }
        })
    });
    // The storm: the cached token is expired, 10,000 requests need a new one.
    group.bench_function("expired_10k", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += storms.expired(expired_10k).await;
            }
            total
        })
    });
    group.bench_function("warm_1k", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += storms.warm(1_000, warm_1k).await;
            }
            total
        })
    });
    // 1,000 concurrent 401s for one token: one refresh, 1,000 retries.
    group.bench_function("unauthorized_1k", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += storms.unauthorized(unauthorized_1k).await;
            }
            total
        })
    });
    group.finish();

    // Interleaved: each storm beside its floor, round after round.
    if paired_enabled() {
        let rt = &rt;
        let static_header = &static_header;
        paired(
            "refresh_storm_10k",
            15,
            1,
            "storm",
            vec![
                Variant::new("a_warm_10k", || rt.block_on(storms.warm(10_000, warm_10k))),
                Variant::new("tower_http_10k", || {
                    rt.block_on(storm(static_header, &storms.uri, 10_000))
                }),
                Variant::new("c_expired_10k", || rt.block_on(storms.expired(expired_10k))),
            ],
        );
        paired(
            "refresh_storm_1k",
            15,
            1,
            "storm",
            vec![
                Variant::new("a_warm_1k", || rt.block_on(storms.warm(1_000, warm_1k))),
                Variant::new("c_unauthorized_1k", || {
                    rt.block_on(storms.unauthorized(unauthorized_1k))
                }),
            ],
        );
    }
    for (name, tally) in [
        ("warm_10k", warm_10k),
        ("warm_1k", warm_1k),
        ("expired_10k", expired_10k),
        ("unauthorized_1k", unauthorized_1k),
    ] {
        tally.print(name);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10);
    targets = refresh_storm
}
criterion_main!(benches);
