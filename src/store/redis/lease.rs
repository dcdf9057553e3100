//! The refresh lock as a lease: taken with `SET NX PX <lock ttl>`, kept alive by a watchdog task
//! while the [`StoreLock`] lives, released with a compare-and-delete, checked by the fenced save.

use crate::store::wait::LockWait;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;
use tokio::task::JoinHandle;

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
    lost: Arc<AtomicBool>,
}

/// Aborts the watchdog task when dropped: with the lock's release, or with the lock itself.
struct Watchdog(JoinHandle<()>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.abort();
    }
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
        let owner = owner_id();
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
        let lost = Arc::new(AtomicBool::new(false));
        let watchdog = Watchdog(runtime.spawn(extend_while_held(
            connection.clone(),
            key.clone(),
            owner.clone(),
            self.inner.lock_ttl,
            Arc::clone(&lost),
        )));
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
        if lease.lost.load(Ordering::Acquire) {
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
            lease.lost.store(true, Ordering::Release);
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

/// After an extension failed, the watchdog tries again this soon, doubling up to
/// [`EXTEND_RETRY_MAX`] (never beyond its period).
const EXTEND_RETRY_MIN: Duration = Duration::from_millis(100);
const EXTEND_RETRY_MAX: Duration = Duration::from_secs(1);

/// The watchdog: extends the lease every third of its TTL until aborted or the lock is lost. An
/// extension that fails (a failover, a node briefly unreachable) is tried again within a second,
/// not a period later: a store that answers again before the lease lapses gets it extended in time,
/// so no other process takes a lock whose holder is alive (and may hold rotated tokens unsaved).
async fn extend_while_held(
    mut connection: Connection,
    key: String,
    owner: String,
    ttl: Duration,
    lost: Arc<AtomicBool>,
) {
    let period = (ttl / 3).max(Duration::from_millis(1));
    let mut pause = period;
    loop {
        tokio::time::sleep(pause).await;
        let extended: Result<i64, _> = EXTEND
            .key(&key)
            .arg(&owner)
            .arg(millis(ttl))
            .invoke_async(&mut connection)
            .await;
        match extended {
            Ok(1) => pause = period,
            Ok(_) => {
                lost.store(true, Ordering::Release);
                crate::trace::warning!(
                    lock = %key,
                    "the Redis refresh lock was lost; this process will not save under it"
                );
                return;
            }
            // Try again soon; if the lease lapses meanwhile, the fenced save refuses.
            Err(e) => {
                crate::trace::warning!(error = %e, "could not extend the Redis refresh lock");
                let _ = e;
                pause = retry_pause(pause, period);
            }
        }
    }
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

/// A unique token for one lock attempt: process id and 128 random bits.
fn owner_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{hex}", std::process::id())
}

/// The watchdog's pause after a failed extension, given the pause before it.
fn retry_pause(previous: Duration, period: Duration) -> Duration {
    let next = if previous >= period {
        EXTEND_RETRY_MIN
    } else {
        previous.saturating_mul(2).min(EXTEND_RETRY_MAX)
    };
    next.min(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_extension_is_tried_again_within_a_second_never_later_than_a_period() {
        let period = Duration::from_millis(3_333);
        let pauses: Vec<u64> =
            std::iter::successors(Some(period), |&p| Some(retry_pause(p, period)))
                .skip(1)
                .take(6)
                .map(|p| p.as_millis() as u64)
                .collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1_000, 1_000]);
        let short = Duration::from_millis(150);
        assert_eq!(retry_pause(short, short), Duration::from_millis(100));
        assert_eq!(retry_pause(Duration::from_millis(100), short), short);
    }
}
