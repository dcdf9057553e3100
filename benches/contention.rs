//! Group 2, `contention`: a multi-thread runtime with 2 workers; 64 tasks each send 20,000 requests
//! through clones of one shared service (1,280,000 requests per iteration), for (a) bare, (b) tower-http
//! static header, (c) nifty-auth with a valid cached token, (c') the same without the 401 retry copy,
//! (d) the naive mutex layer.
//!
//! One iteration is the whole 1.28M-request run (`iter_custom`, flat sampling, 10 samples); criterion's
//! throughput is in requests (elements) per second. (b2) is (b) with one header value per task instead
//! of one shared by all: the cost of a reference count that both cores write. (b3) is (b) plus one
//! clone of a shared `Arc` per request, held until the response (what the retry copy of (c) does with
//! its `NiftyAuth` handle). (b4) is (b) under `tower::retry::Retry` with a policy that clones each
//! request and retries once on 401 (the peer that can also retry, as in `hot_path`). Requests are
//! built inside the tasks' timed loops, the same way
//! for every variant (each task parses its own `Uri`, so no refcount is shared across tasks). After
//! the criterion group the variants run again in interleaved rounds (`paired contention` lines).

mod common;

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use http::{Request, Response, Uri};
use http_body_util::Full;
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};

use common::*;

const TASKS: usize = 64;
const PER_TASK: usize = 20_000;
const REQUESTS: u64 = (TASKS * PER_TASK) as u64;

async fn run<S>(svc: &S) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let mut svc = svc.clone();
        tasks.spawn(async move {
            let uri: Uri = API.parse().expect("uri");
            for _ in 0..PER_TASK {
                let response = svc
                    .ready()
                    .await
                    .expect("ready")
                    .call(request(&uri))
                    .await
                    .expect("call");
                black_box(response);
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("task");
    }
    start.elapsed()
}

/// tower-http's static header, except that every clone (one per task) builds its own header value, so
/// no two tasks share the header's reference count: shows what the shared count costs under
/// contention.
struct OwnHeader<S> {
    svc: S,
    make: fn() -> S,
}

impl<S> Clone for OwnHeader<S> {
    fn clone(&self) -> Self {
        OwnHeader {
            svc: (self.make)(),
            make: self.make,
        }
    }
}

impl<S: Service<R>, R> Service<R> for OwnHeader<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.svc.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> S::Future {
        self.svc.call(request)
    }
}

/// Any service plus one clone of a shared `Arc` per request, held until the response future is done:
/// what nifty-auth's retry copy does with its `NiftyAuth` handle. Shows what that costs under
/// contention.
#[derive(Clone)]
struct ArcPerRequest<S> {
    svc: S,
    shared: Arc<()>,
}

/// The future of [`ArcPerRequest`]: the inner future, and the `Arc` clone until it completes.
struct HoldArc<F> {
    future: F,
    _held: Arc<()>,
}

impl<F: Future + Unpin> Future for HoldArc<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        Pin::new(&mut self.future).poll(cx)
    }
}

impl<S: Service<R>, R> Service<R> for ArcPerRequest<S>
where
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = HoldArc<S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), S::Error>> {
        self.svc.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> HoldArc<S::Future> {
        HoldArc {
            _held: Arc::clone(&self.shared),
            future: self.svc.call(request),
        }
    }
}

fn bench_variant<S>(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str, svc: S)
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    if paired_only() {
        return;
    }
    group.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let svc = svc.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += run(&svc).await;
                }
                total
            }
        })
    });
}

fn contention(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let auth = rt.block_on(warm_auth());
    let nifty = auth.layer();
    let nifty_no_retry = auth.layer().retry_on_unauthorized(false);
    let naive = NaiveAuthLayer::new(TOKEN);

    let bearer = expected_bearer();
    rt.block_on(async {
        check_attaches(tower_http_layer().layer(echo_service()), Some(&bearer)).await;
        check_attaches(tower_http_retry(echo_service()), Some(&bearer)).await;
        check_attaches(nifty.layer(echo_service()), Some(&bearer)).await;
        check_attaches(naive.layer(echo_service()), Some(&bearer)).await;
    });

    let mut group = c.benchmark_group("contention");
    group.throughput(Throughput::Elements(REQUESTS));
    group.sampling_mode(SamplingMode::Flat);
    bench_variant(&mut group, &rt, "a_bare", ok_service());
    bench_variant(
        &mut group,
        &rt,
        "b_tower_http_static",
        tower_http_layer().layer(ok_service()),
    );
    let make: fn() -> _ = || tower_http_layer().layer(ok_service());
    let own_header = OwnHeader { svc: make(), make };
    bench_variant(
        &mut group,
        &rt,
        "b2_tower_http_header_per_task",
        own_header.clone(),
    );
    let arc_per_request = ArcPerRequest {
        svc: tower_http_layer().layer(ok_service()),
        shared: Arc::new(()),
    };
    bench_variant(
        &mut group,
        &rt,
        "b3_tower_http_plus_shared_arc",
        arc_per_request.clone(),
    );
    bench_variant(
        &mut group,
        &rt,
        "b4_tower_http_with_retry",
        tower_http_retry(ok_service()),
    );
    bench_variant(&mut group, &rt, "c_nifty_auth", nifty.layer(ok_service()));
    bench_variant(
        &mut group,
        &rt,
        "c2_nifty_auth_no_retry",
        nifty_no_retry.layer(ok_service()),
    );
    bench_variant(&mut group, &rt, "d_naive_mutex", naive.layer(ok_service()));
    group.finish();

    // The same variants, interleaved: ratios that a drifting machine load cannot skew.
    let (bare, tower_http, tower_retry, with_retry, without_retry, naive) = (
        ok_service(),
        tower_http_layer().layer(ok_service()),
        tower_http_retry(ok_service()),
        nifty.layer(ok_service()),
        nifty_no_retry.layer(ok_service()),
        naive.layer(ok_service()),
    );
    let rt = &rt;
    if paired_enabled() {
        paired_with_peer(
            "contention",
            7,
            REQUESTS,
            "req",
            Some("b4_tower_http_with_retry"),
            vec![
                Variant::new("a_bare", move || rt.block_on(run(&bare))),
                Variant::new("b_tower_http_static", move || rt.block_on(run(&tower_http))),
                Variant::new("b2_tower_http_header_per_task", move || {
                    rt.block_on(run(&own_header))
                }),
                Variant::new("b3_tower_http_plus_shared_arc", move || {
                    rt.block_on(run(&arc_per_request))
                }),
                Variant::new("b4_tower_http_with_retry", move || {
                    rt.block_on(run(&tower_retry))
                }),
                Variant::new("c_nifty_auth", move || rt.block_on(run(&with_retry))),
                Variant::new("c2_nifty_auth_no_retry", move || {
                    rt.block_on(run(&without_retry))
                }),
                Variant::new("d_naive_mutex", move || rt.block_on(run(&naive))),
            ],
        );
    }
}

criterion_group! {
    name = benches;
    // 10 iterations of 1.28M requests per variant; a "unable to complete 10 samples" note for the
    // slow variant (d) is expected and harmless.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10);
    targets = contention
}
criterion_main!(benches);
