//! The refresh lock as a lease: taken with `SET NX PX <lock ttl>`, kept alive by a watchdog task
//! while the [`StoreLock`] lives, released with a compare-and-delete, checked by the fenced save.

use crate::store::lease::{holder_id, watch, Lost};
use crate::store::wait::LockWait;
use std::io;
use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::connection::Connection;
use super::{millis, Keys, RedisStore};
use crate::store::StoreLock;
use crate::token::TokenSet;
use tower::BoxError;

const LOCK_POLL_MIN: Duration = Duration::from_millis(10);
const LOCK_POLL_MAX: Duration = Duration::from_millis(250);
/// Waiters wait this much beyond `max_hold + lock ttl` (a few polls of slack).
const WAIT_SLACK: Duration = Duration::from_secs(1);

/// Deletes the lock only if this owner still holds it (a lock that lapsed and was taken by another
/// process is not ours to delete).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
"#,
    )
});

/// Extends the lease only if this owner still holds it: 1 extended, 0 gone or someone else's.
static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
"#,
    )
});

/// Writes the token set (KEYS[2]) with its TTL only if this owner still holds the lock (KEYS[1]).
const FENCED_SET_SOURCE: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
    redis.call("SET", KEYS[2], ARGV[2], "PX", ARGV[3])
    return 1
end
return 0
"#;

static FENCED_SET: LazyLock<Script> = LazyLock::new(|| Script::new(FENCED_SET_SOURCE));

/// What a [`RedisStore`] attaches to its [`StoreLock`]: the lock's key (which names the grant) and
/// random token, for the fence.
pub(super) struct Lease {
    /// The lock key of the grant this lease was taken for: a save of another grant refuses it.
    lock_key: String,
    owner: String,
    /// Set when the watchdog or the fence found the lock gone or taken by someone else.
    lost: Lost,
}

impl RedisStore {
    /// Takes the refresh lock, waiting (bounded) while someone else holds it; see
    /// [`TokenStore::lock`](crate::TokenStore::lock) on [`RedisStore`].
    pub(super) async fn acquire(
        &self,
        keys: &Keys,
        max_hold: Duration,
    ) -> Result<StoreLock, BoxError> {
        let inner = &self.inner;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| io::Error::other("RedisStore needs a tokio runtime for its lock"))?;
        let owner = holder_id();
        // A live holder keeps its lease for up to `max_hold`; a dead one's lapses within one TTL.
        let wait = max_hold
            .saturating_add(inner.lock_ttl)
            .saturating_add(WAIT_SLACK);
        let mut waiting = LockWait::new(wait, LOCK_POLL_MIN, LOCK_POLL_MAX);
        loop {
            let link = self.link().await?;
            let owner_ref = &owner;
            let attempt = self
                .bounded_on(
                    &link,
                    "SET NX (refresh lock)",
                    |mut connection| async move {
                        let mut set = redis::cmd("SET");
                        set.arg(&keys.lock)
                            .arg(owner_ref)
                            .arg("NX")
                            .arg("PX")
                            .arg(millis(inner.lock_ttl));
                        let (taken, acked): (Option<String>, u32) = if inner.replicas > 0 {
                            self.write_then_wait(&mut connection, &set, &keys.lock)
                                .await?
                        } else {
                            (set.query_async(&mut connection).await?, 0)
                        };
                        Ok((taken, acked, connection))
                    },
                )
                .await;
            let (taken, acked, connection) = match attempt {
                Ok(answer) => answer,
                Err(e) => {
                    self.forget_attempt(&runtime, link.manager, &keys.lock, &owner);
                    return Err(e);
                }
            };
            if taken.is_some() {
                // A lock only the master knows would vanish with it in a failover, and a second
                // process would refresh while this one does: not acknowledged, it is given back.
                if let Err(e) = self.check_acked(acked, "SET NX of the refresh lock") {
                    self.forget_attempt(&runtime, connection, &keys.lock, &owner);
                    return Err(e);
                }
                return Ok(self.hold(&runtime, connection, owner, keys.lock.clone()));
            }
            waiting
                .pause(|wait| {
                    format!(
                        "waited {wait:?} for the refresh lock {} held by another process",
                        keys.lock
                    )
                })
                .await?;
        }
    }

    /// A lock attempt failed without an answer: its `SET` may still reach Redis (when a partition
    /// heals) and take the lock for nobody. Sends a compare-and-delete for its token, bounded by the
    /// command timeout, in a task of its own so the caller's error is not delayed; on the same
    /// connection, so it runs right after that `SET`. At worst the lease lapses within one lock TTL.
    fn forget_attempt(
        &self,
        runtime: &tokio::runtime::Handle,
        connection: Connection,
        key: &str,
        owner: &str,
    ) {
        let limit = self.inner.command_timeout;
        let (key, owner) = (key.to_owned(), owner.to_owned());
        runtime.spawn(async move {
            let _ = tokio::time::timeout(limit, release(connection, key, owner)).await;
        });
    }

    /// Starts the watchdog for a lock just taken and wraps both in a [`StoreLock`].
    fn hold(
        &self,
        runtime: &tokio::runtime::Handle,
        connection: Connection,
        owner: String,
        key: String,
    ) -> StoreLock {
        let lost = Lost::default();
        let ttl = self.inner.lock_ttl;
        let (renewing, renew_key, renew_owner) = (connection.clone(), key.clone(), owner.clone());
        // The watchdog: a compare-and-`PEXPIRE` every third of the TTL.
        let watchdog = watch(runtime, ttl, lost.clone(), key.clone(), move || {
            let mut connection = renewing.clone();
            let (key, owner) = (renew_key.clone(), renew_owner.clone());
            async move {
                let extended: i64 = EXTEND
                    .key(&key)
                    .arg(&owner)
                    .arg(millis(ttl))
                    .invoke_async(&mut connection)
                    .await?;
                Ok(extended == 1)
            }
        });
        let lease = Lease {
            lock_key: key.clone(),
            owner: owner.clone(),
            lost,
        };
        let limit = self
            .inner
            .connect_timeout
            .saturating_add(self.inner.command_timeout);
        // Dropping the release closure unrun (no runtime left) drops the watchdog too: it stops.
        StoreLock::new(move || async move {
            drop(watchdog);
            if tokio::time::timeout(limit, release(connection, key, owner))
                .await
                .is_err()
            {
                crate::trace::warning!(
                    "could not release the Redis refresh lock in time; its lease lapses by itself"
                );
            }
        })
        .with_data(lease)
    }

    /// The lease `lock` carries, if this store took it for the grant of `keys`. Read before the
    /// save's future starts: `StoreLock` is `Send` but not `Sync`, so the future cannot hold a
    /// reference to it.
    pub(super) fn lease<'a>(
        &self,
        lock: &'a StoreLock,
        keys: &Keys,
    ) -> Result<&'a Lease, BoxError> {
        let lock_key = &keys.lock;
        lock.data::<Lease>()
            .filter(|lease| &lease.lock_key == lock_key)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "save_locked needs a lock taken by this RedisStore's lock() \
                         (key {lock_key})"
                    ),
                )
                .into()
            })
    }

    /// Writes `tokens` under `keys` only if `lease` is still the current holder of `keys`' lock.
    pub(super) async fn save_fenced(
        &self,
        keys: &Keys,
        tokens: &TokenSet,
        lease: &Lease,
    ) -> Result<(), BoxError> {
        let inner = &self.inner;
        if lease.lost.get() {
            return Err(lost(&keys.lock));
        }
        let value = self.seal(tokens, &keys.tokens)?;
        let (saved, acked): (i64, u32) = self
            .bounded("fenced SET", |mut connection| async move {
                if inner.replicas == 0 {
                    return FENCED_SET
                        .key(&keys.lock)
                        .key(&keys.tokens)
                        .arg(&lease.owner)
                        .arg(value)
                        .arg(millis(inner.token_ttl))
                        .invoke_async(&mut connection)
                        .await
                        .map(|saved| (saved, 0));
                }
                let mut script = redis::cmd("EVAL");
                script
                    .arg(FENCED_SET_SOURCE)
                    .arg(2)
                    .arg(&keys.lock)
                    .arg(&keys.tokens)
                    .arg(&lease.owner)
                    .arg(value)
                    .arg(millis(inner.token_ttl));
                self.write_then_wait(&mut connection, &script, &keys.tokens)
                    .await
            })
            .await?;
        if saved != 1 {
            lease.lost.set();
            return Err(lost(&keys.lock));
        }
        // Saved on the master but not acknowledged: an ordinary store error (the lock is still
        // ours), so the manager keeps the tokens and the lock, and retries.
        self.check_acked(acked, "fenced SET of the token set")
    }
}

fn lost(lock_key: &str) -> BoxError {
    crate::store::LockLost::new(format!(
        "the refresh lock {lock_key} was lost (its lease lapsed or another process holds it); not \
         overwriting a possibly newer token set"
    ))
    .into()
}

async fn release(mut connection: Connection, key: String, owner: String) {
    let released: Result<i64, _> = RELEASE
        .key(&key)
        .arg(&owner)
        .invoke_async(&mut connection)
        .await;
    if let Err(e) = released {
        // Not retried: the lease lapses by itself within one lock TTL.
        crate::trace::warning!(error = %e, "could not release the Redis refresh lock");
        let _ = e;
    }
}
