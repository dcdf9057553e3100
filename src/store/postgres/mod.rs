//! [`PostgresStore`]: the token sets of many grants, a row each, in PostgreSQL.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use chacha20poly1305::XChaCha20Poly1305;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{seal, BoxFuture, GrantStore, StoreLock, TokenStore};
use crate::error::AuthError;
use crate::grants::GrantId;
use crate::token::TokenSet;
use tower::BoxError;

mod conn;
mod lock;
mod table;

use conn::Conn;
use lock::Session;
use table::Table;

/// The default table name.
pub const DEFAULT_POSTGRES_TABLE: &str = "nifty_auth_tokens";
/// The grant id a [`PostgresStore`] used as a single-grant [`TokenStore`] keeps its row under.
pub const DEFAULT_POSTGRES_GRANT: &str = "default";
/// The size of the pool [`PostgresStore::connect`] makes.
pub const DEFAULT_POSTGRES_MAX_CONNECTIONS: u32 = 8;
/// How long a store call waits for a connection from the pool (connecting included) before it
/// fails; see [`PostgresStoreBuilder::acquire_timeout`].
pub const DEFAULT_POSTGRES_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the store waits for the answer to one statement (a load, a save, a lock attempt, an
/// unlock) before the store call fails and the connection is closed; see
/// [`PostgresStoreBuilder::query_timeout`].
pub const DEFAULT_POSTGRES_QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest lock wait and timeout the builder accepts.
const MAX_LOCK_WAIT: Duration = Duration::from_secs(60 * 60);

/// A [`GrantStore`] (a row per grant) and [`TokenStore`] (one row) in PostgreSQL, shared by every
/// process of an app, with a cross-process refresh lock (feature `postgres`, built on sqlx with
/// runtime-checked queries: building needs no database).
///
/// - **The table** (default [`DEFAULT_POSTGRES_TABLE`]) has a row per (client id, grant id): the
///   token set (JSON bytes, or encrypted), `updated_at` and a `version` counter. Create it with
///   [`migrate`](Self::migrate) (idempotent), or in your own migrations with this SQL:
///
///   ```sql
///   CREATE TABLE IF NOT EXISTS "nifty_auth_tokens" (
///       client_id  text        NOT NULL,
///       grant_id   text        NOT NULL,
///       token_set  bytea       NOT NULL,
///       version    bigint      NOT NULL DEFAULT 1,
///       updated_at timestamptz NOT NULL DEFAULT now(),
///       PRIMARY KEY (client_id, grant_id)
///   )
///   ```
///
///   Every value is a bind parameter: grant ids (any [`GrantId`]: quotes, backslashes, `;`,
///   unicode) never become SQL. The table name cannot be a parameter, so it is validated (see
///   [`PostgresStoreBuilder::table`]) and quoted. Without encryption, read a token set with
///   `convert_from(token_set, 'UTF8')::jsonb`.
/// - **The refresh lock** is a session-level advisory lock, `pg_try_advisory_lock(key)`, taken on
///   a connection checked out of the pool and held by the [`StoreLock`] for the whole refresh.
///   Processes that find it taken poll it (10 ms doubling to 250 ms, with jitter) for at most the
///   refresh's worst-case time plus a second (or [`PostgresStoreBuilder::lock_wait`]). Releasing
///   (or dropping) the `StoreLock` runs `pg_advisory_unlock` and returns the connection to the
///   pool. **A lock never outlives its holder's intent:** a connection whose unlock failed (an
///   error, a role that may not run it, a cancelled statement), timed out or could not be sent is
///   closed instead, never returned to the pool — ending the session is the one sure way to
///   release a session-level lock, so a lock never stays behind in the pool. A process that dies
///   loses its session, and PostgreSQL releases its advisory locks at once: another process takes
///   over as soon as it next polls. (A host that vanishes without closing its TCP connection is
///   noticed by the server's TCP keepalives: tune `tcp_keepalives_idle` if that must be quick.)
/// - **The lock key** is the first 64 bits of SHA-256 over (client id, grant id), length-prefixed.
///   Two different grants share a key with probability about n²/2⁶⁵ for n grants (one in 37
///   million for a million grants); if they do, their refreshes take turns — a short wait, never a
///   wrong save, because the fence below is per row. Your own advisory locks share the same 64-bit
///   space: hash-derived keys do not meet small integer ids in practice.
/// - **Fenced saves.** When the lock is taken, the store reads the row's `version` on the lock's
///   connection. [`save_locked`](TokenStore::save_locked) updates the row only if `version` still
///   has that value (and increments it); otherwise it refuses with an error ("fenced save
///   refused"), so a holder whose lock was lost (its session died and another process refreshed)
///   cannot overwrite newer tokens. While the lock is held, [`load`](TokenStore::load) of that
///   grant and the fenced save run on the lock's connection: **a refresh uses exactly one
///   connection**, from taking the lock to its save.
/// - **PostgreSQL down**: requests keep using a still-valid cached access token (the hot path never
///   touches PostgreSQL); a refresh that is needed fails with [`AuthError::Store`] and never runs
///   without the lock. When the server is back, the pool reconnects and refreshes resume.
/// - **Every call is bounded**, even when the server vanishes without closing its connections (a
///   network partition, a frozen host): getting a connection waits at most
///   [`acquire_timeout`](PostgresStoreBuilder::acquire_timeout) (connecting included, on your pool
///   too), and each statement — a load, a save, a lock attempt, an unlock — at most
///   [`query_timeout`](PostgresStoreBuilder::query_timeout) (defaults: 3 s each). A statement that
///   times out fails the call, and its connection is closed, never returned to the pool: its
///   session may be mid-statement, or hold the lock an unanswered lock attempt took; the server
///   ends it (and releases its locks) when it sees the close. A save whose answer never came may
///   still have been applied: the fence below refuses any save made under a lock taken before it.
///   One limit is sqlx's: a connection returned to the pool is checked with a ping in a task of its
///   own, and a partition that starts at that moment holds that task until it heals.
/// - **Encryption at rest** ([`PostgresStoreBuilder::encryption_key`]): the same scheme as
///   `RedisStore`, XChaCha20-Poly1305 with a random nonce per save and the row's key (client id and
///   grant id) as associated data, so a ciphertext copied into another grant's row fails to open.
///
/// # Pool sizing
///
/// Each refresh in flight holds one connection from taking the lock until its tokens are saved (a
/// token call: milliseconds to seconds); waiting for a lock held elsewhere holds none between polls.
/// A refresh takes its token-call slot (`max_concurrent_token_calls` of a
/// [`NiftyGrants`](crate::NiftyGrants), after any 429 pause) *before* its lock, so refreshes queued
/// behind the slots hold no connection. The rule: **`max_concurrent_token_calls` + 1 connections**
/// (the one extra for loads outside a refresh), plus what the app's own queries use if the pool is
/// shared — a storm of 1,000 expired grants with 2 token calls at once on a pool of 3 completes with
/// no store error (the test suite's `storm` test). A connection that holds a lock is checked out, so
/// the app's queries cannot take it mid-refresh; but refreshes that cannot get a connection within
/// the pool's acquire timeout fail with [`AuthError::Store`] (and are tried again later). If the
/// app's own queries keep its pool busy, give the store a small pool of its own
/// ([`connect`](Self::connect), [`DEFAULT_POSTGRES_MAX_CONNECTIONS`] connections).
///
/// # The window no client can close
///
/// As with any shared store: a holder that dies after Nifty rotated the refresh token but before it
/// saved the answer takes the only valid refresh token with it. Keep PostgreSQL close, and be ready
/// to re-authorize (`AuthError::ReauthorizationRequired`).
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), nifty_auth::AuthError> {
/// use nifty_auth::{Credentials, GrantId, NiftyGrants, PostgresStore};
///
/// let store = PostgresStore::builder(pool, "client-id")
///     .encryption_key([7u8; 32]) // keep the real key in a secrets manager
///     .build()?;
/// store.migrate().await?;
/// let grants = NiftyGrants::builder(Credentials::new("client-id", "client-secret"))
///     .store(store)
///     .build()?;
/// let token = grants.access_token(&GrantId::new("workspace-42")?).await;
/// # let _ = token; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    client_id: String,
    /// The row of the single-grant [`TokenStore`].
    grant: GrantId,
    table: Table,
    cipher: Option<XChaCha20Poly1305>,
    lock_wait: Option<Duration>,
    acquire_timeout: Duration,
    query_timeout: Duration,
    /// The lock connections this process holds, so that `load` inside a refresh uses them.
    held: parking_lot::Mutex<HashMap<GrantId, Weak<Session>>>,
}

enum Source {
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
    max_connections: u32,
    acquire_timeout: Duration,
    query_timeout: Duration,
}

impl PostgresStore {
    /// A store on the app's own pool, with the defaults (see [`builder`](Self::builder)).
    ///
    /// # Errors
    /// [`AuthError::Configuration`] for an empty client id or one with control characters.
    pub fn new(pool: PgPool, client_id: impl Into<String>) -> Result<PostgresStore, AuthError> {
        Self::builder(pool, client_id).build()
    }

    /// A store with a small pool of its own ([`DEFAULT_POSTGRES_MAX_CONNECTIONS`] connections,
    /// [`DEFAULT_POSTGRES_ACQUIRE_TIMEOUT`]) at `url` (`postgres://user:password@host:port/db`).
    /// No I/O: connections are made on first use and re-made after failures.
    ///
    /// # Errors
    /// [`AuthError::Configuration`] for a malformed URL (never echoed: it may hold a password) or
    /// a bad client id.
    pub fn connect(url: &str, client_id: impl Into<String>) -> Result<PostgresStore, AuthError> {
        Self::connect_builder(url, client_id).build()
    }

    /// Starts configuring a store on the app's own pool for the app `client_id`.
    pub fn builder(pool: PgPool, client_id: impl Into<String>) -> PostgresStoreBuilder {
        PostgresStoreBuilder::new(Source::Pool(pool), client_id.into())
    }

    /// Starts configuring a store with its own pool at `url` (see [`connect`](Self::connect)).
    pub fn connect_builder(url: &str, client_id: impl Into<String>) -> PostgresStoreBuilder {
        // sqlx's message could quote the URL, password included: keep only that it failed.
        let options =
            PgConnectOptions::from_str(url).map_err(|_| "the PostgreSQL URL is invalid".to_owned());
        PostgresStoreBuilder::new(Source::Url(Box::new(options)), client_id.into())
    }

    /// Creates the table if it does not exist (idempotent; concurrent calls from several processes
    /// are serialized with a transaction-level advisory lock). The SQL is in the
    /// [type docs](Self), for teams that run their own migrations.
    ///
    /// # Errors
    /// [`AuthError::Store`] if PostgreSQL cannot be reached or refuses (e.g. no `CREATE` right).
    pub async fn migrate(&self) -> Result<(), AuthError> {
        self.create_table().await.map_err(AuthError::store)
    }

    async fn create_table(&self) -> Result<(), BoxError> {
        let inner = &self.inner;
        let mut conn = self.checkout().await?;
        // In a transaction until COMMIT: a failure on the way closes the session (rolling back).
        conn.taint();
        conn.run("BEGIN", |c| sqlx::query("BEGIN").execute(c))
            .await?;
        conn.run("migrate lock", |c| {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(lock::MIGRATE_KEY)
                .execute(c)
        })
        .await?;
        conn.run("CREATE TABLE", |c| {
            sqlx::query(&inner.table.create).execute(c)
        })
        .await?;
        conn.run("COMMIT", |c| sqlx::query("COMMIT").execute(c))
            .await?;
        conn.untaint();
        Ok(())
    }

    /// A connection for one store call, with the store's acquire and query timeouts.
    async fn checkout(&self) -> Result<Conn, BoxError> {
        let inner = &self.inner;
        Conn::checkout(&inner.pool, inner.acquire_timeout, inner.query_timeout).await
    }

    /// The table, as configured.
    pub fn table(&self) -> &str {
        &self.inner.table.name
    }

    /// The grant id of the row this store uses as a single-grant [`TokenStore`].
    pub fn grant(&self) -> &GrantId {
        &self.inner.grant
    }

    /// The pool the store runs on.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Associated data of `grant`'s row: client id and grant id, length-prefixed (no two pairs
    /// give the same bytes).
    fn aad(&self, grant: &GrantId) -> Vec<u8> {
        let client = &self.inner.client_id;
        format!("nifty-auth:postgres:{}:{client}:{grant}", client.len()).into_bytes()
    }

    fn place(&self, grant: &GrantId) -> String {
        format!(
            "PostgreSQL table {} row (client id {:?}, grant id {:?})",
            self.inner.table.name,
            self.inner.client_id,
            grant.as_str()
        )
    }

    fn seal(&self, grant: &GrantId, tokens: &TokenSet) -> Result<Vec<u8>, BoxError> {
        seal::seal(self.inner.cipher.as_ref(), tokens, &self.aad(grant))
    }

    fn unseal(&self, grant: &GrantId, stored: &[u8]) -> Result<TokenSet, BoxError> {
        seal::unseal(
            self.inner.cipher.as_ref(),
            stored,
            &self.aad(grant),
            &self.place(grant),
        )
    }

    async fn load_row(&self, grant: &GrantId) -> Result<Option<TokenSet>, BoxError> {
        let inner = &self.inner;
        let query = sqlx::query_scalar::<_, Vec<u8>>(&inner.table.load)
            .bind(&inner.client_id)
            .bind(grant.as_str());
        let held = inner.held.lock().get(grant).and_then(Weak::upgrade);
        let stored = match held {
            // Inside a refresh: the lock's connection (a lost session fails the re-read).
            Some(session) => {
                let mut session = session.connection.lock().await;
                session.run("SELECT", |c| query.fetch_optional(c)).await?
            }
            None => {
                let mut conn = self.checkout().await?;
                conn.run("SELECT", |c| query.fetch_optional(c)).await?
            }
        };
        stored.map(|stored| self.unseal(grant, &stored)).transpose()
    }

    async fn save_row(&self, grant: &GrantId, tokens: &TokenSet) -> Result<(), BoxError> {
        let inner = &self.inner;
        let value = self.seal(grant, tokens)?;
        let mut conn = self.checkout().await?;
        conn.run("INSERT", |c| {
            sqlx::query(&inner.table.upsert)
                .bind(&inner.client_id)
                .bind(grant.as_str())
                .bind(value)
                .execute(c)
        })
        .await?;
        Ok(())
    }

    async fn delete_row(&self, grant: &GrantId) -> Result<(), BoxError> {
        let inner = &self.inner;
        let mut conn = self.checkout().await?;
        conn.run("DELETE", |c| {
            sqlx::query(&inner.table.delete)
                .bind(&inner.client_id)
                .bind(grant.as_str())
                .execute(c)
        })
        .await?;
        Ok(())
    }

    fn save_locked_grant<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
        lock: &'a StoreLock,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        // Read before the future starts: the future cannot hold a reference to the `StoreLock`.
        match self.fence(grant, lock) {
            Ok(fence) => Box::pin(self.save_fenced(grant, tokens, fence)),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

impl PostgresStoreBuilder {
    fn new(source: Source, client_id: String) -> Self {
        PostgresStoreBuilder {
            source,
            client_id,
            table: DEFAULT_POSTGRES_TABLE.to_owned(),
            grant: DEFAULT_POSTGRES_GRANT.to_owned(),
            key: None,
            lock_wait: None,
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

    /// The grant id of the row used when the store is a single-grant [`TokenStore`] (the store of
    /// a `NiftyAuth`). Defaults to [`DEFAULT_POSTGRES_GRANT`]. A [`NiftyGrants`](crate::NiftyGrants)
    /// passes its own grant ids and ignores it.
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
    /// worst-case time (what the token manager passes as `max_hold`) plus one second; between
    /// 1 ms and one hour.
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = Some(wait);
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

    /// How long the store waits for the answer to each statement it sends: a load, a save, a lock
    /// attempt, an unlock, the steps of [`migrate`](PostgresStore::migrate). Defaults to
    /// [`DEFAULT_POSTGRES_QUERY_TIMEOUT`]; between 1 ms and one hour.
    ///
    /// A statement that times out (a server that went away without closing its connections: a
    /// network partition, a frozen host) fails the store call — the token manager reports it as
    /// [`AuthError::Store`] — and its connection is closed, never returned to the pool: its session
    /// may be mid-statement, or may hold the lock that an unanswered lock attempt took. When the
    /// server sees the connection close it ends the session and releases its advisory locks. This
    /// is a bound kept by the client; PostgreSQL's own `statement_timeout` setting is not changed.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// Builds the store. No I/O.
    ///
    /// # Errors
    /// [`AuthError::Configuration`] for an empty client id or one with control characters, a bad
    /// table name, an invalid grant id, a malformed URL, a lock wait out of range, or a pool of
    /// zero connections.
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
                acquire_timeout: self.acquire_timeout,
                query_timeout: self.query_timeout,
                held: parking_lot::Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// A duration setting between 1 ms and one hour.
fn in_range(name: &str, value: Duration) -> Result<(), AuthError> {
    let min = Duration::from_millis(1);
    if value < min || value > MAX_LOCK_WAIT {
        return Err(AuthError::config(format!(
            "PostgresStore {name} must be between {min:?} and {MAX_LOCK_WAIT:?} (got {value:?})"
        )));
    }
    Ok(())
}

impl GrantStore for PostgresStore {
    fn load_grant<'a>(
        &'a self,
        grant: &'a GrantId,
    ) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
        Box::pin(self.load_row(grant))
    }

    /// Writes the row unconditionally (an upsert that increments `version`).
    fn save_grant<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(self.save_row(grant, tokens))
    }

    fn remove_grant<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(self.delete_row(grant))
    }

    /// Takes `grant`'s advisory lock (see [`PostgresStore`]).
    fn lock_grant<'a>(
        &'a self,
        grant: &'a GrantId,
        max_hold: Duration,
    ) -> BoxFuture<'a, Result<StoreLock, BoxError>> {
        Box::pin(self.acquire(grant, max_hold))
    }

    /// Saves only if the row's `version` is still what `lock` saw (see [`PostgresStore`]).
    fn save_grant_locked<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
        lock: &'a StoreLock,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        self.save_locked_grant(grant, tokens, lock)
    }
}

impl TokenStore for PostgresStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<TokenSet>, BoxError>> {
        Box::pin(self.load_row(&self.inner.grant))
    }

    fn save<'a>(&'a self, tokens: &'a TokenSet) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(self.save_row(&self.inner.grant, tokens))
    }

    fn lock(&self, max_hold: Duration) -> BoxFuture<'_, Result<StoreLock, BoxError>> {
        Box::pin(self.acquire(&self.inner.grant, max_hold))
    }

    fn save_locked<'a>(
        &'a self,
        tokens: &'a TokenSet,
        lock: &'a StoreLock,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        self.save_locked_grant(&self.inner.grant, tokens, lock)
    }
}

fn pg_error(what: &str, e: sqlx::Error) -> BoxError {
    io::Error::other(format!("postgres {what} failed: {e}")).into()
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.inner.table.name)
            .field("client_id", &self.inner.client_id)
            .field("grant", &self.inner.grant)
            .field("lock_wait", &self.inner.lock_wait)
            .field("acquire_timeout", &self.inner.acquire_timeout)
            .field("query_timeout", &self.inner.query_timeout)
            .field("encrypted", &self.inner.cipher.is_some())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for PostgresStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStoreBuilder")
            .field("client_id", &self.client_id)
            .field("table", &self.table)
            .field("grant", &self.grant)
            .field("lock_wait", &self.lock_wait)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("encrypted", &self.key.is_some())
            .finish_non_exhaustive()
    }
}
