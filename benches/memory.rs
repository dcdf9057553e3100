//! Group 5, `memory`: sizes, heap held, heap allocations per request, and RSS before/after 1,000,000
//! requests through the layer. A plain bench binary (`harness = false`) that prints; a counting
//! `#[global_allocator]` counts every allocation of this process (single thread: a current-thread
//! runtime).
//!
//! Run alone with `cargo bench --bench memory`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use nifty_auth::{
    Credentials, NiftyAuth, NiftyAuthLayer, NiftyAuthService, ResponseFuture, TokenSet,
};
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};

use common::*;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static ALLOCATED_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counters are
// plain atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size(), Relaxed);
        LIVE_BYTES.fetch_add(layout.size(), Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size(), Relaxed);
        LIVE_BYTES.fetch_add(layout.size(), Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        ALLOCATED_BYTES.fetch_add(new_size, Relaxed);
        LIVE_BYTES.fetch_add(new_size, Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> usize {
    LIVE_BYTES.load(Relaxed)
}

/// Resident set size in KiB, from `/proc/self/status` (`VmRSS`); 0 where there is no procfs.
fn rss_kib() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Sends `n` requests through `svc` one after the other.
async fn drive<S>(svc: &mut S, uri: &Uri, n: usize)
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..n {
        let response = svc
            .ready()
            .await
            .expect("ready")
            .call(request(uri))
            .await
            .expect("call");
        black_box(response);
    }
}

/// (allocations, bytes allocated) per request, request construction included.
fn per_request<S>(rt: &Runtime, mut svc: S, uri: &Uri) -> (f64, f64)
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    const N: usize = 100_000;
    rt.block_on(async {
        drive(&mut svc, uri, 1_000).await;
        let (count, bytes) = (ALLOCATIONS.load(Relaxed), ALLOCATED_BYTES.load(Relaxed));
        drive(&mut svc, uri, N).await;
        let count = ALLOCATIONS.load(Relaxed) - count;
        let bytes = ALLOCATED_BYTES.load(Relaxed) - bytes;
        (count as f64 / N as f64, bytes as f64 / N as f64)
    })
}

/// Extra heap held while 1,000 response futures of `svc` are in flight (called, not yet polled),
/// per future; the futures themselves sit in a pre-allocated `Vec`, so their inline size is not in it.
fn held_in_flight<S>(rt: &Runtime, mut svc: S, uri: &Uri) -> isize
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    const N: usize = 1_000;
    rt.block_on(async {
        let mut requests: Vec<_> = (0..N).map(|_| request(uri)).collect();
        let mut futures = Vec::with_capacity(N);
        let before = live() as isize;
        for request in requests.drain(..) {
            futures.push(svc.ready().await.expect("ready").call(request));
        }
        let held = live() as isize - before;
        for future in futures.drain(..) {
            black_box(future.await.expect("response"));
        }
        held / N as isize
    })
}

/// Allocations per request of a POST (1 KiB body) answered 401 and retried with a newer token (the
/// `retry_path` mechanics), the token publication not counted; and the same POST answered 200.
fn retry_allocations(rt: &Runtime, auth: &NiftyAuth) -> (f64, f64) {
    const N: usize = 64;
    const ROUNDS: usize = 200;
    let uri: Uri = API.parse().expect("uri");
    let mut svc = auth.layer().layer(stale_401_service());
    let mut counts = [0usize; 2];
    rt.block_on(async {
        for (k, first) in ["fresh-a", "stale"].into_iter().enumerate() {
            for round in 0..ROUNDS {
                auth.set_tokens(
                    TokenSet::new(format!("{first}-{round}"))
                        .with_expires_in(Duration::from_secs(3600)),
                )
                .await
                .expect("set_tokens");
                let mut requests: Vec<_> = (0..N)
                    .map(|_| post(&uri, Bytes::from(vec![b'x'; 1024])))
                    .collect();
                let mut futures = Vec::with_capacity(N);
                let start = ALLOCATIONS.load(Relaxed);
                for request in requests.drain(..) {
                    futures.push(svc.ready().await.expect("ready").call(request));
                }
                let sent = ALLOCATIONS.load(Relaxed) - start;
                auth.set_tokens(
                    TokenSet::new(format!("fresh-{round}"))
                        .with_expires_in(Duration::from_secs(3600)),
                )
                .await
                .expect("set_tokens");
                let start = ALLOCATIONS.load(Relaxed);
                for future in futures.drain(..) {
                    let response = future.await.expect("response");
                    assert_eq!(response.status(), 200);
                }
                counts[k] += sent + ALLOCATIONS.load(Relaxed) - start;
            }
        }
    });
    let per = |count: usize| count as f64 / (N * ROUNDS) as f64;
    (per(counts[0]), per(counts[1]))
}

fn future_size<S, B>(_: &S) -> usize
where
    S: Service<Request<B>>,
{
    std::mem::size_of::<S::Future>()
}

fn response_future_size<S>(_: &NiftyAuthService<S>) -> usize
where
    S: Service<Request<Full<Bytes>>>,
{
    size_of::<ResponseFuture<S, Full<Bytes>>>()
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let uri: Uri = API.parse().expect("uri");

    // Bytes held per NiftyAuth: built with the default (rustls) token client, and with a trivial
    // custom client, plus one cached token.
    let before = live();
    let default_client = rt.block_on(warm_auth());
    let with_default_client = live() - before;
    let before = live();
    let custom_client = rt.block_on(async {
        let auth = NiftyAuth::builder(Credentials::new("bench-client", "bench-secret"))
            .token_url(DEAD_TOKEN_URL)
            .allowed_origins(["https://openapi.niftypm.com"])
            .http_client(ok_service())
            .build()
            .expect("build");
        auth.set_tokens(TokenSet::new(TOKEN).with_expires_in(Duration::from_secs(3600)))
            .await
            .expect("set_tokens");
        auth
    });
    let with_custom_client = live() - before;
    drop(custom_client);
    let auth = default_client;

    let bare = ok_service();
    let tower_http = tower_http_layer().layer(ok_service());
    let tower_http_with_retry = tower_http_retry(ok_service());
    let nifty = auth.layer().layer(ok_service());
    let nifty_no_retry = auth
        .layer()
        .retry_on_unauthorized(false)
        .layer(ok_service());
    let naive = NaiveAuthLayer::new(TOKEN).layer(ok_service());

    println!("memory: sizes (bytes, inline)");
    println!(
        "  NiftyAuth                             {:>5}",
        size_of::<NiftyAuth>()
    );
    println!(
        "  NiftyAuthLayer                        {:>5}",
        size_of::<NiftyAuthLayer>()
    );
    println!(
        "  NiftyAuthService<inner>               {:>5}",
        size_of_val(&nifty)
    );
    println!(
        "  ResponseFuture<inner, Full<Bytes>>    {:>5}",
        response_future_size(&nifty)
    );
    println!(
        "  inner service_fn / its future         {:>5} / {}",
        size_of_val(&bare),
        future_size::<_, Full<Bytes>>(&bare)
    );
    println!(
        "  tower-http AddAuthorization / future  {:>5} / {}",
        size_of_val(&tower_http),
        future_size::<_, Full<Bytes>>(&tower_http)
    );
    println!(
        "  tower-http + tower Retry / future     {:>5} / {}",
        size_of_val(&tower_http_with_retry),
        future_size::<_, Full<Bytes>>(&tower_http_with_retry)
    );
    println!(
        "  naive layer service / future          {:>5} / {}",
        size_of_val(&naive),
        future_size::<_, Full<Bytes>>(&naive)
    );
    println!(
        "  Request<Full<Bytes>>                  {:>5}",
        size_of::<Request<Full<Bytes>>>()
    );
    println!("memory: heap held per NiftyAuth (one cached token)");
    println!("  with the default rustls token client  {with_default_client:>7} B");
    println!("  with a custom token client            {with_custom_client:>7} B");

    println!("memory: extra heap held per in-flight request, over the bare service");
    let base = held_in_flight(&rt, bare, &uri);
    for (name, held) in [
        (
            "b tower-http",
            held_in_flight(&rt, tower_http.clone(), &uri),
        ),
        (
            "b-retry tower-http+Retry",
            held_in_flight(&rt, tower_http_with_retry.clone(), &uri),
        ),
        ("c nifty-auth", held_in_flight(&rt, nifty.clone(), &uri)),
        (
            "c' nifty-auth, no retry",
            held_in_flight(&rt, nifty_no_retry.clone(), &uri),
        ),
        ("d naive", held_in_flight(&rt, naive.clone(), &uri)),
    ] {
        println!("  {name:<24} {:>5} B", held - base);
    }

    println!(
        "memory: heap allocations per request (GET, 3 headers; request construction included)"
    );
    let (a, a_bytes) = per_request(&rt, bare, &uri);
    println!(
        "  a bare                    {a:>5.2} allocs  {a_bytes:>6.0} B   (the request itself)"
    );
    for (name, (n, bytes)) in [
        ("b tower-http", per_request(&rt, tower_http, &uri)),
        (
            "b-retry tower-http+Retry",
            per_request(&rt, tower_http_with_retry, &uri),
        ),
        ("c nifty-auth", per_request(&rt, nifty.clone(), &uri)),
        (
            "c' nifty-auth, no retry",
            per_request(&rt, nifty_no_retry, &uri),
        ),
        ("d naive", per_request(&rt, naive, &uri)),
    ] {
        println!(
            "  {name:<24}  {n:>5.2} allocs  {bytes:>6.0} B   (+{:.2} allocs, +{:.0} B over a)",
            n - a,
            bytes - a_bytes
        );
    }
    let (plain, retried) = retry_allocations(&rt, &auth);
    println!(
        "  POST 1 KiB, c, answered 200: {plain:.2} allocs; answered 401 then retried: {retried:.2} \
         allocs (request construction and token publication excluded)"
    );

    // No growth: RSS and live heap after a warm-up, then after 1,000,000 requests through the layer.
    let mut svc = nifty;
    rt.block_on(drive(&mut svc, &uri, 10_000));
    let (rss0, live0) = (rss_kib(), live());
    rt.block_on(drive(&mut svc, &uri, 1_000_000));
    let (rss1, live1) = (rss_kib(), live());
    println!("memory: 1,000,000 requests through NiftyAuthLayer (c)");
    println!(
        "  RSS        before {rss0:>7} KiB  after {rss1:>7} KiB  (delta {:+} KiB)",
        rss1 as isize - rss0 as isize
    );
    println!(
        "  live heap  before {live0:>7} B    after {live1:>7} B    (delta {:+} B)",
        live1 as isize - live0 as isize
    );
}
