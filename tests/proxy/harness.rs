//! The proxy process, its fake Nifty, and the clients (`curl`, `python3`, raw TCP).
#![allow(
    dead_code,
    reason = "each test module uses a different subset of the helpers"
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nifty_auth::testing::{FakeGrant, FakeNifty};
use nifty_auth::{FileStore, TokenSet};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

pub use crate::cli::Setup;
pub const CLIENT_ID: &str = "proxy-test-client";
pub const SECRET: &str = "proxy-test-secret-5b1e77";
pub const KEY: &str = "proxy-test-key-0a9f3c2e71d4";
/// A bound on waits that should end at once (a hang guard, never a timing assertion).
pub const WAIT: Duration = Duration::from_secs(60);

impl Setup {
    pub async fn new() -> Self {
        Setup::start(CLIENT_ID, SECRET).await
    }

    pub fn tokens_file(&self) -> PathBuf {
        self.dir.path().join("tokens.json")
    }

    /// Saves a grant's tokens (a refresh token, and an access token valid for an hour) as the
    /// profile's; returns the grant and its access token.
    pub async fn logged_in(&self) -> (FakeGrant, String) {
        let grant = self.fake.new_grant();
        let refresh = grant.issue_refresh_token();
        let access = grant.issue_access_token(Some(Duration::from_secs(3600)));
        let tokens = TokenSet::new(access.clone())
            .with_refresh_token(refresh)
            .with_expires_at(SystemTime::now() + Duration::from_secs(3600));
        FileStore::new(self.tokens_file())
            .save(&tokens)
            .await
            .unwrap();
        (grant, access)
    }

    /// The binary with the environment pointing at the fake and the private directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = self.cli_command();
        command
            .arg("--store")
            .arg(self.tokens_file())
            .args(args)
            .env("NIFTY_PROXY_KEY", KEY)
            .stdout(Stdio::null());
        command
    }

    /// `proxy --listen 127.0.0.1:0` with `extra` arguments, running.
    /// A logged-in set-up and its proxy, started with `extra` arguments.
    pub async fn serving(extra: &[&str]) -> (Setup, Proxy) {
        let setup = Setup::new().await;
        setup.logged_in().await;
        let proxy = setup.proxy(extra).await;
        (setup, proxy)
    }

    pub async fn proxy(&self, extra: &[&str]) -> Proxy {
        let mut args = vec!["proxy", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Proxy::spawn(self.command(&args)).await
    }
}

/// A running proxy process; killed on drop.
pub struct Proxy {
    pub child: Child,
    /// `http://127.0.0.1:PORT` (or `unix:PATH`).
    pub url: String,
    log: Arc<Mutex<Vec<String>>>,
    logged: Arc<Notify>,
}

impl Proxy {
    /// Spawns the proxy and waits for its "listening on" line.
    pub async fn spawn(mut command: Command) -> Proxy {
        let mut child = command.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let logged = Arc::new(Notify::new());
        let url = tokio::time::timeout(WAIT, async {
            loop {
                let Some(line) = lines.next_line().await.unwrap() else {
                    panic!("the proxy exited: {:?}", log.lock());
                };
                log.lock().push(line.clone());
                if let Some(url) = line.split("listening on ").nth(1) {
                    break url.trim().to_owned();
                }
            }
        })
        .await
        .expect("the proxy did not start");
        let (task_log, task_logged) = (Arc::clone(&log), Arc::clone(&logged));
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                task_log.lock().push(line);
                task_logged.notify_waiters();
            }
            task_logged.notify_waiters();
        });
        Proxy {
            child,
            url,
            log,
            logged,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the proxy is running")
    }

    /// `host:port` of a TCP proxy.
    pub fn authority(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    pub fn log(&self) -> String {
        self.log.lock().join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        self.wait_for_lines(needle, 1).await;
    }

    /// Waits until `count` log lines contain `needle`.
    pub async fn wait_for_lines(&self, needle: &str, count: usize) {
        tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.logged.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self
                    .log
                    .lock()
                    .iter()
                    .filter(|l| l.contains(needle))
                    .count()
                    >= count
                {
                    return;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("not {count} log lines with {needle:?}: {}", self.log()));
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Stops it with SIGTERM and returns its exit code.
    pub async fn stop(mut self) -> Option<i32> {
        self.signal("TERM");
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the proxy did not stop")
            .unwrap();
        status.code()
    }

    /// `VmHWM` (peak resident memory) of the process, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        status_field(self.pid(), "VmHWM:")
    }
}

/// A `kB` field of `/proc/PID/status`.
pub fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

/// What `curl` got.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {} {}", self.status, self.text()))
    }
}

/// Runs `curl -sS` with `args` (the URL among them); the status, head and body it received.
pub async fn curl(args: &[&str]) -> Answer {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head");
    let body = dir.path().join("body");
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-D"])
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT, output)
        .await
        .expect("curl hung")
        .unwrap();
    let status = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    Answer {
        status,
        headers: std::fs::read_to_string(&head).unwrap_or_default(),
        body: std::fs::read(&body).unwrap_or_default(),
    }
}

/// `curl` with the proxy key.
pub async fn curl_with_key(args: &[&str]) -> Answer {
    let auth = format!("Authorization: Bearer {KEY}");
    let mut all = vec!["-H", auth.as_str()];
    all.extend_from_slice(args);
    curl(&all).await
}

/// Runs a Python 3 script (standard library only) with `args`; its stdout as JSON.
pub async fn python(script: &str, args: &[&str]) -> serde_json::Value {
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT, output)
        .await
        .expect("python hung")
        .unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Sends `request` as raw bytes to `authority` and returns the status code of the answer.
pub async fn raw_status(authority: &str, request: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut read = 0;
    let head = tokio::time::timeout(WAIT, async {
        loop {
            let n = stream.read(&mut buf[read..]).await.unwrap();
            read += n;
            if n == 0 || buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                break String::from_utf8_lossy(&buf[..read]).into_owned();
            }
        }
    })
    .await
    .expect("no answer");
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"))
}

/// Asserts that no recorded API request carried `needle` in any header or its body.
pub fn assert_never_sent(fake: &FakeNifty, needle: &str) {
    for request in fake.api_requests() {
        for (name, value) in &request.headers {
            assert!(
                !String::from_utf8_lossy(value.as_bytes()).contains(needle),
                "{name} carried it upstream"
            );
        }
        assert!(!String::from_utf8_lossy(&request.body).contains(needle));
    }
}

/// A file of `len` pseudo-random bytes in `dir`, and its bytes.
pub fn random_file(dir: &Path, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}
