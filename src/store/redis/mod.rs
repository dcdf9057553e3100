//! [`RedisStore`]: Nifty grants shared by many processes through Redis, a key and a lock per
//! grant.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use chacha20poly1305::XChaCha20Poly1305;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use self::connection::{Connection, Target};
use self::key::Keys;
#[cfg(doc)]
use crate::error::AuthError;
use crate::grant_id::GrantId;
use crate::token::TokenSet;
use tower::BoxError;

mod builder;
#[cfg(feature = "redis-cluster")]
mod cluster;
mod connection;
mod durable;
mod grant;
mod key;
mod lease;
mod seal;

pub use builder::RedisStoreBuilder;
pub use durable::DEFAULT_REDIS_REPLICA_TIMEOUT;

/// The default key prefix: keys are `nifty-auth:<client id>:<grant>:tokens` and `…:lock` (the
/// client id and grant name escaped, see [`RedisStore`]).
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "nifty-auth";
/// The default time to live of the stored token set, renewed at every save. It must outlast the
/// refresh token's useful life (Nifty does not document it); raise it if your grants idle longer.
pub const DEFAULT_REDIS_TOKEN_TTL: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// The default response timeout of one Redis command: how long the store waits for its answer.
pub const DEFAULT_REDIS_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// The default connect timeout: how long one attempt to connect to Redis (TCP, then the
/// handshake) may take.
pub const DEFAULT_REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The default lease of the refresh lock: its holder's watchdog extends it every third of it; a
/// holder that died is taken over within one lease.
pub const DEFAULT_REDIS_LOCK_TTL: Duration = Duration::from_secs(10);

/// The shortest lock lease [`RedisStoreBuilder::build`] accepts.
const MIN_LOCK_TTL: Duration = Duration::from_millis(100);
/// The longest lock lease, command and connect timeout [`RedisStoreBuilder::build`] accepts.
const MAX_LOCK_TTL: Duration = Duration::from_secs(60 * 60);
/// The longest token set TTL [`RedisStoreBuilder::build`] accepts (Redis rejects far larger ones).
const MAX_TOKEN_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// A [`TokenStore`](crate::store::TokenStore) in Redis, shared by every process of an app, with a
/// cross-process refresh lock per grant (feature `redis`). Below, `<grant>` is the grant of each
/// call: for a single-grant `NiftyAuth`, the builder's grant name.
///
/// - The token set lives under `<prefix>:<client id>:<grant>:tokens`, with a TTL
///   ([`DEFAULT_REDIS_TOKEN_TTL`]) renewed at every save. The client id and grant name are
///   percent-escaped: `%`, `:` and anything but printable ASCII become `%XX`, so no two
///   (client id, grant) pairs share a key (`a:b` + `c` and `a` + `b:c` differ); ids of letters,
///   digits, `-`, `_`, `.` and other printable ASCII keep their text. The prefix is used as given.
/// - Before a refresh, a process takes `<prefix>:<client id>:<grant>:lock` with
///   `SET lock <random token> NX PX <lease>` ([`RedisStoreBuilder::lock_ttl`], default
///   [`DEFAULT_REDIS_LOCK_TTL`], 10 s). While the lock is held, a watchdog task extends the lease
///   every third of it (a compare-and-`PEXPIRE` script), however long the refresh takes; it stops
///   when the lock is released or dropped. A holder that died is taken over within one lease.
///   Holding the lock, the token manager re-reads the token set: if another process refreshed
///   meanwhile, it uses that and makes no token call. Processes that find the lock taken poll it
///   (10 ms doubling to 250 ms, with jitter), for at most the refresh's worst-case time plus one
///   lease plus a second. The holder releases it with a compare-and-delete script.
/// - Saves under the lock are *fenced*: a script writes the token set only if the lock still holds
///   this holder's token. A holder whose lease lapsed (a long pause, Redis unreachable for a lease)
///   gets an error instead of overwriting a newer token set. [`save`](crate::store::TokenStore::save) without a
///   lock writes unconditionally.
/// - Inside one process the token manager's single flight still holds: at most one lock attempt per
///   process at a time.
/// - Redis down: requests keep using a still-valid cached access token (the hot path never talks to
///   Redis); a refresh that is needed fails with [`AuthError::Store`]. It never refreshes without
///   the lock — that is how rotating grants die.
/// - **Every call is bounded**, even when Redis vanishes without closing its connections (a
///   network partition, a frozen host): connecting waits at most
///   [`connect_timeout`](RedisStoreBuilder::connect_timeout) (one attempt per call; the next call
///   tries again), each command at most [`command_timeout`](RedisStoreBuilder::command_timeout), so
///   one load, save or lock attempt fails within their sum (defaults: 2 s + 2 s) and the refresh
///   with it, as [`AuthError::Store`].
/// - **A lock never outlives its holder's intent.** A release that fails (Redis unreachable) is
///   not retried: the lease expires by itself within one lock TTL. A lock attempt whose answer never
///   came may have taken the lock when its `SET` finally lands: the store then sends a
///   compare-and-delete for that attempt's token (best effort, on the same connection, so it runs
///   right after the `SET`), and at worst that lease too lapses within one lock TTL.
/// - Optional at-rest encryption ([`RedisStoreBuilder::encryption_key`]): XChaCha20-Poly1305 with a
///   random nonce per save, the Redis key as associated data.
/// - The lock and the token set are two keys used in one script: on Redis Cluster both must sit in
///   one slot. Use [`RedisStore::cluster_builder`] (feature `redis-cluster`), which tags each
///   grant's keys; see [Redis Cluster](#redis-cluster).
///
/// # Redis Cluster
///
/// [`RedisStore::cluster_builder`] (feature `redis-cluster`) speaks to a Redis Cluster through
/// redis-rs's cluster client, which sends each command to the master of its key's slot and follows
/// `MOVED` / `ASK` and topology changes (a failover, a resharding) by itself.
///
/// - Keys are `<prefix>:{<client id>:<grant>}:tokens` and `<prefix>:{<client id>:<grant>}:lock`:
///   the hash tag (between the braces) is the escaped client id and grant, with `{` and `}` escaped
///   too (`%7B`, `%7D`). A grant's two keys share a slot (the lock and fenced-save scripts need
///   that) and different grants spread over all slots, so over all masters. A prefix holding `{`
///   or `}` is refused: the store makes its own tag.
/// - Single-server stores ([`RedisStore::builder`]) keep the layout above, without braces: their
///   keys do not change. A deployment that reached a cluster through one node with a hash-tag
///   prefix (`{nifty-auth}`, all grants in one slot) moves by copying each grant once, with no
///   process refreshing: `cluster.save(&id, &old.load(&id).await?.unwrap())`.
/// - A pipeline's redirect (`MOVED` right after a failover) is answered in-band, where the client
///   does not follow it: the store then sends one plain command for the key (which the client
///   follows, learning the new owner) and tries once more; otherwise the call fails and the token
///   manager retries it.
/// - Run the cluster with `cluster-require-full-coverage no`, or a shard that is down stops every
///   shard.
///
/// # Replicated Redis
///
/// Redis replicates asynchronously. With [`wait_for_replicas`](RedisStoreBuilder::wait_for_replicas)
/// (`n` replicas, a timeout `t`; 1 replica by default on a cluster, none on one server) every save
/// of a token set and every refresh lock taken is followed by `WAIT n t`, in one pipeline on the
/// connection that made the write, so the count is of replicas holding *that* write. Fewer than `n`
/// in time: the save fails (the token manager keeps the rotated tokens unused, with the lock held,
/// and its rescue retries the save), the lock attempt fails after releasing the lock.
///
/// What remains open, exactly:
/// - `WAIT` counts replicas that *received* the write, not ones that wrote it to disk: a master
///   and all of its acknowledging replicas lost together (one power cut) lose it.
/// - Redis promotes the replica with the most data it sees; with `n` smaller than the number of
///   replicas, a replica that did not acknowledge can still be promoted (Redis Cluster prefers the
///   one with the largest replication offset, but does not guarantee it). `WAIT` does not make
///   Redis strongly consistent.
/// - A save that was not acknowledged in time is still on the master and may reach replicas later:
///   other processes can read it (harmless: it is the newest token set), and the rescue writes it
///   again until it is acknowledged.
/// - The lock's lease keeps running during a failover: a holder whose rotated tokens are waiting
///   for a save must get them saved (on the promoted replica, acknowledged by *its* replica)
///   within the lease, or another process takes the lock and refreshes with the older refresh
///   token. After a master dies its shard has one replica fewer: with `n` = 1 and one replica per
///   master, saves on that shard fail until the old master returns as a replica. Keep the lease
///   (default 10 s) well above your failover time plus the time a replacement replica takes to
///   sync, or run two replicas per master.
/// - `WAIT` blocks the store's connection to that node for up to `t` when replicas lag (commands of
///   other grants on that node queue behind it): keep `t` short (default
///   [`DEFAULT_REDIS_REPLICA_TIMEOUT`], 500 ms) and below the command timeout (enforced).
/// - The window no lock can close (below) stays.
///
/// # Many grants
///
/// A `RedisStore` keeps every grant of a [`NiftyGrants`](crate::NiftyGrants): grant `g` lives
/// under `<prefix>:<client id>:<g>:tokens` with its lock `<prefix>:<client id>:<g>:lock`
/// ([`grant_key`](Self::grant_key), [`grant_lock_key`](Self::grant_lock_key)), `g` escaped exactly
/// as the builder's grant name above, so no grant id (`a:b`, `../x`, `%3A`, unicode) can reach
/// another grant's keys.
///
/// - The builder's grant name is the store's
///   [`single_grant`](crate::store::TokenStore::single_grant): the entry a single-grant `NiftyAuth`
///   uses. So a `NiftyAuth` on a store built for the grant name `g` and the grant `g` of a
///   `NiftyGrants` are the same token set (and the same lock). For a store used only for many
///   grants, any name (`"default"`) does.
/// - Each grant has its own lease, watchdog and fenced save, as above. The lock's data names the
///   grant's lock key: [`save_locked`](crate::store::TokenStore::save_locked) of grant `b` with a lock
///   taken for grant `a` is refused before Redis is asked, and the script checks `b`'s own lock.
/// - With encryption, the associated data is the grant's token key: a value copied from one
///   grant's key into another's does not decrypt (the load fails and says so).
/// - [`remove`](crate::store::TokenStore::remove) deletes the grant's token key; a lock key, if held,
///   lapses with its lease.
///
/// # The window no client can close
///
/// A holder that dies *after* Nifty rotated the refresh token but *before* it saved the answer
/// takes the only valid refresh token with it: the next process refreshes with the old one, which
/// Nifty rejects (`invalid_grant`, possibly revoking the grant). No lock can prevent it; only the
/// token endpoint could (by tolerating a short reuse window). Keep the window small (a fast, local
/// Redis), and be ready to re-authorize: `AuthError::ReauthorizationRequired` says when.
///
/// ```no_run
/// # async fn run() -> Result<(), nifty_auth::AuthError> {
/// use nifty_auth::{Credentials, NiftyAuth, RedisStore};
///
/// let store = RedisStore::builder("redis://127.0.0.1:6379", "client-id", "main")
///     .encryption_key([7u8; 32]) // keep the real key in a secrets manager
///     .build()?;
/// let auth = NiftyAuth::builder(Credentials::new("client-id", "client-secret"))
///     .store(store)
///     .build()?;
/// # let _ = auth; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    /// The connection calls use; replaced after a command on it timed out.
    link: parking_lot::Mutex<Option<Link>>,
    links: AtomicU64,
    /// `<prefix>:<escaped client id>` (`<prefix>:{<escaped client id>` on a cluster): the start of
    /// every key, the grants' included.
    base: String,
    /// The builder's grant name: the entry a single-grant `NiftyAuth` uses.
    single: GrantId,
    /// Its keys.
    keys: Keys,
    token_ttl: Duration,
    lock_ttl: Duration,
    command_timeout: Duration,
    connect_timeout: Duration,
    /// Replicas that must acknowledge each write (0: no `WAIT`), and the `WAIT` timeout.
    replicas: u32,
    replica_timeout: Duration,
    cipher: Option<XChaCha20Poly1305>,
}

impl RedisStore {
    /// Starts configuring a store at `redis_url` (`redis://[:password@]host:port[/db]`) for the grant
    /// named `grant` (any name you choose, e.g. `"main"` or a Nifty user id) of the app `client_id`.
    pub fn builder(
        redis_url: impl Into<String>,
        client_id: impl Into<String>,
        grant: impl Into<String>,
    ) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: redis_url.into(),
            cluster_nodes: None,
            client_id: client_id.into(),
            grant: grant.into(),
            prefix: DEFAULT_REDIS_KEY_PREFIX.to_owned(),
            token_ttl: DEFAULT_REDIS_TOKEN_TTL,
            lock_ttl: DEFAULT_REDIS_LOCK_TTL,
            command_timeout: DEFAULT_REDIS_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_REDIS_CONNECT_TIMEOUT,
            replicas: 0,
            replica_timeout: DEFAULT_REDIS_REPLICA_TIMEOUT,
            key: None,
        }
    }

    /// The Redis key holding the token set of the builder's grant name (the entry a single-grant
    /// `NiftyAuth` uses).
    pub fn key(&self) -> &str {
        &self.inner.keys.tokens
    }

    /// The Redis key of the refresh lock of the builder's grant name.
    pub fn lock_key(&self) -> &str {
        &self.inner.keys.lock
    }

    /// The connection to use (one server's is made lazily, with no I/O here: it connects on its
    /// first command; a cluster's reads the slot map first, within the connect timeout).
    async fn link(&self) -> Result<Link, BoxError> {
        let inner = &self.inner;
        if let Some(link) = inner.link.lock().as_ref() {
            return Ok(link.clone());
        }
        // One connect attempt per call: a call never waits through retries, and the next call
        // tries again.
        let manager = inner
            .target
            .connect(inner.connect_timeout, inner.command_timeout)
            .await?;
        let made = Link {
            id: inner.links.fetch_add(1, Ordering::Relaxed),
            manager,
        };
        let mut link = inner.link.lock();
        // Another call may have made one meanwhile: use the first.
        Ok(link.get_or_insert(made).clone())
    }

    /// Forgets `link` (if it is still the current one) so that the next call makes a new
    /// connection: a connection on which a command went unanswered is out of step with its server
    /// (after a partition heals, later commands on it were seen to keep timing out behind the
    /// backlog), so it is never reused; it closes once its last user drops it.
    fn replace(&self, link: &Link) {
        let mut current = self.inner.link.lock();
        if current.as_ref().is_some_and(|c| c.id == link.id) {
            *current = None;
        }
    }

    /// Runs one store call on a connection for at most the connect timeout plus the command
    /// timeout, whatever the client library does inside; a call that timed out replaces the
    /// connection.
    pub(super) async fn bounded<T, F, Fut>(&self, what: &str, call: F) -> Result<T, BoxError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        let link = self.link().await?;
        self.bounded_on(&link, what, call).await
    }

    /// [`bounded`](Self::bounded) on a given connection.
    pub(super) async fn bounded_on<T, F, Fut>(
        &self,
        link: &Link,
        what: &str,
        call: F,
    ) -> Result<T, BoxError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        let limit = self
            .inner
            .connect_timeout
            .saturating_add(self.inner.command_timeout);
        match tokio::time::timeout(limit, call(link.manager.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if e.is_timeout() {
                    self.replace(link);
                }
                Err(redis_error(what, e))
            }
            Err(_) => {
                self.replace(link);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("redis {what} timed out after {limit:?}"),
                )
                .into())
            }
        }
    }
}

/// A connection of the store, numbered so that a timed-out call replaces only the one it used.
#[derive(Clone)]
pub(super) struct Link {
    id: u64,
    pub(super) manager: Connection,
}

impl RedisStore {
    /// Reads the token set under `keys`.
    async fn load_at(&self, keys: &Keys) -> Result<Option<TokenSet>, BoxError> {
        let stored: Option<Vec<u8>> = self
            .bounded("GET", |mut connection| async move {
                redis::cmd("GET")
                    .arg(&keys.tokens)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        stored
            .map(|stored| self.unseal(stored, &keys.tokens))
            .transpose()
    }

    /// Writes the token set under `keys`, unfenced (acknowledged by the configured replicas).
    async fn save_at(&self, keys: &Keys, tokens: &TokenSet) -> Result<(), BoxError> {
        let value = self.seal(tokens, &keys.tokens)?;
        let mut set = redis::cmd("SET");
        set.arg(&keys.tokens)
            .arg(value)
            .arg("PX")
            .arg(millis(self.inner.token_ttl));
        let replicas = self.inner.replicas;
        let acked = self
            .bounded("SET", |mut connection| async move {
                if replicas == 0 {
                    return set.query_async::<()>(&mut connection).await.map(|()| 0);
                }
                let ((), acked) = self
                    .write_then_wait::<()>(&mut connection, &set, &keys.tokens)
                    .await?;
                Ok(acked)
            })
            .await?;
        self.check_acked(acked, "SET of the token set")
    }
}

/// A duration in whole milliseconds for `PX`/`PEXPIRE`, at least 1 (the builder bounds it).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn redis_error(what: &str, e: redis::RedisError) -> BoxError {
    io::Error::other(format!("redis {what} failed: {e}")).into()
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("key", &self.inner.keys.tokens)
            .field("lock_key", &self.inner.keys.lock)
            .field("token_ttl", &self.inner.token_ttl)
            .field("lock_ttl", &self.inner.lock_ttl)
            .field("command_timeout", &self.inner.command_timeout)
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("cluster", &self.inner.target.is_cluster())
            .field("replicas", &self.inner.replicas)
            .field("encrypted", &self.inner.cipher.is_some())
            .finish_non_exhaustive()
    }
}
