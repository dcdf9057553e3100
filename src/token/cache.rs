//! The current token and its generation; the hot-path read.
//!
//! The current token lives in an [`ArcSwap`]: readers never take a lock and never allocate. A
//! publication builds the sensitive `Authorization` value once per stripe; a request clones its
//! thread's copy (a reference-count increment on a cache line no other core is writing).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderValue;
use tokio::time::Instant;

use super::TokenSet;
use crate::clock::{Clock, WALL_TOLERANCE};
use crate::error::AuthError;
use crate::stripe::{self, STRIPES};

/// How far in the future "unknown expiry" is placed (the token is then only replaced after a 401).
const UNKNOWN_EXPIRY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// A token set from the store (or an unsaved one) is adopted only with more than this left.
const MIN_ADOPTABLE_LIFETIME: Duration = Duration::from_millis(100);

/// One published token: everything a request needs, computed once.
///
/// `repr(C)`: the fields the hot path reads (the header, the generation, the refresh points) come
/// first, right after the `Arc`'s counts, so a request touches the first two cache lines of this
/// allocation and no others (what matters when requests go round-robin over many grants).
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Current {
    /// `Bearer <access token>`, marked sensitive; `None` before the first token.
    headers: Option<Headers>,
    /// Increases by one with every publication; a 401 names the generation it was sent with.
    pub(crate) generation: u64,
    /// From here on, requests still use the token but start a background refresh (tokio's clock)…
    pub(crate) refresh_at: Instant,
    /// …or from here on by the wall clock (plus its tolerance), whichever comes first (see [`Clock`]).
    refresh_at_wall: SystemTime,
    /// From here on (tokio's clock), the token is never sent, nor from the token's own expiry by
    /// the wall clock (plus its tolerance), which keeps running while the machine sleeps (read from
    /// `tokens`, not kept twice: a cached grant of many stays small).
    pub(crate) expires_at: Instant,
    /// When this token was published (a 401 storm guard: a young token rejected twice is not
    /// refreshed again until it has aged).
    pub(crate) published_at: Instant,
    pub(crate) tokens: Option<TokenSet>,
}

impl Current {
    fn empty() -> Self {
        let now = Instant::now();
        Current {
            headers: None,
            generation: 0,
            refresh_at: now,
            refresh_at_wall: SystemTime::UNIX_EPOCH,
            expires_at: now,
            published_at: now,
            tokens: None,
        }
    }

    /// A token that may still be sent now.
    pub(crate) fn usable(&self) -> bool {
        self.headers.is_some()
            && Instant::now() < self.expires_at
            && self.before_expiry_wall(SystemTime::now())
    }

    /// A token that needs no refresh yet.
    pub(crate) fn fresh(&self) -> bool {
        self.headers.is_some()
            && Instant::now() < self.refresh_at
            && SystemTime::now() < self.refresh_at_wall
    }

    /// Whether `wall` is before the token's expiry by the wall clock (plus its tolerance); a token
    /// without a known expiry never expires by it.
    fn before_expiry_wall(&self, wall: SystemTime) -> bool {
        self.tokens
            .as_ref()
            .and_then(TokenSet::expires_at)
            .is_none_or(|at| wall < tolerant(at))
    }

    pub(crate) fn access_token(&self) -> Option<&str> {
        self.tokens.as_ref().map(TokenSet::access_token)
    }

    /// The header and generation of a token a refresh just published.
    ///
    /// # Errors
    /// [`AuthError::Internal`] if nothing was published (a bug, never an expected outcome).
    pub(crate) fn bearer(&self) -> Result<(HeaderValue, u64), AuthError> {
        match self.header() {
            Some(header) => Ok((header, self.generation)),
            None => Err(nothing_published()),
        }
    }

    /// The token set a refresh or token call just published; errors as [`bearer`](Self::bearer).
    pub(crate) fn token_set(&self) -> Result<TokenSet, AuthError> {
        self.tokens.clone().ok_or_else(nothing_published)
    }

    /// This thread's copy of the header, if there is a token.
    #[inline]
    pub(crate) fn header(&self) -> Option<HeaderValue> {
        self.headers
            .as_ref()
            .map(|headers| headers.get(stripe::index()))
    }

    /// The hot-path decision: two clock reads (tokio's and the wall clock), one header clone.
    #[inline]
    pub(crate) fn read(&self) -> Read {
        self.read_for(stripe::index())
    }

    /// [`read`](Self::read) with the header copy of `stripe` (a caller that already knows its
    /// stripe saves a thread-local lookup).
    #[inline]
    pub(crate) fn read_for(&self, stripe: usize) -> Read {
        let Some(headers) = &self.headers else {
            return Read::Missing;
        };
        let now = Instant::now();
        let wall = SystemTime::now();
        let header = || headers.get(stripe);
        if now < self.refresh_at && wall < self.refresh_at_wall {
            Read::Fresh(header(), self.generation)
        } else if now < self.expires_at && self.before_expiry_wall(wall) {
            Read::Stale(header(), self.generation)
        } else {
            Read::Missing
        }
    }
}

fn nothing_published() -> AuthError {
    AuthError::Internal {
        reason: "a refresh published no token".to_owned(),
    }
}

/// The bearer header of one token.
#[derive(Debug)]
enum Headers {
    /// One copy (a grant of many: memory matters more than a shared reference count).
    One(HeaderValue),
    /// One copy per stripe, each with its own reference count in its own 128-byte block, so
    /// requests on different cores never write the same cache line (the single-grant hot path).
    Striped(Box<[HeaderValue; STRIPES]>),
}

impl Headers {
    #[inline]
    fn get(&self, stripe: usize) -> HeaderValue {
        match self {
            Headers::One(header) => header.clone(),
            Headers::Striped(headers) => headers[stripe % STRIPES].clone(),
        }
    }
}

/// A wall-clock deadline as the hot path compares it: the wall clock overrules the monotonic one
/// only when it is more than [`WALL_TOLERANCE`] ahead (see [`Clock::now`]).
fn tolerant(at: SystemTime) -> SystemTime {
    at.checked_add(WALL_TOLERANCE).unwrap_or(at)
}

/// Header bytes whose owner (and so whose reference count, kept beside it by
/// [`Bytes::from_owner`]) sits alone in a 128-byte-aligned block.
#[repr(align(128))]
struct Padded(Box<[u8]>);

impl AsRef<[u8]> for Padded {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// What the hot path found.
pub(crate) enum Read {
    /// Use this header (and generation).
    Fresh(HeaderValue, u64),
    /// Use this header, and start a background refresh: the token is within the skew of its expiry.
    Stale(HeaderValue, u64),
    /// No usable token: wait for a refresh.
    Missing,
}

/// A per-service view of the current token that skips even the `ArcSwap` load's bookkeeping while
/// the token does not change.
pub(crate) type LocalCache<M> = arc_swap::Cache<CurrentOf<M>, Arc<Current>>;

/// The current-token slot of a shared owner of a [`TokenCache`] (the token manager), as
/// [`LocalCache`] reads it. Generic so the cache knows nothing of the manager.
pub(crate) struct CurrentOf<M>(pub(crate) Arc<M>);

impl<M> Clone for CurrentOf<M> {
    fn clone(&self) -> Self {
        CurrentOf(Arc::clone(&self.0))
    }
}

impl<M: AsRef<TokenCache>> std::ops::Deref for CurrentOf<M> {
    type Target = ArcSwap<Current>;

    fn deref(&self) -> &ArcSwap<Current> {
        &(*self.0).as_ref().current
    }
}

/// The current token.
///
/// `repr(C)`, the current-token slot first: it sits at the start of the token manager that owns it, beside the
/// manager's reference counts, so a request reads it on a line it touches anyway.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct TokenCache {
    // Inline, not behind an `Arc` of its own: a cached grant of many costs one allocation less.
    current: ArcSwap<Current>,
    policy: Arc<CachePolicy>,
}

/// How a cache publishes tokens; shared by every grant of a `NiftyGrants`.
#[derive(Debug)]
pub(crate) struct CachePolicy {
    skew: Duration,
    clock: Clock,
    /// Spread refresh points: the skew is drawn from `[skew, 2 × skew)` per token, so grants issued
    /// together do not all refresh in the same second.
    jitter: bool,
    /// One header copy per stripe (one grant, every core) or a single one (one of many grants).
    striped: bool,
}

impl CachePolicy {
    /// One grant: refresh `skew` before expiry, header copies striped over cores.
    pub(crate) fn single(skew: Duration, clock: Clock) -> Arc<Self> {
        Arc::new(CachePolicy {
            skew,
            clock,
            jitter: false,
            striped: true,
        })
    }

    /// The grants of a `NiftyGrants`: refresh points spread with jitter, one header copy each.
    pub(crate) fn grants(skew: Duration, clock: Clock) -> Arc<Self> {
        Arc::new(CachePolicy {
            skew,
            clock,
            jitter: true,
            striped: false,
        })
    }
}

impl TokenCache {
    pub(crate) fn new(policy: Arc<CachePolicy>) -> Self {
        TokenCache {
            current: ArcSwap::from_pointee(Current::empty()),
            policy,
        }
    }

    /// Forgets the current token (a removed grant): requests wait for a refresh, which fails.
    pub(crate) fn clear(&self) {
        let previous = self.current.load();
        let mut empty = Current::empty();
        empty.generation = previous.generation.saturating_add(1);
        self.current.store(Arc::new(empty));
    }

    /// The hot-path read through the shared `ArcSwap`.
    #[inline]
    pub(crate) fn read(&self) -> Read {
        self.current.load().read()
    }

    /// A [`LocalCache`] for one service of `owner` (whose cache this is).
    pub(crate) fn local<M: AsRef<TokenCache>>(owner: &Arc<M>) -> LocalCache<M> {
        arc_swap::Cache::new(CurrentOf(Arc::clone(owner)))
    }

    pub(crate) fn load(&self) -> Arc<Current> {
        self.current.load_full()
    }

    /// Publishes `tokens` as the new current token (generation + 1).
    ///
    /// The refresh point is `expires_at - skew`, with the skew clamped to half the token's remaining
    /// lifetime so a short-lived token is not refreshed in a loop.
    pub(crate) fn publish(&self, tokens: TokenSet) -> Result<Arc<Current>, AuthError> {
        let header = tokens.bearer_header()?;
        let headers = if self.policy.striped {
            Headers::Striped(Box::new(std::array::from_fn(|_| {
                let owned = Bytes::from_owner(Padded(header.as_bytes().into()));
                let mut copy =
                    HeaderValue::from_maybe_shared(owned).unwrap_or_else(|_| header.clone());
                copy.set_sensitive(true);
                copy
            })))
        } else {
            Headers::One(header)
        };
        // Deadlines on both clocks, from one reading of [`Clock::now`].
        let now = self.policy.clock.now();
        let expires_at_wall = match tokens.expires_at() {
            Some(at) => at,
            None => now.checked_add(UNKNOWN_EXPIRY).unwrap_or(now),
        };
        let remaining = expires_at_wall
            .duration_since(now)
            .unwrap_or(Duration::ZERO);
        let skew = if self.policy.jitter {
            self.policy
                .skew
                .saturating_add(self.policy.skew.mul_f64(fastrand::f64()))
        } else {
            self.policy.skew
        };
        let refresh_at_wall = expires_at_wall
            .checked_sub(skew.min(remaining / 2))
            .unwrap_or(expires_at_wall);
        let previous = self.current.load();
        let next = Arc::new(Current {
            headers: Some(headers),
            generation: previous.generation.saturating_add(1),
            refresh_at: self.policy.clock.instant_at(refresh_at_wall),
            refresh_at_wall: tolerant(refresh_at_wall),
            expires_at: self.policy.clock.instant_at(expires_at_wall),
            published_at: Instant::now(),
            tokens: Some(tokens),
        });
        // Publications are serialized by the refresh gate, so a plain store cannot lose one.
        self.current.store(Arc::clone(&next));
        Ok(next)
    }

    /// Whether `tokens` (e.g. just loaded from the store) can be adopted without a refresh: it is not
    /// about to expire. Its refresh point is then clamped into what is left of its life, so a token
    /// adopted late in its life is refreshed ahead of expiry like any other.
    /// Judged on the same clock as the cache's own deadlines.
    pub(crate) fn adoptable(&self, tokens: &TokenSet) -> bool {
        tokens.expires_at().is_none_or(|at| {
            at.duration_since(self.policy.clock.now())
                .is_ok_and(|left| left > MIN_ADOPTABLE_LIFETIME)
        })
    }
}

#[cfg(test)]
mod tests;
