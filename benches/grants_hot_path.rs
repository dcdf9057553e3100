//! Group `grants_hot_path`: the hot path with a `GrantId` lookup (`NiftyGrants::layer`) beside the
//! single-grant layer, at 1, 1,000 and 100,000 cached grants, every token valid and cached.
//!
//! (a) the bare inner service, (b) tower-http's static header, (c) `NiftyAuthLayer` (one grant),
//! (g1 / g1k / g100k) `NiftyGrantsLayer` with that many cached grants, requests spread round-robin
//! over all of them (so at 100,000 every request touches a grant no CPU cache holds, as a busy
//! multi-tenant server's would), and (…_hot) the same registries with every request for one grant
//! (the lookup in a large map, with that grant's data in cache). Every request of every variant carries a `GrantId` in its extensions (inserted outside the
//! timed section; (a), (b) and (c) ignore it), so all variants pay alike for the request's extensions
//! and the differences are the layers' own work.
//! The target: (g) at most (c) + 30 ns, read from the `paired grants_hot_path` lines (interleaved
//! rounds; overheads over (a) are medians of per-round differences).
//!
//! `cargo bench --bench grants_hot_path`

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::{Request, Response, Uri};
use http_body_util::Full;
use nifty_auth::{Credentials, GrantId, NiftyGrants, TokenSet};
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};

use common::*;

/// Requests per variant and round of the paired comparison.
const PAIRED_REQUESTS: u64 = 100_000;
/// Requests built per untimed batch.
const BATCH: usize = 512;

/// `n` grants, each with a valid cached token (no token endpoint is ever called).
fn warm_grants(rt: &Runtime, n: usize) -> (NiftyGrants, Vec<GrantId>) {
    let grants = NiftyGrants::builder(Credentials::new("bench-client", "bench-secret"))
        .token_url(DEAD_TOKEN_URL)
        .allowed_origins(["https://openapi.niftypm.com"])
        .max_cached_grants(n.max(1))
        .build()
        .expect("build NiftyGrants");
    let ids: Vec<GrantId> = (0..n)
        .map(|i| GrantId::new(format!("workspace-{i}")).expect("grant id"))
        .collect();
    rt.block_on(async {
        for id in &ids {
            grants
                .set_tokens(
                    id,
                    TokenSet::new(TOKEN)
                        .with_refresh_token("nifty-rt-unused")
                        .with_expires_in(Duration::from_secs(3600)),
                )
                .await
                .expect("set_tokens");
        }
    });
    assert_eq!(grants.cached_grants(), n);
    (grants, ids)
}

/// Sends `iters` requests through `svc`, each carrying the next grant id of `ids`.
async fn run<S>(svc: &mut S, uri: &Uri, ids: &[GrantId], iters: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let mut total = Duration::ZERO;
    let mut batch = Vec::with_capacity(BATCH);
    let mut left = iters;
    let mut next = 0;
    while left > 0 {
        let n = left.min(BATCH as u64) as usize;
        batch.extend((0..n).map(|_| {
            let mut request = request(uri);
            request
                .extensions_mut()
                .insert(ids[next % ids.len()].clone());
            next += 1;
            request
        }));
        let start = Instant::now();
        for request in batch.drain(..) {
            let response = svc
                .ready()
                .await
                .expect("ready")
                .call(request)
                .await
                .expect("call");
            black_box(response);
        }
        total += start.elapsed();
        left -= n as u64;
    }
    total
}

fn variant<'a, S>(
    name: &'static str,
    rt: &'a Runtime,
    svc: S,
    uri: &'a Uri,
    ids: &'a [GrantId],
) -> Variant<'a>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>> + 'a,
    S::Error: std::fmt::Debug,
{
    let mut svc = svc;
    Variant::new(name, move || {
        rt.block_on(run(&mut svc, uri, ids, PAIRED_REQUESTS))
    })
}

fn grants_hot_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let uri: Uri = API.parse().expect("uri");
    let auth = rt.block_on(warm_auth());
    let (one, one_ids) = warm_grants(&rt, 1);
    let (thousand, thousand_ids) = warm_grants(&rt, 1_000);
    let (many, many_ids) = warm_grants(&rt, 100_000);

    // Every variant attaches the same header (checked once, not measured).
    let bearer = expected_bearer();
    rt.block_on(async {
        for (grants, ids) in [(&one, &one_ids), (&many, &many_ids)] {
            let mut request = request(&uri);
            request.extensions_mut().insert(ids[0].clone());
            let response = grants
                .layer()
                .layer(echo_service())
                .oneshot(request)
                .await
                .expect("call");
            assert_eq!(
                response
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.to_str().unwrap()),
                Some(bearer.as_str())
            );
        }
    });

    let mut group = c.benchmark_group("grants_hot_path");
    group.throughput(Throughput::Elements(1));
    for (name, grants, ids) in [
        ("g1_one_grant", &one, &one_ids),
        ("g1k_1000_grants", &thousand, &thousand_ids),
        ("g100k_100000_grants", &many, &many_ids),
    ] {
        let svc = grants.layer().layer(ok_service());
        group.bench_function(name, |b| {
            let mut next = 0;
            b.to_async(&rt).iter_batched(
                || {
                    let mut request = request(&uri);
                    request
                        .extensions_mut()
                        .insert(ids[next % ids.len()].clone());
                    next += 1;
                    (svc.clone(), request)
                },
                |(svc, request)| async move { black_box(svc.oneshot(request).await) },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();

    if paired_enabled() {
        paired(
            "grants_hot_path",
            15,
            PAIRED_REQUESTS,
            "req",
            vec![
                variant("a_bare", &rt, ok_service(), &uri, &one_ids),
                variant(
                    "b_tower_http_static",
                    &rt,
                    tower_http_layer().layer(ok_service()),
                    &uri,
                    &one_ids,
                ),
                variant(
                    "c_nifty_auth",
                    &rt,
                    auth.layer().layer(ok_service()),
                    &uri,
                    &one_ids,
                ),
                variant(
                    "g1_one_grant",
                    &rt,
                    one.layer().layer(ok_service()),
                    &uri,
                    &one_ids,
                ),
                variant(
                    "g1k_1000_grants",
                    &rt,
                    thousand.layer().layer(ok_service()),
                    &uri,
                    &thousand_ids,
                ),
                variant(
                    "g1k_hot_one_of_1000",
                    &rt,
                    thousand.layer().layer(ok_service()),
                    &uri,
                    &thousand_ids[..1],
                ),
                variant(
                    "g100k_hot_one_of_100000",
                    &rt,
                    many.layer().layer(ok_service()),
                    &uri,
                    &many_ids[..1],
                ),
                variant(
                    "g100k_100000_grants",
                    &rt,
                    many.layer().layer(ok_service()),
                    &uri,
                    &many_ids,
                ),
            ],
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = grants_hot_path
}
criterion_main!(benches);
