//! What the manager's unit tests share: a token endpoint that is a `tower::service_fn` (no socket,
//! so tokio's paused clock is sound), a store that can be told to fail, and a manager over both.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use tokio::sync::{Notify, Semaphore};

use super::*;
use crate::clock::Clock;
use crate::credentials::Credentials;
use crate::endpoint::{Backoff, TokenClient};
use crate::store::MemoryStore;
use crate::token::cache::CachePolicy;

/// The endpoint's answers are held until released, when a test asks for it.
const OPEN: usize = Semaphore::MAX_PERMITS;

/// A token endpoint: rotates refresh tokens (`refresh-<n>`), refuses a refresh token used twice or
/// an unknown code with `invalid_grant`, counts calls.
pub(crate) struct Nifty {
    calls: AtomicUsize,
    /// Calls that reached the endpoint (before waiting for `answers`).
    arrived: Notify,
    answers: Semaphore,
    used: parking_lot::Mutex<HashSet<String>>,
    /// Answer 500 to the next this many calls.
    fail: AtomicUsize,
}

impl Nifty {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Nifty {
            calls: AtomicUsize::new(0),
            arrived: Notify::new(),
            answers: Semaphore::new(OPEN),
            used: parking_lot::Mutex::new(HashSet::new()),
            fail: AtomicUsize::new(0),
        })
    }

    /// Token calls so far.
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Holds every answer from now on until [`release`](Self::release).
    pub(crate) fn hold(&self) {
        let open = self.answers.available_permits();
        self.answers.forget_permits(open);
    }

    /// Lets every held and later call answer.
    pub(crate) fn release(&self) {
        self.answers
            .add_permits(OPEN - self.answers.available_permits());
    }

    /// Waits until `n` calls have arrived (an event, not a sleep). Panics if they have not within
    /// a minute of tokio's clock (on the paused clock: as soon as nothing else can happen).
    pub(crate) async fn arrived(&self, n: usize) {
        let wait = async {
            loop {
                let notified = self.arrived.notified();
                if self.calls() >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("{n} token calls never arrived ({} did)", self.calls()));
    }

    /// Marks `refresh_token` as used: refreshing with it is refused with `invalid_grant`.
    pub(crate) fn spend(&self, refresh_token: &str) {
        self.used.lock().insert(refresh_token.to_owned());
    }

    /// Answers 500 to the next `n` calls.
    pub(crate) fn fail_next(&self, n: usize) {
        self.fail.store(n, Ordering::SeqCst);
    }

    async fn answer(&self, request: Request<Full<Bytes>>) -> Response<Full<Bytes>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.arrived.notify_waiters();
        drop(self.answers.acquire().await.expect("never closed"));
        if self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
            .is_ok()
        {
            return json(StatusCode::INTERNAL_SERVER_ERROR, "{}".to_owned());
        }
        let body = request
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let form: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
        let refused = match form["grant_type"].as_str() {
            Some("refresh_token") => {
                let token = form["refresh_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                !self.used.lock().insert(token)
            }
            Some("authorization_code") => form["code"] != "good-code",
            _ => true,
        };
        if refused {
            return json(
                StatusCode::BAD_REQUEST,
                r#"{"error":"invalid_grant"}"#.to_owned(),
            );
        }
        json(
            StatusCode::OK,
            format!(
                r#"{{"access_token":"access-token-{n}-0123456789","refresh_token":"refresh-{n}","token_type":"bearer","expires_in":3600}}"#
            ),
        )
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    response
}

/// A store that fails the next `fail_saves` saves (and every lock while `fail_locks`), keeping
/// tokens in a [`MemoryStore`].
#[derive(Default)]
pub(crate) struct Flaky {
    pub(crate) inner: MemoryStore,
    pub(crate) fail_saves: AtomicUsize,
    pub(crate) saves: AtomicUsize,
    pub(crate) loads: AtomicUsize,
}

impl Flaky {
    pub(crate) fn with(tokens: TokenSet) -> Arc<Self> {
        Arc::new(Flaky {
            inner: MemoryStore::with_tokens(tokens),
            ..Flaky::default()
        })
    }

    /// The refresh token the store holds.
    pub(crate) fn refresh_token(&self) -> Option<String> {
        self.inner
            .get()
            .and_then(|t| t.refresh_token().map(str::to_owned))
    }
}

impl TokenStore for Flaky {
    fn load<'a>(
        &'a self,
        grant: &'a GrantId,
    ) -> crate::future::BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load(grant)
    }

    fn remove<'a>(
        &'a self,
        grant: &'a GrantId,
    ) -> crate::future::BoxFuture<'a, Result<(), BoxError>> {
        self.inner.remove(grant)
    }

    fn save<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
    ) -> crate::future::BoxFuture<'a, Result<(), BoxError>> {
        self.saves.fetch_add(1, Ordering::SeqCst);
        if self
            .fail_saves
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
            .is_ok()
        {
            return Box::pin(async { Err("the store is down".into()) });
        }
        self.inner.save(grant, tokens)
    }
}

/// Stored tokens whose access token has expired: the first use refreshes with `refresh-0`.
pub(crate) fn expired() -> TokenSet {
    TokenSet::new("access-token-0-0123456789")
        .with_refresh_token("refresh-0")
        .with_expires_in(Duration::ZERO)
}

/// A one-grant manager over `nifty` and `store`: one attempt per refresh, a 60 s skew, a 30 s 401
/// cooldown.
pub(crate) fn manager(nifty: &Arc<Nifty>, store: Arc<dyn TokenStore>) -> Arc<TokenManager> {
    build(nifty, store, GrantId::single(), None)
}

/// The manager of the grant `acme` of a grants store `store`, reporting its latches to `latches`
/// (as a `NiftyGrants` does).
pub(crate) fn grant_manager(
    nifty: &Arc<Nifty>,
    store: Arc<MemoryStore>,
    latches: Latches,
) -> Arc<TokenManager> {
    let grant = GrantId::new("acme").expect("grant id");
    build(nifty, store, grant, Some(latches))
}

fn build(
    nifty: &Arc<Nifty>,
    store: Arc<dyn TokenStore>,
    grant: GrantId,
    latches: Option<Latches>,
) -> Arc<TokenManager> {
    let clock = Clock::new();
    let endpoint_of = Arc::clone(nifty);
    let client = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let nifty = Arc::clone(&endpoint_of);
        async move { Ok::<_, std::convert::Infallible>(nifty.answer(request).await) }
    });
    let endpoint = Endpoint::new(
        Uri::from_static("http://nifty.test/oauth/token"),
        Credentials::new("client-id", "client-secret"),
        client.into_http_client(),
        Duration::from_secs(3600),
        Backoff {
            attempts: 1,
            base: Duration::from_millis(10),
            max: Duration::from_millis(10),
        },
        clock,
        Arc::default(),
    )
    .expect("endpoint");
    Arc::new(TokenManager::new(ManagerParts {
        cache: TokenCache::new(CachePolicy::single(Duration::from_secs(60), clock)),
        policy: Arc::new(Policy {
            endpoint: Some(endpoint),
            bootstrap_refresh_token: None,
            unauthorized_cooldown: Duration::from_secs(30),
            latches,
            counters: Counters::default(),
            mirror: None,
        }),
        store,
        grant,
    }))
}
