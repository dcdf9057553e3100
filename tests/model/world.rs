//! The system under test for the TCP model: two replicas — two `NiftyAuth`s built separately, each
//! with its layer over a hyper-util client — on one [`FlakyStore`] (a shared value and refresh lock,
//! fault switches per replica), against a `FakeNifty` on 127.0.0.1; the operations, and the
//! invariants checked after every step.
//!
//! Time is real, not tokio's paused clock: while a task waits on a real socket, a paused clock
//! auto-advances to the next timer, which would fire the short token timeouts spuriously. Access
//! tokens therefore live [`LIFETIME`] of real time, and "expire" is a real sleep past it.
//!
//! Each replica's token calls go through a recording client of the test's own (passed to
//! `Builder::http_client`), so every refresh token presented, and every `invalid_grant`, is known
//! by replica.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nifty_auth::testing::{FakeNifty, TokenFault};
use nifty_auth::{AuthError, BoxError, NiftyAuth, TokenSet};
use tokio::time::{sleep, timeout, Instant};
use tower::{Layer, ServiceExt};

use crate::store::{FlakyStore, Tick};

/// The lifetime of every access token the fake issues (real time).
pub const LIFETIME: Duration = Duration::from_millis(600);
/// The manager's timeout of one token call; a hung endpoint costs this much per attempt.
pub const TOKEN_TIMEOUT: Duration = Duration::from_millis(400);
/// Token calls per refresh.
pub const ATTEMPTS: u32 = 2;
/// The backoff between attempts (base, max): its 25..50 ms also gives the fake time to see a
/// timed-out call's connection close before the retry arrives.
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_millis(100));
/// How slow a "slow" token answer is: well under the timeout, so it is never lost.
pub const SLOW: Duration = Duration::from_millis(60);
/// Every caller must have an answer within this.
pub const CALL_BOUND: Duration = Duration::from_secs(5);
/// How long the store's lock waits for a lock held by the other replica.
pub const LOCK_WAIT: Duration = Duration::from_millis(1500);
/// A replica holding the lock with unsaved tokens must have saved them (and released the lock)
/// within this of the store accepting its writes again, with nobody calling it.
pub const HOSTAGE_BOUND: Duration = Duration::from_secs(3);
/// How late an expired token may reach the API and still count as sent in time: the transit of the
/// token answer (the manager stamps expiry on receipt) plus the request's, on a loaded machine.
pub const OVERDUE_TOLERANCE: Duration = Duration::from_millis(100);
const REDIRECT_URI: &str = "http://127.0.0.1/callback";

/// A replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum R {
    A,
    B,
}

impl R {
    fn index(self) -> usize {
        match self {
            R::A => 0,
            R::B => 1,
        }
    }
}

/// A token endpoint fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 503.
    Unavailable,
    /// A connection reset.
    Reset,
    /// No answer at all (the manager's timeout fires).
    Hang,
    /// 400 `invalid_grant`: terminal.
    InvalidGrant,
    /// A correct answer after [`SLOW`].
    Slow,
}

/// One step of a run.
#[derive(Clone, Debug)]
pub enum Op {
    /// N concurrent requests through a replica's layer.
    Burst(R, usize),
    /// N concurrent requests, alternating between the replicas.
    Both(usize),
    /// `access_token()` on a replica.
    AccessToken(R),
    /// Sleep past the current access token's lifetime.
    Expire,
    /// The fake invalidates every access token (the next request gets a 401).
    Revoke,
    /// Queue a token endpoint fault.
    Fault(Fault),
    /// A replica's next `k` store saves fail.
    FailSaves(R, usize),
    /// A replica's next store `lock` fails.
    FailLock(R),
    /// A replica's next store `load` fails.
    FailLoad(R),
    /// N concurrent callers on a replica (requests and `access_token()`), all aborted after
    /// `after_ms`.
    Cancel { r: R, n: usize, after_ms: u64 },
    /// Queue a 401 for the next API request, then send one request through a replica.
    Force401(R),
    /// Re-authorize a replica with `set_tokens` (a new grant's refresh token and an access token).
    SetTokens(R),
    /// Re-authorize a replica with `exchange_code`.
    ExchangeCode(R),
    /// The grant's store entry is deleted (under the store's lock), as `nifty-auth logout` or a
    /// grant removal by another process does.
    Remove,
    /// The store loses its latest acknowledged write (a failover with asynchronous replication).
    LoseLastWrite,
}

/// What a caller got.
#[derive(Debug)]
enum Answer {
    Status(u16),
    Auth(AuthError),
}

/// One token call, as a replica's client saw it.
#[derive(Debug, Clone)]
struct Call {
    replica: usize,
    refresh_token: Option<String>,
    /// The answer's status and whether it was `invalid_grant`; `None` while it runs or if it failed
    /// at the transport.
    answer: Option<(u16, bool)>,
}

type Calls = Arc<Mutex<Vec<Call>>>;

fn calls_of(calls: &Calls) -> std::sync::MutexGuard<'_, Vec<Call>> {
    calls.lock().unwrap_or_else(|e| e.into_inner())
}

/// The grant was removed at a point of the run: what had happened by then.
#[derive(Debug, Clone, Copy)]
struct Removal {
    refresh_calls: usize,
    save_attempts: usize,
}

/// A lost write whose reverted refresh token had been rotated away.
#[derive(Debug, Clone)]
struct Lost {
    writer: usize,
    reverted: String,
    /// Token calls before the loss.
    calls_before: usize,
}

/// What the model expects of the managers.
#[derive(Debug, Default)]
struct Model {
    /// Mirror of the fake's fault queue.
    queued: VecDeque<Fault>,
    /// Token requests already accounted for.
    seen_token_requests: usize,
    /// Token calls (of the recording clients) already accounted for.
    seen_calls: usize,
    /// A replica's refresh got `invalid_grant` and no re-authorization of it followed.
    latched: [bool; 2],
    /// The fake revoked every access token while a manager held unsaved tokens: it may adopt those
    /// (it cannot know they were revoked) and pass the one 401 of its single retry on.
    revoked_unsaved: bool,
    /// The fake revoked every access token while a replica was behind the store (its current token
    /// older than the stored one): after a 401 it adopts the stored token — revoked too, which it
    /// cannot know — and passes the one 401 of its single retry on.
    revoked_behind: bool,
    /// The grant's entry was removed and no re-authorization followed.
    removed: Option<Removal>,
    /// A replica's re-authorization answered an error after installing its tokens: they wait
    /// unsaved (maybe without the lock).
    reauth_unsaved: [Option<usize>; 2],
    /// Lost writes whose reverted refresh token was dead.
    lost: Vec<Lost>,
    /// Mirror of the fake's queue of API statuses: every API request takes one. A `Force401` whose
    /// request never reached the API (its token could not be had) leaves its 401 for a later one.
    queued_api_statuses: usize,
    /// API requests already accounted for.
    seen_api_requests: usize,
    /// A broken rule seen while accounting for token calls.
    violation: Option<String>,
    /// The refresh token each replica's refresh got `invalid_grant` for, while it is latched: it
    /// must not present it again (it may refresh with a different one the store holds).
    refused: [Option<String>; 2],
    /// A replica answered `GrantRemoved` and has not served since.
    removal_seen: [bool; 2],
    /// When the latest re-authorization landed: a replica that saw the grant removed re-reads the
    /// store at most once a second, so it must serve again [`REREAD`] after that.
    reauthorized_at: Option<Instant>,
}

/// How soon a replica that saw its grant removed must notice a re-authorization made elsewhere
/// (the manager re-reads the store at most once a second), with a margin.
const REREAD: Duration = Duration::from_millis(1500);

/// A replica: its manager and its handle on the store.
struct Replica {
    auth: NiftyAuth,
    store: FlakyStore,
}

/// One run: the fake, the replicas, the model.
pub struct World {
    fake: FakeNifty,
    store: FlakyStore,
    replicas: [Replica; 2],
    calls: Calls,
    model: Model,
    /// Every step so far, for failure messages.
    log: Vec<String>,
}

type Svc = nifty_auth::NiftyAuthService<Client<HttpConnector, Full<Bytes>>>;

/// A token endpoint client that records every call of replica `replica` in `calls`.
#[derive(Clone)]
struct Recording {
    replica: usize,
    calls: Calls,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Recording {
    fn new(replica: usize, calls: Calls) -> Self {
        Recording {
            replica,
            calls,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl tower::Service<Request<Full<Bytes>>> for Recording {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let (replica, calls, client) = (self.replica, Arc::clone(&self.calls), self.client.clone());
        Box::pin(async move {
            let body = request
                .body()
                .clone()
                .collect()
                .await
                .map_err(|e: Infallible| -> BoxError { match e {} })?
                .to_bytes();
            let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
            let refresh_token = json
                .as_ref()
                .filter(|j| j["grant_type"] == "refresh_token")
                .and_then(|j| j["refresh_token"].as_str())
                .map(str::to_owned);
            let index = {
                let mut calls = calls_of(&calls);
                calls.push(Call {
                    replica,
                    refresh_token,
                    answer: None,
                });
                calls.len() - 1
            };
            let response = client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            let invalid_grant = serde_json::from_slice::<serde_json::Value>(&body)
                .is_ok_and(|j| j["error"] == "invalid_grant");
            calls_of(&calls)[index].answer = Some((parts.status.as_u16(), invalid_grant));
            Ok(Response::from_parts(parts, Full::new(body)))
        })
    }
}

impl World {
    /// A fake, a store seeded with a refresh token and an expired access token, and two replicas.
    pub async fn new() -> Self {
        let fake = FakeNifty::builder()
            .token_lifetime(Some(LIFETIME))
            .start()
            .await
            .expect("start the fake");
        let seed = TokenSet::new("at-seed-expired")
            .with_refresh_token(fake.issue_refresh_token())
            .with_expires_in(Duration::ZERO);
        let store = FlakyStore::with_lock_wait(seed, LOCK_WAIT);
        let clock = fake.clone();
        store.set_clock(Arc::new(move || Tick {
            token_requests: clock.token_requests().len(),
            api_requests: clock.api_requests().len(),
        }));
        let calls = Calls::default();
        let replica = |index: usize| {
            let store = store.view(index);
            let auth = NiftyAuth::builder(fake.credentials())
                .token_url(fake.token_url().as_str())
                .allowed_origins([fake.base_url()])
                .http_client(Recording::new(index, Arc::clone(&calls)))
                .store(store.clone())
                .token_timeout(TOKEN_TIMEOUT)
                .token_attempts(ATTEMPTS)
                .token_backoff(BACKOFF.0, BACKOFF.1)
                .build()
                .expect("build");
            Replica { auth, store }
        };
        let replicas = [replica(0), replica(1)];
        World {
            fake,
            store: store.view(usize::MAX),
            replicas,
            calls,
            model: Model::default(),
            log: Vec::new(),
        }
    }

    /// Runs every op, checking the invariants after each, then lets the store heal and checks that
    /// no replica keeps the lock with unsaved tokens.
    pub async fn run(&mut self, ops: &[Op]) -> Result<(), String> {
        for op in ops {
            self.step(op)
                .await
                .map_err(|e| format!("{e}\n  after steps: {:?}", self.log))?;
        }
        self.drain()
            .await
            .and_then(|()| self.check_invariants())
            .map_err(|e| format!("{e}\n  after steps: {:?} and the store healing", self.log))
    }

    /// Applies `op`, waits for the managers to settle, updates the model and checks the invariants.
    pub async fn step(&mut self, op: &Op) -> Result<(), String> {
        self.log.push(format!("{op:?}"));
        let acting: &[usize] = match op {
            Op::Burst(r, _)
            | Op::AccessToken(r)
            | Op::Cancel { r, .. }
            | Op::Force401(r)
            | Op::SetTokens(r)
            | Op::ExchangeCode(r) => &[r.index()][..],
            _ => &[0, 1][..],
        };
        let acting = acting.to_vec();
        let healthy = self.healthy(&acting);
        if matches!(op, Op::SetTokens(_) | Op::ExchangeCode(_)) {
            // A re-authorization ends the removal: its tokens may be saved.
            self.model.removed = None;
        }
        let answers = self.apply(op).await?;
        self.settle().await?;
        if let Op::SetTokens(r) | Op::ExchangeCode(r) = op {
            let r = r.index();
            // A re-authorization lifts its replica's latch as soon as it has its tokens, also when
            // only taking the lock or saving failed: they are saved by the next attempt and used.
            let installed = match answers.first() {
                Some(Answer::Status(_)) => true,
                Some(Answer::Auth(e)) => {
                    let parked = matches!(
                        e,
                        AuthError::Store { .. } | AuthError::RefreshLockHeld { .. }
                    );
                    if parked {
                        self.model.reauth_unsaved[r] = Some(self.replicas[r].store.saves_ok());
                    }
                    parked || matches!(op, Op::SetTokens(_))
                }
                None => false,
            };
            if installed {
                self.model.latched[r] = false;
                self.model.refused[r] = None;
                self.model.removal_seen[r] = false;
                self.model.reauthorized_at = Some(Instant::now());
            }
        }
        for (i, answer) in answers.iter().enumerate() {
            let r = match op {
                Op::Both(_) => i % 2,
                _ => acting[0],
            };
            match answer {
                Answer::Auth(AuthError::GrantRemoved) => self.model.removal_seen[r] = true,
                Answer::Status(200) => self.model.removal_seen[r] = false,
                _ => {}
            }
        }
        if healthy {
            for answer in &answers {
                match answer {
                    Answer::Status(200) => {}
                    Answer::Status(401)
                        if self.model.revoked_unsaved || self.model.revoked_behind => {}
                    other => {
                        return Err(format!(
                            "a caller got {other:?} although nothing was wrong (not latched, no \
                             store fault, no lock held, not removed, a live refresh token stored, \
                             no endpoint fault or API status queued)"
                        ))
                    }
                }
            }
        }
        if self.pending().is_none() {
            self.model.revoked_unsaved = false;
        }
        if !self.a_replica_is_behind_the_store() {
            self.model.revoked_behind = false;
        }
        self.check_invariants()
    }

    /// Whether replicas `acting` must serve every caller: nothing is wrong for them.
    fn healthy(&self, acting: &[usize]) -> bool {
        self.model.queued.is_empty()
            && self.model.queued_api_statuses == 0
            && acting.iter().all(|&r| {
                !self.model.latched[r]
                    && (!self.model.removal_seen[r]
                        || self
                            .model
                            .reauthorized_at
                            .is_some_and(|at| at.elapsed() > REREAD))
                    && self.replicas[r].store.armed() == 0
                    && self.model.reauth_unsaved[r].is_none()
            })
            && self.store.holder().is_none()
            && self.model.removed.is_none()
            && self
                .store
                .refresh_token()
                .is_some_and(|rt| self.fake.refresh_token_is_live(&rt))
    }

    /// The replica holding the lock with tokens it could not save, if any.
    /// Whether a replica's current access token differs from the one the store holds.
    fn a_replica_is_behind_the_store(&self) -> bool {
        let stored = self.store.access_token();
        self.replicas.iter().any(|replica| {
            replica
                .auth
                .tokens()
                .is_some_and(|t| Some(t.access_token()) != stored.as_deref())
        })
    }

    fn pending(&self) -> Option<usize> {
        self.store
            .holder()
            .filter(|&r| self.replicas[r].store.last_save_failed())
    }

    fn svc(&self, r: usize) -> Svc {
        self.replicas[r]
            .auth
            .layer()
            .layer(Client::builder(TokioExecutor::new()).build_http())
    }

    async fn apply(&mut self, op: &Op) -> Result<Vec<Answer>, String> {
        let url = self.fake.api_url("/projects");
        Ok(match op {
            Op::Burst(r, n) => {
                let svc = self.svc(r.index());
                let calls: Vec<_> = (0..*n)
                    .map(|_| tokio::spawn(request(svc.clone(), url.clone())))
                    .collect();
                let mut answers = Vec::new();
                for call in calls {
                    answers.push(joined(call.await)?);
                }
                answers
            }
            Op::Both(n) => {
                let svcs = [self.svc(0), self.svc(1)];
                let calls: Vec<_> = (0..*n)
                    .map(|i| tokio::spawn(request(svcs[i % 2].clone(), url.clone())))
                    .collect();
                let mut answers = Vec::new();
                for call in calls {
                    answers.push(joined(call.await)?);
                }
                answers
            }
            Op::AccessToken(r) => vec![access_token(self.replicas[r.index()].auth.clone()).await?],
            Op::Expire => {
                sleep(LIFETIME + Duration::from_millis(50)).await;
                vec![]
            }
            Op::Revoke => {
                self.model.revoked_unsaved |= self.pending().is_some();
                self.model.revoked_behind |= self.a_replica_is_behind_the_store();
                self.fake.revoke_access_tokens();
                vec![]
            }
            Op::Fault(fault) => {
                self.fake.push_token_fault(match fault {
                    Fault::Unavailable => TokenFault::status(503, r#"{"error":"unavailable"}"#),
                    Fault::Reset => TokenFault::Reset,
                    Fault::Hang => TokenFault::Hang,
                    Fault::InvalidGrant => TokenFault::status(400, r#"{"error":"invalid_grant"}"#),
                    Fault::Slow => TokenFault::Delay(SLOW),
                });
                self.model.queued.push_back(*fault);
                vec![]
            }
            Op::FailSaves(r, k) => {
                self.replicas[r.index()].store.fail_saves(*k);
                vec![]
            }
            Op::FailLock(r) => {
                self.replicas[r.index()].store.fail_next_lock();
                vec![]
            }
            Op::FailLoad(r) => {
                self.replicas[r.index()].store.fail_next_load();
                vec![]
            }
            Op::Cancel { r, n, after_ms } => {
                let svc = self.svc(r.index());
                let auth = &self.replicas[r.index()].auth;
                let calls: Vec<_> = (0..*n)
                    .map(|i| {
                        if i % 2 == 0 {
                            tokio::spawn(request(svc.clone(), url.clone()))
                        } else {
                            tokio::spawn(access_token(auth.clone()))
                        }
                    })
                    .collect();
                sleep(Duration::from_millis(*after_ms)).await;
                calls.iter().for_each(|c| c.abort());
                for call in calls {
                    if let Ok(answer) = call.await {
                        answer?;
                    }
                }
                vec![]
            }
            Op::Force401(r) => {
                self.fake.push_api_status(401);
                self.model.queued_api_statuses += 1;
                vec![request(self.svc(r.index()), url).await?]
            }
            Op::SetTokens(r) => {
                let tokens = TokenSet::new(self.fake.issue_access_token(Some(LIFETIME)))
                    .with_refresh_token(self.fake.issue_refresh_token())
                    .with_expires_in(LIFETIME);
                let auth = self.replicas[r.index()].auth.clone();
                let result = timeout(CALL_BOUND, auth.set_tokens(tokens)).await;
                vec![typed(
                    result
                        .map_err(|_| "set_tokens did not finish".to_owned())?
                        .map(|()| 200),
                )?]
            }
            Op::ExchangeCode(r) => {
                let code = self.fake.issue_code(REDIRECT_URI);
                let auth = self.replicas[r.index()].auth.clone();
                let result = timeout(CALL_BOUND, auth.exchange_code(code, REDIRECT_URI)).await;
                vec![typed(
                    result
                        .map_err(|_| "exchange_code did not finish".to_owned())?
                        .map(|_| 200),
                )?]
            }
            Op::Remove => {
                // Tokens of a re-authorization not saved yet are saved whatever the store holds (a
                // re-authorization wins): a removal racing them is not modelled. Rotated tokens
                // waiting unsaved keep the lock: the removal waits for it, and gives up after 1 s.
                let reauthorizing = self.model.reauth_unsaved.iter().any(Option::is_some);
                if !reauthorizing && self.store.remove(Duration::from_secs(1)).await {
                    self.model.removed = Some(Removal {
                        refresh_calls: self.refresh_calls(),
                        save_attempts: self.store.save_attempts(),
                    });
                } else {
                    self.log
                        .push("(not removed: unsaved tokens or lock held)".to_owned());
                }
                vec![]
            }
            Op::LoseLastWrite => {
                if let Some(lost) = self.store.lose_last_write() {
                    if let Some(reverted) = lost.reverted {
                        if !self.fake.refresh_token_is_live(&reverted) {
                            self.model.lost.push(Lost {
                                writer: lost.writer,
                                reverted,
                                calls_before: calls_of(&self.calls).len(),
                            });
                        }
                    }
                } else {
                    self.log.push("(nothing to lose)".to_owned());
                }
                vec![]
            }
        })
    }

    fn refresh_calls(&self) -> usize {
        calls_of(&self.calls)
            .iter()
            .filter(|c| c.refresh_token.is_some())
            .count()
    }

    /// Waits until no token call is in flight and none started for a while (a background refresh
    /// may still be landing), and until no replica holds the lock with unsaved tokens that the
    /// store would now accept (bounded by [`HOSTAGE_BOUND`]).
    async fn settle(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + CALL_BOUND;
        let mut transient = false;
        let mut hostage_since: Option<Instant> = None;
        loop {
            let calls = self.fake.token_calls();
            let saves = self.store.save_attempts();
            // After a transient failure the manager may be in its backoff: wait out the longest.
            let quiet = if transient {
                BACKOFF.1 + Duration::from_millis(30)
            } else {
                Duration::from_millis(30)
            };
            sleep(quiet).await;
            transient |= self.account();
            let hostage = self
                .pending()
                .filter(|&r| self.replicas[r].store.armed_saves() == 0);
            match (hostage, hostage_since) {
                (Some(_), None) => hostage_since = Some(Instant::now()),
                (None, _) => hostage_since = None,
                _ => {}
            }
            if let (Some(r), Some(since)) = (hostage, hostage_since) {
                if since.elapsed() > HOSTAGE_BOUND {
                    return Err(format!(
                        "replica {r} kept the store lock with unsaved tokens for {HOSTAGE_BOUND:?} \
                         after the store accepted its writes again (a grant held hostage)"
                    ));
                }
                continue;
            }
            let counted = self.uncounted_calls().is_none();
            if self.fake.token_calls_in_flight() == 0
                && self.fake.token_calls() == calls
                && self.store.save_attempts() == saves
                && counted
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                if let Some(mismatch) = self.uncounted_calls() {
                    return Err(mismatch);
                }
                return Err(format!(
                    "no quiet moment within {CALL_BOUND:?}: {} token calls in flight",
                    self.fake.token_calls_in_flight()
                ));
            }
        }
    }

    /// A replica whose stats do not count exactly the token calls its client made, if any.
    fn uncounted_calls(&self) -> Option<String> {
        let calls = calls_of(&self.calls);
        (0..2).find_map(|r| {
            let stats = self.replicas[r].auth.stats();
            let counted = stats.token_calls_succeeded
                + stats.token_calls_failed_transient
                + stats.token_calls_failed_terminal
                + stats.token_calls_failed_other;
            let made = calls.iter().filter(|c| c.replica == r).count() as u64;
            (counted != made).then(|| {
                format!("replica {r}'s stats count {counted} token calls; its client made {made}")
            })
        })
    }

    /// The end of a run: the store accepts writes again (armed save failures are left to be used
    /// up); a replica holding the lock with unsaved tokens must save them on its own.
    async fn drain(&mut self) -> Result<(), String> {
        let Some(r) = self.pending() else {
            return Ok(());
        };
        // One backoff of at most about a second per failure still armed, then the hostage bound.
        let armed = self.replicas[r].store.armed_saves() as u32;
        let deadline = Instant::now() + Duration::from_millis(1200) * armed + HOSTAGE_BOUND;
        while self.pending().is_some() {
            if Instant::now() > deadline {
                return Err(format!(
                    "replica {r} still holds the store lock with unsaved tokens: nobody called it, \
                     and it did not retry the save on its own"
                ));
            }
            sleep(Duration::from_millis(20)).await;
        }
        self.settle().await?;
        self.account();
        Ok(())
    }

    /// Accounts for new token requests and calls: each request consumed the oldest queued fault;
    /// a refresh answered `invalid_grant` latches its replica; a successful save of a replica ends
    /// its unsaved re-authorization. Returns whether a transient fault was consumed.
    fn account(&mut self) -> bool {
        let requests = self.fake.token_requests();
        let mut transient = false;
        for _ in &requests[self.model.seen_token_requests..] {
            if let Some(Fault::Unavailable | Fault::Reset | Fault::Hang) =
                self.model.queued.pop_front()
            {
                transient = true;
            }
        }
        self.model.seen_token_requests = requests.len();
        let api_requests = self.fake.api_requests().len();
        let taken = api_requests - self.model.seen_api_requests;
        self.model.queued_api_statuses = self.model.queued_api_statuses.saturating_sub(taken);
        self.model.seen_api_requests = api_requests;
        {
            let calls = calls_of(&self.calls);
            let mut seen = self.model.seen_calls;
            while let Some(call) = calls.get(seen) {
                let r = call.replica;
                if call.refresh_token.is_some()
                    && self.model.latched[r]
                    && call.refresh_token == self.model.refused[r]
                {
                    self.model.violation.get_or_insert(format!(
                        "replica {r} presented the refresh token it got invalid_grant for again"
                    ));
                }
                match call.answer {
                    // Still running: look again next time.
                    None if self.fake.token_calls_in_flight() > 0 => break,
                    Some((400, true)) if call.refresh_token.is_some() => {
                        self.model.latched[r] = true;
                        self.model.refused[r] = call.refresh_token.clone();
                    }
                    Some((200, _)) if call.refresh_token.is_some() => {
                        self.model.latched[r] = false;
                        self.model.refused[r] = None;
                    }
                    _ => {}
                }
                seen += 1;
            }
            self.model.seen_calls = seen;
        }
        for r in 0..2 {
            if let Some(saves) = self.model.reauth_unsaved[r] {
                if self.replicas[r].store.saves_ok() > saves {
                    self.model.reauth_unsaved[r] = None;
                }
            }
        }
        transient
    }

    fn check_invariants(&self) -> Result<(), String> {
        let fake = &self.fake;
        let in_flight = fake.max_token_calls_in_flight();
        if in_flight > 1 {
            return Err(format!("{in_flight} token calls were in flight at once"));
        }
        if let Some(violation) = &self.model.violation {
            return Err(violation.clone());
        }
        if let Some(mismatch) = self.uncounted_calls() {
            return Err(mismatch);
        }
        let unlocked = self.store.unlocked_saves();
        if unlocked > 0 {
            return Err(format!(
                "{unlocked} saves were made without the refresh lock"
            ));
        }
        let calls = calls_of(&self.calls).clone();
        // A replica whose write the store lost holds the newer tokens: it must never go back to
        // the rotated-away refresh token the store reverted to. The other replica cannot know, so
        // its replay of that token is the only one allowed.
        let mut excused = 0;
        for lost in &self.model.lost {
            for call in &calls[lost.calls_before..] {
                if call.refresh_token.as_deref() == Some(lost.reverted.as_str()) {
                    if call.replica == lost.writer {
                        return Err(format!(
                            "replica {} replayed the rotated-away refresh token the store reverted \
                             to, although it holds the newer tokens in memory",
                            lost.writer
                        ));
                    }
                    excused += 1;
                }
            }
        }
        let replays = fake.refresh_token_replays();
        if replays > excused {
            return Err(format!(
                "{replays} rotated refresh tokens were replayed (the newer one was lost); {excused} \
                 were the store's lost write"
            ));
        }
        // Saved *before* use: a token used while its save was still being retried counts too.
        for (index, request) in fake.token_requests().iter().enumerate() {
            let presented = request
                .json
                .as_ref()
                .filter(|j| j["grant_type"] == "refresh_token")
                .and_then(|j| j["refresh_token"].as_str());
            if let Some(presented) = presented {
                match self.store.saved_refresh_at(presented) {
                    Some(saved) if saved.token_requests <= index => {}
                    _ => {
                        return Err(format!(
                            "token request {index} presented a refresh token before it was saved"
                        ))
                    }
                }
            }
        }
        for (index, request) in fake.api_requests().iter().enumerate() {
            let bearer = request
                .authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "));
            if let Some(bearer) = bearer {
                match self.store.saved_access_at(bearer) {
                    Some(saved) if saved.api_requests <= index => {}
                    _ => {
                        return Err(format!(
                            "API request {index} sent an access token before it was saved"
                        ))
                    }
                }
            }
        }
        if let Some(removal) = self.model.removed {
            if self.store.is_present() {
                return Err("the removed grant is back in the store".to_owned());
            }
            let refreshes = self.refresh_calls() - removal.refresh_calls;
            if refreshes > 0 {
                return Err(format!(
                    "{refreshes} refresh token calls after the grant was removed"
                ));
            }
            let saves = self.store.save_attempts() - removal.save_attempts;
            if saves > 0 {
                return Err(format!("{saves} saves after the grant was removed"));
            }
        }
        // A crash now must leave a usable grant behind: the stored refresh token is the live one of
        // its grant (not rotated away), unless a replica holds newer tokens it could not save yet,
        // or the store lost a write.
        if let Some(stored) = self.store.refresh_token() {
            if !fake.refresh_token_is_live(&stored)
                && self.pending().is_none()
                && self.model.lost.is_empty()
                && self.model.reauth_unsaved.iter().all(Option::is_none)
            {
                return Err(
                    "the stored refresh token is no longer live, and no save failed".to_owned(),
                );
            }
        }
        let overdue = fake.max_expired_overdue();
        if overdue > OVERDUE_TOLERANCE {
            return Err(format!(
                "an access token reached the API {overdue:?} after it expired"
            ));
        }
        Ok(())
    }
}

/// One request through the layer: its status, or the `AuthError` the layer failed with.
async fn request(svc: Svc, url: String) -> Result<Answer, String> {
    let request = Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let call = async move {
        let response = svc.oneshot(request).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok::<_, BoxError>(status)
    };
    match timeout(CALL_BOUND, call).await {
        Err(_) => Err(format!("a request had no answer within {CALL_BOUND:?}")),
        Ok(Ok(status)) => Ok(Answer::Status(status)),
        Ok(Err(e)) => match e.downcast::<AuthError>() {
            Ok(e) => typed(Err(*e)),
            Err(e) => Err(format!("a request failed with an untyped error: {e}")),
        },
    }
}

async fn access_token(auth: NiftyAuth) -> Result<Answer, String> {
    match timeout(CALL_BOUND, auth.access_token()).await {
        Err(_) => Err(format!(
            "access_token() had no answer within {CALL_BOUND:?}"
        )),
        Ok(result) => typed(result.map(|_| 200)),
    }
}

/// `Ok` or a typed `AuthError`; an `Internal` error means a panic or a lost refresh task.
fn typed(result: Result<u16, AuthError>) -> Result<Answer, String> {
    match result {
        Ok(status) => Ok(Answer::Status(status)),
        Err(e @ AuthError::Internal { .. }) => Err(format!("internal error (panic?): {e}")),
        Err(e) => Ok(Answer::Auth(e)),
    }
}

fn joined(
    result: Result<Result<Answer, String>, tokio::task::JoinError>,
) -> Result<Answer, String> {
    result.map_err(|e| format!("a caller panicked: {e}"))?
}
