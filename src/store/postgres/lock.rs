//! The refresh lock: a session-level advisory lock on a connection checked out of the pool and
//! held by the [`StoreLock`], and the fenced save that runs on that connection.

use crate::store::wait::LockWait;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::conn::Conn;
use super::PostgresStore;
use crate::grants::GrantId;
use crate::store::StoreLock;
use crate::token::TokenSet;
use tower::BoxError;

const LOCK_POLL_MIN: Duration = Duration::from_millis(10);
const LOCK_POLL_MAX: Duration = Duration::from_millis(250);
/// Waiters wait this much beyond `max_hold` (a few polls of slack).
const WAIT_SLACK: Duration = Duration::from_secs(1);

/// The transaction-level advisory lock `migrate` serializes `CREATE TABLE` with.
pub(super) const MIGRATE_KEY: i64 = 0x6e69_6674_795f_6d67; // "nifty_mg"

/// One held lock's connection, shared by the [`StoreLock`] (its release and its [`Fence`]) and, by
/// a weak reference, the store's `held` map (so that `load` inside the refresh uses it).
pub(super) struct Session {
    pub(super) connection: tokio::sync::Mutex<Conn>,
}

/// What a [`PostgresStore`] attaches to its [`StoreLock`]: what the fenced save needs.
pub(super) struct Fence {
    table: String,
    client_id: String,
    grant: GrantId,
    /// The row's `version` when the lock was taken (`None`: no row), advanced by each fenced save.
    version: parking_lot::Mutex<Option<i64>>,
    session: Arc<Session>,
}

impl PostgresStore {
    /// Takes `grant`'s advisory lock, polling (bounded) while another session holds it.
    pub(super) async fn acquire(
        &self,
        grant: &GrantId,
        max_hold: Duration,
    ) -> Result<StoreLock, BoxError> {
        let inner = &self.inner;
        let key = lock_key(&inner.client_id, grant);
        let wait = inner
            .lock_wait
            .unwrap_or_else(|| max_hold.saturating_add(WAIT_SLACK));
        let mut waiting = LockWait::new(wait, LOCK_POLL_MIN, LOCK_POLL_MAX);
        loop {
            let mut session = self.checkout().await?;
            // Tainted before asking: an attempt whose answer never comes may have taken the lock,
            // so its connection is closed (the server then releases the lock), never pooled.
            session.taint();
            let taken = session
                .run("pg_try_advisory_lock", |c| {
                    sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                        .bind(key)
                        .fetch_one(c)
                })
                .await?;
            if taken {
                let version = session
                    .run("SELECT version", |c| {
                        sqlx::query_scalar::<_, i64>(&inner.table.version)
                            .bind(&inner.client_id)
                            .bind(grant.as_str())
                            .fetch_optional(c)
                    })
                    .await?;
                return Ok(self.hold(grant, key, session, version));
            }
            // Not taken: the session holds nothing and goes back to the pool.
            session.untaint();
            drop(session);
            waiting
                .pause(|wait| {
                    format!(
                        "waited {wait:?} for the refresh lock of grant {grant} held by another \
                         process"
                    )
                })
                .await?;
        }
    }

    fn hold(&self, grant: &GrantId, key: i64, connection: Conn, version: Option<i64>) -> StoreLock {
        let session = Arc::new(Session {
            connection: tokio::sync::Mutex::new(connection),
        });
        self.inner
            .held
            .lock()
            .insert(grant.clone(), Arc::downgrade(&session));
        let fence = Fence {
            table: self.inner.table.name.clone(),
            client_id: self.inner.client_id.clone(),
            grant: grant.clone(),
            version: parking_lot::Mutex::new(version),
            session: Arc::clone(&session),
        };
        let store = Arc::downgrade(&self.inner);
        let grant = grant.clone();
        // Dropping the release closure unrun (no runtime left) drops the last `Arc<Session>` with
        // it: the connection is closed, and the server releases the lock.
        StoreLock::new(move || async move {
            if let Some(store) = store.upgrade() {
                let mut held = store.held.lock();
                if held
                    .get(&grant)
                    .is_some_and(|s| std::ptr::eq(s.as_ptr(), Arc::as_ptr(&session)))
                {
                    held.remove(&grant);
                }
            }
            release(&session, key).await;
        })
        .with_data(fence)
    }

    /// The fence `lock` carries, if this store took it for `grant`.
    pub(super) fn fence<'a>(
        &self,
        grant: &GrantId,
        lock: &'a StoreLock,
    ) -> Result<&'a Fence, BoxError> {
        let inner = &self.inner;
        lock.data::<Fence>()
            .filter(|fence| {
                fence.grant == *grant
                    && fence.table == inner.table.name
                    && fence.client_id == inner.client_id
            })
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "save_locked needs a lock taken by this PostgresStore's lock() for grant \
                         {grant}"
                    ),
                )
                .into()
            })
    }

    /// Writes `tokens` only if the row's `version` is still what `fence` saw, on the lock's
    /// connection (a session that died cannot save).
    pub(super) async fn save_fenced(
        &self,
        grant: &GrantId,
        tokens: &TokenSet,
        fence: &Fence,
    ) -> Result<(), BoxError> {
        let inner = &self.inner;
        let value = self.seal(grant, tokens)?;
        let expected = *fence.version.lock();
        let mut session = fence.session.connection.lock().await;
        let saved = match expected {
            Some(version) => {
                session
                    .run("fenced save", |c| {
                        sqlx::query_scalar::<_, i64>(&inner.table.update_fenced)
                            .bind(&inner.client_id)
                            .bind(grant.as_str())
                            .bind(value)
                            .bind(version)
                            .fetch_optional(c)
                    })
                    .await?
            }
            None => {
                session
                    .run("fenced save", |c| {
                        sqlx::query_scalar::<_, i64>(&inner.table.insert_fenced)
                            .bind(&inner.client_id)
                            .bind(grant.as_str())
                            .bind(value)
                            .fetch_optional(c)
                    })
                    .await?
            }
        };
        match saved {
            Some(version) => {
                *fence.version.lock() = Some(version);
                Ok(())
            }
            None => Err(crate::store::LockLost::new(format!(
                "fenced save refused: the row of grant {grant} changed since this refresh lock was \
                 taken (it was at version {}); not overwriting a newer token set",
                expected.map_or_else(|| "none: no row".to_owned(), |v| v.to_string())
            ))
            .into()),
        }
    }
}

/// Unlocks and returns the connection to the pool. A connection whose unlock failed or timed out
/// (or was never sent: the session broke earlier) is closed instead: the session may still hold the
/// lock, and ending it is the one sure way to release it.
async fn release(session: &Session, key: i64) {
    let mut session = session.connection.lock().await;
    let unlocked = session
        .run("pg_advisory_unlock", |c| {
            sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .fetch_one(c)
        })
        .await;
    match unlocked {
        // `false`: the session did not hold it (it was reset); it holds nothing either way.
        Ok(_) => session.untaint(),
        Err(e) => {
            crate::trace::warning!(
                error = %e,
                "could not release the PostgreSQL refresh lock; closing its connection"
            );
            let _ = e;
        }
    }
    session.finish();
}

/// The advisory lock key of (client id, grant id): the first 64 bits of SHA-256 over both,
/// length-prefixed so that no two pairs give the same input.
pub(super) fn lock_key(client_id: &str, grant: &GrantId) -> i64 {
    let mut hash = Sha256::new();
    hash.update(b"nifty-auth:postgres-lock:v1:");
    hash.update((client_id.len() as u64).to_be_bytes());
    hash.update(client_id.as_bytes());
    hash.update(grant.as_str().as_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_differ_by_client_and_grant_and_are_stable() {
        let a = GrantId::new("a").unwrap();
        let ab = GrantId::new("ab").unwrap();
        let b = GrantId::new("b").unwrap();
        assert_eq!(lock_key("c", &a), lock_key("c", &a));
        assert_ne!(lock_key("c", &a), lock_key("c", &b));
        assert_ne!(lock_key("c", &a), lock_key("d", &a));
        // Client "ca" + grant "b" and client "c" + grant "ab" concatenate alike.
        assert_ne!(lock_key("ca", &b), lock_key("c", &ab));
    }
}
