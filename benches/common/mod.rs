//! Shared pieces of the benches: the request every variant sends, the inner service that answers at
//! once, the references (tower-http's static header, a naive hand-written layer) and a warm
//! `NiftyAuth`.
#![allow(
    dead_code,
    reason = "each bench file uses a different subset of the helpers"
)]

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use nifty_auth::{BoxError, Credentials, NiftyAuth, TokenSet};
use tower::{Layer, Service, ServiceExt};
use tower_http::auth::AddAuthorizationLayer;

/// The API URL every hot-path request goes to (inside the allowed origins of [`warm_auth`]).
pub const API: &str = "https://openapi.niftypm.com/api/v1.0/projects?archived=false";
/// A token URL that is never called: a call would fail (nothing listens on port 1) and the bench
/// would panic, so a passing bench proves no token call happened.
pub const DEAD_TOKEN_URL: &str = "http://127.0.0.1:1/oauth/token";
/// The access token of the references and of the warm cache (same length, same header).
pub const TOKEN: &str = "nifty-at-2f8c0e6b5a1d4c3e9b7a6f5e4d3c2b1a0f9e8d7c";

/// What the inner services answer: a response, at once.
pub type Answer = Ready<Result<Response<Full<Bytes>>, Infallible>>;

/// An inner service of the benches: answers at once, copyable (so `Clone`), `Send + Sync`.
pub trait Inner:
    Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = Answer,
    > + Copy
    + Send
    + Sync
    + 'static
{
}

impl<T> Inner for T where
    T: Service<
            Request<Full<Bytes>>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
            Future = Answer,
        > + Copy
        + Send
        + Sync
        + 'static
{
}

/// The one way every variant builds its request: a GET with three ordinary headers, values parsed
/// from `&str` as an application would.
pub fn request(uri: &Uri) -> Request<Full<Bytes>> {
    Request::get(uri.clone())
        .header(USER_AGENT, "nifty-auth-bench/0.1")
        .header(ACCEPT, "application/json")
        .header(ACCEPT_ENCODING, "gzip")
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// A POST with `body` (JSON content type) and the same ordinary headers.
pub fn post(uri: &Uri, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(uri.clone())
        .header(USER_AGENT, "nifty-auth-bench/0.1")
        .header(ACCEPT, "application/json")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("request")
}

fn answer_ok(request: Request<Full<Bytes>>) -> Answer {
    black_box(&request);
    drop(request);
    ready(Ok(Response::new(Full::new(Bytes::new()))))
}

/// The inner service: answers 200 at once (a ready future), after dropping the request.
pub fn ok_service() -> impl Inner {
    tower::service_fn(answer_ok)
}

fn answer_stale_401(request: Request<Full<Bytes>>) -> Answer {
    let stale = request
        .headers()
        .get(AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().starts_with(b"Bearer stale-"));
    black_box(&request);
    drop(request);
    let mut response = Response::new(Full::new(Bytes::new()));
    if stale {
        *response.status_mut() = StatusCode::UNAUTHORIZED;
    }
    ready(Ok(response))
}

/// An inner service that answers 401 to any `Bearer stale-…` token and 200 to everything else, at once.
pub fn stale_401_service() -> impl Inner {
    tower::service_fn(answer_stale_401)
}

/// Reference (b): tower-http's static header, marked sensitive like nifty-auth's.
pub fn tower_http_layer() -> AddAuthorizationLayer {
    AddAuthorizationLayer::bearer(TOKEN).as_sensitive(true)
}

/// A `NiftyAuth` whose token endpoint is never called, for `https://openapi.niftypm.com`.
pub fn dead_auth() -> NiftyAuth {
    NiftyAuth::builder(Credentials::new("bench-client", "bench-secret"))
        .token_url(DEAD_TOKEN_URL)
        .allowed_origins(["https://openapi.niftypm.com"])
        .build()
        .expect("build NiftyAuth")
}

/// [`dead_auth`] with a valid cached token (1 h left): variant (c).
pub async fn warm_auth() -> NiftyAuth {
    let auth = dead_auth();
    auth.set_tokens(
        TokenSet::new(TOKEN)
            .with_refresh_token("nifty-rt-unused")
            .with_expires_in(Duration::from_secs(3600)),
    )
    .await
    .expect("set_tokens");
    auth
}

fn echo_authorization(request: Request<Full<Bytes>>) -> Answer {
    let mut response = Response::new(Full::new(Bytes::new()));
    if let Some(value) = request.headers().get(AUTHORIZATION) {
        response.headers_mut().insert(AUTHORIZATION, value.clone());
    }
    ready(Ok(response))
}

/// An inner service that echoes the request's `Authorization` header in its answer.
pub fn echo_service() -> impl Inner {
    tower::service_fn(echo_authorization)
}

/// Sends one request through `svc` (built over [`echo_service`]) and checks the `Authorization` it
/// attached: every variant is checked once before it is measured.
pub async fn check_attaches<S>(svc: S, expected: Option<&str>)
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let uri: Uri = API.parse().expect("uri");
    check_attaches_to(svc, request(&uri), expected).await;
}

/// [`check_attaches`] for a request of the caller's (e.g. one carrying a `GrantId`).
pub async fn check_attaches_to<S>(svc: S, request: Request<Full<Bytes>>, expected: Option<&str>)
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let response = svc.oneshot(request).await.expect("check request");
    let got = response
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.to_str().expect("ascii").to_owned());
    assert_eq!(
        got.as_deref(),
        expected,
        "the variant does not attach the expected header"
    );
}

/// The bearer header every variant should attach.
pub fn expected_bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// Reference (d): the layer users hand-write — a `tokio::sync::Mutex<Option<String>>` locked per
/// request, `format!("Bearer {}")` and `HeaderValue::from_str` per request, a boxed future.
#[derive(Clone, Debug)]
pub struct NaiveAuthLayer {
    token: Arc<tokio::sync::Mutex<Option<String>>>,
}

impl NaiveAuthLayer {
    pub fn new(token: &str) -> Self {
        NaiveAuthLayer {
            token: Arc::new(tokio::sync::Mutex::new(Some(token.to_owned()))),
        }
    }
}

impl<S> Layer<S> for NaiveAuthLayer {
    type Service = NaiveAuth<S>;

    fn layer(&self, inner: S) -> NaiveAuth<S> {
        NaiveAuth {
            inner,
            token: Arc::clone(&self.token),
        }
    }
}

/// The service of [`NaiveAuthLayer`].
#[derive(Clone, Debug)]
pub struct NaiveAuth<S> {
    inner: S,
    token: Arc<tokio::sync::Mutex<Option<String>>>,
}

impl<S, B> Service<Request<B>> for NaiveAuth<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let token = Arc::clone(&self.token);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let value = {
                let guard = token.lock().await;
                let token = guard.as_deref().ok_or("no token")?;
                HeaderValue::from_str(&format!("Bearer {token}"))?
            };
            request.headers_mut().insert(AUTHORIZATION, value);
            inner.call(request).await.map_err(Into::into)
        })
    }
}

/// One variant of a paired comparison: a name and a closure that runs it once and returns the time.
pub struct Variant<'a> {
    pub name: &'static str,
    pub run: Box<dyn FnMut() -> Duration + 'a>,
}

impl<'a> Variant<'a> {
    pub fn new(name: &'static str, run: impl FnMut() -> Duration + 'a) -> Self {
        Variant {
            name,
            run: Box::new(run),
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Runs the variants in interleaved rounds (round `r` starts with variant `r mod n`), so that slow
/// drifts of a shared, noisy machine hit every variant alike, and prints per-variant medians of
/// ns/request and requests/s, the overhead over the variant named `a_…` (median of per-round
/// differences), that overhead relative to the one of `b_…`, and the per-round time ratios to `b_…`
/// and `d_…` (medians), as `paired <title> …` lines.
pub fn paired(
    title: &str,
    rounds: usize,
    requests_per_run: u64,
    unit: &str,
    variants: Vec<Variant<'_>>,
) {
    paired_with_peer(title, rounds, requests_per_run, unit, None, variants)
}

/// [`paired`], with two more columns for the variant named `peer` (the reference a target names):
/// every variant's time and overhead over `a_…` divided by the peer's (medians of per-round
/// ratios). `NIFTY_BENCH_ROUNDS` overrides `rounds` (quick runs while iterating).
pub fn paired_with_peer(
    title: &str,
    rounds: usize,
    requests_per_run: u64,
    unit: &str,
    peer: Option<&str>,
    mut variants: Vec<Variant<'_>>,
) {
    let rounds = std::env::var("NIFTY_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(rounds);
    // `NIFTY_BENCH_ONLY=name,…`: only these variants (profiling one of them).
    if let Ok(only) = std::env::var("NIFTY_BENCH_ONLY") {
        variants.retain(|v| only.split(',').any(|name| name == v.name));
    }
    let n = variants.len();
    let mut ns: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            let elapsed = (variants[i].run)();
            ns[i].push(elapsed.as_nanos() as f64 / requests_per_run as f64);
        }
    }
    let find = |prefix: &str| variants.iter().position(|v| v.name.starts_with(prefix));
    let (a, b, d) = (find("a_"), find("b_"), find("d_"));
    let per_round = |i: usize, j: Option<usize>, f: &dyn Fn(f64, f64) -> f64| -> f64 {
        match j {
            Some(j) => {
                let mut values: Vec<f64> = (0..rounds).map(|r| f(ns[i][r], ns[j][r])).collect();
                median(&mut values)
            }
            None => f64::NAN,
        }
    };
    let overhead = |i: usize| per_round(i, a, &|x, a| x - a);
    let p = peer.and_then(|name| variants.iter().position(|v| v.name == name));
    // Per round: this variant's overhead over `a_…` divided by the peer's.
    let over_peer = |i: usize| match (a, p) {
        (Some(a), Some(p)) => {
            let mut values: Vec<f64> = (0..rounds)
                .map(|r| (ns[i][r] - ns[a][r]) / (ns[p][r] - ns[a][r]))
                .collect();
            median(&mut values)
        }
        _ => f64::NAN,
    };
    let b_overhead = b.map_or(f64::NAN, overhead);
    // Storms take milliseconds: show them in ms.
    let (scale, time_unit) = if requests_per_run == 1 {
        (1e6, "ms")
    } else {
        (1.0, "ns")
    };
    let cell = |value: f64, precision: usize| {
        if value.is_finite() {
            format!("{value:.precision$}")
        } else {
            "-".to_owned()
        }
    };
    println!("paired {title}: {rounds} interleaved rounds, {requests_per_run} {unit}(s) per variant per round");
    if let Some(peer) = peer {
        println!("paired {title}: peer = {peer}");
    }
    println!(
        "paired {title}: {:<24} {:>10} {:>12} {:>14} {:>11} {:>8} {:>8} {:>11} {:>13}",
        "variant",
        format!("{time_unit}/{unit}"),
        format!("{unit}/s"),
        format!("overhead({time_unit})"),
        "overhead/b",
        "time/b",
        "time/d",
        "time/peer",
        "overhead/peer"
    );
    for i in 0..n {
        let mut values = ns[i].clone();
        let med = median(&mut values);
        let over = overhead(i);
        let over_b = if b_overhead > 0.0 && b != Some(i) && a != Some(i) {
            over / b_overhead
        } else {
            f64::NAN
        };
        println!(
            "paired {title}: {:<24} {:>10} {:>12} {:>14} {:>11} {:>8} {:>8} {:>11} {:>13}",
            variants[i].name,
            cell(med / scale, 1),
            cell(1e9 / med, 0),
            cell(over / scale, 1),
            cell(over_b, 2),
            cell(per_round(i, b, &|x, b| x / b), 3),
            cell(per_round(i, d, &|x, d| x / d), 3),
            cell(per_round(i, p, &|x, p| x / p), 3),
            cell(if p == Some(i) { f64::NAN } else { over_peer(i) }, 3),
        );
    }
    for i in 0..n {
        let rounds: Vec<String> = ns[i].iter().map(|v| cell(v / scale, 1)).collect();
        println!(
            "paired {title}: rounds {:<24} {}",
            variants[i].name,
            rounds.join(" ")
        );
    }
}

/// Whether only the paired comparison runs (`NIFTY_BENCH_PAIRED_ONLY=1`): the criterion groups are
/// skipped, for quick runs while iterating.
pub fn paired_only() -> bool {
    std::env::var_os("NIFTY_BENCH_PAIRED_ONLY").is_some_and(|v| v == "1")
}

/// Whether the paired comparison should run: not when criterion only profiles, tests or lists, and
/// not when a filter selects some benchmarks (then the run is about those).
pub fn paired_enabled() -> bool {
    const TAKES_VALUE: &[&str] = &[
        "--save-baseline",
        "-s",
        "--baseline",
        "-b",
        "--baseline-lenient",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--color",
        "-c",
        "--format",
        "--output-format",
        "--plotting-backend",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--profile-time" | "--test" | "--list" => return false,
            a if TAKES_VALUE.contains(&a) => {
                args.next();
            }
            a if a.starts_with('-') => {}
            _ => return false, // a filter
        }
    }
    true
}

/// The retry half of reference (b-retry): tower's `retry::Policy` that clones every request (method,
/// URI, version, headers, extensions, body) and sends it once more if the answer is a 401 — what a
/// user would compose from tower parts to get nifty-auth's retry around a static header.
#[derive(Clone, Debug, Default)]
pub struct RetryOnceOn401 {
    retried: bool,
}

impl<B: Clone, RB, E> tower::retry::Policy<Request<B>, Response<RB>, E> for RetryOnceOn401 {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<RB>, E>,
    ) -> Option<Self::Future> {
        match result {
            Ok(response) if response.status() == StatusCode::UNAUTHORIZED && !self.retried => {
                self.retried = true;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        let mut copy = Request::new(request.body().clone());
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}

/// Reference (b-retry): tower-http's static header under `tower::retry::Retry` with
/// [`RetryOnceOn401`] — the peer that can also retry a 401.
pub fn tower_http_retry<S: Inner>(
    inner: S,
) -> tower::retry::Retry<RetryOnceOn401, tower_http::auth::AddAuthorization<S>> {
    tower::retry::RetryLayer::new(RetryOnceOn401::default()).layer(tower_http_layer().layer(inner))
}
