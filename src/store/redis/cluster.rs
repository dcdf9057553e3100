//! [`RedisStore`] on Redis Cluster (feature `redis-cluster`).

use super::{RedisStore, RedisStoreBuilder};

impl RedisStore {
    /// Starts configuring a store on a Redis Cluster reached through `nodes` (one or more
    /// `redis://[:password@]host:port` URLs of its nodes; the client reads the cluster's slot map
    /// from the first that answers), for the grant named `grant` of the app `client_id`.
    ///
    /// The store's keys carry a hash tag made from the client id and the grant
    /// (`<prefix>:{<client id>:<grant>}:tokens` and `…:lock`), so each grant's lock and token set
    /// sit in one slot and grants spread over all of the cluster's masters; see
    /// [Redis Cluster](RedisStore#redis-cluster). Each save and each lock taken waits for one
    /// replica's acknowledgement by default ([`wait_for_replicas`](RedisStoreBuilder::wait_for_replicas)).
    ///
    /// ```no_run
    /// # fn run() -> Result<(), nifty_auth::AuthError> {
    /// use nifty_auth::RedisStore;
    ///
    /// let store = RedisStore::cluster_builder(
    ///     ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"],
    ///     "client-id",
    ///     "default",
    /// )
    /// .build()?;
    /// # let _ = store; Ok(()) }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
    pub fn cluster_builder<I, S>(
        nodes: I,
        client_id: impl Into<String>,
        grant: impl Into<String>,
    ) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut builder = RedisStore::builder(String::new(), client_id, grant);
        builder.cluster_nodes = Some(nodes.into_iter().map(Into::into).collect());
        builder.replicas = 1;
        builder
    }
}
