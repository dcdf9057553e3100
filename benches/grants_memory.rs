//! `grants_memory`: heap held per cached **idle** grant of a `NiftyGrants` at 100,000 grants (issue
//! 10, "Scale"), with short tokens (40 bytes) and JWT-sized ones (800 bytes). A plain bench binary
//! (`harness = false`) that prints; a counting `#[global_allocator]` (as in `memory.rs`) counts the
//! live bytes of this process and, per exact allocation size, the live allocations (single thread: a
//! current-thread runtime).
//!
//! Each scenario builds a fresh `NiftyGrants` over a store that keeps nothing (saves are dropped), so
//! only the grants cache is measured, then `set_tokens` for 100,000 grants (ids built inside the
//! loop and dropped: the cache's own copy of each id is counted). Token strings are made with an
//! exact capacity, as a JSON parser makes them.
//!
//! **Token string bytes** of one grant = the access token + the refresh token + the bearer header's
//! copy `Bearer <access token>` (7 + access bytes). Everything else the grant holds is **overhead**,
//! its grant id included (`workspace-000000`, 16 bytes). The target: overhead ≤ 512 B.
//!
//! Run alone with `cargo bench --bench grants_memory`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::ready;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Uri};
use nifty_auth::store::BoxFuture;
use nifty_auth::{BoxError, Credentials, GrantId, NiftyGrants, TokenSet, TokenStore};
use tower::{Layer, ServiceExt};

use common::*;

struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Live allocations by exact size, for sizes up to [`MAX_TRACKED`]; larger ones in the last slot.
static LIVE_BY_SIZE: [AtomicIsize; MAX_TRACKED + 2] =
    [const { AtomicIsize::new(0) }; MAX_TRACKED + 2];
const MAX_TRACKED: usize = 4096;

fn slot(size: usize) -> &'static AtomicIsize {
    &LIVE_BY_SIZE[size.min(MAX_TRACKED + 1)]
}

fn track(size: usize, delta: isize) {
    slot(size).fetch_add(delta, Relaxed);
    if delta > 0 {
        LIVE_BYTES.fetch_add(size, Relaxed);
    } else {
        LIVE_BYTES.fetch_sub(size, Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counters are
// plain atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size(), 1);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        track(layout.size(), 1);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(layout.size(), -1);
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(layout.size(), -1);
        track(new_size, 1);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live bytes and live allocations by size, at one moment.
struct Snapshot {
    bytes: usize,
    by_size: Vec<isize>,
}

fn snapshot() -> Snapshot {
    let by_size = LIVE_BY_SIZE.iter().map(|n| n.load(Relaxed)).collect();
    Snapshot {
        bytes: LIVE_BYTES.load(Relaxed),
        by_size,
    }
}

/// Grants per scenario.
const GRANTS: usize = 100_000;
/// The bearer header's prefix: `Bearer `.
const BEARER_PREFIX: usize = 7;

/// A grant store that keeps nothing: saves succeed and are dropped, loads find nothing. Only the
/// grants cache holds tokens.
#[derive(Debug)]
struct KeepsNothing;

impl TokenStore for KeepsNothing {
    fn load<'a>(
        &'a self,
        _grant: &'a GrantId,
    ) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
        Box::pin(ready(Ok(None)))
    }

    fn save<'a>(
        &'a self,
        _grant: &'a GrantId,
        _tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(ready(Ok(())))
    }

    fn remove<'a>(&'a self, _grant: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(ready(Ok(())))
    }
}

/// A token of exactly `len` bytes (header-safe base64url characters, a JWT's shape when long),
/// unique per `i`, with exactly `len` bytes of capacity.
fn token(kind: &str, i: usize, len: usize) -> String {
    let mut token = format!("{kind}-{i:06}.");
    let filler = b"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9_-0123456789";
    let mut k = 0;
    while token.len() < len {
        token.push(filler[k % filler.len()] as char);
        k += 1;
    }
    token.truncate(len);
    token.shrink_to_fit();
    token
}

fn grant_id(i: usize) -> GrantId {
    GrantId::new(format!("workspace-{i:06}")).expect("grant id")
}

struct Scenario {
    name: &'static str,
    access: usize,
    refresh: usize,
}

impl Scenario {
    /// Token string bytes per grant: access + refresh + `Bearer <access>`.
    fn token_bytes(&self) -> usize {
        self.access + self.refresh + BEARER_PREFIX + self.access
    }
}

/// What one scenario measured, per grant.
struct Measured {
    idle_bytes: f64,
    idle_allocations: f64,
    /// (size, live allocations per grant) of the sizes held about once per grant or more.
    idle_by_size: Vec<(usize, f64)>,
    /// Allocations over 4 KiB (the registry's tables), bytes per grant.
    large_bytes: f64,
    served_extra_bytes: f64,
    served_extra_allocations: f64,
}

fn diff(before: &Snapshot, after: &Snapshot) -> (f64, f64, Vec<(usize, f64)>, f64) {
    let n = GRANTS as f64;
    let bytes = (after.bytes as f64 - before.bytes as f64) / n;
    let mut count = 0isize;
    let mut small_bytes = 0isize;
    let mut by_size = Vec::new();
    for size in 0..=MAX_TRACKED {
        let delta = after.by_size[size] - before.by_size[size];
        count += delta;
        small_bytes += delta * size as isize;
        let per = delta as f64 / n;
        if per.abs() >= 0.05 {
            by_size.push((size, per));
        }
    }
    let large = after.by_size[MAX_TRACKED + 1] - before.by_size[MAX_TRACKED + 1];
    let large_bytes = bytes - small_bytes as f64 / n;
    (bytes, (count + large) as f64 / n, by_size, large_bytes)
}

fn measure(rt: &tokio::runtime::Runtime, scenario: &Scenario) -> Measured {
    let uri: Uri = API.parse().expect("uri");
    rt.block_on(async {
        let grants = NiftyGrants::builder(Credentials::new("bench-client", "bench-secret"))
            .token_url(DEAD_TOKEN_URL)
            .allowed_origins(["https://openapi.niftypm.com"])
            .store(KeepsNothing)
            .max_cached_grants(GRANTS + 16)
            .build()
            .expect("build NiftyGrants");
        // Warm up what is allocated once (the runtime's task machinery, lazy statics), with a grant
        // that is then removed.
        let warm = GrantId::new("warm-up").expect("grant id");
        grants
            .set_tokens(&warm, TokenSet::new("warm-up-token"))
            .await
            .expect("set_tokens");
        grants.remove(&warm).await.expect("remove");
        drop(warm);

        let expires_at = SystemTime::now() + Duration::from_secs(3600);
        let before = snapshot();
        for i in 0..GRANTS {
            let tokens = TokenSet::new(token("at", i, scenario.access))
                .with_refresh_token(token("rt", i, scenario.refresh))
                .with_expires_at(expires_at);
            grants
                .set_tokens(&grant_id(i), tokens)
                .await
                .expect("set_tokens");
        }
        let idle = snapshot();
        assert_eq!(grants.cached_grants(), GRANTS, "every grant is cached");
        assert_eq!(grants.stats().evictions, 0, "no grant was evicted");

        // Then every grant serves one request through its own handle's layer (dropped after).
        for i in 0..GRANTS {
            let svc = grants.grant(&grant_id(i)).layer().layer(ok_service());
            let response = svc.oneshot(request(&uri)).await.expect("request");
            assert_eq!(response.status(), 200);
        }
        let served = snapshot();
        assert_eq!(grants.stats().totals.refreshes, 0, "no refresh");

        let (idle_bytes, idle_allocations, idle_by_size, large_bytes) = diff(&before, &idle);
        let (served_extra_bytes, served_extra_allocations, _, _) = diff(&idle, &served);
        drop(grants);
        Measured {
            idle_bytes,
            idle_allocations,
            idle_by_size,
            large_bytes,
            served_extra_bytes,
            served_extra_allocations,
        }
    })
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let scenarios = [
        Scenario {
            name: "short tokens (40 B access, 40 B refresh)",
            access: 40,
            refresh: 40,
        },
        Scenario {
            name: "JWT-sized tokens (800 B access, 800 B refresh)",
            access: 800,
            refresh: 800,
        },
        Scenario {
            name: "800 B access, 40 B refresh (differential)",
            access: 800,
            refresh: 40,
        },
    ];

    println!("grants_memory: inline sizes (bytes) of the pieces a cached grant is made of");
    for (name, size) in [
        ("GrantId (an Arc)", size_of::<GrantId>()),
        ("TokenSet", size_of::<TokenSet>()),
        ("HeaderValue (the bearer header)", size_of::<HeaderValue>()),
        ("Bytes", size_of::<Bytes>()),
        ("String", size_of::<String>()),
        ("Option<String>", size_of::<Option<String>>()),
        ("SystemTime", size_of::<SystemTime>()),
        ("tokio::time::Instant", size_of::<tokio::time::Instant>()),
        (
            "tokio::sync::Mutex<()>",
            size_of::<tokio::sync::Mutex<()>>(),
        ),
        (
            "parking_lot::Mutex<()>",
            size_of::<parking_lot::Mutex<()>>(),
        ),
    ] {
        println!("  {name:<36} {size:>4}");
    }

    let mut totals = Vec::new();
    for scenario in &scenarios {
        let m = measure(&rt, scenario);
        let token_bytes = scenario.token_bytes();
        let overhead = m.idle_bytes - token_bytes as f64;
        println!(
            "grants_memory: {} — {GRANTS} idle cached grants",
            scenario.name
        );
        println!(
            "  live heap per grant       {:>8.1} B in {:.2} allocations",
            m.idle_bytes, m.idle_allocations
        );
        println!(
            "  token string bytes        {token_bytes:>8} B   (access {} + refresh {} + `Bearer ` {BEARER_PREFIX} + access {})",
            scenario.access, scenario.refresh, scenario.access
        );
        println!(
            "  overhead beyond tokens    {overhead:>8.1} B   (target ≤ 512 B: {})",
            if overhead <= 512.0 { "met" } else { "missed" }
        );
        println!(
            "    of which the registry's tables (allocations > 4 KiB): {:.1} B",
            m.large_bytes
        );
        println!("  live allocations per grant by exact size (≥ 0.05 per grant):");
        for (size, per) in &m.idle_by_size {
            println!(
                "    {size:>5} B × {per:>5.2}  = {:>7.1} B",
                *size as f64 * per
            );
        }
        println!(
            "  after one request each through the grant's layer: {:+.1} B, {:+.2} allocations per grant",
            m.served_extra_bytes, m.served_extra_allocations
        );
        totals.push(m.idle_bytes);
    }
    let grown = (scenarios[1].access - scenarios[0].access) as f64;
    println!(
        "grants_memory: differential (bytes held per byte of token, from the scenarios above)"
    );
    println!(
        "  per access-token byte   {:.2}  (800/40 vs 40/40: the access token's copies)",
        (totals[2] - totals[0]) / grown
    );
    println!(
        "  per refresh-token byte  {:.2}  (800/800 vs 800/40: the refresh token's copies)",
        (totals[1] - totals[2]) / grown
    );
}
