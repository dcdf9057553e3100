//! Group 4, `retry_path`: a POST with a 1 KiB `Full<Bytes>` body answered 401 then 200, against the
//! same POST answered 200, on a current-thread runtime.
//!
//! The retry mechanics are isolated from token calls: requests go out in batches of 64 with a token
//! named `stale-…` (the inner service answers 401 to it, at once); between sending the batch and
//! polling its responses a newer token is published (`set_tokens`, not timed), so each 401 finds a
//! newer token already current and is retried at once with it (200). The timed sections are the 64
//! `ready` + `call`, then the 64 response futures run to completion — the same shape for every
//! variant:
//!
//! - `b_plain_200`: the same batches, tokens that are never rejected (retry copy kept, not used).
//! - `a_plain_200_no_retry`: `retry_on_unauthorized(false)`: no retry copy at all.
//! - `c_retry_401_then_200`: every request is answered 401, then retried and answered 200.
//! - `copy_1kib_body`: `Bytes::copy_from_slice` of the 1 KiB body: "the cost of copying the body once".
//! - `retry_with_token_call`: end to end, one request answered 401 whose refresh is a real token call
//!   to `FakeNifty` over loopback HTTP, then the retry (the token call dominates).
//!
//! Bodies are built per request as `Bytes::from(Vec<u8>)` (as a serializer would hand them over),
//! outside the timed sections.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{StatusCode, Uri};
use nifty_auth::testing::FakeNifty;
use nifty_auth::{NiftyAuth, NiftyAuthLayer, TokenSet};
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};

use common::*;

const BATCH: usize = 64;
const BODY_LEN: usize = 1024;
/// Requests per variant and round of the paired comparison.
const PAIRED_REQUESTS: u64 = 20_000;

fn body() -> Bytes {
    Bytes::from(vec![b'x'; BODY_LEN])
}

async fn publish(auth: &NiftyAuth, name: String) {
    auth.set_tokens(TokenSet::new(name).with_expires_in(Duration::from_secs(3600)))
        .await
        .expect("set_tokens");
}

/// Runs `iters` requests in batches: send the batch with a token named `{first}-…`, publish a token
/// named `fresh-…` (untimed), complete the batch (every answer must be 200). Returns the timed total.
async fn batches(
    auth: &NiftyAuth,
    layer: &NiftyAuthLayer,
    first: &str,
    iters: u64,
    counter: &AtomicU64,
) -> Duration {
    let uri: Uri = API.parse().expect("uri");
    let mut svc = layer.layer(stale_401_service());
    let mut requests = Vec::with_capacity(BATCH);
    let mut futures = Vec::with_capacity(BATCH);
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(BATCH as u64) as usize;
        let id = counter.fetch_add(1, Ordering::Relaxed);
        publish(auth, format!("{first}-{id}")).await;
        requests.extend((0..n).map(|_| post(&uri, body())));

        let start = Instant::now();
        for request in requests.drain(..) {
            futures.push(svc.ready().await.expect("ready").call(request));
        }
        total += start.elapsed();

        publish(auth, format!("fresh-{id}")).await;

        let start = Instant::now();
        for future in futures.drain(..) {
            let response = future.await.expect("response");
            assert_eq!(response.status(), StatusCode::OK);
            black_box(response);
        }
        total += start.elapsed();
        left -= n as u64;
    }
    total
}

fn retry_path(c: &mut Criterion) {
    let rt: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let auth = rt.block_on(warm_auth());
    let counter = AtomicU64::new(0);

    // Sanity, not timed: stale-token batches come back 200 (so they were retried with the newer
    // token, without a token call: the token URL is dead), and fresh ones too.
    rt.block_on(async {
        batches(&auth, &auth.layer(), "stale", 3 * BATCH as u64, &counter).await;
        batches(&auth, &auth.layer(), "fresh-a", 3 * BATCH as u64, &counter).await;
    });

    let mut group = c.benchmark_group("retry_path");
    group.throughput(Throughput::Elements(1));
    let variants = [
        (
            "a_plain_200_no_retry",
            auth.layer().retry_on_unauthorized(false),
            "fresh-a",
        ),
        ("b_plain_200", auth.layer(), "fresh-a"),
        ("c_retry_401_then_200", auth.layer(), "stale"),
    ];
    for (name, layer, first) in variants.clone() {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (auth, layer, counter) = (&auth, &layer, &counter);
                async move { batches(auth, layer, first, iters, counter).await }
            })
        });
    }
    // The same three, interleaved (time/b of c is the retry ratio).
    let (rt_ref, auth_ref, counter_ref) = (&rt, &auth, &counter);
    if paired_enabled() {
        paired(
            "retry_path",
            15,
            PAIRED_REQUESTS,
            "req",
            variants
                .into_iter()
                .map(|(name, layer, first)| {
                    Variant::new(name, move || {
                        rt_ref.block_on(batches(
                            auth_ref,
                            &layer,
                            first,
                            PAIRED_REQUESTS,
                            counter_ref,
                        ))
                    })
                })
                .collect(),
        );
    }

    let source = vec![b'x'; BODY_LEN];
    group.bench_function("copy_1kib_body", |b| {
        b.iter(|| black_box(Bytes::copy_from_slice(black_box(&source))))
    });

    // End to end: the 401 is followed by a real token call to FakeNifty (loopback HTTP).
    let fake = rt.block_on(FakeNifty::start()).expect("fake nifty");
    let fake_auth = NiftyAuth::builder(fake.credentials())
        .token_url(fake.token_url().as_str())
        .allowed_origins(["https://openapi.niftypm.com"])
        .build()
        .expect("build");
    let calls = AtomicU64::new(0);
    let sent = AtomicU64::new(0);
    group.sample_size(20);
    group.bench_function("retry_with_token_call", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (fake, auth, counter, calls, sent) = (&fake, &fake_auth, &counter, &calls, &sent);
            async move {
                let uri: Uri = API.parse().expect("uri");
                let mut svc = auth.layer().layer(stale_401_service());
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let id = counter.fetch_add(1, Ordering::Relaxed);
                    auth.set_tokens(
                        TokenSet::new(format!("stale-{id}"))
                            .with_refresh_token(fake.issue_refresh_token())
                            .with_expires_in(Duration::from_secs(3600)),
                    )
                    .await
                    .expect("set_tokens");
                    let request = post(&uri, body());
                    let before = fake.token_calls();
                    let start = Instant::now();
                    let response = svc
                        .ready()
                        .await
                        .expect("ready")
                        .call(request)
                        .await
                        .expect("call");
                    total += start.elapsed();
                    assert_eq!(response.status(), StatusCode::OK);
                    calls.fetch_add((fake.token_calls() - before) as u64, Ordering::Relaxed);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                total
            }
        })
    });
    println!(
        "retry_path/retry_with_token_call: {} requests, {} token calls",
        sent.load(Ordering::Relaxed),
        calls.load(Ordering::Relaxed)
    );
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = retry_path
}
criterion_main!(benches);
