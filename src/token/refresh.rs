//! Single flight: at most one token call per grant at a time, run in its own task.
//!
//! Every path that needs a new token — a request with no usable token, a request in the skew window
//! (background), a 401, [`NiftyAuth::access_token`](crate::NiftyAuth::access_token) — goes through
//! [`TokenManager::token`] (or [`TokenManager::after_unauthorized`]). The first caller reserves the
//! in-flight slot and spawns the refresh task; everyone else awaits the slot's [`Shared`] handle. The
//! task is spawned, so dropping every waiter never cancels it: its tokens are saved and published
//! regardless.
//!
//! The slot can never stay occupied: the guard that clears it is created *before* the spawn and moved
//! into the task, so it is dropped — and the slot cleared — however the task ends, including a task
//! that never ran because its runtime shut down. Waiters of such a task see it as cancelled and start
//! a new refresh on their own runtime.
//!
//! Inside the task, in order: the refresh gate (serializes with `set_tokens` / `exchange_code`), the
//! token-call slot (and a 429's pause) — before any store resource —, the store's lock, unsaved
//! tokens first, a re-read of the store (someone else may have refreshed; or removed the grant; or
//! the store lost this manager's last save), the token call (with backoff), the save (retried), and
//! only then the publication. Rotated tokens whose save failed stay parked with the store lock still
//! held; a rescue task retries their save on its own (another process may be waiting for that lock)
//! and every attempt saves them before anything else. Terminal errors latch until new tokens are
//! supplied.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{FutureExt, Shared};
use http::HeaderValue;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::cache::{Current, Read, TokenCache};
use super::TokenSet;
use crate::clock::instant_after;
use crate::endpoint::{Endpoint, Grant};
use crate::error::AuthError;
use crate::grants::{GrantId, Latches};
use crate::stats::Counters;
use crate::store::{GrantStore, LockLost, LockTimeout, StoreLock, TokenStore};
use crate::trace;
use tower::BoxError;

/// A token on its way: what waiters await.
pub(crate) type TokenFuture = Pin<Box<dyn Future<Output = Result<Arc<Current>, AuthError>> + Send>>;

/// How many times a failed save is tried within one refresh (the lock is held throughout).
const SAVE_ATTEMPTS: u32 = 3;
/// The delay after the first failed save; it quadruples.
const SAVE_RETRY_DELAY: Duration = Duration::from_millis(100);
/// The rescue task's first pause before retrying a failed save; it doubles up to
/// [`RESCUE_MAX_DELAY`] (each pause half fixed, half random).
const RESCUE_FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest pause between the rescue task's tries: a replica waiting for the kept lock gets the
/// saved tokens within about this long (plus its own lock poll) of the store accepting writes again.
const RESCUE_MAX_DELAY: Duration = Duration::from_secs(1);
/// How many times a caller replaces a flight whose task was cancelled (its runtime shut down) before
/// it gives up: the caller's own runtime may be shutting down too.
const MAX_CANCELLED_FLIGHTS: usize = 3;

/// How a flight ends.
#[derive(Clone)]
enum Landing {
    Done(Result<Arc<Current>, AuthError>),
    /// The task was dropped before it finished: its runtime shut down.
    Cancelled,
}

type Flight = Shared<Pin<Box<dyn Future<Output = Landing> + Send>>>;

/// The in-flight slot: the running refresh, and an id so a stale flight is cleared only once.
struct InFlight {
    id: u32,
    flight: Flight,
}

/// Why a token is wanted; decides whether the current one will do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    /// Any token that may still be sent.
    Usable,
    /// A token newer than this generation (the one a 401 rejected), or a refresh.
    NewerThan(u64),
    /// Refresh ahead of expiry, unless the current token is fresh again.
    Background,
    /// Save tokens whose save failed (the rescue task); a token call only if the saved tokens
    /// cannot be used.
    Save,
}

/// What to do about a 401 for a token generation.
pub(crate) enum Unauthorized {
    /// A newer token is already current: retry with it.
    Newer(HeaderValue, u64),
    /// Retry with the token this refresh brings.
    Wait(TokenFuture),
    /// The token was just obtained and was already rejected once: a refresh would not help; return
    /// the 401 as it is (until the cooldown passes).
    GiveUp,
}

/// A latched terminal error. Tokens supplied here lift it; so do tokens found in the store, for the
/// errors a re-authorization cures: the store is re-read at most every [`LATCH_RECHECK`] (by a
/// caller, never in the background), so a grant re-authorized through another process (or by
/// `nifty-auth login`) is picked up without a token call while it is still dead.
pub(crate) struct Latched {
    pub(crate) error: AuthError,
    pub(crate) refused: Refused,
    /// No store re-read before this.
    recheck_at: Instant,
}

/// What a latch was refused with: what stored tokens must differ from to lift it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The endpoint refused this refresh token (its fingerprint): stored tokens with another one
    /// are a re-authorization.
    RefreshToken(u64),
    /// The grant was removed: any stored tokens are a re-authorization.
    Removed,
    /// The client itself was refused (401 `invalid_client`, 403): no stored token cures that.
    Client,
}

impl Latched {
    pub(crate) fn new(error: AuthError, refused: Refused) -> Self {
        Latched {
            error,
            refused,
            recheck_at: instant_after(Instant::now(), LATCH_RECHECK),
        }
    }

    /// Whether `stored` (what the store holds now) lifts this latch.
    fn lifted_by(&self, stored: Option<&TokenSet>) -> bool {
        let Some(stored) = stored else { return false };
        match self.refused {
            Refused::RefreshToken(refused) => {
                stored.refresh_token().map(fingerprint) != Some(refused)
            }
            Refused::Removed => true,
            Refused::Client => false,
        }
    }
}

/// How often a latched grant's callers may have the store re-read (see [`Latched`]).
const LATCH_RECHECK: Duration = Duration::from_secs(1);

/// Tokens whose save failed: saved before anything else, under `lock` if it is still held.
struct Pending {
    tokens: TokenSet,
    lock: Option<StoreLock>,
    /// From a re-authorization (`set_tokens`, `exchange_code`): saved whether or not the grant is
    /// still stored. Rotated tokens of a grant removed meanwhile are dropped instead.
    reauthorized: bool,
}

#[derive(Default)]
struct State {
    /// The running refresh (boxed: an idle grant keeps its state small).
    in_flight: Option<Box<InFlight>>,
    flights: u32,
    /// This manager has seen its grant in the store (loaded or saved it): from then on a store found
    /// empty means the grant was removed, never "start from the bootstrap refresh token".
    stored: bool,
    /// A rescue task is retrying the save of parked tokens.
    rescuing: bool,
    /// The grant was removed here ([`TokenManager::retire`]): nothing brings this manager back.
    retired: bool,
    /// A fingerprint of the refresh token this manager's last refresh replaced (0: none). A store
    /// that holds it again has lost a save: the tokens in memory are newer.
    replaced: u64,
    /// A terminal error (invalid_grant, 401, 403 from the endpoint; a removed grant): no token call
    /// until new tokens. (Rare, so boxed: an idle grant of many keeps its state small.)
    terminal: Option<Box<Latched>>,
    /// Tokens obtained (a rotation, a re-authorization) whose save failed.
    pending: Option<Box<Pending>>,
    /// No background refresh before this instant (after a failed one; rare, so boxed).
    background_not_before: Option<Box<Instant>>,
    /// The last generation a retry after a 401 found rejected too (0: none; generations start at 1).
    rejected: u64,
}

/// The token manager of one grant: the current token, the store, the endpoint and the single-flight
/// state. What does not differ between the grants of a `NiftyGrants` lives in the shared [`Policy`],
/// so an idle grant costs little memory.
pub(crate) struct TokenManager {
    pub(crate) cache: TokenCache,
    policy: Arc<Policy>,
    store: StoreRef,
    /// Which grant of a `NiftyGrants` this is.
    pub(crate) grant: Option<GrantId>,
    state: Mutex<State>,
    /// Serializes everything that changes the tokens: refreshes, `set_tokens`, `exchange_code`.
    gate: tokio::sync::Mutex<()>,
    /// When a request last used this grant (the registry's insertion tick; for eviction).
    pub(crate) last_used: AtomicU64,
}

/// What every grant of one `NiftyAuth` / `NiftyGrants` shares.
pub(crate) struct Policy {
    /// `None` for a personal access token: nothing to refresh with. With its concurrency limit and
    /// 429 backoff.
    pub(crate) endpoint: Option<Endpoint>,
    /// A refresh token to start from when the store holds none (`Builder::refresh_token`).
    pub(crate) bootstrap_refresh_token: Option<String>,
    /// A token rejected twice within this long of being obtained is not refreshed again for a 401.
    pub(crate) unauthorized_cooldown: Duration,
    /// Where the grants' latches are reported (`NiftyGrants`).
    pub(crate) latches: Option<Latches>,
    pub(crate) counters: Counters,
}

/// Where a manager's tokens live: a store of its own (`NiftyAuth`), or its grant's entry in the
/// shared store of a `NiftyGrants` (no per-grant view object: the grant id is the manager's).
pub(crate) enum StoreRef {
    Token(Arc<dyn TokenStore>),
    Grant(Arc<dyn GrantStore>),
}

/// What a [`TokenManager`] is made of.
pub(crate) struct ManagerParts {
    pub(crate) cache: TokenCache,
    pub(crate) policy: Arc<Policy>,
    pub(crate) store: StoreRef,
    pub(crate) grant: Option<GrantId>,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock();
        f.debug_struct("TokenManager")
            .field("cache", &self.cache)
            .field("endpoint", &self.policy.endpoint)
            .field("refreshing", &state.in_flight.is_some())
            .field("terminal", &state.terminal.as_ref().map(|l| &l.error))
            .field("unsaved_tokens", &state.pending.is_some())
            .finish_non_exhaustive()
    }
}

/// A reserved flight, to be launched once the state lock is released.
struct Launch {
    manager: Arc<TokenManager>,
    id: u32,
    want: Want,
    done: oneshot::Sender<Landing>,
}

impl Launch {
    /// Spawns the refresh task. Called without the state lock: a runtime that is shutting down drops
    /// the task (and its slot guard, which takes the lock) right inside `spawn`.
    fn go(self) {
        let Launch {
            manager,
            id,
            want,
            done,
        } = self;
        let slot = SlotGuard {
            manager: Arc::clone(&manager),
            id,
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return; // `slot` and `done` drop: the waiters see a cancelled flight.
        };
        handle.spawn(async move {
            // Moved in before the first poll: dropped however the task ends, even if it never runs.
            let slot = slot;
            let result = AssertUnwindSafe(manager.refresh(want))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    Err(AuthError::Internal {
                        reason: "the refresh task panicked (in a token store?)".to_owned(),
                    })
                });
            drop(slot);
            let _ = done.send(Landing::Done(result));
        });
    }
}

/// The rescue task of a manager with unsaved tokens; marks it ended however it ends (a runtime that
/// shuts down drops it), so the next failed save starts another.
struct Rescue(Arc<TokenManager>);

impl Rescue {
    async fn run(self) {
        self.0.rescue().await;
    }
}

impl Drop for Rescue {
    fn drop(&mut self) {
        self.0.state.lock().rescuing = false;
    }
}

/// Clears the in-flight slot when its task ends, however it ends, if the slot still holds that task.
struct SlotGuard {
    manager: Arc<TokenManager>,
    id: u32,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.manager.clear_flight(self.id);
    }
}

impl TokenManager {
    pub(crate) fn new(parts: ManagerParts) -> Self {
        // A grant known to need re-authorization (e.g. before it was evicted) starts latched.
        let terminal = match (&parts.grant, &parts.policy.latches) {
            (Some(grant), Some(latches)) => latches
                .error_for(grant)
                .map(|(error, refused)| Latched::new(error, refused)),
            _ => None,
        };
        TokenManager {
            cache: parts.cache,
            policy: parts.policy,
            store: parts.store,
            grant: parts.grant,
            state: Mutex::new(State {
                terminal: terminal.map(Box::new),
                ..State::default()
            }),
            gate: tokio::sync::Mutex::new(()),
            last_used: AtomicU64::new(0),
        }
    }

    /// The counters (shared by every grant of a `NiftyGrants`).
    #[inline]
    pub(crate) fn counters(&self) -> &Counters {
        &self.policy.counters
    }

    /// Whether this manager can get new tokens (`false` for a personal access token).
    pub(crate) fn can_refresh(&self) -> bool {
        self.policy.endpoint.is_some()
    }

    /// The token endpoint client, if any (for `Debug`).
    pub(crate) fn endpoint_client(&self) -> Option<&Endpoint> {
        self.policy.endpoint.as_ref()
    }

    /// Whether a refresh is running or tokens wait unsaved: such a grant is never evicted.
    pub(crate) fn busy(&self) -> bool {
        let state = self.state.lock();
        state.in_flight.is_some() || state.pending.is_some()
    }

    /// Latches a terminal error and reports it.
    fn latch(&self, error: &AuthError, refused: Refused) {
        self.state.lock().terminal = Some(Box::new(Latched::new(error.clone(), refused)));
        // A removed grant was removed on purpose (by another process): not one to re-authorize.
        if refused == Refused::Removed {
            return;
        }
        if let (Some(grant), Some(latches)) = (&self.grant, &self.policy.latches) {
            latches.latched(grant, error, refused);
        }
    }

    /// Lifts the latch (new tokens from a re-authorization) and reports it.
    fn lift(&self, state: &mut State) {
        if state.terminal.take().is_some() {
            if let (Some(grant), Some(latches)) = (&self.grant, &self.policy.latches) {
                latches.lifted(grant);
            }
        }
    }

    /// Retires this manager for good (its grant was removed): waits for a running refresh, drops
    /// unsaved tokens, forgets the current token, and fails every later call.
    pub(crate) async fn retire(self: Arc<Self>) -> Result<(), AuthError> {
        self.spawn_exclusive(|manager| async move {
            {
                let mut state = manager.state.lock();
                // Dropping the parked tokens releases a lock kept with them.
                state.pending = None;
                state.retired = true;
                state.terminal = Some(Box::new(Latched::new(
                    AuthError::GrantRemoved,
                    Refused::Removed,
                )));
            }
            manager.cache.clear();
            Ok(manager.cache.load())
        })
        .await
        .map(drop)
    }

    /// The hot path: a header to send now, or `None` if the caller has to wait for a token.
    /// In the skew window it also starts a background refresh (at most one).
    #[inline]
    pub(crate) fn header_now(self: &Arc<Self>) -> Option<(HeaderValue, u64)> {
        match self.cache.read() {
            Read::Fresh(header, generation) => Some((header, generation)),
            Read::Stale(header, generation) => {
                self.refresh_in_background();
                Some((header, generation))
            }
            Read::Missing => None,
        }
    }

    /// Starts a background refresh unless one is running, latched off, or cooling down after a failure.
    pub(crate) fn refresh_in_background(self: &Arc<Self>) {
        let launch = {
            let mut state = self.state.lock();
            if state.in_flight.is_some() || state.terminal.is_some() {
                return;
            }
            if state
                .background_not_before
                .as_deref()
                .is_some_and(|t| Instant::now() < *t)
            {
                return;
            }
            if self.cache.load().fresh() {
                return;
            }
            match self.reserve(&mut state, Want::Background) {
                Ok((_, launch)) => launch,
                Err(_) => return, // no runtime: the next request that needs a token reports it
            }
        };
        // Nobody awaits it: the task runs on its own and publishes its result.
        launch.go();
    }

    /// A token satisfying `want`: the current one if it does, else the result of the (single) refresh.
    pub(crate) async fn token(self: Arc<Self>, want: Want) -> Result<Arc<Current>, AuthError> {
        for _ in 0..MAX_CANCELLED_FLIGHTS {
            let joined = {
                let mut state = self.state.lock();
                let current = self.cache.load();
                if satisfies(&current, want) {
                    // Someone else's refresh already served this caller.
                    self.counters().refresh_coalesced();
                    return Ok(current);
                }
                self.join(&mut state, want)?
            };
            let joined = joined.launch();
            if let Some(landing) = self.land(joined).await {
                return landing;
            }
        }
        Err(cancelled())
    }

    /// What to do about a 401 answered to a request sent with token `generation`. Decided under the
    /// state lock, so concurrent 401s for one token make one refresh and all of them retry.
    pub(crate) fn after_unauthorized(self: &Arc<Self>, generation: u64) -> Unauthorized {
        let joined = {
            let mut state = self.state.lock();
            let current = self.cache.load();
            if current.generation > generation && current.usable() {
                if let Some(header) = current.header() {
                    self.counters().refresh_coalesced();
                    return Unauthorized::Newer(header, current.generation);
                }
            }
            // A token that a retry already found rejected (so a fresh token did not cure the 401),
            // rejected again while it is young: refreshing would only repeat that.
            let young = || {
                Instant::now()
                    < instant_after(current.published_at, self.policy.unauthorized_cooldown)
            };
            if current.generation == generation
                && state.rejected == generation
                && state.in_flight.is_none()
                && young()
            {
                trace::debug!(
                    generation,
                    "401 for a token that was just obtained and already rejected: not refreshing"
                );
                return Unauthorized::GiveUp;
            }
            match self.join(&mut state, Want::NewerThan(generation)) {
                Ok(joined) => joined,
                Err(error) => return Unauthorized::Wait(Box::pin(async move { Err(error) })),
            }
        };
        let joined = joined.launch();
        let manager = Arc::clone(self);
        Unauthorized::Wait(Box::pin(async move {
            match manager.land(joined).await {
                Some(landing) => landing,
                None => manager.token(Want::NewerThan(generation)).await,
            }
        }))
    }

    /// Records that the retry after a 401, sent with token `generation`, was answered 401 again.
    pub(crate) fn rejected_again(&self, generation: u64) {
        let mut state = self.state.lock();
        if self.cache.load().generation == generation {
            state.rejected = generation;
        }
    }

    /// Joins the running flight or reserves (and launches) a new one.
    fn join(self: &Arc<Self>, state: &mut State, want: Want) -> Result<Joined, AuthError> {
        if let Some(in_flight) = &state.in_flight {
            self.counters().refresh_coalesced();
            return Ok(Joined {
                id: in_flight.id,
                flight: in_flight.flight.clone(),
                launch: None,
            });
        }
        let (pending, retired) = (state.pending.is_some(), state.retired);
        if let Some(latched) = state.terminal.as_deref_mut() {
            // Unsaved tokens are saved whatever the latch; otherwise a caller may have the store
            // re-read now and then (a re-authorization elsewhere lifts the latch), else fails fast.
            let now = Instant::now();
            if !pending {
                if retired || latched.refused == Refused::Client || now < latched.recheck_at {
                    return Err(latched.error.clone());
                }
                latched.recheck_at = instant_after(now, LATCH_RECHECK);
            }
        }
        let ((id, flight), launch) = self.reserve(state, want)?;
        Ok(Joined {
            id,
            flight,
            launch: Some(launch),
        })
    }

    /// Waits for a joined flight; `None` if its task was cancelled (the slot is then cleared and the
    /// caller may start another).
    async fn land(&self, joined: Joined) -> Option<Result<Arc<Current>, AuthError>> {
        match joined.flight.await {
            Landing::Done(result) => Some(result),
            Landing::Cancelled => {
                self.clear_flight(joined.id);
                None
            }
        }
    }

    /// Reserves the in-flight slot for a new refresh. The task is spawned by [`Launch::go`] once the
    /// caller has released the state lock.
    fn reserve(
        self: &Arc<Self>,
        state: &mut State,
        want: Want,
    ) -> Result<((u32, Flight), Launch), AuthError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(AuthError::config(
                "no tokio runtime: nifty-auth refreshes tokens in a tokio task",
            ));
        }
        self.counters().refresh_started();
        state.flights = state.flights.wrapping_add(1);
        let id = state.flights;
        let (done, landed) = oneshot::channel();
        let wait: Pin<Box<dyn Future<Output = Landing> + Send>> =
            Box::pin(async move { landed.await.unwrap_or(Landing::Cancelled) });
        let flight = wait.shared();
        state.in_flight = Some(Box::new(InFlight {
            id,
            flight: flight.clone(),
        }));
        let launch = Launch {
            manager: Arc::clone(self),
            id,
            want,
            done,
        };
        Ok(((id, flight), launch))
    }

    fn clear_flight(&self, id: u32) {
        let mut state = self.state.lock();
        if state.in_flight.as_ref().is_some_and(|f| f.id == id) {
            state.in_flight = None;
        }
    }

    /// The refresh task, in a `nifty_auth.refresh` span (grant, trigger, outcome, attempts, duration).
    async fn refresh(self: &Arc<Self>, want: Want) -> Result<Arc<Current>, AuthError> {
        let started = Instant::now();
        let refresh = self.refresh_gated(want);
        #[cfg(feature = "tracing")]
        let span = tracing::debug_span!(
            "nifty_auth.refresh",
            grant = "refresh_token",
            grant_id = self.grant.as_ref().map_or("", GrantId::as_str),
            trigger = ?want,
            outcome = tracing::field::Empty,
            attempts = 0u32,
            duration_ms = tracing::field::Empty,
        );
        #[cfg(feature = "tracing")]
        let refresh = tracing::Instrument::instrument(refresh, span.clone());
        let result = refresh.await;
        #[cfg(feature = "tracing")]
        {
            span.record("duration_ms", started.elapsed().as_millis() as u64);
            span.record("outcome", if result.is_ok() { "ok" } else { "failed" });
        }
        self.counters()
            .refresh_finished(started.elapsed(), result.is_ok());
        result
    }

    async fn refresh_gated(self: &Arc<Self>, want: Want) -> Result<Arc<Current>, AuthError> {
        let _gate = self.gate.lock().await;
        // Someone (set_tokens, exchange_code, an earlier refresh) may have published while we queued;
        // unsaved tokens are saved whatever the current token is.
        let current = self.cache.load();
        if satisfies(&current, want) && self.state.lock().pending.is_none() {
            return Ok(current);
        }
        // The token-call slot (and a 429's pause) before any store resource: a refresh queued behind
        // the endpoint's concurrency limit holds no store lock, pool connection or lock file.
        let _turn = match &self.policy.endpoint {
            Some(endpoint) => endpoint.pressure().turn().await,
            None => None,
        };
        let result = self.refresh_once(&current).await;
        match &result {
            Ok(current) => trace::debug!(generation = current.generation, "token refreshed"),
            Err(error) => {
                // A terminal error's message says what to do (re-authorize, fix the configuration).
                trace::warning!(
                    error = %error,
                    terminal = error.is_terminal(),
                    "token refresh failed"
                );
                if want == Want::Background {
                    let cooldown = self
                        .policy
                        .endpoint
                        .as_ref()
                        .map_or(Duration::from_secs(1), |e| e.backoff.max);
                    self.state.lock().background_not_before =
                        Some(Box::new(instant_after(Instant::now(), cooldown)));
                }
            }
        }
        result
    }

    /// One refresh under the store's lock (a lock kept from an earlier failed save is reused).
    async fn refresh_once(self: &Arc<Self>, current: &Current) -> Result<Arc<Current>, AuthError> {
        let (pending, kept) = self.take_pending_lock();
        let was_kept = kept.is_some();
        let lock = match kept {
            Some(lock) => lock,
            None => self.lock_store_or_rescue().await?,
        };
        let result = self.refresh_locked(current, pending.clone(), &lock).await;
        if was_kept && result.is_err() && self.state.lock().pending.is_some() {
            // The kept lock may have lapsed (a fenced store refuses every save under it). Try for a
            // new one *while still holding it*: if it is still ours, the try fails at once and
            // nothing changes hands — releasing it first would let another process in, to refresh
            // with the refresh token the parked tokens replaced.
            // A fenced store that said the lock no longer protects the save (`LockLost`) gets it
            // given up for a new one even if the try fails (its session may still hold it).
            let fresh = match self.try_lock_store().await {
                Ok(fresh) => {
                    lock.release().await;
                    fresh
                }
                Err(_) if result.as_ref().is_err_and(lock_lost) => {
                    lock.release().await;
                    self.lock_store_or_rescue().await?
                }
                Err(_) => {
                    self.settle(lock).await;
                    return result;
                }
            };
            let result = self.refresh_locked(current, pending, &fresh).await;
            self.settle(fresh).await;
            return result;
        }
        self.settle(lock).await;
        result
    }

    async fn refresh_locked(
        &self,
        current: &Current,
        pending: Option<(TokenSet, bool)>,
        lock: &StoreLock,
    ) -> Result<Arc<Current>, AuthError> {
        // 1. Tokens whose save failed: save them first, never call again while holding an unsaved
        //    rotated refresh token — unless the grant was removed meanwhile (then they go with it).
        let mut refresh_token = None;
        if let Some((pending, reauthorized)) = pending {
            let seen = self.state.lock().stored;
            if !reauthorized && seen && self.store_load().await.map_err(AuthError::store)?.is_none()
            {
                self.state.lock().pending = None;
                return Err(self.removed());
            }
            let saved = self.save_parked(pending, reauthorized, lock).await?;
            if self.cache.adoptable(&saved) {
                return self.cache.publish(saved);
            }
            refresh_token = saved.refresh_token().map(str::to_owned);
        }

        // 2. The store may hold newer tokens (another instance or process refreshed) — or none: the
        //    grant was removed — or older ones: the store lost this manager's last save.
        if refresh_token.is_none() {
            let stored = self.store_load().await.map_err(AuthError::store)?;
            // A latched grant: only tokens stored by a re-authorization elsewhere lift the latch.
            let latch = {
                let mut state = self.state.lock();
                match state.terminal.as_deref() {
                    Some(latched) if !latched.lifted_by(stored.as_ref()) => {
                        Some(latched.error.clone())
                    }
                    Some(_) => {
                        self.lift(&mut state);
                        None
                    }
                    None => None,
                }
            };
            if let Some(error) = latch {
                return Err(error);
            }
            match stored {
                None if self.state.lock().stored => return Err(self.removed()),
                None => {}
                Some(stored) => {
                    self.state.lock().stored = true;
                    let ours = current.tokens.as_ref().filter(|ours| {
                        ours.refresh_token() != stored.refresh_token()
                            && stored
                                .refresh_token()
                                .is_some_and(|rt| fingerprint(rt) == self.state.lock().replaced)
                    });
                    if let Some(ours) = ours {
                        // Never refresh with (nor adopt) a set this manager already replaced: put
                        // the newer set back first.
                        trace::warning!(
                            "the store holds tokens this process already replaced (it lost a save): \
                             saving the newer tokens back"
                        );
                        let saved = self.save_parked(ours.clone(), false, lock).await?;
                        refresh_token = saved.refresh_token().map(str::to_owned);
                    } else {
                        let newer = current.access_token() != Some(stored.access_token());
                        if newer && self.cache.adoptable(&stored) {
                            trace::record!("outcome", "adopted_from_store");
                            trace::debug!("adopting tokens from the store");
                            return self.cache.publish(stored);
                        }
                        refresh_token = stored.refresh_token().map(str::to_owned);
                    }
                }
            }
        }
        let refresh_token = refresh_token
            .or_else(|| {
                current
                    .tokens
                    .as_ref()
                    .and_then(|t| t.refresh_token().map(str::to_owned))
            })
            .or_else(|| self.policy.bootstrap_refresh_token.clone())
            .ok_or_else(|| AuthError::ReauthorizationRequired {
                reason:
                    "there is no refresh token: authorize the app (exchange_code) or supply tokens \
                         (set_tokens, the builder's refresh_token)"
                        .to_owned(),
            })?;

        // 3. The token call (the call slot is already held: see `refresh_gated`).
        let endpoint = self.endpoint()?;
        let grant = Grant::RefreshToken {
            refresh_token: &refresh_token,
        };
        let (result, attempts) = endpoint
            .request_holding_turn(&grant, Some(&refresh_token), self.counters())
            .await;
        trace::record!("attempts", attempts);
        let tokens = match result {
            Ok(tokens) => tokens,
            Err(error) => {
                if error.is_terminal() {
                    let refused = if error.is_reauthorization_required() {
                        Refused::RefreshToken(fingerprint(&refresh_token))
                    } else {
                        Refused::Client
                    };
                    self.latch(&error, refused);
                }
                return Err(error);
            }
        };
        if tokens.refresh_token() != Some(refresh_token.as_str()) {
            self.state.lock().replaced = fingerprint(&refresh_token);
        }

        // 4. Save before anyone uses the new access token; 5. publish.
        let saved = self.save_parked(tokens, false, lock).await?;
        self.cache.publish(saved)
    }

    /// The grant's store entry is gone after this manager had seen it: the grant was removed (here
    /// through another handle, in another process, or its token file deleted). Its token is
    /// forgotten; every later refresh re-reads the store (a re-authorization elsewhere brings it
    /// back) and makes no token call while the entry is absent.
    fn removed(&self) -> AuthError {
        trace::warning!("the grant's stored tokens are gone: it was removed");
        self.cache.clear();
        self.latch(&AuthError::GrantRemoved, Refused::Removed);
        AuthError::GrantRemoved
    }

    /// Parks `tokens` as unsaved, then saves them under `lock`, retrying a failed save while the lock
    /// is held. On success they are no longer parked; on failure they stay parked for the next
    /// attempt, and [`settle`](Self::settle) keeps the lock with them.
    async fn save_parked(
        &self,
        tokens: TokenSet,
        reauthorized: bool,
        lock: &StoreLock,
    ) -> Result<TokenSet, AuthError> {
        // Parked first, so even a store that panics cannot lose a rotated refresh token.
        self.state.lock().pending = Some(Box::new(Pending {
            tokens: tokens.clone(),
            lock: None,
            reauthorized,
        }));
        let mut delay = SAVE_RETRY_DELAY;
        let mut attempt = 1;
        loop {
            match self.store_save_locked(&tokens, lock).await {
                Ok(()) => {
                    let mut state = self.state.lock();
                    state.pending = None;
                    state.stored = true;
                    return Ok(tokens);
                }
                Err(error) if attempt >= SAVE_ATTEMPTS => return Err(AuthError::store(error)),
                Err(error) => {
                    trace::warning!(attempt, error = %error, "saving the tokens failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(4);
                    attempt += 1;
                }
            }
        }
    }

    /// The pending tokens (if any, with whether they come from a re-authorization) and the lock
    /// kept with them, taken out for this attempt. The tokens stay parked until they are saved.
    fn take_pending_lock(&self) -> (Option<(TokenSet, bool)>, Option<StoreLock>) {
        let mut state = self.state.lock();
        match state.pending.as_mut() {
            Some(pending) => (
                Some((pending.tokens.clone(), pending.reauthorized)),
                pending.lock.take(),
            ),
            None => (None, None),
        }
    }

    /// After an attempt: while tokens wait unsaved, keep the store lock with them, so no other process
    /// refreshes with the refresh token they replaced, and make sure a rescue task retries the save
    /// (nobody else may call this process soon); otherwise release the lock.
    async fn settle(self: &Arc<Self>, lock: StoreLock) {
        let release = {
            let mut state = self.state.lock();
            match state.pending.as_mut() {
                Some(pending) if pending.lock.is_none() => {
                    pending.lock = Some(lock);
                    None
                }
                _ => Some(lock),
            }
        };
        if let Some(lock) = release {
            lock.release().await;
        }
        self.rescue_if_parked();
    }

    /// [`lock_store`](Self::lock_store); if it fails while tokens wait unsaved, the rescue task
    /// retries.
    async fn lock_store_or_rescue(self: &Arc<Self>) -> Result<StoreLock, AuthError> {
        let lock = self.lock_store().await;
        if lock.is_err() {
            self.rescue_if_parked();
        }
        lock
    }

    /// Starts the rescue task if tokens wait unsaved and none runs.
    fn rescue_if_parked(self: &Arc<Self>) {
        {
            let mut state = self.state.lock();
            if state.pending.is_none() || state.rescuing {
                return;
            }
            state.rescuing = true;
        }
        let rescue = Rescue(Arc::clone(self));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(rescue.run());
        } // else `rescue` drops here: the next attempt starts one
    }

    /// Retries the save of parked tokens on its own, with capped, jittered backoff, until they are
    /// saved (or dropped: the grant was removed), so a replica waiting for the lock kept with them
    /// gets them soon after the store accepts writes again, whether or not anyone calls this one.
    /// Each try is a flight like any refresh (single flight with this process's callers).
    async fn rescue(self: &Arc<Self>) {
        let mut delay = RESCUE_FIRST_DELAY;
        loop {
            let half = delay / 2;
            tokio::time::sleep(half + half.mul_f64(fastrand::f64())).await;
            delay = delay.saturating_mul(2).min(RESCUE_MAX_DELAY);
            let joined = {
                let mut state = self.state.lock();
                if state.pending.is_none() {
                    // Under the same lock that parks tokens: a save failing after this starts a new
                    // rescue. (The guard's later reset may let two run at once: harmless, each try
                    // is a single flight.)
                    state.rescuing = false;
                    return;
                }
                self.join(&mut state, Want::Save)
            };
            if let Ok(joined) = joined {
                let _ = self.land(joined.launch()).await;
            }
        }
    }

    /// Replaces the tokens (after a re-authorization): waits for a running refresh, saves, publishes,
    /// and lifts a terminal latch.
    pub(crate) async fn set_tokens(
        self: Arc<Self>,
        tokens: TokenSet,
    ) -> Result<Arc<Current>, AuthError> {
        tokens.validate()?;
        self.spawn_exclusive(move |manager| async move { manager.install(tokens).await })
            .await
    }

    /// The authorization_code grant, run like a refresh (own task, after any running refresh).
    pub(crate) async fn exchange_code(
        self: Arc<Self>,
        code: String,
        redirect_uri: String,
        code_verifier: Option<String>,
    ) -> Result<Arc<Current>, AuthError> {
        self.spawn_exclusive(move |manager| async move {
            let grant = Grant::AuthorizationCode {
                code: &code,
                redirect_uri: &redirect_uri,
                code_verifier: code_verifier.as_deref(),
            };
            let (result, _attempts) = manager
                .endpoint()?
                .request(&grant, None, manager.counters())
                .await;
            manager.install(result?).await
        })
        .await
    }

    /// Installs tokens from a re-authorization: they supersede everything, so the latch is lifted
    /// *before* the save — a failed save leaves them parked, and the next attempt saves and uses them.
    async fn install(self: &Arc<Self>, tokens: TokenSet) -> Result<Arc<Current>, AuthError> {
        let kept = {
            let mut state = self.state.lock();
            if state.retired {
                return Err(AuthError::GrantRemoved);
            }
            self.lift(&mut state);
            state.background_not_before = None;
            state.rejected = 0;
            let kept = state.pending.as_mut().and_then(|p| p.lock.take());
            state.pending = Some(Box::new(Pending {
                tokens: tokens.clone(),
                lock: None,
                reauthorized: true,
            }));
            kept
        };
        let lock = match kept {
            Some(lock) => lock,
            None => self.lock_store_or_rescue().await?,
        };
        let result = match self.save_parked(tokens, true, &lock).await {
            Ok(saved) => self.cache.publish(saved),
            Err(error) => Err(error),
        };
        self.settle(lock).await;
        result
    }

    /// Takes the store's refresh lock, waiting at most as long as a refresh can take.
    async fn lock_store(&self) -> Result<StoreLock, AuthError> {
        self.lock_store_within(self.max_refresh_time()).await
    }

    /// Tries for the store's refresh lock without waiting for another holder (beyond the slack a
    /// store adds to every wait).
    async fn try_lock_store(&self) -> Result<StoreLock, AuthError> {
        self.lock_store_within(Duration::ZERO).await
    }

    async fn lock_store_within(&self, max_hold: Duration) -> Result<StoreLock, AuthError> {
        match (&self.store, &self.grant) {
            (StoreRef::Grant(store), Some(grant)) => store.lock_grant(grant, max_hold).await,
            (StoreRef::Token(store), _) => store.lock(max_hold).await,
            (StoreRef::Grant(_), None) => Err(no_grant()),
        }
        .map_err(|error| match error.downcast_ref::<LockTimeout>() {
            Some(timeout) => AuthError::RefreshLockHeld {
                waited: timeout.waited(),
            },
            None => AuthError::store(error),
        })
    }

    async fn store_load(&self) -> Result<Option<TokenSet>, BoxError> {
        match (&self.store, &self.grant) {
            (StoreRef::Grant(store), Some(grant)) => store.load_grant(grant).await,
            (StoreRef::Token(store), _) => store.load().await,
            (StoreRef::Grant(_), None) => Err(no_grant()),
        }
    }

    async fn store_save_locked(&self, tokens: &TokenSet, lock: &StoreLock) -> Result<(), BoxError> {
        match (&self.store, &self.grant) {
            (StoreRef::Grant(store), Some(grant)) => {
                store.save_grant_locked(grant, tokens, lock).await
            }
            (StoreRef::Token(store), _) => store.save_locked(tokens, lock).await,
            (StoreRef::Grant(_), None) => Err(no_grant()),
        }
    }

    /// The longest one refresh can take: every attempt timing out, the longest backoff between them,
    /// and a margin for the store. What a store's refresh lock must outlast.
    fn max_refresh_time(&self) -> Duration {
        const STORE_MARGIN: Duration = Duration::from_secs(10);
        match &self.policy.endpoint {
            Some(e) => {
                let attempts = e.backoff.attempts;
                e.timeout
                    .saturating_mul(attempts)
                    .saturating_add(e.backoff.max.saturating_mul(attempts.saturating_sub(1)))
                    .saturating_add(STORE_MARGIN)
            }
            None => STORE_MARGIN,
        }
    }

    fn endpoint(&self) -> Result<&Endpoint, AuthError> {
        self.policy.endpoint.as_ref().ok_or_else(|| AuthError::ReauthorizationRequired {
            reason: "a personal access token cannot be refreshed: create a new one in Nifty and pass it \
                     to set_tokens"
                .to_owned(),
        })
    }

    /// Runs `job` in its own task while holding the refresh gate: a dropped caller never cancels it.
    async fn spawn_exclusive<F, Fut>(self: Arc<Self>, job: F) -> Result<Arc<Current>, AuthError>
    where
        F: FnOnce(Arc<Self>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Arc<Current>, AuthError>> + Send,
    {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            AuthError::config("no tokio runtime: nifty-auth runs token calls in a tokio task")
        })?;
        let task = handle.spawn(async move {
            let _gate = self.gate.lock().await;
            job(Arc::clone(&self)).await
        });
        task.await.unwrap_or_else(|e| {
            Err(AuthError::Internal {
                reason: if e.is_panic() {
                    "the token task panicked (in a token store?)".to_owned()
                } else {
                    "the token task was cancelled: the tokio runtime is shutting down".to_owned()
                },
            })
        })
    }
}

/// A flight joined (or reserved) by a caller.
struct Joined {
    id: u32,
    flight: Flight,
    /// `Some` when this caller reserved the flight and must launch it.
    launch: Option<Launch>,
}

impl Joined {
    /// Spawns the flight if this caller reserved it (call without the state lock held).
    fn launch(mut self) -> Self {
        if let Some(launch) = self.launch.take() {
            launch.go();
        }
        self
    }
}

/// Whether a save failed because a fenced store refused the lock it was made under.
fn lock_lost(error: &AuthError) -> bool {
    match error {
        AuthError::Store { source } => source.downcast_ref::<LockLost>().is_some(),
        _ => false,
    }
}

/// A short fingerprint of a refresh token (never 0, which means "none").
fn fingerprint(refresh_token: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    refresh_token.hash(&mut hasher);
    hasher.finish().max(1)
}

/// A grant store without a grant: a construction bug, reported rather than panicking.
fn no_grant() -> BoxError {
    "a grant store was given no grant id".into()
}

fn cancelled() -> AuthError {
    AuthError::Internal {
        reason: "the refresh task was cancelled: the tokio runtime is shutting down".to_owned(),
    }
}

/// Whether `current` already gives the caller what it wants.
fn satisfies(current: &Current, want: Want) -> bool {
    match want {
        Want::Usable => current.usable(),
        Want::NewerThan(generation) => current.generation > generation && current.usable(),
        Want::Background => current.fresh(),
        Want::Save => current.usable(),
    }
}
