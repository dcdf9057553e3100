//! [`PostgresStoreBuilder`]: a [`PostgresStore`]'s settings, their defaults and bounds.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::table::Table;
use super::{
    seal, Inner, PostgresStore, DEFAULT_POSTGRES_ACQUIRE_TIMEOUT, DEFAULT_POSTGRES_GRANT,
    DEFAULT_POSTGRES_LOCK_LEASE, DEFAULT_POSTGRES_MAX_CONNECTIONS, DEFAULT_POSTGRES_QUERY_TIMEOUT,
    DEFAULT_POSTGRES_TABLE,
};
use crate::error::AuthError;
use crate::grant_id::GrantId;

/// The longest lock wait, lease and timeout the builder accepts.
const MAX_DURATION: Duration = Duration::from_secs(60 * 60);
/// The shortest lease the builder accepts.
const MIN_LOCK_LEASE: Duration = Duration::from_millis(100);

pub(super) enum Source {
    Pool(PgPool),
    Url(Box<Result<PgConnectOptions, String>>),
}

/// Configures a [`PostgresStore`]; made by [`PostgresStore::builder`] or
/// [`PostgresStore::connect_builder`].
pub struct PostgresStoreBuilder {
    source: Source,
    client_id: String,
    table: String,
    grant: String,
    key: Option<[u8; 32]>,
    lock_wait: Option<Duration>,
    lease: Duration,
    max_connections: u32,
    acquire_timeout: Duration,
    query_timeout: Duration,
}

impl PostgresStoreBuilder {
    pub(super) fn new(source: Source, client_id: String) -> Self {
        PostgresStoreBuilder {
            source,
            client_id,
            table: DEFAULT_POSTGRES_TABLE.to_owned(),
            grant: DEFAULT_POSTGRES_GRANT.to_owned(),
            key: None,
            lock_wait: None,
            lease: DEFAULT_POSTGRES_LOCK_LEASE,
            max_connections: DEFAULT_POSTGRES_MAX_CONNECTIONS,
            acquire_timeout: DEFAULT_POSTGRES_ACQUIRE_TIMEOUT,
            query_timeout: DEFAULT_POSTGRES_QUERY_TIMEOUT,
        }
    }

    /// The table: a plain (`nifty_auth_tokens`) or schema-qualified (`auth.nifty_tokens`) name, each
    /// part lower-case ASCII letters, digits and `_`, not starting with a digit, at most 63 bytes
    /// (anything else is a configuration error at [`build`](Self::build)). Defaults to
    /// [`DEFAULT_POSTGRES_TABLE`].
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// The grant id of the row a single-grant `NiftyAuth` on this store uses (its
    /// [`single_grant`](crate::store::TokenStore::single_grant)). Defaults to
    /// [`DEFAULT_POSTGRES_GRANT`]. A [`NiftyGrants`](crate::NiftyGrants) passes its own grant ids
    /// and ignores it.
    pub fn grant(mut self, grant: impl Into<String>) -> Self {
        self.grant = grant.into();
        self
    }

    /// Encrypts the stored token sets with this 256-bit key (XChaCha20-Poly1305). Every process
    /// needs the same key. Defaults to no encryption.
    pub fn encryption_key(mut self, key: [u8; 32]) -> Self {
        self.key = Some(key);
        self
    }

    /// How long to wait for a refresh lock held by another process. Defaults to the refresh's
    /// worst-case time (what the token manager passes as `max_hold`) plus one
    /// [lease](Self::lock_lease) plus one second; between 1 ms and one hour.
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = Some(wait);
        self
    }

    /// The lease of the refresh lock (a row in `<table>_lock`, see [`PostgresStore`]): how long
    /// the lock outlives its holder's last renewal. While the lock is held, a watchdog renews the
    /// lease every third of it; a holder that died, hangs or is cut off from PostgreSQL is taken
    /// over once its lease has run out. Defaults to [`DEFAULT_POSTGRES_LOCK_LEASE`] (10 s);
    /// between 100 ms and one hour.
    ///
    /// Longer: a holder survives longer outages of PostgreSQL (or of its own network) without
    /// losing its lock; but a killed holder's grant waits that long before another process
    /// refreshes it. Keep it well above [`acquire_timeout`](Self::acquire_timeout) +
    /// [`query_timeout`](Self::query_timeout) (one renewal's worst case) and above the time a
    /// restart or failover of your PostgreSQL takes.
    ///
    /// ```
    /// use std::time::Duration;
    /// use nifty_auth::PostgresStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), nifty_auth::AuthError> {
    /// // No I/O yet: the pool connects on first use.
    /// let store = PostgresStore::connect_builder("postgres://app@db.internal/app", "client-id")
    ///     .lock_lease(Duration::from_secs(30))
    ///     .build()?;
    /// assert!(format!("{store:?}").contains("lock_lease: 30s"));
    /// # Ok(()) }
    /// ```
    pub fn lock_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The size of the store's own pool (only with [`PostgresStore::connect_builder`]). Defaults
    /// to [`DEFAULT_POSTGRES_MAX_CONNECTIONS`]; at least 1. See "Pool sizing" on [`PostgresStore`].
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// How long a store call waits for a connection from the pool, connecting included. Defaults
    /// to [`DEFAULT_POSTGRES_ACQUIRE_TIMEOUT`]; between 1 ms and one hour.
    ///
    /// It bounds every pool: with [`PostgresStore::connect_builder`] it is also the store's own
    /// pool's acquire timeout; on the app's pool ([`PostgresStore::builder`]) the store gives up
    /// after it even if the pool's own timeout is longer (sqlx's default is 30 s).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How long the store waits for the answer to each statement it sends: a load, a save, a
    /// lease statement (take, renew, release), the steps of [`migrate`](PostgresStore::migrate).
    /// Defaults to [`DEFAULT_POSTGRES_QUERY_TIMEOUT`]; between 1 ms and one hour.
    ///
    /// A statement that times out (a server that went away without closing its connections: a
    /// network partition, a frozen host) fails the store call — the token manager reports it as
    /// [`AuthError::Store`] — and its connection is closed, never returned to the pool: its session
    /// may be mid-statement. A lease an unanswered lock attempt took is deleted when PostgreSQL can
    /// be reached again, or lapses. This is a bound kept by the client; PostgreSQL's own
    /// `statement_timeout` setting is not changed.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// Builds the store. No I/O.
    ///
    /// # Errors
    /// [`AuthError::Configuration`] for an empty client id or one with control characters, a bad
    /// table name, an invalid grant id, a malformed URL, a lock wait, lease or timeout out of
    /// range, or a pool of zero connections.
    pub fn build(self) -> Result<PostgresStore, AuthError> {
        if self.client_id.is_empty() || self.client_id.chars().any(char::is_control) {
            return Err(AuthError::config(
                "PostgresStore needs a client id without control characters",
            ));
        }
        let table = Table::new(&self.table)?;
        let grant = GrantId::new(self.grant)?;
        if let Some(wait) = self.lock_wait {
            in_range("lock_wait", wait)?;
        }
        if self.lease < MIN_LOCK_LEASE || self.lease > MAX_DURATION {
            return Err(AuthError::config(format!(
                "PostgresStore lock_lease must be between {MIN_LOCK_LEASE:?} and {MAX_DURATION:?} \
                 (got {:?})",
                self.lease
            )));
        }
        in_range("acquire_timeout", self.acquire_timeout)?;
        in_range("query_timeout", self.query_timeout)?;
        let pool = match self.source {
            Source::Pool(pool) => pool,
            Source::Url(options) => {
                let options = (*options).map_err(AuthError::config)?;
                if self.max_connections == 0 {
                    return Err(AuthError::config(
                        "PostgresStore needs at least one connection",
                    ));
                }
                PgPoolOptions::new()
                    .max_connections(self.max_connections)
                    .min_connections(0)
                    .acquire_timeout(self.acquire_timeout)
                    .connect_lazy_with(options)
            }
        };
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                pool,
                client_id: self.client_id,
                grant,
                table,
                cipher: self.key.map(seal::cipher),
                lock_wait: self.lock_wait,
                lease: self.lease,
                acquire_timeout: self.acquire_timeout,
                query_timeout: self.query_timeout,
            }),
        })
    }
}

/// A duration setting between 1 ms and one hour.
fn in_range(name: &str, value: Duration) -> Result<(), AuthError> {
    let min = Duration::from_millis(1);
    if value < min || value > MAX_DURATION {
        return Err(AuthError::config(format!(
            "PostgresStore {name} must be between {min:?} and {MAX_DURATION:?} (got {value:?})"
        )));
    }
    Ok(())
}

impl fmt::Debug for PostgresStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStoreBuilder")
            .field("client_id", &self.client_id)
            .field("table", &self.table)
            .field("grant", &self.grant)
            .field("lock_wait", &self.lock_wait)
            .field("lock_lease", &self.lease)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("encrypted", &self.key.is_some())
            .finish_non_exhaustive()
    }
}
