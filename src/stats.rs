//! [`Stats`]: counters a program can export (Prometheus, logs), kept as relaxed atomics.
//!
//! The per-request counter is striped over cache-line-padded slots, so threads sending requests in
//! parallel do not contend on one cache line; everything else is counted on the refresh path only.
//! With the `metrics` feature, the refresh-path counts also go to the `metrics` facade
//! (see [`crate::metrics`]).
//!
//! The grants of a `NiftyGrants` share one set of counters (the totals, [`GrantsStats::totals`]).
//! Each grant's own refresh-path counts (token calls, refreshes, coalesced waiters, 401 retries,
//! from `grants.grant(&id).stats()`) live in its token manager, in a box allocated at the grant's
//! first such event (8 bytes until then), and go with the manager (evicted or removed). A request
//! costs no extra write: requests are counted in the totals only.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use once_cell::race::OnceBox;

use crate::error::AuthError;
use crate::stripe::{self, STRIPES};

/// A snapshot of a [`NiftyAuth`](crate::NiftyAuth)'s counters, from [`NiftyAuth::stats`](crate::NiftyAuth::stats).
///
/// All counts are since the `NiftyAuth` was built and shared by every clone, layer and middleware made
/// from it.
///
/// For a handle from [`NiftyGrants::grant`](crate::NiftyGrants::grant), the counts of that grant
/// only, and only the refresh path's: token calls by outcome, `refreshes`, `refreshes_coalesced` and
/// `unauthorized_retries` (whichever layer, middleware or handle the grant's requests went
/// through). Its `requests_authorized` and `requests_without_retry` are 0: requests are counted in
/// [`GrantsStats::totals`] only, so that a request costs no extra write. A grant's counts start
/// when its token manager is first cached and start again from 0 after it is evicted from memory
/// or removed; the totals keep them.
///
/// ```
/// # #[cfg(feature = "testing")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), nifty_auth::BoxError> {
/// use nifty_auth::testing::FakeNifty;
/// use nifty_auth::NiftyAuth;
///
/// let nifty = FakeNifty::start().await?;
/// let auth = NiftyAuth::builder(nifty.credentials())
///     .token_url(nifty.token_url().as_str())
///     .refresh_token(nifty.issue_refresh_token())
///     .build()?;
/// auth.access_token().await?;
/// let stats = auth.stats();
/// assert_eq!(stats.token_calls_succeeded, 1);
/// assert_eq!(stats.refreshes, 1);
/// # Ok(()) }
/// # #[cfg(not(feature = "testing"))]
/// # fn main() {}
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Token endpoint calls answered with usable tokens.
    pub token_calls_succeeded: u64,
    /// Token endpoint calls that failed transiently (transport, timeout, 5xx, 429).
    pub token_calls_failed_transient: u64,
    /// Token endpoint calls rejected for good (`invalid_grant`, 401, 403).
    pub token_calls_failed_terminal: u64,
    /// Other failed token endpoint calls (unusable answers, 405, other 4xx).
    pub token_calls_failed_other: u64,
    /// Refreshes run (each one is one task, with up to `token_attempts` token calls).
    pub refreshes: u64,
    /// Times a caller needing a new token joined a running refresh, or found one just finished,
    /// instead of starting its own.
    pub refreshes_coalesced: u64,
    /// Requests sent a second time after a 401.
    pub unauthorized_retries: u64,
    /// Requests sent with a bearer token of this `NiftyAuth` (first sends).
    pub requests_authorized: u64,
    /// Of those, the ones that needed no retry.
    pub requests_without_retry: u64,
}

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    token_calls_succeeded: AtomicU64,
    token_calls_failed_transient: AtomicU64,
    token_calls_failed_terminal: AtomicU64,
    token_calls_failed_other: AtomicU64,
    refreshes: AtomicU64,
    refreshes_coalesced: AtomicU64,
    unauthorized_retries: AtomicU64,
    requests_authorized: Striped,
}

/// One grant's own refresh-path counts, in its token manager: 8 bytes until the grant's first
/// counted event allocates them.
#[derive(Debug, Default)]
pub(crate) struct OwnCounts(OnceBox<GrantCounts>);

#[derive(Debug, Default)]
struct GrantCounts {
    token_calls_succeeded: AtomicU64,
    token_calls_failed_transient: AtomicU64,
    token_calls_failed_terminal: AtomicU64,
    token_calls_failed_other: AtomicU64,
    refreshes: AtomicU64,
    refreshes_coalesced: AtomicU64,
    unauthorized_retries: AtomicU64,
}

impl OwnCounts {
    /// Adds one to the count chosen by `field`, allocating the counts at the first event.
    fn add(&self, field: impl FnOnce(&GrantCounts) -> &AtomicU64) {
        field(self.0.get_or_init(Box::default)).fetch_add(1, Relaxed);
    }

    /// The counts (see [`Stats`]: requests are not counted per grant).
    pub(crate) fn snapshot(&self) -> Stats {
        self.0.get().map_or_else(Stats::default, |c| Stats {
            token_calls_succeeded: c.token_calls_succeeded.load(Relaxed),
            token_calls_failed_transient: c.token_calls_failed_transient.load(Relaxed),
            token_calls_failed_terminal: c.token_calls_failed_terminal.load(Relaxed),
            token_calls_failed_other: c.token_calls_failed_other.load(Relaxed),
            refreshes: c.refreshes.load(Relaxed),
            refreshes_coalesced: c.refreshes_coalesced.load(Relaxed),
            unauthorized_retries: c.unauthorized_retries.load(Relaxed),
            requests_authorized: 0,
            requests_without_retry: 0,
        })
    }

    /// Whether the counts were ever allocated.
    #[cfg(test)]
    pub(crate) fn allocated(&self) -> bool {
        self.0.get().is_some()
    }
}

/// What one token manager counts into: the shared totals and, for a grant of a `NiftyGrants`, that
/// grant's own counts. From [`TokenManager::counters`](crate::manager::TokenManager::counters).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Counting<'a> {
    totals: &'a Counters,
    own: Option<&'a OwnCounts>,
}

impl<'a> Counting<'a> {
    /// Counting into `totals` and, for a grant of many, its `own` counts.
    pub(crate) fn new(totals: &'a Counters, own: Option<&'a OwnCounts>) -> Self {
        Counting { totals, own }
    }

    fn per_grant(&self, field: impl FnOnce(&GrantCounts) -> &AtomicU64) {
        if let Some(own) = self.own {
            own.add(field);
        }
    }

    pub(crate) fn token_call(&self, result: Result<(), &AuthError>) {
        self.totals.token_call(result);
        self.per_grant(|counts| match result {
            Ok(()) => &counts.token_calls_succeeded,
            Err(e) if e.is_transient() => &counts.token_calls_failed_transient,
            Err(e) if e.is_terminal() => &counts.token_calls_failed_terminal,
            Err(_) => &counts.token_calls_failed_other,
        });
    }

    #[inline]
    pub(crate) fn token_call_started(&self) -> TokenCallTimer {
        self.totals.token_call_started()
    }

    pub(crate) fn refresh_started(&self) {
        self.totals.refresh_started();
        self.per_grant(|counts| &counts.refreshes);
    }

    #[inline]
    pub(crate) fn refresh_finished(&self, duration: Duration, ok: bool) {
        self.totals.refresh_finished(duration, ok);
    }

    pub(crate) fn refresh_coalesced(&self) {
        self.totals.refresh_coalesced();
        self.per_grant(|counts| &counts.refreshes_coalesced);
    }

    pub(crate) fn unauthorized_retry(&self) {
        self.totals.unauthorized_retry();
        self.per_grant(|counts| &counts.unauthorized_retries);
    }

    /// A request was sent: counted in the totals only (no per-grant write on the request path).
    #[inline]
    pub(crate) fn request_authorized(&self) {
        self.totals.request_authorized();
    }

    /// [`request_authorized`](Self::request_authorized) on a known stripe.
    #[inline]
    pub(crate) fn request_authorized_on(&self, stripe: usize) {
        self.totals.request_authorized_on(stripe);
    }

    /// The grant's own counts (see [`Stats`]), or the totals for a manager of no grant of many.
    pub(crate) fn snapshot(&self) -> Stats {
        match self.own {
            Some(own) => own.snapshot(),
            None => self.totals.snapshot(),
        }
    }
}

impl Counters {
    pub(crate) fn token_call(&self, result: Result<(), &AuthError>) {
        let (counter, outcome) = match result {
            Ok(()) => (&self.token_calls_succeeded, "succeeded"),
            Err(e) if e.is_transient() => (&self.token_calls_failed_transient, "failed_transient"),
            Err(e) if e.is_terminal() => (&self.token_calls_failed_terminal, "failed_terminal"),
            Err(_) => (&self.token_calls_failed_other, "failed_other"),
        };
        counter.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        crate::metrics::token_call(outcome);
        let _ = outcome;
    }

    /// A token call starts: in flight until the returned guard is dropped (its duration is then
    /// recorded). Without the `metrics` feature the guard is empty and this does nothing.
    #[inline]
    pub(crate) fn token_call_started(&self) -> TokenCallTimer {
        #[cfg(feature = "metrics")]
        crate::metrics::token_call_started();
        TokenCallTimer {
            #[cfg(feature = "metrics")]
            started: std::time::Instant::now(),
        }
    }

    pub(crate) fn refresh_started(&self) {
        self.refreshes.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        crate::metrics::refresh_started();
    }

    /// A refresh task ended after `duration` (only reported to the `metrics` facade).
    #[inline]
    pub(crate) fn refresh_finished(&self, duration: Duration, ok: bool) {
        #[cfg(feature = "metrics")]
        crate::metrics::refresh_finished(duration, ok);
        let _ = (duration, ok);
    }

    pub(crate) fn refresh_coalesced(&self) {
        self.refreshes_coalesced.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        crate::metrics::refresh_coalesced();
    }

    pub(crate) fn unauthorized_retry(&self) {
        self.unauthorized_retries.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        crate::metrics::unauthorized_retry();
    }

    #[inline]
    pub(crate) fn request_authorized(&self) {
        self.requests_authorized.increment(stripe::index());
    }

    /// [`request_authorized`](Self::request_authorized) on a known stripe.
    #[inline]
    pub(crate) fn request_authorized_on(&self, stripe: usize) {
        self.requests_authorized.increment(stripe);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let requests_authorized = self.requests_authorized.sum();
        let unauthorized_retries = self.unauthorized_retries.load(Relaxed);
        Stats {
            token_calls_succeeded: self.token_calls_succeeded.load(Relaxed),
            token_calls_failed_transient: self.token_calls_failed_transient.load(Relaxed),
            token_calls_failed_terminal: self.token_calls_failed_terminal.load(Relaxed),
            token_calls_failed_other: self.token_calls_failed_other.load(Relaxed),
            refreshes: self.refreshes.load(Relaxed),
            refreshes_coalesced: self.refreshes_coalesced.load(Relaxed),
            unauthorized_retries,
            requests_authorized,
            requests_without_retry: requests_authorized.saturating_sub(unauthorized_retries),
        }
    }
}

/// A running token call, from [`Counters::token_call_started`]: dropping it ends the call.
#[derive(Debug)]
pub(crate) struct TokenCallTimer {
    #[cfg(feature = "metrics")]
    started: std::time::Instant,
}

impl Drop for TokenCallTimer {
    #[inline]
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        crate::metrics::token_call_ended(self.started.elapsed());
    }
}

/// One cache line per slot, so two threads never write the same line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot(AtomicU64);

/// A counter striped over [`STRIPES`] slots; each thread always writes the same slot.
#[derive(Debug, Default)]
struct Striped([Slot; STRIPES]);

impl Striped {
    #[inline]
    fn increment(&self, stripe: usize) {
        self.0[stripe % STRIPES].0.fetch_add(1, Relaxed);
    }

    fn sum(&self) -> u64 {
        self.0.iter().map(|slot| slot.0.load(Relaxed)).sum()
    }
}

/// A snapshot of [`NiftyGrants::stats`](crate::NiftyGrants::stats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrantsStats {
    /// The counters of every grant, added up.
    pub totals: Stats,
    /// Grants whose tokens are in memory.
    pub cached_grants: usize,
    /// Grants evicted from memory so far (their tokens stay in the store).
    pub evictions: u64,
    /// Grants that need re-authorization.
    pub reauthorization_required: usize,
}
