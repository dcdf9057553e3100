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
//! Issue 16: (f) the floor of a many-grants layer — 16 `RwLock` shards of `HashMap<key carrying its
//! hash, HeaderValue>` as a layer — beside (g100k) in the `paired grants_floor` lines: 100,000 cached
//! grants, requests in a shuffled round-robin (fixed seed; the same sequence of `GrantId` extensions
//! for every variant of the group, bare included). Target: (g100k)'s overhead ≤ 1.5× (f)'s.
//! Beside them (f2): the floor under `tower::retry::Retry` with a policy cloning each request (the
//! same peer as hot_path's (b2)) — the composition a user could build that also retries a 401.
//! Requests are built (extension included) inside the timed loop for every variant.
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

/// Sends `iters` requests through `svc`, each carrying the next grant id of `ids` (cycled in their
/// order: the callers pass a shuffled order). Each request is built, its `GrantId` extension inserted,
/// inside the timed loop, the same way for every variant.
async fn run<S>(svc: &mut S, uri: &Uri, ids: &[GrantId], iters: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let mut next = 0;
    let start = Instant::now();
    for _ in 0..iters {
        let mut request = request(uri);
        request.extensions_mut().insert(ids[next].clone());
        next += 1;
        if next == ids.len() {
            next = 0;
        }
        let response = svc
            .ready()
            .await
            .expect("ready")
            .call(request)
            .await
            .expect("call");
        black_box(response);
    }
    start.elapsed()
}

/// `ids` in a shuffled order (fixed seed, so every run and every variant sends the same sequence):
/// a round-robin over them visits the grants in no order the memory layout could favour.
fn shuffled(ids: &[GrantId]) -> Vec<GrantId> {
    let mut ids = ids.to_vec();
    fastrand::Rng::with_seed(0x6e69_6674).shuffle(&mut ids);
    ids
}

/// The floor of a many-grants layer (issue 16): 16 `RwLock` shards of `HashMap<key carrying its
/// hash, HeaderValue>`, the header inserted like tower-http's, the inner future returned as it is.
/// The request's `GrantId` gives the hash (`GrantId` hashes as its precomputed hash); no token
/// expiry, refresh, retry or eviction.
mod floor {
    use std::borrow::Borrow;
    use std::collections::HashMap;
    use std::hash::{BuildHasherDefault, Hash, Hasher};
    use std::sync::Arc;

    use http::header::AUTHORIZATION;
    use http::{HeaderValue, Request};
    use nifty_auth::GrantId;
    use parking_lot::RwLock;
    use tower::{Layer, Service};

    const SHARDS: usize = 16;

    /// A hasher that passes on the one `u64` it is given (the key's precomputed hash).
    #[derive(Default)]
    pub struct PassThrough(u64);

    impl Hasher for PassThrough {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(b);
            }
        }
        fn write_u64(&mut self, n: u64) {
            self.0 = n;
        }
    }

    fn hash_of(id: &GrantId) -> u64 {
        let mut hasher = PassThrough::default();
        id.hash(&mut hasher);
        hasher.finish()
    }

    /// The key: the id and its hash.
    pub struct Key {
        hash: u64,
        id: GrantId,
    }

    impl Hash for Key {
        fn hash<H: Hasher>(&self, state: &mut H) {
            state.write_u64(self.hash);
        }
    }
    impl PartialEq for Key {
        fn eq(&self, other: &Self) -> bool {
            self.hash == other.hash && self.id == other.id
        }
    }
    impl Eq for Key {}
    impl Borrow<GrantId> for Key {
        fn borrow(&self) -> &GrantId {
            &self.id
        }
    }

    type Map = HashMap<Key, HeaderValue, BuildHasherDefault<PassThrough>>;

    #[repr(align(128))]
    struct Shard(RwLock<Map>);

    /// The floor layer.
    #[derive(Clone)]
    pub struct FloorLayer {
        shards: Arc<[Shard]>,
    }

    impl FloorLayer {
        /// Every grant of `ids` with a header of its own (as each grant has its own token): built
        /// from a `String` like nifty-auth's, and cloned once so its bytes are already shared.
        pub fn new(ids: &[GrantId], bearer: &str) -> Self {
            let shards: Vec<Shard> = (0..SHARDS).map(|_| Shard(RwLock::default())).collect();
            for id in ids {
                let mut header = HeaderValue::try_from(bearer.to_owned()).expect("header");
                header.set_sensitive(true);
                drop(header.clone());
                let hash = hash_of(id);
                shards[(hash >> 60) as usize % SHARDS].0.write().insert(
                    Key {
                        hash,
                        id: id.clone(),
                    },
                    header,
                );
            }
            FloorLayer {
                shards: shards.into(),
            }
        }
    }

    impl<S> Layer<S> for FloorLayer {
        type Service = Floor<S>;
        fn layer(&self, inner: S) -> Floor<S> {
            Floor {
                inner,
                shards: Arc::clone(&self.shards),
            }
        }
    }

    #[derive(Clone)]
    pub struct Floor<S> {
        inner: S,
        shards: Arc<[Shard]>,
    }

    impl<S: Service<Request<B>>, B> Service<Request<B>> for Floor<S> {
        type Response = S::Response;
        type Error = S::Error;
        type Future = S::Future;

        fn poll_ready(
            &mut self,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), S::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, mut request: Request<B>) -> S::Future {
            let grant = request.extensions().get::<GrantId>().expect("a GrantId");
            let hash = hash_of(grant);
            let header = self.shards[(hash >> 60) as usize % SHARDS]
                .0
                .read()
                .get(grant)
                .cloned()
                .expect("a cached grant");
            request.headers_mut().insert(AUTHORIZATION, header);
            self.inner.call(request)
        }
    }
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
    // Round-robin in a shuffled order (fixed seed), the same for every variant.
    let (thousand_ids, many_ids) = (shuffled(&thousand_ids), shuffled(&many_ids));
    let floor = floor::FloorLayer::new(&many_ids, &expected_bearer());
    let floor_one = floor::FloorLayer::new(&one_ids, &expected_bearer());

    // Every variant attaches the same header (checked once, not measured).
    let bearer = expected_bearer();
    rt.block_on(async {
        for (grants, ids) in [(&one, &one_ids), (&many, &many_ids)] {
            let mut request = request(&uri);
            request.extensions_mut().insert(ids[0].clone());
            let svc = grants.layer().layer(echo_service());
            check_attaches_to(svc, request, Some(bearer.as_str())).await;
        }
        let for_grant = || {
            let mut request = request(&uri);
            request.extensions_mut().insert(many_ids[7].clone());
            request
        };
        check_attaches_to(
            floor.layer(echo_service()),
            for_grant(),
            Some(bearer.as_str()),
        )
        .await;
        let retrying = tower::retry::RetryLayer::new(RetryOnceOn401::default())
            .layer(floor.layer(echo_service()));
        check_attaches_to(retrying, for_grant(), Some(bearer.as_str())).await;
    });

    let mut group = c.benchmark_group("grants_hot_path");
    group.throughput(Throughput::Elements(1));
    for (name, grants, ids) in [
        ("g1_one_grant", &one, &one_ids),
        ("g1k_1000_grants", &thousand, &thousand_ids),
        ("g100k_100000_grants", &many, &many_ids),
    ] {
        if paired_only() {
            break;
        }
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
        // Issue 16: the 100,000-grant shuffled round-robin beside its floor, every variant's
        // requests carrying the same sequence of `GrantId`s.
        paired_with_peer(
            "grants_floor",
            15,
            PAIRED_REQUESTS,
            "req",
            Some("f_floor_100000_grants"),
            vec![
                variant("a_bare", &rt, ok_service(), &uri, &many_ids),
                variant(
                    "b_tower_http_static",
                    &rt,
                    tower_http_layer().layer(ok_service()),
                    &uri,
                    &many_ids,
                ),
                variant(
                    "f_floor_100000_grants",
                    &rt,
                    floor.layer(ok_service()),
                    &uri,
                    &many_ids,
                ),
                // The composition a user could build from these parts to also retry a 401: the
                // floor under tower's `Retry` cloning each request (as hot_path's (b2)).
                variant(
                    "f2_floor_under_retry",
                    &rt,
                    tower::retry::RetryLayer::new(RetryOnceOn401::default())
                        .layer(floor.layer(ok_service())),
                    &uri,
                    &many_ids,
                ),
                variant(
                    "g100k_100000_grants",
                    &rt,
                    many.layer().layer(ok_service()),
                    &uri,
                    &many_ids,
                ),
                variant(
                    "g100k_no_retry",
                    &rt,
                    many.layer()
                        .retry_on_unauthorized(false)
                        .layer(ok_service()),
                    &uri,
                    &many_ids,
                ),
            ],
        );
        paired_with_peer(
            "grants_hot_path",
            15,
            PAIRED_REQUESTS,
            "req",
            Some("f_floor_one_grant"),
            vec![
                variant("a_bare", &rt, ok_service(), &uri, &one_ids),
                variant(
                    "f_floor_one_grant",
                    &rt,
                    floor_one.layer(ok_service()),
                    &uri,
                    &one_ids,
                ),
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
