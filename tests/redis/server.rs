//! The redis-server child process the tests run against, and helpers to build stores and to look
//! at Redis directly.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nifty_auth::testing::FakeNifty;
use nifty_auth::RedisStore;
use redis::aio::MultiplexedConnection;

/// A redis-server child process on a free loopback port; killed on drop.
///
/// It persists every write (append-only file, fsync always, in its own temporary directory), as a
/// token store in production must: a server killed and launched again still holds the grants. (A
/// grant whose entry is gone is a removed grant, never restored from a process's memory.)
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        if !server.launch() {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is required under CI (install the redis-server package)"
            );
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        Some(server)
    }

    /// Starts (or restarts) the server on its port; false if `redis-server` is missing.
    pub fn launch(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn store(redis: &RedisServer, fake: &FakeNifty, grant: &str) -> RedisStore {
    RedisStore::builder(redis.url(), fake.client_id(), grant)
        .command_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

pub async fn raw_get(redis: &RedisServer, key: &str) -> Option<Vec<u8>> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap()
}

/// A store for `grant` with a lock lease of `lock_ttl`.
pub fn store_with_lease(
    redis: &RedisServer,
    fake: &FakeNifty,
    grant: &str,
    lock_ttl: Duration,
) -> RedisStore {
    RedisStore::builder(redis.url(), fake.client_id(), grant)
        .command_timeout(Duration::from_millis(500))
        .lock_ttl(lock_ttl)
        .build()
        .unwrap()
}

/// A plain connection, to look at (and tamper with) Redis behind the store's back.
pub async fn raw(redis: &RedisServer) -> MultiplexedConnection {
    let client = redis::Client::open(redis.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// The remaining TTL of `key` in milliseconds (-2: no such key).
pub async fn pttl(redis: &RedisServer, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut raw(redis).await)
        .await
        .unwrap()
}

/// The number after `prefix` on a line of the server's `INFO section` (0 if there is none).
pub async fn info_number(redis: &RedisServer, section: &str, prefix: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut raw(redis).await)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// How many `SET` commands the server has run (`INFO commandstats`). A lock waiter's refused
/// `SET NX` attempts count here, so a test can wait for them instead of sleeping.
pub async fn set_commands(redis: &RedisServer) -> u64 {
    info_number(redis, "commandstats", "cmdstat_set:calls=").await
}

/// Waits (at most 10 s, then fails) until the server has run `n` `SET` commands in all.
pub async fn wait_for_set_commands(redis: &RedisServer, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while set_commands(redis).await < n {
        assert!(
            std::time::Instant::now() < deadline,
            "never {n} SET commands"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A redis-server and a fake on 127.0.0.1; `None` where redis-server is missing (outside CI).
pub async fn redis_and_fake() -> Option<(RedisServer, FakeNifty)> {
    let redis = RedisServer::start()?;
    Some((redis, FakeNifty::start().await.unwrap()))
}

/// Runs `take` (another store's attempt at a lock `held` holds) and checks that it waits: Redis
/// refuses its `SET NX` twice and it has not finished (else `what`); then `held` is released, and
/// the attempt gets the lock after that. Returns the lock it got.
pub async fn lock_after_release<L: Send + 'static>(
    redis: &RedisServer,
    take: impl std::future::Future<Output = L> + Send + 'static,
    held: nifty_auth::StoreLock,
    what: &str,
) -> L {
    let sets = set_commands(redis).await;
    let waiting = tokio::spawn(async move {
        let lock = take.await;
        (std::time::Instant::now(), lock)
    });
    wait_for_set_commands(redis, sets + 2).await;
    assert!(!waiting.is_finished(), "{what}");
    let released = std::time::Instant::now();
    held.release().await;
    let (locked, lock) = waiting.await.unwrap();
    assert!(locked >= released, "locked before the release");
    lock
}

/// A `RedisStore` for `fake`'s client under `namespace`, sealing its values with `key`.
pub fn sealed_store(
    redis: &RedisServer,
    fake: &FakeNifty,
    namespace: &str,
    key: [u8; 32],
) -> RedisStore {
    RedisStore::builder(redis.url(), fake.client_id(), namespace)
        .encryption_key(key)
        .build()
        .unwrap()
}
