//! The manager's state machine without TCP: a `tower::service_fn` token endpoint (rotation, replay
//! detection, scripted faults) passed through `Builder::http_client`, on tokio's paused clock (sound
//! here: no real socket for the auto-advance to outrun). Exact counts.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use nifty_auth::{AuthError, Credentials, NiftyAuth, TokenSet};
use serde_json::{json, Value};
use tokio::time::{advance, sleep, Instant};

use crate::store::FlakyStore;

/// What the endpoint does with its next call.
#[derive(Clone, Copy, Debug)]
enum Reply {
    Delay(Duration),
    InvalidGrant,
}

#[derive(Debug, Default)]
struct EndpointState {
    calls: usize,
    in_flight: usize,
    max_in_flight: usize,
    replays: usize,
    lifetime: Duration,
    next: u64,
    live_refresh_token: Option<String>,
    /// Access token → when it expires (tokio's clock).
    expiry: HashMap<String, Instant>,
    script: VecDeque<Reply>,
}

#[derive(Clone, Debug, Default)]
struct Endpoint(Arc<Mutex<EndpointState>>);

impl Endpoint {
    fn new(lifetime: Duration) -> Self {
        let endpoint = Endpoint::default();
        endpoint.state().lifetime = lifetime;
        endpoint
    }

    fn state(&self) -> std::sync::MutexGuard<'_, EndpointState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, reply: Reply) {
        self.state().script.push_back(reply);
    }

    fn calls(&self) -> usize {
        self.state().calls
    }

    /// A refresh token of a new grant.
    fn issue_refresh_token(&self) -> String {
        let mut st = self.state();
        st.next += 1;
        let rt = format!("rt-{}", st.next);
        st.live_refresh_token = Some(rt.clone());
        rt
    }

    fn live(&self) -> Option<String> {
        self.state().live_refresh_token.clone()
    }

    /// Whether the endpoint would still accept `access_token` now.
    fn valid(&self, access_token: &str) -> bool {
        self.state()
            .expiry
            .get(access_token)
            .is_some_and(|at| Instant::now() < *at)
    }

    async fn handle(self, request: Request<Full<Bytes>>) -> Response<Full<Bytes>> {
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let reply = {
            let mut st = self.state();
            st.calls += 1;
            st.in_flight += 1;
            st.max_in_flight = st.max_in_flight.max(st.in_flight);
            st.script.pop_front()
        };
        if let Some(Reply::Delay(delay)) = reply {
            sleep(delay).await;
        }
        let mut st = self.state();
        st.in_flight -= 1;
        let grant = json["grant_type"].as_str().unwrap_or_default();
        let presented = json["refresh_token"].as_str().map(str::to_owned);
        let refused = matches!(reply, Some(Reply::InvalidGrant))
            || (grant == "refresh_token" && presented != st.live_refresh_token);
        if refused {
            if grant == "refresh_token" && presented != st.live_refresh_token {
                st.replays += 1;
            }
            return answer(400, json!({ "error": "invalid_grant" }));
        }
        st.next += 1;
        let n = st.next;
        let (access, refresh) = (format!("at-{n}"), format!("rt-{n}"));
        let expires = Instant::now() + st.lifetime;
        st.expiry.insert(access.clone(), expires);
        st.live_refresh_token = Some(refresh.clone());
        answer(
            200,
            json!({
                "access_token": access,
                "refresh_token": refresh,
                "token_type": "bearer",
                "expires_in": st.lifetime.as_secs(),
            }),
        )
    }
}

fn answer(status: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

/// A manager over `endpoint`, its store seeded with the endpoint's live refresh token and an expired
/// access token.
fn manager(endpoint: &Endpoint, skew: Duration) -> (NiftyAuth, FlakyStore) {
    let seed = TokenSet::new("at-seed")
        .with_refresh_token(endpoint.issue_refresh_token())
        .with_expires_in(Duration::ZERO);
    let store = FlakyStore::with_tokens(seed);
    let service_endpoint = endpoint.clone();
    let client = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let endpoint = service_endpoint.clone();
        async move { Ok::<_, Infallible>(endpoint.handle(request).await) }
    });
    let auth = NiftyAuth::builder(Credentials::new("id", "secret"))
        .token_url("http://token.test/oauth/token")
        .http_client(client)
        .store(store.clone())
        .refresh_skew(skew)
        .token_timeout(Duration::from_secs(30))
        .build()
        .expect("build");
    (auth, store)
}

const SKEW: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn fifty_cold_callers_make_one_token_call_and_share_its_token() {
    let endpoint = Endpoint::new(Duration::from_secs(3600));
    let (auth, _store) = manager(&endpoint, SKEW);
    endpoint.push(Reply::Delay(Duration::from_secs(1)));
    let callers: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn({
                let auth = auth.clone();
                async move { auth.access_token().await }
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for caller in callers {
        tokens.push(caller.await.expect("caller").expect("token"));
    }
    assert!(tokens.iter().all(|t| *t == tokens[0]));
    assert_eq!(endpoint.calls(), 1);
    assert_eq!(endpoint.state().max_in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn an_aborted_leader_does_not_cancel_the_refresh_its_followers_share() {
    let endpoint = Endpoint::new(Duration::from_secs(3600));
    let (auth, store) = manager(&endpoint, SKEW);
    endpoint.push(Reply::Delay(Duration::from_secs(1)));
    let leader = tokio::spawn({
        let auth = auth.clone();
        async move { auth.access_token().await }
    });
    sleep(Duration::from_millis(100)).await;
    assert_eq!(
        endpoint.state().in_flight,
        1,
        "the leader's token call is running"
    );
    leader.abort();
    let followers: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn({
                let auth = auth.clone();
                async move { auth.access_token().await }
            })
        })
        .collect();
    for follower in followers {
        follower.await.expect("follower").expect("token");
    }
    assert_eq!(endpoint.calls(), 1);
    assert_eq!(store.refresh_token(), endpoint.live());
}

#[tokio::test(start_paused = true)]
async fn in_the_skew_window_callers_get_the_old_token_while_one_background_refresh_runs() {
    let endpoint = Endpoint::new(Duration::from_secs(120));
    let (auth, _store) = manager(&endpoint, SKEW);
    let old = auth.access_token().await.expect("first token");
    advance(Duration::from_secs(70)).await;
    endpoint.push(Reply::Delay(Duration::from_secs(10)));
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(auth.access_token().await.expect("token"), old);
    }
    assert_eq!(started.elapsed(), Duration::ZERO, "no caller waited");
    tokio::task::yield_now().await;
    assert_eq!(endpoint.calls(), 2, "one background refresh");
    sleep(Duration::from_secs(11)).await;
    let new = auth.access_token().await.expect("new token");
    assert_ne!(new, old);
    assert_eq!(endpoint.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn invalid_grant_latches_until_set_tokens() {
    let endpoint = Endpoint::new(Duration::from_secs(3600));
    let (auth, _store) = manager(&endpoint, SKEW);
    endpoint.push(Reply::InvalidGrant);
    for _ in 0..5 {
        let error = auth.access_token().await.expect_err("latched");
        assert!(error.is_reauthorization_required(), "{error:?}");
    }
    assert_eq!(endpoint.calls(), 1, "the latch makes no further token call");
    let tokens = TokenSet::new("at-set")
        .with_refresh_token(endpoint.issue_refresh_token())
        .with_expires_in(Duration::from_secs(3600));
    auth.set_tokens(tokens).await.expect("set_tokens");
    assert_eq!(auth.access_token().await.expect("token"), "at-set");
    assert_eq!(endpoint.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_save_keeps_the_rotated_token_and_the_next_attempt_saves_it_without_a_call() {
    let endpoint = Endpoint::new(Duration::from_secs(3600));
    let (auth, store) = manager(&endpoint, SKEW);
    // Every try of one attempt (the manager tries a save three times while holding the lock).
    (0..3).for_each(|_| store.fail_next_save());
    let error = auth.access_token().await.expect_err("the save failed");
    assert!(matches!(error, AuthError::Store { .. }), "{error:?}");
    assert_ne!(store.refresh_token(), endpoint.live());
    let token = auth.access_token().await.expect("token");
    assert!(endpoint.valid(&token));
    assert_eq!(
        endpoint.calls(),
        1,
        "the pending tokens are used, not refreshed again"
    );
    assert_eq!(store.refresh_token(), endpoint.live());
    assert_eq!(endpoint.state().replays, 0);
}

#[tokio::test(start_paused = true)]
async fn each_lifetime_on_the_paused_clock_costs_one_refresh_and_no_expired_token_is_returned() {
    let endpoint = Endpoint::new(Duration::from_secs(100));
    let (auth, _store) = manager(&endpoint, SKEW);
    for round in 1..=3 {
        let token = auth.access_token().await.expect("token");
        assert!(endpoint.valid(&token), "round {round}: an expired token");
        assert_eq!(endpoint.calls(), round);
        advance(Duration::from_secs(101)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_reauthorization_whose_save_failed_is_saved_and_used_by_the_next_attempt() {
    let endpoint = Endpoint::new(Duration::from_secs(3600));
    let (auth, store) = manager(&endpoint, SKEW);
    endpoint.push(Reply::InvalidGrant);
    auth.access_token().await.expect_err("latched");
    (0..3).for_each(|_| store.fail_next_save());
    let error = auth
        .set_tokens(
            TokenSet::new("at-set")
                .with_refresh_token(endpoint.issue_refresh_token())
                .with_expires_in(Duration::from_secs(3600)),
        )
        .await
        .expect_err("the save failed");
    assert!(matches!(error, AuthError::Store { .. }), "{error:?}");
    assert_eq!(auth.access_token().await.expect("the new tokens"), "at-set");
    assert_eq!(store.refresh_token(), endpoint.live());
    assert_eq!(endpoint.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn debug_shows_the_endpoint_and_the_token_state_but_no_token_or_secret() {
    let endpoint = Endpoint::new(Duration::from_secs(3600));
    let (auth, store) = manager(&endpoint, SKEW);
    let before = format!("{auth:?}");
    assert!(before.contains("endpoint: Some("), "{before}");
    assert!(before.contains("has_token: false"), "{before}");
    let token = auth.access_token().await.expect("token");
    let after = format!("{auth:?}");
    assert!(after.contains("has_token: true"), "{after}");
    assert!(after.contains("generation: 1"), "{after}");
    let refresh_token = store.refresh_token().expect("stored");
    for secret in [token.as_str(), refresh_token.as_str(), "secret"] {
        assert!(!after.contains(secret), "{after}");
    }
}
