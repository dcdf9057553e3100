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

use crate::stripe::{self, STRIPES};
use crate::{AuthError, TokenSet};

/// How far in the future "unknown expiry" is placed (the token is then only replaced after a 401).
const UNKNOWN_EXPIRY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// One published token: everything a request needs, computed once.
#[derive(Debug)]
pub(crate) struct Current {
    /// `Bearer <access token>`, marked sensitive, one copy per stripe; `None` before the first token.
    headers: Option<[HeaderValue; STRIPES]>,
    /// Increases by one with every publication; a 401 names the generation it was sent with.
    pub(crate) generation: u64,
    /// From here on, requests still use the token but start a background refresh.
    pub(crate) refresh_at: Instant,
    /// From here on, the token is never sent.
    pub(crate) expires_at: Instant,
    pub(crate) tokens: Option<TokenSet>,
}

impl Current {
    fn empty() -> Self {
        let now = Instant::now();
        Current {
            headers: None,
            generation: 0,
            refresh_at: now,
            expires_at: now,
            tokens: None,
        }
    }

    /// A token that may still be sent at `now`.
    pub(crate) fn usable(&self, now: Instant) -> bool {
        self.headers.is_some() && now < self.expires_at
    }

    /// A token that needs no refresh yet at `now`.
    pub(crate) fn fresh(&self, now: Instant) -> bool {
        self.headers.is_some() && now < self.refresh_at
    }

    pub(crate) fn access_token(&self) -> Option<&str> {
        self.tokens.as_ref().map(TokenSet::access_token)
    }

    /// This thread's copy of the header, if there is a token.
    #[inline]
    pub(crate) fn header(&self) -> Option<HeaderValue> {
        self.headers
            .as_ref()
            .map(|headers| headers[stripe::index()].clone())
    }

    /// The hot-path decision: one clock read, one header clone.
    #[inline]
    pub(crate) fn read(&self) -> Read {
        let Some(headers) = &self.headers else {
            return Read::Missing;
        };
        let now = Instant::now();
        if now < self.refresh_at {
            Read::Fresh(headers[stripe::index()].clone(), self.generation)
        } else if now < self.expires_at {
            Read::Stale(headers[stripe::index()].clone(), self.generation)
        } else {
            Read::Missing
        }
    }
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
pub(crate) type LocalCache = arc_swap::Cache<Arc<ArcSwap<Current>>, Arc<Current>>;

/// The current token.
#[derive(Debug)]
pub(crate) struct TokenCache {
    current: Arc<ArcSwap<Current>>,
    skew: Duration,
}

impl TokenCache {
    pub(crate) fn new(skew: Duration) -> Self {
        TokenCache {
            current: Arc::new(ArcSwap::from_pointee(Current::empty())),
            skew,
        }
    }

    /// The hot-path read through the shared `ArcSwap`.
    #[inline]
    pub(crate) fn read(&self) -> Read {
        self.current.load().read()
    }

    /// A [`LocalCache`] for one service.
    pub(crate) fn local(&self) -> LocalCache {
        arc_swap::Cache::new(Arc::clone(&self.current))
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
        // One copy per stripe, each with its own reference count in its own 128-byte block, so
        // requests on different cores never write the same cache line.
        let headers = std::array::from_fn(|_| {
            let owned = Bytes::from_owner(Padded(header.as_bytes().into()));
            let mut copy = HeaderValue::from_maybe_shared(owned).unwrap_or_else(|_| header.clone());
            copy.set_sensitive(true);
            copy
        });
        let now = Instant::now();
        let remaining = match tokens.expires_at() {
            Some(at) => at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
            None => UNKNOWN_EXPIRY,
        };
        let expires_at = now + remaining;
        let refresh_at = expires_at - self.skew.min(remaining / 2);
        let previous = self.current.load();
        let next = Arc::new(Current {
            headers: Some(headers),
            generation: previous.generation + 1,
            refresh_at,
            expires_at,
            tokens: Some(tokens),
        });
        // Publications are serialized by the refresh gate, so a plain store cannot lose one.
        self.current.store(Arc::clone(&next));
        Ok(next)
    }

    /// Whether `tokens` (e.g. just loaded from the store) can be adopted without a refresh: it is not
    /// about to expire. Its refresh point is then clamped into what is left of its life, so a token
    /// adopted late in its life is refreshed ahead of expiry like any other.
    pub(crate) fn adoptable(tokens: &TokenSet) -> bool {
        const MIN_LEFT: Duration = Duration::from_millis(100);
        tokens.expires_in().is_none_or(|left| left > MIN_LEFT)
    }
}
