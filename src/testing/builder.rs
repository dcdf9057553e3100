//! [`FakeNiftyBuilder`]: the fake's configuration (starting it is in `fake.rs`).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use parking_lot::Mutex;

use super::model::Model;
use super::server::{Inner, State};

/// The client id the fake accepts unless [`FakeNiftyBuilder::client`] says otherwise.
const DEFAULT_CLIENT_ID: &str = "fake-client-id";
/// The client secret the fake accepts unless [`FakeNiftyBuilder::client`] says otherwise.
const DEFAULT_CLIENT_SECRET: &str = "fake-client-secret";
/// The lifetime of issued access tokens unless [`FakeNiftyBuilder::token_lifetime`] says otherwise.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Configures a [`FakeNifty`](super::FakeNifty) before it starts; see
/// [`FakeNifty::builder`](super::FakeNifty::builder).
#[derive(Clone)]
#[must_use = "a FakeNiftyBuilder does nothing until `.start().await`"]
pub struct FakeNiftyBuilder {
    client_id: String,
    client_secret: String,
    token_lifetime: Option<Duration>,
    rotation: bool,
    token_delay: Duration,
    replay_revokes_grant: bool,
}

impl fmt::Debug for FakeNiftyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeNiftyBuilder")
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .field("token_lifetime", &self.token_lifetime)
            .field("rotation", &self.rotation)
            .field("token_delay", &self.token_delay)
            .field("replay_revokes_grant", &self.replay_revokes_grant)
            .finish()
    }
}

impl Default for FakeNiftyBuilder {
    fn default() -> Self {
        Self {
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            token_lifetime: Some(DEFAULT_TOKEN_LIFETIME),
            rotation: true,
            token_delay: Duration::ZERO,
            replay_revokes_grant: true,
        }
    }
}

impl FakeNiftyBuilder {
    /// The OAuth client id and secret the token endpoint accepts
    /// (default `fake-client-id` / `fake-client-secret`).
    pub fn client(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.client_id = id.into();
        self.client_secret = secret.into();
        self
    }

    /// The lifetime of issued access tokens, sent as `expires_in`; `None` omits `expires_in`
    /// and the tokens never expire. Default: one hour.
    pub fn token_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Whether each refresh returns a new refresh token and retires the old one. Default: `true`.
    pub fn rotation(mut self, rotate: bool) -> Self {
        self.rotation = rotate;
        self
    }

    /// How long every token endpoint answer waits first. Default: zero.
    pub fn token_delay(mut self, delay: Duration) -> Self {
        self.token_delay = delay;
        self
    }

    /// Whether presenting a retired (already rotated) refresh token revokes the whole grant: its
    /// current refresh token and all its access tokens stop working (RFC 9700 section 4.14.2).
    /// The replayed request gets `invalid_grant` either way. Default: `true`.
    pub fn replay_revokes_grant(mut self, on: bool) -> Self {
        self.replay_revokes_grant = on;
        self
    }

    /// The fake's shared state, serving at `addr` (none in process) under `base_url`.
    pub(super) fn into_inner(self, addr: Option<SocketAddr>, base_url: String) -> Inner {
        let model = Model::new(
            self.token_lifetime,
            self.rotation,
            self.replay_revokes_grant,
        );
        Inner {
            addr,
            base_url,
            client_id: self.client_id,
            client_secret: self.client_secret,
            state: Mutex::new(State::new(model, self.token_delay)),
            token_hold: tokio::sync::watch::Sender::new(false),
            changes: tokio::sync::watch::Sender::new(()),
        }
    }
}
