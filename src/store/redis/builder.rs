//! [`RedisStoreBuilder`]: a [`RedisStore`]'s settings, their defaults and bounds.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use chacha20poly1305::aead::KeyInit;
use chacha20poly1305::XChaCha20Poly1305;

use super::{key, Inner, RedisStore, MAX_LOCK_TTL, MAX_TOKEN_TTL, MIN_LOCK_TTL};
#[cfg(doc)]
use super::{
    DEFAULT_REDIS_COMMAND_TIMEOUT, DEFAULT_REDIS_CONNECT_TIMEOUT, DEFAULT_REDIS_KEY_PREFIX,
    DEFAULT_REDIS_LOCK_TTL, DEFAULT_REDIS_TOKEN_TTL,
};
use crate::error::AuthError;
use crate::grant_id::GrantId;

/// Configures a [`RedisStore`]; made by [`RedisStore::builder`].
pub struct RedisStoreBuilder {
    pub(super) url: String,
    /// Set by `cluster_builder`: the cluster's seed nodes (`url` is then unused).
    pub(super) cluster_nodes: Option<Vec<String>>,
    pub(super) client_id: String,
    pub(super) grant: String,
    pub(super) prefix: String,
    pub(super) token_ttl: Duration,
    pub(super) lock_ttl: Duration,
    pub(super) command_timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) replicas: u32,
    pub(super) replica_timeout: Duration,
    pub(super) key: Option<[u8; 32]>,
}

impl RedisStoreBuilder {
    /// The key prefix, used as given (not escaped). Defaults to [`DEFAULT_REDIS_KEY_PREFIX`].
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The TTL of the stored token set, renewed at every save. Defaults to
    /// [`DEFAULT_REDIS_TOKEN_TTL`]; at most 100 years.
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    /// The lease of the refresh lock: how soon a holder that died is taken over. A live holder's
    /// watchdog extends it every third of it, so keep it several times the
    /// [command timeout](Self::command_timeout). Defaults to [`DEFAULT_REDIS_LOCK_TTL`] (10 s);
    /// between 100 ms and one hour.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// How long the store waits for the answer to each Redis command (a load, a save, a lock
    /// attempt, a release, a lease extension). A command that times out fails the store call.
    /// Defaults to [`DEFAULT_REDIS_COMMAND_TIMEOUT`]; more than zero and at most one hour.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How long one attempt to connect to Redis (TCP and the handshake) may take; a store call
    /// makes at most one. Defaults to [`DEFAULT_REDIS_CONNECT_TIMEOUT`]; more than zero and at most
    /// one hour.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Encrypts the stored token set with this 256-bit key (XChaCha20-Poly1305). Every process of
    /// the grant needs the same key. Defaults to no encryption.
    pub fn encryption_key(mut self, key: [u8; 32]) -> Self {
        self.key = Some(key);
        self
    }

    /// Builds the store. No I/O: the connection is made on first use and re-made after failures.
    ///
    /// # Errors
    /// [`AuthError::Configuration`] for a malformed Redis URL, an empty client id or grant name, or
    /// a TTL or timeout out of the range its setter states.
    pub fn build(self) -> Result<RedisStore, AuthError> {
        if self.client_id.is_empty() || self.grant.is_empty() {
            return Err(AuthError::config(
                "RedisStore needs a client id and a grant name for its keys",
            ));
        }
        in_range(
            "token_ttl",
            self.token_ttl,
            Duration::from_millis(1),
            MAX_TOKEN_TTL,
        )?;
        in_range("lock_ttl", self.lock_ttl, MIN_LOCK_TTL, MAX_LOCK_TTL)?;
        in_range(
            "command_timeout",
            self.command_timeout,
            Duration::from_millis(1),
            MAX_LOCK_TTL,
        )?;
        in_range(
            "connect_timeout",
            self.connect_timeout,
            Duration::from_millis(1),
            MAX_LOCK_TTL,
        )?;
        self.check_replicas()?;
        let target = self.target()?;
        let tagged = target.is_cluster();
        let base = key::base(&self.prefix, &self.client_id, tagged);
        let single = GrantId::new(self.grant.as_str()).map_err(|e| {
            AuthError::config(format!("RedisStore's grant name is not a grant id: {e}"))
        })?;
        let keys = key::grant_keys(&base, single.as_str(), tagged);
        Ok(RedisStore {
            inner: Arc::new(Inner {
                target,
                link: parking_lot::Mutex::new(None),
                links: AtomicU64::new(0),
                base,
                single,
                keys,
                token_ttl: self.token_ttl,
                lock_ttl: self.lock_ttl,
                command_timeout: self.command_timeout,
                connect_timeout: self.connect_timeout,
                replicas: self.replicas,
                replica_timeout: self.replica_timeout,
                cipher: self.key.map(|k| XChaCha20Poly1305::new(&k.into())),
            }),
        })
    }
}

fn in_range(name: &str, value: Duration, min: Duration, max: Duration) -> Result<(), AuthError> {
    if value < min || value > max {
        return Err(AuthError::config(format!(
            "RedisStore {name} must be between {min:?} and {max:?} (got {value:?})"
        )));
    }
    Ok(())
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("client_id", &self.client_id)
            .field("grant", &self.grant)
            .field("prefix", &self.prefix)
            .field("token_ttl", &self.token_ttl)
            .field("lock_ttl", &self.lock_ttl)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("cluster", &self.cluster_nodes.is_some())
            .field("replicas", &self.replicas)
            .field("encrypted", &self.key.is_some())
            .finish_non_exhaustive()
    }
}
