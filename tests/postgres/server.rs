//! The PostgreSQL server the tests run against: `initdb` into a temp dir, then `postgres` on a free
//! loopback port with its socket in the temp dir, fsync off. As root (initdb refuses to run as
//! root) both run as the `postgres` OS user through `setpriv`, which execs: the child *is* the
//! postmaster, so the test can stop it by its pid.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nifty_auth::PostgresStore;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// A postgres server child process; stopped (fast shutdown) and its directory removed on drop.
pub struct PgServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    as_postgres: bool,
}

/// The directory of `initdb` and `postgres`: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn bindir() -> Option<PathBuf> {
    let from_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let mut candidates: Vec<PathBuf> = from_config.into_iter().collect();
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| dir.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    candidates.extend(versions.into_iter().rev());
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PgServer {
    /// A fresh server, or `None` (with a message) when the binaries are missing outside CI.
    pub fn start() -> Option<PgServer> {
        let Some(bin) = bindir() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL is required under CI (install the postgresql package)"
            );
            eprintln!("SKIPPED: PostgreSQL is not installed (apt-get install postgresql)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = is_root();
        std::fs::create_dir(dir.path().join("sock")).unwrap();
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = PgServer {
            bin,
            dir,
            child: None,
            port,
            as_postgres,
        };
        let initdb = server
            .command("initdb")
            .arg("-D")
            .arg(server.data())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(initdb.status.success(), "initdb failed: {initdb:?}");
        server.launch();
        Some(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("setpriv");
            command
                .args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "--",
                ])
                .arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// Starts (or restarts) the server on its port and waits until it accepts connections.
    pub fn launch(&mut self) {
        let socket_dir: &Path = &self.dir.path().join("sock");
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(socket_dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..500 {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // Accepting TCP a moment before it accepts logins: ask it.
                let ready = Command::new(self.bin.join("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                    .status()
                    .is_ok_and(|s| s.success());
                if ready || !self.bin.join("pg_isready").exists() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("postgres did not start on port {}", self.port);
    }

    /// Stops the server (fast shutdown: sessions are terminated, their advisory locks released).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A pool of the test's own, to look at (and tamper with) the table behind the store's back.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(2))
            .connect(&self.url())
            .await
            .unwrap()
    }

    /// A store with its own small pool and a short acquire timeout, its table created.
    pub async fn store(&self, client_id: &str) -> PostgresStore {
        let store = PostgresStore::connect_builder(&self.url(), client_id)
            .acquire_timeout(Duration::from_millis(800))
            .build()
            .unwrap();
        store.migrate().await.unwrap();
        store
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl PgServer {
    /// The URL of `user` on database `db` (trust authentication: no password).
    pub fn url_as(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// A login role `name` (no superuser) owning a database of the same name. Returns the role's
    /// URL.
    pub async fn role(&self, name: &str) -> String {
        let admin = self.pool().await;
        for sql in [
            format!("CREATE ROLE {name} LOGIN"),
            format!("CREATE DATABASE {name} OWNER {name}"),
        ] {
            sqlx::query(&sql).execute(&admin).await.unwrap();
        }
        admin.close().await;
        self.url_as(name, name)
    }

    /// Takes from the role `name` (see [`role`](Self::role)) the right to delete rows of the lock
    /// table in its database (after its store's `migrate` created it): every release of that role
    /// fails on a live session.
    pub async fn forbid_release(&self, name: &str) {
        let db = PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.url_as("postgres", name))
            .await
            .unwrap();
        sqlx::query(&format!(
            "REVOKE DELETE ON nifty_auth_tokens_lock FROM {name}"
        ))
        .execute(&db)
        .await
        .unwrap();
        db.close().await;
    }
}

/// The lease rows of the refresh lock (live or expired) in the default lock table.
pub async fn lease_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM nifty_auth_tokens_lock")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The lease rows whose lease has not run out (by the server's clock).
pub async fn live_leases(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM nifty_auth_tokens_lock WHERE expires_at > now()")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The holder of `grant`'s lease row, if there is one.
pub async fn lease_holder(pool: &PgPool, grant: &str) -> Option<String> {
    sqlx::query_scalar("SELECT holder FROM nifty_auth_tokens_lock WHERE grant_id = $1")
        .bind(grant)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// Waits (up to 10 s) until `count` returns `want`, and returns its last value: sessions end, and
/// their locks go, a moment after their client closed them.
pub async fn settle<F, Fut>(want: i64, mut count: F) -> i64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = i64>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = count().await;
        if now == want || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
