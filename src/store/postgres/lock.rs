//! The refresh lock: a lease row in the lock table (holder token, `expires_at` by the server's
//! clock), taken with one statement, renewed by a watchdog while the [`StoreLock`] lives, checked
//! by the fenced save in the save's own statement, and deleted on release. No connection is held
//! while the lock is: each statement checks one out of the pool.

use std::io;
use std::time::Duration;

use super::PostgresStore;
use crate::grant_id::GrantId;
use crate::store::lease::{holder_id, watch, Lost};
use crate::store::wait::LockWait;
use crate::store::StoreLock;
use crate::token::TokenSet;
use tower::BoxError;

const LOCK_POLL_MIN: Duration = Duration::from_millis(10);
const LOCK_POLL_MAX: Duration = Duration::from_millis(250);
/// Waiters wait this much beyond `max_hold + lease` (a few polls of slack).
const WAIT_SLACK: Duration = Duration::from_secs(1);

/// The transaction-level advisory lock `migrate` serializes `CREATE TABLE` with.
pub(super) const MIGRATE_KEY: i64 = 0x6e69_6674_795f_6d67; // "nifty_mg"

/// The statements on a lease row.
#[derive(Clone, Copy)]
enum Lease {
    Take,
    Renew,
    Release,
}

/// What a [`PostgresStore`] attaches to its [`StoreLock`]: what the fenced save needs.
pub(super) struct Fence {
    table: String,
    client_id: String,
    grant: GrantId,
    /// This lease's holder token.
    holder: String,
    /// The row's `version` when the lock was taken (`None`: no row), advanced by each fenced save.
    version: parking_lot::Mutex<Option<i64>>,
    /// Set when the watchdog or a save found the lease held by someone else.
    lost: Lost,
}

impl PostgresStore {
    /// Takes `grant`'s lease, polling (bounded) while another holder's lease is current.
    pub(super) async fn acquire(
        &self,
        grant: &GrantId,
        max_hold: Duration,
    ) -> Result<StoreLock, BoxError> {
        let inner = &self.inner;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| io::Error::other("PostgresStore needs a tokio runtime for its lock"))?;
        let holder = holder_id();
        // A live holder keeps its lease for up to `max_hold`; a dead one's lapses within a lease.
        let wait = inner.lock_wait.unwrap_or_else(|| {
            max_hold
                .saturating_add(inner.lease)
                .saturating_add(WAIT_SLACK)
        });
        let mut waiting = LockWait::new(wait, LOCK_POLL_MIN, LOCK_POLL_MAX);
        loop {
            match self.lease_statement(Lease::Take, grant, &holder).await {
                Ok(1) => break,
                Ok(_) => {}
                Err(e) => {
                    // The statement may still land (a partition that heals): give it back.
                    self.forget(&runtime, grant, &holder);
                    return Err(e);
                }
            }
            waiting
                .pause(|wait| {
                    format!(
                        "waited {wait:?} for the refresh lock of grant {grant} (a lease row in {}) \
                         held by another process",
                        inner.table.lock_name
                    )
                })
                .await?;
        }
        let version = async {
            let mut conn = self.checkout().await?;
            conn.run("SELECT version", |c| {
                sqlx::query_scalar::<_, i64>(&inner.table.version)
                    .bind(&inner.client_id)
                    .bind(grant.as_str())
                    .fetch_optional(c)
            })
            .await
        }
        .await;
        match version {
            Ok(version) => Ok(self.hold(&runtime, grant, holder, version)),
            Err(e) => {
                self.forget(&runtime, grant, &holder);
                Err(e)
            }
        }
    }

    /// Runs one statement of the lease (take, renew, release) with (client id, grant, holder and,
    /// for take and renew, the lease in ms) as its parameters, on a connection of its own; the rows
    /// it affected.
    async fn lease_statement(
        &self,
        statement: Lease,
        grant: &GrantId,
        holder: &str,
    ) -> Result<u64, BoxError> {
        let inner = &self.inner;
        let (sql, what) = match statement {
            Lease::Take => (&inner.table.take, "take the refresh lease"),
            Lease::Renew => (&inner.table.renew, "renew the refresh lease"),
            Lease::Release => (&inner.table.release, "release the refresh lease"),
        };
        let mut conn = self.checkout().await?;
        let done = conn
            .run(what, |c| {
                let query = sqlx::query(sql)
                    .bind(&inner.client_id)
                    .bind(grant.as_str())
                    .bind(holder);
                let query = match statement {
                    Lease::Release => query,
                    Lease::Take | Lease::Renew => query.bind(inner.lease.as_secs_f64() * 1e3),
                };
                query.execute(c)
            })
            .await?;
        Ok(done.rows_affected())
    }

    /// Deletes `holder`'s lease row if there is one, bounded; a failure is only logged: the lease
    /// lapses by itself.
    async fn release_lease(&self, grant: &GrantId, holder: &str) {
        if let Err(e) = self.lease_statement(Lease::Release, grant, holder).await {
            crate::trace::warning!(
                error = %e,
                "could not release the PostgreSQL refresh lock; its lease lapses by itself"
            );
            let _ = e;
        }
    }

    /// A lock attempt failed (or its lock could not be used): releases whatever it may have taken,
    /// in a task of its own so the caller's error is not delayed. At worst the lease lapses.
    fn forget(&self, runtime: &tokio::runtime::Handle, grant: &GrantId, holder: &str) {
        let (store, grant, holder) = (self.clone(), grant.clone(), holder.to_owned());
        runtime.spawn(async move { store.release_lease(&grant, &holder).await });
    }

    /// Starts the watchdog for a lease just taken and wraps both in a [`StoreLock`].
    fn hold(
        &self,
        runtime: &tokio::runtime::Handle,
        grant: &GrantId,
        holder: String,
        version: Option<i64>,
    ) -> StoreLock {
        let lost = Lost::default();
        let (store, renew_grant, renew_holder) = (self.clone(), grant.clone(), holder.clone());
        let label = format!("{} grant {grant}", self.inner.table.lock_name);
        let watchdog = watch(runtime, self.inner.lease, lost.clone(), label, move || {
            let (store, grant, holder) = (store.clone(), renew_grant.clone(), renew_holder.clone());
            async move {
                let renewed = store.lease_statement(Lease::Renew, &grant, &holder).await?;
                Ok(renewed == 1)
            }
        });
        let fence = Fence {
            table: self.inner.table.name.clone(),
            client_id: self.inner.client_id.clone(),
            grant: grant.clone(),
            holder: holder.clone(),
            version: parking_lot::Mutex::new(version),
            lost,
        };
        let (store, grant) = (self.clone(), grant.clone());
        // Dropping the release closure unrun (no runtime left) drops the watchdog too: it stops,
        // and the lease lapses by itself.
        StoreLock::new(move || async move {
            drop(watchdog);
            store.release_lease(&grant, &holder).await;
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

    /// Writes `tokens` only if `fence`'s holder still holds the lease and the row's `version` is
    /// still what `fence` saw: one statement, which locks the lease row until the write commits.
    pub(super) async fn save_fenced(
        &self,
        grant: &GrantId,
        tokens: &TokenSet,
        fence: &Fence,
    ) -> Result<(), BoxError> {
        let inner = &self.inner;
        if fence.lost.get() {
            return Err(lease_lost(grant, &inner.table.lock_name));
        }
        let value = self.seal(grant, tokens)?;
        let expected = *fence.version.lock();
        let mut conn = self.checkout().await?;
        let (leased, saved) = match expected {
            Some(version) => {
                conn.run("fenced save", |c| {
                    sqlx::query_as::<_, (bool, Option<i64>)>(&inner.table.update_fenced)
                        .bind(&inner.client_id)
                        .bind(grant.as_str())
                        .bind(value)
                        .bind(version)
                        .bind(&fence.holder)
                        .fetch_one(c)
                })
                .await?
            }
            None => {
                conn.run("fenced save", |c| {
                    sqlx::query_as::<_, (bool, Option<i64>)>(&inner.table.insert_fenced)
                        .bind(&inner.client_id)
                        .bind(grant.as_str())
                        .bind(value)
                        .bind(&fence.holder)
                        .fetch_one(c)
                })
                .await?
            }
        };
        if !leased {
            fence.lost.set();
            return Err(lease_lost(grant, &inner.table.lock_name));
        }
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

fn lease_lost(grant: &GrantId, lock_table: &str) -> BoxError {
    crate::store::LockLost::new(format!(
        "fenced save refused: the refresh lock of grant {grant} (its lease row in {lock_table}) \
         is held by another process (this lease lapsed and was taken over); not overwriting a \
         possibly newer token set"
    ))
    .into()
}
