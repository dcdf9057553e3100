//! A connection checked out of the pool for one store statement (or `migrate`'s transaction),
//! every statement bounded by the query timeout. A connection that may be mid-statement or in a
//! transaction when it is dropped is closed, never returned to the pool.

use std::future::Future;
use std::io;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use tower::BoxError;

use super::pg_error;

/// A pool connection with the store's bounds.
///
/// `tainted` says the session's state is not known to be clean: it may hold an open transaction
/// (and `migrate`'s transaction-level advisory lock), or a statement whose answer never came.
/// Dropped tainted, the connection is detached from the pool and its socket closed at once (no
/// task, no graceful goodbye that a partitioned server would never answer): the pool opens a
/// replacement, and the server, when it sees the close, ends the session (rolling back what it had
/// open).
pub(super) struct Conn {
    connection: Option<PoolConnection<Postgres>>,
    tainted: bool,
    /// Set when a statement timed out: the session is out of step, nothing more is sent on it.
    broken: bool,
    query_timeout: Duration,
}

impl Conn {
    /// A connection from `pool`, waiting at most `acquire_timeout` (connecting included).
    pub(super) async fn checkout(
        pool: &PgPool,
        acquire_timeout: Duration,
        query_timeout: Duration,
    ) -> Result<Conn, BoxError> {
        let connection = tokio::time::timeout(acquire_timeout, pool.acquire())
            .await
            .map_err(|_| timed_out("connect", acquire_timeout))?
            .map_err(|e| pg_error("connect", e))?;
        Ok(Conn {
            connection: Some(connection),
            tainted: false,
            broken: false,
            query_timeout,
        })
    }

    /// Marks the session as possibly in an open transaction: from now on it is
    /// closed when dropped, unless [`untaint`](Self::untaint) says it is clean again.
    pub(super) fn taint(&mut self) {
        self.tainted = true;
    }

    /// The session is known to hold nothing: it may go back to the pool.
    pub(super) fn untaint(&mut self) {
        self.tainted = false;
    }

    /// Runs one statement, `what` naming it in errors, for at most the query timeout.
    ///
    /// A statement that times out (or fails other than with an error PostgreSQL answered, such as
    /// an I/O error) leaves the connection tainted and broken: nothing more is sent on it, and it is
    /// closed when dropped. An error PostgreSQL answered leaves the session as it was.
    pub(super) async fn run<'c, T, Fut>(
        &'c mut self,
        what: &str,
        statement: impl FnOnce(&'c mut PgConnection) -> Fut,
    ) -> Result<T, BoxError>
    where
        Fut: Future<Output = Result<T, sqlx::Error>> + 'c,
    {
        let Conn {
            connection,
            tainted,
            broken,
            query_timeout,
        } = self;
        let connection = match connection.as_mut() {
            Some(connection) if !*broken => connection,
            _ => return Err(unusable(what)),
        };
        let was_tainted = *tainted;
        // Tainted while the statement runs: a caller that gives up mid-statement closes it.
        *tainted = true;
        match tokio::time::timeout(*query_timeout, statement(connection)).await {
            Ok(Ok(value)) => {
                *tainted = was_tainted;
                Ok(value)
            }
            Ok(Err(e)) => {
                if matches!(e, sqlx::Error::Database(_)) {
                    *tainted = was_tainted;
                } else {
                    *broken = true;
                }
                Err(pg_error(what, e))
            }
            Err(_) => {
                *broken = true;
                Err(timed_out(what, *query_timeout))
            }
        }
    }

    /// Ends the session now if it is tainted, else returns the connection to the pool.
    pub(super) fn finish(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        if self.tainted {
            // Closes the socket: the server ends the session and its locks.
            drop(connection.detach());
        } else {
            drop(connection);
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.finish();
    }
}

fn timed_out(what: &str, after: Duration) -> BoxError {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("postgres {what} timed out after {after:?} (the connection is closed)"),
    )
    .into()
}

fn unusable(what: &str) -> BoxError {
    io::Error::other(format!(
        "postgres {what} not sent: the connection was closed after a statement \
         timed out or was released"
    ))
    .into()
}
