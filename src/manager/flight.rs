//! Single flight: the in-flight slot, joining it or reserving and launching a refresh task, and
//! the paths into it (the hot path's header, a background refresh, a token, a 401).

use super::*;

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
pub(super) struct InFlight {
    id: u32,
    flight: Flight,
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

/// A flight joined (or reserved) by a caller.
pub(super) struct Joined {
    id: u32,
    flight: Flight,
    /// `Some` when this caller reserved the flight and must launch it.
    launch: Option<Launch>,
}

impl Joined {
    /// Spawns the flight if this caller reserved it (call without the state lock held).
    pub(super) fn launch(mut self) -> Self {
        if let Some(launch) = self.launch.take() {
            launch.go();
        }
        self
    }
}

fn cancelled() -> AuthError {
    AuthError::Internal {
        reason: "the refresh task was cancelled: the tokio runtime is shutting down".to_owned(),
    }
}

impl TokenManager {
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
                .background_not_before()
                .is_some_and(|t| Instant::now() < t)
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
                && state.rejected() == generation
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
            state.rare_mut().rejected = generation;
        }
    }

    /// Joins the running flight or reserves (and launches) a new one.
    pub(super) fn join(
        self: &Arc<Self>,
        state: &mut State,
        want: Want,
    ) -> Result<Joined, AuthError> {
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
    pub(super) async fn land(&self, joined: Joined) -> Option<Result<Arc<Current>, AuthError>> {
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
    pub(super) async fn refresh(self: &Arc<Self>, want: Want) -> Result<Arc<Current>, AuthError> {
        let started = Instant::now();
        let refresh = self.refresh_gated(want);
        #[cfg(feature = "tracing")]
        let span = tracing::debug_span!(
            "nifty_auth.refresh",
            grant_type = "refresh_token",
            grant_id = self.grant.as_str(),
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

    pub(super) async fn refresh_gated(
        self: &Arc<Self>,
        want: Want,
    ) -> Result<Arc<Current>, AuthError> {
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
                    self.state.lock().rare_mut().background_not_before =
                        Some(instant_after(Instant::now(), cooldown));
                }
            }
        }
        result
    }

    /// Runs `job` in its own task while holding the refresh gate: a dropped caller never cancels it.
    pub(super) async fn spawn_exclusive<F, Fut>(
        self: Arc<Self>,
        job: F,
    ) -> Result<Arc<Current>, AuthError>
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

#[cfg(test)]
mod tests;
