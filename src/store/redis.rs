//! [`RedisStore`]: one Nifty grant shared by many processes through Redis.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::{BoxFuture, StoreLock, TokenStore};
use crate::{AuthError, BoxError, TokenSet};

/// The default key prefix: keys are `nifty-auth:<client id>:<grant>:tokens` and `…:lock`.
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "nifty-auth";
/// The default time to live of the stored token set, renewed at every save. It must outlast the
/// refresh token's useful life (Nifty does not document it); raise it if your grants idle longer.
pub const DEFAULT_REDIS_TOKEN_TTL: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// The default response and connect timeout of one Redis command.
pub const DEFAULT_REDIS_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

const ENCRYPTED_PREFIX: &str = "enc:v1:";
const NONCE_LEN: usize = 24;
const LOCK_POLL_MIN: Duration = Duration::from_millis(10);
const LOCK_POLL_MAX: Duration = Duration::from_millis(250);

/// Deletes the lock only if this owner still holds it (a lock that expired and was taken by another
/// process is not ours to delete).
const RELEASE_SCRIPT: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
else
    return 0
end
"#;

/// A [`TokenStore`] in Redis, shared by every process of an app that uses one Nifty grant, with a
/// cross-process refresh lock (feature `redis`).
///
/// - The token set lives under `<prefix>:<client id>:<grant>:tokens`, with a TTL
///   ([`DEFAULT_REDIS_TOKEN_TTL`]) renewed at every save.
/// - Before a refresh, a process takes `<prefix>:<client id>:<grant>:lock` with
///   `SET lock <owner> NX PX <ttl>`, the TTL covering the whole refresh (every token call attempt
///   timing out, plus the backoff). Holding it, the token manager re-reads the token set: if another
///   process refreshed meanwhile, it uses that and makes no token call. Processes that find the lock
///   taken poll it (10 ms doubling to 250 ms, with jitter) until it is released or expires — a holder
///   that died is taken over once its TTL lapses. The holder releases it with a compare-and-delete
///   script, so it never deletes a lock that expired and was taken by someone else.
/// - Inside one process the token manager's single flight still holds: at most one lock attempt per
///   process at a time.
/// - Redis down: requests keep using a still-valid cached access token (the hot path never talks to
///   Redis); a refresh that is needed fails with [`AuthError::Store`]. It never refreshes without
///   the lock — that is how rotating grants die.
/// - Optional at-rest encryption ([`RedisStoreBuilder::encryption_key`]): XChaCha20-Poly1305 with a
///   random nonce per save, the Redis key as associated data.
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
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    key: String,
    lock_key: String,
    token_ttl: Duration,
    command_timeout: Duration,
    cipher: Option<XChaCha20Poly1305>,
}

/// Configures a [`RedisStore`]; made by [`RedisStore::builder`].
pub struct RedisStoreBuilder {
    url: String,
    client_id: String,
    grant: String,
    prefix: String,
    token_ttl: Duration,
    command_timeout: Duration,
    key: Option<[u8; 32]>,
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
            client_id: client_id.into(),
            grant: grant.into(),
            prefix: DEFAULT_REDIS_KEY_PREFIX.to_owned(),
            token_ttl: DEFAULT_REDIS_TOKEN_TTL,
            command_timeout: DEFAULT_REDIS_COMMAND_TIMEOUT,
            key: None,
        }
    }

    /// The Redis key holding the token set.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// The Redis key of the refresh lock.
    pub fn lock_key(&self) -> &str {
        &self.inner.lock_key
    }

    async fn connection(&self) -> Result<ConnectionManager, BoxError> {
        let inner = &self.inner;
        let connection = inner
            .connection
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(inner.command_timeout))
                    .set_response_timeout(Some(inner.command_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                inner.client.get_connection_manager_lazy(config)
            })
            .await
            .map_err(|e| redis_error("connect", e))?;
        Ok(connection.clone())
    }

    fn encrypt(&self, plain: Vec<u8>) -> Result<Vec<u8>, BoxError> {
        let Some(cipher) = &self.inner.cipher else {
            return Ok(plain);
        };
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce)
            .map_err(|e| io::Error::other(format!("no OS randomness: {e}")))?;
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: self.inner.key.as_bytes(),
                },
            )
            .map_err(|_| io::Error::other("cannot encrypt the token set"))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        let text = format!(
            "{ENCRYPTED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        );
        Ok(text.into_bytes())
    }

    fn decrypt(&self, stored: Vec<u8>) -> Result<Vec<u8>, BoxError> {
        let encrypted = stored.starts_with(ENCRYPTED_PREFIX.as_bytes());
        let Some(cipher) = &self.inner.cipher else {
            if encrypted {
                return Err(invalid(format!(
                    "the token set in Redis key {} is encrypted and no encryption key is configured",
                    self.inner.key
                )));
            }
            return Ok(stored);
        };
        if !encrypted {
            return Err(invalid(format!(
                "the token set in Redis key {} is not encrypted but an encryption key is configured: \
                 delete the key and authorize again, or save it with the key",
                self.inner.key
            )));
        }
        let blob = base64::engine::general_purpose::STANDARD
            .decode(&stored[ENCRYPTED_PREFIX.len()..])
            .map_err(|_| {
                invalid(format!(
                    "the token set in Redis key {} is corrupt",
                    self.inner.key
                ))
            })?;
        if blob.len() < NONCE_LEN {
            return Err(invalid(format!(
                "the token set in Redis key {} is corrupt",
                self.inner.key
            )));
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: self.inner.key.as_bytes(),
                },
            )
            .map_err(|_| {
                invalid(format!(
                    "cannot decrypt the token set in Redis key {}: wrong encryption key (or the data was \
                     tampered with)",
                    self.inner.key
                ))
            })
    }
}

impl RedisStoreBuilder {
    /// The key prefix. Defaults to [`DEFAULT_REDIS_KEY_PREFIX`].
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The TTL of the stored token set, renewed at every save. Defaults to [`DEFAULT_REDIS_TOKEN_TTL`].
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    /// The connect and response timeout of each Redis command. Defaults to
    /// [`DEFAULT_REDIS_COMMAND_TIMEOUT`].
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
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
    /// [`AuthError::Configuration`] for a malformed Redis URL or an empty client id or grant name.
    pub fn build(self) -> Result<RedisStore, AuthError> {
        if self.client_id.is_empty() || self.grant.is_empty() {
            return Err(AuthError::config(
                "RedisStore needs a client id and a grant name for its keys",
            ));
        }
        // The URL may hold a password: never echo it.
        let client = redis::Client::open(self.url.as_str()).map_err(|e| {
            AuthError::config(format!("the Redis URL is invalid ({})", e.kind_name()))
        })?;
        let base = format!("{}:{}:{}", self.prefix, self.client_id, self.grant);
        Ok(RedisStore {
            inner: Arc::new(Inner {
                client,
                connection: OnceCell::new(),
                key: format!("{base}:tokens"),
                lock_key: format!("{base}:lock"),
                token_ttl: self.token_ttl,
                command_timeout: self.command_timeout,
                cipher: self.key.map(|k| XChaCha20Poly1305::new(&k.into())),
            }),
        })
    }
}

trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for redis::RedisError {
    fn kind_name(&self) -> String {
        format!("{:?}", self.kind())
    }
}

impl TokenStore for RedisStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<TokenSet>, BoxError>> {
        Box::pin(async move {
            let mut connection = self.connection().await?;
            let stored: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&self.inner.key)
                .query_async(&mut connection)
                .await
                .map_err(|e| redis_error("GET", e))?;
            let Some(stored) = stored else {
                return Ok(None);
            };
            let plain = self.decrypt(stored)?;
            // serde's message could quote a token: report the position only.
            let tokens = serde_json::from_slice(&plain).map_err(|e| {
                invalid(format!(
                    "the token set in Redis key {} is not valid (line {} column {})",
                    self.inner.key,
                    e.line(),
                    e.column()
                ))
            })?;
            Ok(Some(tokens))
        })
    }

    fn save<'a>(&'a self, tokens: &'a TokenSet) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let plain = serde_json::to_vec(tokens)?;
            let value = self.encrypt(plain)?;
            let mut connection = self.connection().await?;
            let ttl_ms = u64::try_from(self.inner.token_ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            redis::cmd("SET")
                .arg(&self.inner.key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut connection)
                .await
                .map_err(|e| redis_error("SET", e))?;
            Ok(())
        })
    }

    fn lock(&self, max_hold: Duration) -> BoxFuture<'_, Result<StoreLock, BoxError>> {
        Box::pin(async move {
            let owner = owner_id();
            let ttl = max_hold.max(Duration::from_secs(1));
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            // Long enough for a dead holder's lock to lapse, and a little more.
            let give_up = Instant::now() + ttl + LOCK_POLL_MAX * 4;
            let mut poll = LOCK_POLL_MIN;
            loop {
                let mut connection = self.connection().await?;
                let taken: Option<String> = redis::cmd("SET")
                    .arg(&self.inner.lock_key)
                    .arg(&owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| redis_error("SET NX (refresh lock)", e))?;
                if taken.is_some() {
                    let key = self.inner.lock_key.clone();
                    return Ok(StoreLock::new(move || release(connection, key, owner)));
                }
                if Instant::now() >= give_up {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "waited {ttl:?} for the refresh lock {} held by another process",
                            self.inner.lock_key
                        ),
                    )
                    .into());
                }
                let half = poll / 2;
                tokio::time::sleep(half + half.mul_f64(fastrand::f64())).await;
                poll = (poll * 2).min(LOCK_POLL_MAX);
            }
        })
    }
}

async fn release(mut connection: ConnectionManager, key: String, owner: String) {
    let released: Result<i64, _> = redis::Script::new(RELEASE_SCRIPT)
        .key(&key)
        .arg(&owner)
        .invoke_async(&mut connection)
        .await;
    if let Err(e) = released {
        // The lock expires by itself; others wait at most its TTL.
        crate::trace::warning!(error = %e, "could not release the Redis refresh lock");
        let _ = e;
    }
}

/// A unique owner id for one lock attempt: process id and 128 random bits.
fn owner_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{hex}", std::process::id())
}

fn redis_error(what: &str, e: redis::RedisError) -> BoxError {
    io::Error::other(format!("redis {what} failed: {e}")).into()
}

fn invalid(message: String) -> BoxError {
    io::Error::new(io::ErrorKind::InvalidData, message).into()
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("key", &self.inner.key)
            .field("lock_key", &self.inner.lock_key)
            .field("token_ttl", &self.inner.token_ttl)
            .field("encrypted", &self.inner.cipher.is_some())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("client_id", &self.client_id)
            .field("grant", &self.grant)
            .field("prefix", &self.prefix)
            .field("token_ttl", &self.token_ttl)
            .field("encrypted", &self.key.is_some())
            .finish_non_exhaustive()
    }
}
