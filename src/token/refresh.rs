//! Single flight: at most one token call per grant at a time, run in its own task.
//!
//! Every path that needs a new token — a request with no usable token, a request in the skew window
//! (background), a 401, [`NiftyAuth::access_token`](crate::NiftyAuth::access_token) — goes through
//! [`TokenManager::token`]. The first caller spawns the refresh task and parks a [`Shared`] handle to
//! it in the in-flight slot; everyone else awaits that handle. The task is spawned, so dropping every
//! waiter never cancels it: its tokens are saved and published regardless.
//!
//! Inside the task, in order: the refresh gate (serializes with `set_tokens` / `exchange_code`), the
//! store's lock, a re-read of the store (someone else may have refreshed), the token call (with
//! backoff), the save, and only then the publication. Terminal errors latch until new tokens are
//! supplied.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::future::{FutureExt, Shared};
use parking_lot::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use super::cache::{Current, Read, TokenCache};
use crate::endpoint::{Endpoint, Grant};
use crate::stats::Counters;
use crate::store::TokenStore;
use crate::trace;
use crate::{AuthError, TokenSet};

/// A token on its way: what waiters await.
pub(crate) type TokenFuture = Pin<Box<dyn Future<Output = Result<Arc<Current>, AuthError>> + Send>>;

type InFlight = Shared<TokenFuture>;

/// Why a token is wanted; decides whether the current one will do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    /// Any token that may still be sent.
    Usable,
    /// A token newer than this generation (the one a 401 rejected), or a refresh.
    NewerThan(u64),
    /// Refresh ahead of expiry, unless the current token is fresh again.
    Background,
}

#[derive(Default)]
struct State {
    in_flight: Option<InFlight>,
    /// A terminal error (invalid_grant, 401, 403 from the endpoint): no token call until new tokens.
    terminal: Option<AuthError>,
    /// Tokens obtained from the endpoint whose save failed: saved and published by the next attempt.
    pending: Option<TokenSet>,
    /// No background refresh before this instant (after a failed one).
    background_not_before: Option<Instant>,
}

/// The token manager: the current token, the store, the endpoint and the single-flight state.
pub(crate) struct TokenManager {
    pub(crate) cache: TokenCache,
    /// `None` for a personal access token: nothing to refresh with.
    pub(crate) endpoint: Option<Endpoint>,
    pub(crate) store: Arc<dyn TokenStore>,
    bootstrap_refresh_token: Option<String>,
    state: Mutex<State>,
    pub(crate) counters: Counters,
    /// Serializes everything that changes the tokens: refreshes, `set_tokens`, `exchange_code`.
    gate: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager")
            .field("cache", &self.cache)
            .field("endpoint", &self.endpoint)
            .field("state", &*self.state.lock())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("in_flight", &self.in_flight.is_some())
            .field("terminal", &self.terminal)
            .field("pending", &self.pending.is_some())
            .finish()
    }
}

impl TokenManager {
    pub(crate) fn new(
        cache: TokenCache,
        endpoint: Option<Endpoint>,
        store: Arc<dyn TokenStore>,
        bootstrap_refresh_token: Option<String>,
    ) -> Self {
        TokenManager {
            cache,
            endpoint,
            store,
            bootstrap_refresh_token,
            state: Mutex::new(State::default()),
            counters: Counters::default(),
            gate: tokio::sync::Mutex::new(()),
        }
    }

    /// The hot path: a header to send now, or `None` if the caller has to wait for a token.
    /// In the skew window it also starts a background refresh (at most one).
    #[inline]
    pub(crate) fn header_now(self: &Arc<Self>) -> Option<(http::HeaderValue, u64)> {
        match self.cache.read() {
            Read::Fresh(header, generation) => Some((header, generation)),
            Read::Stale(header, generation) => {
                self.refresh_in_background();
                Some((header, generation))
            }
            Read::Missing => None,
        }
    }

    /// The header of a usable token newer than `generation`, if one is current (a 401's fast path:
    /// someone else's refresh already replaced the rejected token).
    pub(crate) fn newer_header(&self, generation: u64) -> Option<http::HeaderValue> {
        let current = self.cache.load();
        if current.generation > generation && current.usable(Instant::now()) {
            self.counters.refresh_coalesced();
            current.header()
        } else {
            None
        }
    }

    /// Starts a background refresh unless one is running, latched off, or cooling down after a failure.
    pub(crate) fn refresh_in_background(self: &Arc<Self>) {
        let mut state = self.state.lock();
        if state.in_flight.is_some() || state.terminal.is_some() {
            return;
        }
        let now = Instant::now();
        if state.background_not_before.is_some_and(|t| now < t) {
            return;
        }
        if self.cache.load().fresh(now) {
            return;
        }
        // Dropped at once: the task runs on its own and publishes its result.
        drop(self.start(&mut state, Want::Background));
    }

    /// A token satisfying `want`: the current one if it does, else the result of the (single) refresh.
    pub(crate) async fn token(self: Arc<Self>, want: Want) -> Result<Arc<Current>, AuthError> {
        let in_flight = {
            let mut state = self.state.lock();
            let current = self.cache.load();
            if satisfies(&current, want, Instant::now()) {
                // Someone else's refresh already served this caller.
                self.counters.refresh_coalesced();
                return Ok(current);
            }
            match &state.in_flight {
                Some(in_flight) => {
                    self.counters.refresh_coalesced();
                    in_flight.clone()
                }
                None => {
                    if let Some(error) = &state.terminal {
                        return Err(error.clone());
                    }
                    self.start(&mut state, want)
                }
            }
        };
        in_flight.await
    }

    /// Spawns the refresh task and parks its handle in the in-flight slot. Needs the state lock, so the
    /// task cannot clear the slot before it is set.
    fn start(self: &Arc<Self>, state: &mut State, want: Want) -> InFlight {
        self.counters.refresh_started();
        let manager = Arc::clone(self);
        let future: TokenFuture = match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let task = handle.spawn(async move {
                    // Clears the in-flight slot however the task ends (even if a store panics).
                    let _slot = InFlightSlot(Arc::clone(&manager));
                    manager.refresh(want).await
                });
                Box::pin(async move {
                    task.await.unwrap_or_else(|e| {
                        Err(AuthError::Internal {
                            reason: if e.is_panic() {
                                "the refresh task panicked (in a token store?)".to_owned()
                            } else {
                                "the refresh task was cancelled (runtime shutting down)".to_owned()
                            },
                        })
                    })
                })
            }
            Err(_) => Box::pin(async {
                Err(AuthError::config(
                    "no tokio runtime: nifty-auth refreshes tokens in a tokio task",
                ))
            }),
        };
        let shared = future.shared();
        state.in_flight = Some(shared.clone());
        shared
    }

    /// The refresh task, in a `nifty_auth.refresh` span (grant, trigger, outcome, attempts, duration).
    async fn refresh(self: &Arc<Self>, want: Want) -> Result<Arc<Current>, AuthError> {
        let started = Instant::now();
        let refresh = self.refresh_gated(want);
        #[cfg(feature = "tracing")]
        let span = tracing::debug_span!(
            "nifty_auth.refresh",
            grant = "refresh_token",
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
        let _ = started;
        result
    }

    async fn refresh_gated(self: &Arc<Self>, want: Want) -> Result<Arc<Current>, AuthError> {
        let _gate = self.gate.lock().await;
        // Someone (set_tokens, exchange_code, an earlier refresh) may have published while we queued.
        let current = self.cache.load();
        if satisfies(&current, want, Instant::now()) {
            return Ok(current);
        }
        let lock = self
            .store
            .lock(self.max_refresh_time())
            .await
            .map_err(AuthError::store)?;
        let result = self.refresh_locked(&current).await;
        lock.release().await;
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
                        .endpoint
                        .as_ref()
                        .map_or(Duration::from_secs(1), |e| e.backoff.max);
                    self.state.lock().background_not_before = Some(Instant::now() + cooldown);
                }
            }
        }
        result
    }

    async fn refresh_locked(&self, current: &Current) -> Result<Arc<Current>, AuthError> {
        // 1. Tokens from an earlier refresh whose save failed: save them first, never call again
        //    while holding an unsaved rotated refresh token.
        let pending = self.state.lock().pending.clone();
        let mut refresh_token = None;
        if let Some(pending) = pending {
            self.store.save(&pending).await.map_err(AuthError::store)?;
            self.state.lock().pending = None;
            if TokenCache::adoptable(&pending) {
                return self.cache.publish(pending);
            }
            refresh_token = pending.refresh_token().map(str::to_owned);
        }

        // 2. The store may hold newer tokens (another instance or process refreshed).
        if refresh_token.is_none() {
            let stored = self.store.load().await.map_err(AuthError::store)?;
            if let Some(stored) = stored {
                let newer = current.access_token() != Some(stored.access_token());
                if newer && TokenCache::adoptable(&stored) {
                    trace::record!("outcome", "adopted_from_store");
                    trace::debug!("adopting tokens from the store");
                    return self.cache.publish(stored);
                }
                refresh_token = stored.refresh_token().map(str::to_owned);
            }
        }
        let refresh_token = refresh_token
            .or_else(|| {
                current
                    .tokens
                    .as_ref()
                    .and_then(|t| t.refresh_token().map(str::to_owned))
            })
            .or_else(|| self.bootstrap_refresh_token.clone())
            .ok_or_else(|| AuthError::ReauthorizationRequired {
                reason:
                    "there is no refresh token: authorize the app (exchange_code) or supply tokens \
                         (set_tokens, the builder's refresh_token)"
                        .to_owned(),
            })?;

        // 3. The token call.
        let endpoint = self.endpoint()?;
        let grant = Grant::RefreshToken {
            refresh_token: &refresh_token,
        };
        let (result, attempts) = endpoint
            .request(&grant, Some(&refresh_token), &self.counters)
            .await;
        trace::record!("attempts", attempts);
        let tokens = match result {
            Ok(tokens) => tokens,
            Err(error) => {
                if error.is_terminal() {
                    self.state.lock().terminal = Some(error.clone());
                }
                return Err(error);
            }
        };

        // 4. Save before anyone uses the new access token; 5. publish.
        self.save_and_publish(tokens).await
    }

    /// Saves `tokens`, then publishes them. If the save fails (or panics), the tokens wait, unused,
    /// for the next attempt to save them.
    async fn save_and_publish(&self, tokens: TokenSet) -> Result<Arc<Current>, AuthError> {
        // Parked as pending first, so even a store that panics cannot lose a rotated refresh token.
        self.state.lock().pending = Some(tokens.clone());
        self.store.save(&tokens).await.map_err(AuthError::store)?;
        self.state.lock().pending = None;
        self.cache.publish(tokens)
    }

    /// Replaces the tokens (after a re-authorization): waits for a running refresh, saves, publishes,
    /// and lifts a terminal latch.
    pub(crate) async fn set_tokens(
        self: Arc<Self>,
        tokens: TokenSet,
    ) -> Result<Arc<Current>, AuthError> {
        tokens.validate()?;
        self.spawn_exclusive(move |manager| async move {
            manager
                .store
                .save(&tokens)
                .await
                .map_err(AuthError::store)?;
            let current = manager.cache.publish(tokens)?;
            manager.clear_latches();
            Ok(current)
        })
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
                .request(&grant, None, &manager.counters)
                .await;
            let current = manager.save_and_publish(result?).await?;
            manager.clear_latches();
            Ok(current)
        })
        .await
    }

    /// The longest one refresh can take: every attempt timing out, the longest backoff between them,
    /// and a margin for the store. What a store's refresh lock must outlast.
    fn max_refresh_time(&self) -> Duration {
        const STORE_MARGIN: Duration = Duration::from_secs(10);
        match &self.endpoint {
            Some(e) => {
                let attempts = e.backoff.attempts;
                e.timeout.saturating_mul(attempts)
                    + e.backoff.max.saturating_mul(attempts.saturating_sub(1))
                    + STORE_MARGIN
            }
            None => STORE_MARGIN,
        }
    }

    fn endpoint(&self) -> Result<&Endpoint, AuthError> {
        self.endpoint.as_ref().ok_or_else(|| AuthError::ReauthorizationRequired {
            reason: "a personal access token cannot be refreshed: create a new one in Nifty and pass it \
                     to set_tokens"
                .to_owned(),
        })
    }

    fn clear_latches(&self) {
        let mut state = self.state.lock();
        state.terminal = None;
        state.pending = None;
        state.background_not_before = None;
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
                reason: format!("the token task ended without a result: {e}"),
            })
        })
    }
}

/// Whether `current` already gives the caller what it wants.
fn satisfies(current: &Current, want: Want, now: Instant) -> bool {
    match want {
        Want::Usable => current.usable(now),
        Want::NewerThan(generation) => current.generation > generation && current.usable(now),
        Want::Background => current.fresh(now),
    }
}

/// Clears the in-flight slot when the refresh task ends, however it ends.
struct InFlightSlot(Arc<TokenManager>);

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        self.0.state.lock().in_flight = None;
    }
}
