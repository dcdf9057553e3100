//! The connection a [`RedisStore`](super::RedisStore) sends its commands on: one Redis server
//! (a [`ConnectionManager`]) or, with feature `redis-cluster`, a Redis Cluster (redis-rs's cluster
//! client, which routes each command to the master of its key's slot and follows `MOVED` / `ASK`
//! and topology changes).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tower::BoxError;

use super::redis_error;

/// Where a store's commands go.
pub(super) enum Target {
    /// One server (or a proxy that looks like one).
    Single(redis::Client),
    /// A Redis Cluster, reached through any of its nodes.
    #[cfg(feature = "redis-cluster")]
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// A connection to a [`Target`]; clones share it.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Target {
    /// Connects, one attempt: a single server's connection manager connects lazily (on its first command,
    /// within `connect_timeout`); the cluster client reads the slot map from a node first, within
    /// `connect_timeout`.
    pub(super) async fn connect(
        &self,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Connection, BoxError> {
        match self {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(command_timeout))
                    .set_number_of_retries(0);
                client
                    .get_connection_manager_lazy(config)
                    .map(Connection::Single)
                    .map_err(|e| redis_error("connect", e))
            }
            #[cfg(feature = "redis-cluster")]
            Target::Cluster(client) => {
                match tokio::time::timeout(connect_timeout, client.get_async_connection()).await {
                    Ok(Ok(connection)) => Ok(Connection::Cluster(connection)),
                    Ok(Err(e)) => Err(redis_error("connect to the cluster", e)),
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("redis connect to the cluster timed out after {connect_timeout:?}"),
                    )
                    .into()),
                }
            }
        }
    }

    /// Whether this is a cluster (each grant's keys carry a hash tag of their own).
    pub(super) fn is_cluster(&self) -> bool {
        match self {
            Target::Single(_) => false,
            #[cfg(feature = "redis-cluster")]
            Target::Cluster(_) => true,
        }
    }
}

/// The cluster client for `nodes`: every connect bounded by `connect_timeout`, every answer by
/// `command_timeout`, and every command
/// with its retries (a failover, a `MOVED`, a node reconnecting) bounded by it too, so a store call
/// never waits through the client's default sixteen retries.
#[cfg(feature = "redis-cluster")]
pub(super) fn cluster_client(
    nodes: &[String],
    connect_timeout: Duration,
    command_timeout: Duration,
) -> redis::RedisResult<redis::cluster::ClusterClient> {
    redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .connection_timeout(connect_timeout)
        .response_timeout(command_timeout)
        .overall_response_timeout(Some(command_timeout))
        .retries(4)
        .min_retry_wait(10)
        .max_retry_wait(250)
        .build()
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "redis-cluster")]
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "redis-cluster")]
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            #[cfg(feature = "redis-cluster")]
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

impl super::RedisStoreBuilder {
    /// The server or cluster this builder names; no I/O.
    pub(super) fn target(&self) -> Result<Target, crate::error::AuthError> {
        use crate::error::AuthError;
        #[cfg(feature = "redis-cluster")]
        if let Some(nodes) = &self.cluster_nodes {
            if self.prefix.contains(['{', '}']) {
                return Err(AuthError::config(
                    "a RedisStore on a cluster makes a hash tag of its own for each grant: its key \
                     prefix must not contain '{' or '}'",
                ));
            }
            if nodes.is_empty() {
                return Err(AuthError::config(
                    "a RedisStore on a cluster needs at least one node URL",
                ));
            }
            // A URL may hold a password: never echo it.
            return cluster_client(nodes, self.connect_timeout, self.command_timeout)
                .map(|client| Target::Cluster(Box::new(client)))
                .map_err(|e| {
                    AuthError::config(format!("a Redis cluster URL is invalid ({:?})", e.kind()))
                });
        }
        redis::Client::open(self.url.as_str())
            .map(Target::Single)
            .map_err(|e| AuthError::config(format!("the Redis URL is invalid ({:?})", e.kind())))
    }
}
