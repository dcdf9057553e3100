//! Shared helpers for the integration tests: a real hyper-util client and a `NiftyAuth` pointed at
//! a `FakeNifty` on 127.0.0.1, or, for tests on tokio's paused clock, at a `FakeNifty` in process
//! (no socket: the paused clock must never jump ahead while a socket read is pending).
#![allow(
    dead_code,
    unused_macros,
    reason = "each test file uses a different subset of the helpers"
)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use nifty_auth::testing::{FakeNifty, FakeNiftyBuilder, FakeService};
use nifty_auth::{AuthError, BoxError, Builder, NiftyAuth, NiftyAuthService};
use tower::{Service, ServiceExt};

/// The value of `option`, or else the test returns at once: a test skips this way where a server
/// it needs (redis-server, PostgreSQL) is not installed, which only outside CI is allowed.
macro_rules! or_skip {
    ($option:expr) => {
        match $option {
            Some(value) => value,
            None => return,
        }
    };
}
#[allow(
    unused_imports,
    reason = "only the tests of servers that may be missing use it"
)]
pub(crate) use or_skip;

/// The real client every test over TCP drives.
pub type HttpClient = HyperClient<HttpConnector, Full<Bytes>>;
/// The client wrapped in the layer: over TCP, or straight into an in-process fake.
pub type AuthClient = NiftyAuthService<Client>;

pub fn http_client() -> HttpClient {
    HyperClient::builder(TokioExecutor::new()).build_http()
}

/// What the layer wraps in the tests: the real hyper client, or an in-process fake's service.
#[derive(Clone, Debug)]
pub enum Client {
    Tcp(Box<HttpClient>),
    InProcess(FakeService),
}

/// The body of a [`Client`]'s answers, whichever carried them.
pub type ClientBody = BoxBody<Bytes, BoxError>;

type ClientFuture = Pin<Box<dyn Future<Output = Result<Response<ClientBody>, BoxError>> + Send>>;

impl Service<Request<Full<Bytes>>> for Client {
    type Response = Response<ClientBody>;
    type Error = BoxError;
    type Future = ClientFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Client::Tcp(client) => client.poll_ready(cx).map_err(Into::into),
            Client::InProcess(fake) => {
                Service::<Request<Full<Bytes>>>::poll_ready(fake, cx).map_err(Into::into)
            }
        }
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> ClientFuture {
        match self {
            Client::Tcp(client) => {
                let answer = client.call(request);
                Box::pin(async move { Ok(answer.await?.map(|b| b.map_err(Into::into).boxed())) })
            }
            Client::InProcess(fake) => {
                let answer = fake.call(request);
                Box::pin(async move { Ok(answer.await?.map(|b| b.map_err(Into::into).boxed())) })
            }
        }
    }
}

/// A fake with no socket whose access tokens live `lifetime`, for tests on tokio's paused clock:
/// `builder`, `auth` and `service_for` route every request of a test to it in process.
pub fn paused_fake_lasting(lifetime: Duration) -> FakeNifty {
    FakeNifty::builder()
        .token_lifetime(Some(lifetime))
        .start_in_process()
}

/// A fake on 127.0.0.1 whose access tokens live `lifetime`.
pub async fn fake_lasting(lifetime: Duration) -> FakeNifty {
    FakeNifty::builder()
        .token_lifetime(Some(lifetime))
        .start()
        .await
        .unwrap()
}

/// A fake on 127.0.0.1 that accepts the client `id` with `secret`.
pub async fn fake_for_client(id: &str, secret: &str) -> FakeNifty {
    FakeNifty::builder()
        .client(id, secret)
        .start()
        .await
        .unwrap()
}

/// A fake on 127.0.0.1 whose every token answer waits `delay`.
pub async fn fake_delayed(delay: Duration) -> FakeNifty {
    FakeNifty::builder()
        .token_delay(delay)
        .start()
        .await
        .unwrap()
}

/// A fake on 127.0.0.1 that rotates refresh tokens and revokes a grant whose rotated-away refresh
/// token is replayed (its defaults, stated): any replay shows as `invalid_grant`.
pub async fn rotating_fake() -> FakeNifty {
    rotating().start().await.unwrap()
}

/// [`rotating_fake`] with access tokens that live `lifetime`.
pub async fn rotating_fake_lasting(lifetime: Duration) -> FakeNifty {
    rotating()
        .token_lifetime(Some(lifetime))
        .start()
        .await
        .unwrap()
}

/// [`rotating_fake`] with every token answer waiting `delay`.
pub async fn rotating_fake_delayed(delay: Duration) -> FakeNifty {
    rotating().token_delay(delay).start().await.unwrap()
}

fn rotating() -> FakeNiftyBuilder {
    FakeNifty::builder()
        .rotation(true)
        .replay_revokes_grant(true)
}

/// A builder aimed at `fake`, with fast backoff so failure tests stay quick. An in-process fake is
/// also its HTTP client.
pub fn builder(fake: &FakeNifty) -> Builder {
    aimed_at(NiftyAuth::builder(fake.credentials()), fake)
}

/// `builder` (of one grant or many) aimed at `fake` as [`builder`] is.
pub fn aimed_at<K>(builder: Builder<K>, fake: &FakeNifty) -> Builder<K> {
    let builder = builder
        .token_url(fake.token_url().as_str())
        .allowed_origins([fake.base_url()])
        .token_backoff(Duration::from_millis(5), Duration::from_millis(20));
    if fake.is_in_process() {
        builder.http_client(fake.service())
    } else {
        builder
    }
}

/// A `NiftyAuth` bootstrapped with a fresh refresh token of `fake`.
pub fn auth(fake: &FakeNifty) -> NiftyAuth {
    builder(fake)
        .refresh_token(fake.issue_refresh_token())
        .build()
        .expect("build")
}

/// For tests on tokio's paused clock: a fake with no socket whose access tokens live `lifetime`,
/// a `NiftyAuth` for it refreshing `skew` ahead of expiry, and the layer over the fake's service.
pub fn paused_started(lifetime: Duration, skew: Duration) -> (FakeNifty, NiftyAuth, AuthClient) {
    let fake = paused_fake_lasting(lifetime);
    let auth = auth_with_skew(&fake, skew);
    let svc = service_for(&fake, &auth);
    (fake, auth, svc)
}

/// A fake on 127.0.0.1, a `NiftyAuth` for it with no refresh token yet over a `MemoryStore`, and
/// that store.
pub async fn unauthorized_auth() -> (FakeNifty, nifty_auth::MemoryStore, NiftyAuth) {
    let fake = FakeNifty::start().await.unwrap();
    let store = nifty_auth::MemoryStore::new();
    let auth = builder(&fake).store(store.clone()).build().unwrap();
    (fake, store, auth)
}

/// The status of `request` sent through a clone of `svc` (any service of the tests' stacks).
pub async fn status_of<S, B>(svc: &S, request: Request<Full<Bytes>>) -> StatusCode
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    svc.clone().oneshot(request).await.unwrap().status()
}

/// A fake on 127.0.0.1, a [`auth`] for it, and the layer over the real client.
pub async fn started() -> (FakeNifty, NiftyAuth, AuthClient) {
    let fake = FakeNifty::start().await.unwrap();
    let auth = auth(&fake);
    let svc = service(&auth);
    (fake, auth, svc)
}

/// A personal access token issued by `fake` (never expiring), and a `NiftyAuth` that sends it to
/// `fake` and refreshes nothing.
pub fn personal_auth(fake: &FakeNifty) -> (String, NiftyAuth) {
    let token = fake.issue_access_token(None);
    let auth = NiftyAuth::personal_token(token.clone())
        .allowed_origins([fake.base_url()])
        .build()
        .expect("build");
    (token, auth)
}

/// A `NiftyGrants` for `fake` keeping its grants in `store` (its other settings the defaults).
pub fn grants_over(
    fake: &FakeNifty,
    store: impl nifty_auth::TokenStore,
) -> nifty_auth::NiftyGrants {
    nifty_auth::NiftyGrants::builder(fake.credentials())
        .token_url(fake.token_url().as_str())
        .store(store)
        .build()
        .expect("build")
}

/// Every grant of `fake_grants` refreshed once a round (`rounds` in all) and never got
/// `invalid_grant`; nothing was replayed.
pub fn assert_one_refresh_per_grant_per_round(
    fake: &FakeNifty,
    fake_grants: &[nifty_auth::testing::FakeGrant],
    rounds: usize,
) {
    for (i, fake_grant) in fake_grants.iter().enumerate() {
        assert_eq!(fake_grant.token_calls(), rounds, "grant {i}");
        assert_eq!(fake_grant.invalid_grants_served(), 0, "grant {i}");
    }
    assert_eq!(fake.token_calls(), fake_grants.len() * rounds);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(fake.refresh_token_replays(), 0);
}

/// A `NiftyAuth` for `fake` bootstrapped with `refresh_token`, keeping its tokens in `store`.
pub fn auth_over(
    fake: &FakeNifty,
    refresh_token: impl Into<String>,
    store: impl nifty_auth::store::OneGrantStore,
) -> NiftyAuth {
    builder(fake)
        .refresh_token(refresh_token)
        .store(store)
        .build()
        .expect("build")
}

/// [`auth`] with a refresh skew of `skew`.
pub fn auth_with_skew(fake: &FakeNifty, skew: Duration) -> NiftyAuth {
    builder(fake)
        .refresh_token(fake.issue_refresh_token())
        .refresh_skew(skew)
        .build()
        .expect("build")
}

/// The layer over the real hyper client.
pub fn service(auth: &NiftyAuth) -> AuthClient {
    NiftyAuthService::new(Client::Tcp(Box::new(http_client())), auth.clone())
}

/// The layer over the way to reach `fake`: in process if it was started so, else over TCP.
pub fn service_for(fake: &FakeNifty, auth: &NiftyAuth) -> AuthClient {
    let client = if fake.is_in_process() {
        Client::InProcess(fake.service())
    } else {
        Client::Tcp(Box::new(http_client()))
    };
    NiftyAuthService::new(client, auth.clone())
}

pub fn get(url: impl AsRef<str>) -> Request<Full<Bytes>> {
    Request::get(url.as_ref())
        .body(Full::new(Bytes::new()))
        .expect("request")
}

pub fn post_json(url: impl AsRef<str>, json: &'static str) -> Request<Full<Bytes>> {
    Request::post(url.as_ref())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(json.as_bytes())))
        .expect("request")
}

/// Sends `request` through a clone of `svc` (the layer over any client); returns the status and
/// the whole body.
pub async fn send<S, B>(
    svc: &S,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let response = svc.clone().oneshot(request).await?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(Into::into)?
        .to_bytes();
    Ok((status, body))
}

/// The `AuthError` inside a layer error; panics (failing the test) if it is something else.
pub fn auth_error(err: &BoxError) -> &AuthError {
    err.downcast_ref::<AuthError>()
        .unwrap_or_else(|| panic!("expected an AuthError, got {err:?}"))
}

/// With the shared store down and the cached token rejected (every access token revoked), the next
/// request fails with `AuthError::Store` whose message chain names `store`, and no refresh is made:
/// the token endpoint saw only the first call.
pub async fn assert_no_refresh_without_the_store(svc: &AuthClient, fake: &FakeNifty, store: &str) {
    fake.revoke_access_tokens();
    let err = send(svc, get(fake.api_url("/projects"))).await.unwrap_err();
    let auth_err = auth_error(&err);
    assert!(matches!(auth_err, AuthError::Store { .. }), "{auth_err:?}");
    let chain = format!(
        "{auth_err}: {}",
        std::error::Error::source(auth_err).unwrap()
    );
    assert!(chain.contains(store), "{chain}");
    assert_eq!(fake.token_calls(), 1, "no refresh without the lock");
}

/// Sends requests (at most `tries`, 100 ms apart) until one is served; whether one was.
pub async fn served_within(svc: &AuthClient, fake: &FakeNifty, tries: usize) -> bool {
    for _ in 0..tries {
        match send(svc, get(fake.api_url("/projects"))).await {
            Ok((StatusCode::OK, _)) => return true,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    false
}

/// Ids a user could send: path tricks, separators of every platform, case twins, escapes that look
/// escaped, unicode, Windows device names and ids of the longest length.
pub fn hostile_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "../../etc/passwd",
        "..",
        ".",
        "a/b",
        "a\\b",
        "A",
        "a",
        "a:b",
        "C:\\x",
        "%2F",
        "a%2Fb",
        "/",
        "é",
        "日本語",
        "con",
        "NUL.txt",
        "default",
        ".hidden",
        "a.json.lock",
        "~",
        " ",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ids.push("a".repeat(256));
    ids.push(format!("{}b", "a".repeat(255)));
    ids.push("Z".repeat(256));
    ids.push("é".repeat(128));
    ids.push(format!("{}/../../x", "../".repeat(60)));
    ids
}

/// Sends `n` requests, each of which must be served with the cached token: the shared store
/// (`store`, its name for the message) is down or cut off, and a valid token needs none.
pub async fn assert_served_without_the_store(
    svc: &AuthClient,
    fake: &FakeNifty,
    n: usize,
    store: &str,
) {
    for _ in 0..n {
        let (status, _) = send(svc, get(fake.api_url("/projects"))).await.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "a valid cached token needs no {store}"
        );
    }
}

/// A multi-thread runtime with two worker threads (the machine's cores), for tests and workers
/// that build their own.
pub fn two_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A new grant of `fake`, stored in `store` under `id` with an access token that has already
/// expired and a live refresh token: its first use refreshes once. Returns the id, the grant and
/// the stored tokens.
pub async fn seed_grant<S: nifty_auth::TokenStore>(
    fake: &FakeNifty,
    store: &S,
    id: &str,
) -> (
    nifty_auth::GrantId,
    nifty_auth::testing::FakeGrant,
    nifty_auth::TokenSet,
) {
    let grant = fake.new_grant();
    let id = nifty_auth::GrantId::new(id).unwrap();
    let seed = nifty_auth::TokenSet::new("expired-seed")
        .with_refresh_token(grant.issue_refresh_token())
        .with_expires_in(Duration::from_millis(1));
    store.save(&id, &seed).await.unwrap();
    (id, grant, seed)
}

/// `n` grants known to `fake`, each stored in `store` with an expired access token and a live
/// refresh token: the first use of each makes one refresh.
pub async fn seed_grants<S: nifty_auth::TokenStore>(
    fake: &FakeNifty,
    store: &S,
    n: usize,
) -> Vec<(nifty_auth::GrantId, nifty_auth::testing::FakeGrant)> {
    let mut grants = Vec::with_capacity(n);
    for i in 0..n {
        let id = nifty_auth::GrantId::new(format!("workspace-{i}")).unwrap();
        let grant = fake.new_grant();
        let tokens = nifty_auth::TokenSet::new(format!("expired-{i}"))
            .with_refresh_token(grant.issue_refresh_token())
            .with_expires_in(Duration::ZERO);
        store.save(&id, &tokens).await.unwrap();
        grants.push((id, grant));
    }
    grants
}

/// Sends `n` requests to `url` at once, each from a task of its own through a clone of `svc`;
/// their results, in the order they finished.
pub async fn send_concurrently(
    svc: &AuthClient,
    url: String,
    n: usize,
) -> Vec<Result<(StatusCode, Bytes), BoxError>> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (svc, url) = (svc.clone(), url.clone());
        tasks.spawn(async move { send(&svc, get(url)).await });
    }
    let mut results = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.expect("task"));
    }
    results
}

/// Waits (at most 10 s, then fails with `what`) until `condition` holds at `fake`.
pub async fn until_at_fake(
    fake: &FakeNifty,
    condition: impl FnMut(&FakeNifty) -> bool,
    what: &str,
) {
    tokio::time::timeout(Duration::from_secs(10), fake.wait_until(condition))
        .await
        .unwrap_or_else(|_| panic!("{what}"));
}
