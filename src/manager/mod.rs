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
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::{FutureExt, Shared};
use http::HeaderValue;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::clock::instant_after;
use crate::endpoint::{Endpoint, GrantType};
use crate::error::AuthError;
use crate::grant_id::GrantId;
use crate::stats::{Counters, Counting, OwnCounts};
use crate::store::{LockLost, LockTimeout, StoreLock, TokenStore};
use crate::token::cache::{Current, Read, TokenCache};
use crate::token::TokenSet;
use crate::trace;
pub(crate) use latches::Latches;
use tower::BoxError;

mod fetch;
mod flight;
#[cfg(test)]
pub(crate) mod harness;
mod latch;
pub(crate) mod latches;
mod persist;
mod rescue;
mod store;

use flight::InFlight;
use latch::LATCH_RECHECK;
pub(crate) use latch::{Latched, Refused};
use persist::Pending;
use store::fingerprint;

/// A token on its way: what waiters await.
pub(crate) type TokenFuture = Pin<Box<dyn Future<Output = Result<Arc<Current>, AuthError>> + Send>>;

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
    /// Fingerprints of the refresh tokens this manager's last refreshes replaced, newest first (0:
    /// none). A store that holds one of them again has lost a save: the tokens in memory are
    /// newer. A store holding a refresh token that is neither one of these nor the parked one has
    /// moved on past the parked tokens (another replica refreshed from them, or a re-authorization).
    replaced: [u32; REPLACED_KEPT],
    /// A terminal error (invalid_grant, 401, 403 from the endpoint; a removed grant): no token call
    /// until new tokens. (Rare, so boxed: an idle grant of many keeps its state small.)
    terminal: Option<Box<Latched>>,
    /// Tokens obtained (a rotation, a re-authorization) whose save failed.
    pending: Option<Box<Pending>>,
    /// What few grants ever have (boxed: an idle grant of many keeps its state small).
    rare: Option<Box<Rare>>,
}

/// The state only a grant that met a failure has.
#[derive(Default)]
struct Rare {
    /// No background refresh before this instant (after a failed one).
    background_not_before: Option<Instant>,
    /// The last generation a retry after a 401 found rejected too (0: none; generations start at 1).
    rejected: u64,
}

/// How many replaced refresh tokens a manager remembers (see `State::replaced`).
const REPLACED_KEPT: usize = 2;

/// 32 bits of a refresh token's [`fingerprint`] (never 0): enough to tell the few refresh tokens a
/// manager remembers apart, in the space one 64-bit fingerprint took (an idle grant stays small).
fn short_fingerprint(refresh_token: &str) -> u32 {
    ((fingerprint(refresh_token) >> 32) as u32).max(1)
}

impl State {
    fn background_not_before(&self) -> Option<Instant> {
        self.rare
            .as_ref()
            .and_then(|rare| rare.background_not_before)
    }

    fn rejected(&self) -> u64 {
        self.rare.as_ref().map_or(0, |rare| rare.rejected)
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Whether `refresh_token` is one this manager's refreshes replaced.
    fn replaced(&self, refresh_token: &str) -> bool {
        self.replaced.contains(&short_fingerprint(refresh_token))
    }

    /// Remembers that a refresh replaced `refresh_token`.
    fn remember_replaced(&mut self, refresh_token: &str) {
        self.replaced.rotate_right(1);
        self.replaced[0] = short_fingerprint(refresh_token);
    }
}

/// The token manager of one grant: the current token, the store, the endpoint and the single-flight
/// state. What does not differ between the grants of a `NiftyGrants` lives in the shared [`Policy`],
/// so an idle grant costs little memory.
///
/// `repr(C)`: what a request reads (the current-token slot of a `NiftyAuth`, the eviction mark of a
/// grant of many, whose request reads its token through the registry's entry) first, on the cache
/// line of the `Arc`'s counts.
#[repr(C)]
pub(crate) struct TokenManager {
    pub(crate) cache: TokenCache,
    /// When a request last used this grant (the registry's insertion tick; for eviction).
    pub(crate) last_used: AtomicU64,
    policy: Arc<Policy>,
    store: Arc<dyn TokenStore>,
    /// The grant: its entry in the store (a `NiftyAuth`'s is the store's single grant).
    pub(crate) grant: GrantId,
    /// The grant's own refresh-path counts (a grant of a `NiftyGrants`): allocated at its first
    /// counted event, gone with this manager.
    own: OwnCounts,
    state: Mutex<State>,
    /// Serializes everything that changes the tokens: refreshes, `set_tokens`, `exchange_code`.
    gate: tokio::sync::Mutex<()>,
}

impl AsRef<TokenCache> for TokenManager {
    fn as_ref(&self) -> &TokenCache {
        &self.cache
    }
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
    /// Told of every change of a grant's current token (the grants registry, which keeps a copy
    /// beside each grant's entry); `None` for a `NiftyAuth`.
    pub(crate) mirror: Option<Weak<dyn Mirror>>,
}

/// What keeps a copy of managers' current tokens: told after every publication and clearing, so
/// its copy is never older than the manager's own once the call returns.
pub(crate) trait Mirror: Send + Sync {
    /// `manager`'s current token changed. Called with none of the manager's locks held.
    fn current_changed(&self, manager: &TokenManager);
}

/// What a [`TokenManager`] is made of.
pub(crate) struct ManagerParts {
    pub(crate) cache: TokenCache,
    pub(crate) policy: Arc<Policy>,
    pub(crate) store: Arc<dyn TokenStore>,
    pub(crate) grant: GrantId,
}

impl TokenManager {
    pub(crate) fn new(parts: ManagerParts) -> Self {
        // A grant known to need re-authorization (e.g. before it was evicted) starts latched.
        let terminal = parts.policy.latches.as_ref().and_then(|latches| {
            latches
                .error_for(&parts.grant)
                .map(|(error, refused)| Latched::new(error, refused))
        });
        TokenManager {
            cache: parts.cache,
            policy: parts.policy,
            store: parts.store,
            grant: parts.grant,
            own: OwnCounts::default(),
            state: Mutex::new(State {
                terminal: terminal.map(Box::new),
                ..State::default()
            }),
            gate: tokio::sync::Mutex::new(()),
            last_used: AtomicU64::new(0),
        }
    }

    /// The counters: the totals (shared by every grant of a `NiftyGrants`) and, for a grant, its own
    /// refresh-path counts.
    #[inline]
    pub(crate) fn counters(&self) -> Counting<'_> {
        // Only the grants of a `NiftyGrants` (the managers that report latches) count per grant.
        let of_many = self.policy.latches.is_some();
        Counting::new(&self.policy.counters, of_many.then_some(&self.own))
    }

    /// Publishes `tokens` as the current token, then tells the mirror.
    fn publish(&self, tokens: TokenSet) -> Result<Arc<Current>, AuthError> {
        let current = self.cache.publish(tokens)?;
        self.current_changed();
        Ok(current)
    }

    /// Forgets the current token, then tells the mirror.
    fn clear_current(&self) {
        self.cache.clear();
        self.current_changed();
    }

    fn current_changed(&self) {
        if let Some(mirror) = self.policy.mirror.as_ref().and_then(Weak::upgrade) {
            mirror.current_changed(self);
        }
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

    fn endpoint(&self) -> Result<&Endpoint, AuthError> {
        self.policy.endpoint.as_ref().ok_or_else(|| AuthError::ReauthorizationRequired {
            reason: "a personal access token cannot be refreshed: create a new one in Nifty and pass it \
                     to set_tokens"
                .to_owned(),
        })
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

#[cfg(test)]
mod tests;
