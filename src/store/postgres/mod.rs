//! [`PostgresStore`]: the token sets of many grants, a row each, in PostgreSQL.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chacha20poly1305::XChaCha20Poly1305;
use sqlx::postgres::{PgConnectOptions, PgPool};

use super::{seal, BoxFuture, StoreLock, TokenStore};
use crate::error::AuthError;
use crate::grant_id::GrantId;
use crate::token::TokenSet;
use tower::BoxError;

mod builder;
mod conn;
mod lock;
mod table;

pub use builder::PostgresStoreBuilder;
use builder::Source;
use conn::Conn;
use table::Table;

/// The default table name.
pub const DEFAULT_POSTGRES_TABLE: &str = "nifty_auth_tokens";
/// The grant id of the row a single-grant `NiftyAuth` on a [`PostgresStore`] uses.
pub const DEFAULT_POSTGRES_GRANT: &str = "default";
/// The size of the pool [`PostgresStore::connect`] makes.
pub const DEFAULT_POSTGRES_MAX_CONNECTIONS: u32 = 8;
/// How long a store call waits for a connection from the pool (connecting included) before it
/// fails; see [`PostgresStoreBuilder::acquire_timeout`].
pub const DEFAULT_POSTGRES_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the store waits for the answer to one statement (a load, a save, a lease statement)
/// before the store call fails and the connection is closed; see
/// [`PostgresStoreBuilder::query_timeout`].
pub const DEFAULT_POSTGRES_QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// The default lease of the refresh lock: its holder's watchdog renews it every third of it; a
/// holder that died is taken over within one lease. See [`PostgresStoreBuilder::lock_lease`].
pub const DEFAULT_POSTGRES_LOCK_LEASE: Duration = Duration::from_secs(10);

/// A [`TokenStore`] (a row per grant) in PostgreSQL, shared by every
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
/// - **The refresh lock is a lease row** in a second table, `<table>_lock` (created by
///   [`migrate`](Self::migrate); its SQL is below): a row per grant being refreshed, with a random
///   holder token and `expires_at`, set by the server's clock to `now()` plus the lease
///   ([`PostgresStoreBuilder::lock_lease`], default [`DEFAULT_POSTGRES_LOCK_LEASE`], 10 s). It is
///   taken with one statement — insert the row, or take over a row whose lease has expired —
///   so two processes never both hold it. While the [`StoreLock`] lives, a watchdog task renews
///   the lease every third of it (the same watchdog as `RedisStore`'s), however long the refresh
///   takes; releasing the `StoreLock` stops it and deletes the row if it is still this holder's.
///   Processes that find the lock taken poll it (10 ms doubling to 250 ms, with jitter) for at
///   most the refresh's worst-case time plus one lease plus a second (or
///   [`PostgresStoreBuilder::lock_wait`]); past that they fail with a lock timeout
///   ([`AuthError::RefreshLockHeld`](crate::AuthError::RefreshLockHeld)).
/// - **The lock survives what ends sessions**: a PostgreSQL restart, a failover to a replica that
///   has the row, a dropped connection, a pool that closes its connections. None of them lets
///   another process refresh with the refresh token the holder's token call is rotating away: the
///   holder's watchdog and save reconnect through the pool, and the lease is still theirs. (A
///   session-level advisory lock, which this store used before, is released by all of these.)
///   The row is only as durable as any committed row: with `synchronous_commit = off`, a crash can
///   lose the last commits, the lease among them.
/// - **A lock never outlives its holder's intent, and never needs its holder to let it go:** a
///   holder that dies (or hangs, or is cut off) stops renewing, and its lease lapses within one
///   lease; the next process takes it over then. A release that fails (PostgreSQL unreachable, a
///   role that may not delete) is not retried: the lease lapses by itself. A lock attempt whose
///   answer never came may have taken the lease when its statement finally lands: the store sends
///   a delete of that attempt's row (best effort), and at worst that lease too lapses.
/// - **No connection is held while the lock is:** each statement of a refresh (take the lease,
///   load, the fenced save, each renewal, the release) checks a connection out of the pool for that
///   statement only, never across the token call.
/// - **Fenced saves.** When the lock is taken, the store reads the row's `version`.
///   [`save_locked`](TokenStore::save_locked) writes in one statement that also locks the lease
///   row: it updates the row only if this holder still holds the lease *and* `version` still has
///   the value it read (and increments it); otherwise it refuses with
///   [`LockLost`](crate::store::LockLost) ("fenced save refused"), so a holder whose lease moved on
///   to another process, or whose row changed behind its back, cannot overwrite newer tokens. A
///   lease that lapsed but was not taken over is still this holder's (no one else can have
///   refreshed); a takeover waits for a save in progress, then reads what it wrote.
/// - **PostgreSQL down**: requests keep using a still-valid cached access token (the hot path never
///   touches PostgreSQL); a refresh that is needed fails with [`AuthError::Store`] and never runs
///   without the lock. When the server is back, the pool reconnects and refreshes resume.
/// - **Every call is bounded**, even when the server vanishes without closing its connections (a
///   network partition, a frozen host): getting a connection waits at most
///   [`acquire_timeout`](PostgresStoreBuilder::acquire_timeout) (connecting included, on your pool
///   too), and each statement — a load, a save, a lease statement — at most
///   [`query_timeout`](PostgresStoreBuilder::query_timeout) (defaults: 3 s each). A statement that
///   times out fails the call, and its connection is closed, never returned to the pool: its
///   session may be mid-statement. A save whose answer never came may still have been applied: the
///   fence refuses any save made under a lock taken before it. One limit is sqlx's: a connection
///   returned to the pool is checked with a ping in a task of its own, and a partition that starts
///   at that moment holds that task until it heals.
/// - **Encryption at rest** ([`PostgresStoreBuilder::encryption_key`]): the same scheme as
///   `RedisStore`, XChaCha20-Poly1305 with a random nonce per save and the row's key (client id and
///   grant id) as associated data, so a ciphertext copied into another grant's row fails to open.
///
/// # Pool sizing
///
/// A refresh holds no connection while it waits for its token call, nor while it waits for a
/// lock held elsewhere: it checks one out for each statement (a few milliseconds each). A pool of
/// **2 connections** serves the store however many refreshes are in flight (the watchdog's
/// renewals are one statement per lease third per held lock); a bigger pool only shortens queues
/// when hundreds of grants refresh at once. Add what the app's own queries use if the pool is
/// shared — a storm of 1,000 expired grants with 4 token calls at once on a pool of 2 completes
/// with no store error (the test suite's `storm` test). A store call that cannot get a connection
/// within the acquire timeout fails with [`AuthError::Store`] (and the refresh is tried again
/// later). If the app's own queries keep its pool busy, give the store a small pool of its own
/// ([`connect`](Self::connect), [`DEFAULT_POSTGRES_MAX_CONNECTIONS`] connections).
///
/// # The lock table
///
/// [`migrate`](Self::migrate) creates it; for your own migrations (the default name):
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS "nifty_auth_tokens_lock" (
///     client_id  text        NOT NULL,
///     grant_id   text        NOT NULL,
///     holder     text        NOT NULL,
///     expires_at timestamptz NOT NULL,
///     PRIMARY KEY (client_id, grant_id)
/// )
/// ```
///
/// A row exists only while a refresh holds the lock (or a dead holder's lease has not been taken
/// over); rows whose `expires_at` has passed are free and are taken over in place. The app's role
/// needs `SELECT`, `INSERT`, `UPDATE` and `DELETE` on both tables (the fenced save locks the lease
/// row with `FOR UPDATE`). Looking at the table is safe; deleting a live row lets a second process
/// refresh at once — don't.
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
    /// The row a single-grant `NiftyAuth` uses.
    grant: GrantId,
    table: Table,
    cipher: Option<XChaCha20Poly1305>,
    lock_wait: Option<Duration>,
    /// The refresh lock's lease.
    lease: Duration,
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

    /// Creates the token table and its lock table (`<table>_lock`) if they do not exist
    /// (idempotent; concurrent calls from several processes are serialized with a
    /// transaction-level advisory lock). Run it again after upgrading from a version without the
    /// lock table. The SQL is in the [type docs](Self), for teams that run their own migrations.
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
        conn.run("CREATE TABLE (lock)", |c| {
            sqlx::query(&inner.table.create_lock).execute(c)
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

    /// The grant id of the row a single-grant `NiftyAuth` on this store uses (its
    /// [`single_grant`](TokenStore::single_grant)).
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
        let mut conn = self.checkout().await?;
        let stored = conn.run("SELECT", |c| query.fetch_optional(c)).await?;
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

impl TokenStore for PostgresStore {
    fn load<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
        Box::pin(self.load_row(grant))
    }

    /// Writes the row unconditionally (an upsert that increments `version`).
    fn save<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(self.save_row(grant, tokens))
    }

    fn remove<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(self.delete_row(grant))
    }

    /// Takes `grant`'s lease (see [`PostgresStore`]).
    fn lock<'a>(
        &'a self,
        grant: &'a GrantId,
        max_hold: Duration,
    ) -> BoxFuture<'a, Result<StoreLock, BoxError>> {
        Box::pin(self.acquire(grant, max_hold))
    }

    /// Saves only if `lock`'s lease is still this holder's and the row's `version` is still what
    /// `lock` saw (see [`PostgresStore`]).
    fn save_locked<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
        lock: &'a StoreLock,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        self.save_locked_grant(grant, tokens, lock)
    }

    /// The builder's [`grant`](PostgresStoreBuilder::grant).
    fn single_grant(&self) -> GrantId {
        self.inner.grant.clone()
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
            .field("lock_lease", &self.inner.lease)
            .field("acquire_timeout", &self.inner.acquire_timeout)
            .field("query_timeout", &self.inner.query_timeout)
            .field("encrypted", &self.inner.cipher.is_some())
            .finish_non_exhaustive()
    }
}
