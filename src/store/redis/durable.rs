//! Writes acknowledged by replicas: each write that matters (a token set, a refresh lock) followed
//! by `WAIT <replicas> <timeout>` in one pipeline, on one connection, so the `WAIT` counts the
//! replicas that have *this* write (Redis tracks a client's last write offset per connection; the
//! pipeline goes to the node that ran the write, and nothing is interleaved between the two).

use std::io;
use std::time::Duration;

use redis::{Cmd, FromRedisValue, RedisResult};
use tower::BoxError;

use super::connection::Connection;
use super::{millis, RedisStore, RedisStoreBuilder};
use crate::error::AuthError;

/// The default bound of the `WAIT` after each write when replicas must acknowledge it (see
/// [`RedisStoreBuilder::wait_for_replicas`]).
pub const DEFAULT_REDIS_REPLICA_TIMEOUT: Duration = Duration::from_millis(500);

/// The most replicas [`RedisStoreBuilder::wait_for_replicas`] accepts.
const MAX_REPLICAS: u32 = 1_000;

impl RedisStoreBuilder {
    /// How many replicas must acknowledge each write of a token set (and each refresh lock taken)
    /// before the store reports it done, and how long to wait for them (Redis `WAIT`).
    ///
    /// Redis replicates asynchronously: a master that dies right after acknowledging a save may
    /// leave a promoted replica without it, and the next refresh would replay the refresh token
    /// that save replaced (`invalid_grant`). With `replicas` > 0 a save that fewer replicas
    /// acknowledge within `timeout` fails (not as a lost lock); the token manager then keeps the
    /// rotated tokens, unused and with the refresh lock held, and its rescue retries the save until
    /// it is acknowledged. A lock taken but not acknowledged is released and the attempt fails.
    /// See [Replicated Redis](RedisStore#replicated-redis) for what this closes and what it cannot.
    ///
    /// Defaults: 0 (no `WAIT`) for [`RedisStore::builder`]; 1 replica for a cluster store.
    /// `timeout` (default [`DEFAULT_REDIS_REPLICA_TIMEOUT`]) must be more than zero and less than
    /// the [command timeout](Self::command_timeout); `replicas` at most 1,000.
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replicas = replicas;
        self.replica_timeout = timeout;
        self
    }

    pub(super) fn check_replicas(&self) -> Result<(), AuthError> {
        if self.replicas == 0 {
            return Ok(());
        }
        if self.replicas > MAX_REPLICAS {
            return Err(AuthError::config(format!(
                "RedisStore wait_for_replicas: at most {MAX_REPLICAS} replicas (got {})",
                self.replicas
            )));
        }
        if self.replica_timeout < Duration::from_millis(1)
            || self.replica_timeout >= self.command_timeout
        {
            return Err(AuthError::config(format!(
                "RedisStore wait_for_replicas: the timeout must be at least 1ms and less than the \
                 command timeout {:?} (got {:?})",
                self.command_timeout, self.replica_timeout
            )));
        }
        Ok(())
    }
}

impl RedisStore {
    /// Runs `write`, then `WAIT`, in one pipeline; the write's answer and how many replicas
    /// acknowledged it. A cluster redirect inside the pipeline (`MOVED` after a failover, `ASK`
    /// during a resharding) is answered in-band, where the cluster client does not see it: the
    /// store then sends one plain command for `key` (which the client routes, following and
    /// learning the redirect) and tries the pipeline once more.
    pub(super) async fn write_then_wait<T: FromRedisValue>(
        &self,
        connection: &mut Connection,
        write: &Cmd,
        key: &str,
    ) -> RedisResult<(T, u32)> {
        let inner = &self.inner;
        let mut pipe = redis::pipe();
        pipe.add_command(write.clone())
            .cmd("WAIT")
            .arg(inner.replicas)
            .arg(millis(inner.replica_timeout));
        let mut tries = 0;
        loop {
            match pipe.query_async::<(T, u32)>(connection).await {
                Err(e) if e.is_cluster_error() && tries == 0 => {
                    tries += 1;
                    let _: RedisResult<i64> =
                        redis::cmd("EXISTS").arg(key).query_async(connection).await;
                }
                answer => return answer,
            }
        }
    }

    /// An error unless at least the configured number of replicas acknowledged a write (`acked`).
    pub(super) fn check_acked(&self, acked: u32, what: &str) -> Result<(), BoxError> {
        let inner = &self.inner;
        if acked >= inner.replicas {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "redis {what}: {acked} of the {} replicas required acknowledged it within {:?}",
                inner.replicas, inner.replica_timeout
            ),
        )
        .into())
    }
}
