//! One grant of the fake, as a handle: [`FakeGrant`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::model::{GrantCounts, GrantKey};
use super::server::Inner;

/// A handle on one grant of a [`FakeNifty`](super::FakeNifty), from
/// [`FakeNifty::new_grant`](super::FakeNifty::new_grant) or
/// [`FakeNifty::grant`](super::FakeNifty::grant): issues its codes and tokens, counts its
/// requests, revokes it.
///
/// Token calls are counted for the grant whose `code` or `refresh_token` (current or already
/// rotated away) the request presents; API calls for the grant whose access token is the bearer.
/// A handle does not keep the server running; clones are the same grant.
#[derive(Clone)]
pub struct FakeGrant {
    pub(super) inner: Arc<Inner>,
    pub(super) key: GrantKey,
}

impl fmt::Debug for FakeGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The counts only: tokens are secrets even in a fake's debug output.
        f.debug_struct("FakeGrant")
            .field("key", &self.key)
            .field("counts", &self.counts())
            .finish()
    }
}

impl FakeGrant {
    /// This grant's key.
    pub fn key(&self) -> GrantKey {
        self.key
    }

    /// A one-time authorization code of this grant, bound to `redirect_uri` (the
    /// `authorization_code` request must send the same `redirect_uri`). Exchanging it issues a
    /// new refresh token for this grant, retiring its previous one.
    pub fn issue_code(&self, redirect_uri: &str) -> String {
        self.inner
            .state
            .lock()
            .model
            .issue_code(self.key, redirect_uri, None)
    }

    /// Issues a refresh token for this grant and returns it (no access token is issued). It
    /// becomes the grant's current one: a previous one is retired (presenting it is a replay).
    /// The grant becomes the fake's most recently used one
    /// (see [`FakeNifty::current_refresh_token`](super::FakeNifty::current_refresh_token)).
    pub fn issue_refresh_token(&self) -> String {
        let mut st = self.inner.state.lock();
        let token = st.model.issue_refresh_token(self.key);
        st.model.last_grant = Some(self.key);
        token
    }

    /// Issues a valid access token of this grant, expiring after `lifetime` (`None`: never),
    /// without a token call: e.g. to seed a client with tokens for many grants at once.
    pub fn issue_access_token(&self, lifetime: Option<Duration>) -> String {
        self.inner
            .state
            .lock()
            .model
            .issue_access_token(Some(self.key), lifetime)
    }

    /// This grant's current refresh token; `None` if it has none or it was revoked.
    pub fn current_refresh_token(&self) -> Option<String> {
        self.inner
            .state
            .lock()
            .model
            .current_refresh_token(self.key)
    }

    /// Revokes this grant: its refresh token gets `invalid_grant` ("grant revoked") from now on,
    /// its codes can no longer be exchanged, and the API answers `401` to its access tokens.
    /// Other grants are not affected.
    pub fn revoke(&self) {
        self.inner.state.lock().model.revoke_grant(self.key);
    }

    /// Whether this grant was revoked, by [`FakeGrant::revoke`] or by a refresh token replay
    /// (see [`FakeNiftyBuilder::replay_revokes_grant`](super::FakeNiftyBuilder::replay_revokes_grant)).
    pub fn is_revoked(&self) -> bool {
        self.inner.state.lock().model.grant_revoked(self.key)
    }

    /// Invalidates every access token of this grant issued so far: the API answers `401` to them.
    /// Its refresh token stays valid, and tokens issued later work.
    pub fn revoke_access_tokens(&self) {
        self.inner
            .state
            .lock()
            .model
            .revoke_access_tokens(Some(self.key));
    }

    fn counts(&self) -> GrantCounts {
        self.inner.state.lock().model.counts(self.key)
    }

    /// The number of token endpoint requests presenting a code or refresh token of this grant,
    /// faulted ones included.
    pub fn token_calls(&self) -> usize {
        self.counts().token_calls
    }

    /// The number of this grant's token endpoint requests received and not answered yet.
    pub fn token_calls_in_flight(&self) -> usize {
        self.counts().token_calls_in_flight
    }

    /// The most token endpoint requests of this grant ever in flight at once (`1` when its
    /// token calls never overlapped).
    pub fn max_token_calls_in_flight(&self) -> usize {
        self.counts().max_token_calls_in_flight
    }

    /// The number of `400` `invalid_grant` answers to this grant's token endpoint requests
    /// (including [`TokenFault::Respond`](super::TokenFault::Respond) ones).
    pub fn invalid_grants_served(&self) -> usize {
        self.counts().invalid_grants
    }

    /// The number of API requests whose bearer is an access token of this grant (valid or not).
    pub fn api_calls(&self) -> usize {
        self.counts().api_calls
    }

    /// The number of `401` answers of the API to requests bearing an access token of this grant.
    pub fn unauthorized_served(&self) -> usize {
        self.counts().unauthorized
    }
}
