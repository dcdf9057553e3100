//! Several processes, one Nifty grant: N worker processes share tokens through Redis and refresh
//! through a Redis lock, against a fake Nifty with refresh-token rotation and replay detection.
//! Prints the token calls: one per expiry, however many processes.
//!
//! ```text
//! cargo run --example multi_process --features redis                 # starts its own redis-server
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example multi_process --features redis -- --workers 6
//! ```
//!
//! The same binary is the worker (`--worker …`); the tests spawn it too.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nifty_auth::store::{RedisStore, TokenStore};
use nifty_auth::testing::{FakeNifty, Grant};
use nifty_auth::{BoxError, Credentials, NiftyAuth};
use tower::{ServiceBuilder, ServiceExt};

const TOKEN_LIFETIME: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        return worker(&args[1..]).await;
    }
    if args.first().map(String::as_str) == Some("--hold-lock") {
        return hold_lock(&args[1..]).await;
    }
    coordinator(&args).await
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn required<'a>(args: &'a [String], name: &str) -> Result<&'a str, BoxError> {
    flag(args, name).ok_or_else(|| format!("missing {name}").into())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts Redis (unless REDIS_URL is set), a fake Nifty, and the workers; prints what happened.
async fn coordinator(args: &[String]) -> Result<(), BoxError> {
    let workers: usize = flag(args, "--workers").unwrap_or("4").parse()?;
    let rounds: u64 = flag(args, "--rounds").unwrap_or("5").parse()?;
    let requests: usize = flag(args, "--requests").unwrap_or("50").parse()?;

    let mut own_redis = None;
    let redis_url = match std::env::var("REDIS_URL") {
        Ok(url) => url,
        Err(_) => {
            let port = free_port()?;
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| {
                    format!("cannot start redis-server (install it, or set REDIS_URL): {e}")
                })?;
            own_redis = Some(child);
            tokio::time::sleep(Duration::from_millis(300)).await;
            format!("redis://127.0.0.1:{port}")
        }
    };

    let nifty = FakeNifty::builder()
        .token_lifetime(Some(TOKEN_LIFETIME))
        .start()
        .await?;
    let grant = format!("demo-{}", std::process::id());
    // The first authorization, saved to Redis where every worker finds it.
    let store = RedisStore::builder(&redis_url, nifty.client_id(), &grant).build()?;
    let seed = NiftyAuth::builder(nifty.credentials())
        .token_url(nifty.token_url().as_str())
        .store(store)
        .build()?;
    let redirect = "http://127.0.0.1:8765/callback";
    seed.exchange_code(nifty.issue_code(redirect), redirect)
        .await?;

    let start_at = now_ms() + 1_000;
    let exe = std::env::current_exe()?;
    let children = (0..workers)
        .map(|_| {
            Command::new(&exe)
                .args(worker_args(
                    &redis_url, &nifty, &grant, rounds, start_at, requests,
                ))
                .env("NIFTY_CLIENT_SECRET", nifty.client_secret())
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut ok = 0;
    for child in children {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
        let line = String::from_utf8_lossy(&output.stdout);
        ok += line
            .trim()
            .strip_prefix("ok=")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
    }
    if let Some(mut redis) = own_redis {
        let _ = redis.kill();
    }

    println!("{workers} processes × {rounds} rounds × {requests} requests: {ok} answered 200");
    println!(
        "token endpoint: {} refresh_token calls over {} expiries, {} invalid_grant",
        nifty.token_calls_for(Grant::RefreshToken),
        rounds - 1,
        nifty.invalid_grants_served()
    );
    Ok(())
}

/// The command-line arguments of one worker.
pub fn worker_args(
    redis_url: &str,
    nifty: &FakeNifty,
    grant: &str,
    rounds: u64,
    start_at_ms: u64,
    requests: usize,
) -> Vec<String> {
    let period = TOKEN_LIFETIME + Duration::from_millis(400);
    [
        "--worker",
        "--redis",
        redis_url,
        "--token-url",
        &nifty.token_url(),
        "--api-url",
        &nifty.api_url("/projects"),
        "--origin",
        &nifty.base_url(),
        "--client-id",
        nifty.client_id(),
        "--grant",
        grant,
        "--rounds",
        &rounds.to_string(),
        "--period-ms",
        &period.as_millis().to_string(),
        "--start-at-ms",
        &start_at_ms.to_string(),
        "--requests",
        &requests.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// One worker: a NiftyAuth over the shared RedisStore; `rounds` bursts of concurrent requests at
/// common wall-clock times. Prints `ok=<count of 200s>`.
async fn worker(args: &[String]) -> Result<(), BoxError> {
    let secret = std::env::var("NIFTY_CLIENT_SECRET")?;
    let store = RedisStore::builder(
        required(args, "--redis")?,
        required(args, "--client-id")?,
        required(args, "--grant")?,
    )
    .build()?;
    let auth = NiftyAuth::builder(Credentials::new(required(args, "--client-id")?, secret))
        .token_url(required(args, "--token-url")?)
        .allowed_origins([required(args, "--origin")?])
        .store(store)
        .build()?;
    let api = ServiceBuilder::new()
        .layer(auth.layer())
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let url = required(args, "--api-url")?.to_owned();
    let rounds: u64 = required(args, "--rounds")?.parse()?;
    let period: u64 = required(args, "--period-ms")?.parse()?;
    let start_at: u64 = required(args, "--start-at-ms")?.parse()?;
    let requests: usize = required(args, "--requests")?.parse()?;

    let mut ok = 0;
    for round in 0..rounds {
        let at = start_at + round * period;
        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..requests {
            let request = http::Request::get(&url).body(Full::new(Bytes::new()))?;
            tasks.spawn(api.clone().oneshot(request));
        }
        while let Some(joined) = tasks.join_next().await {
            match joined? {
                Ok(response) if response.status() == 200 => ok += 1,
                Ok(response) => eprintln!("worker: {}", response.status()),
                Err(e) => eprintln!("worker: {e}"),
            }
        }
    }
    println!("ok={ok}");
    Ok(())
}

/// Takes the grant's refresh lock with a `--ttl-ms` lease, says `LOCKED`, and waits to be killed
/// (tests a dead holder).
async fn hold_lock(args: &[String]) -> Result<(), BoxError> {
    let ttl = Duration::from_millis(required(args, "--ttl-ms")?.parse()?);
    // The lease: this process's watchdog extends it while it lives; once killed, it lapses.
    let store = RedisStore::builder(
        required(args, "--redis")?,
        required(args, "--client-id")?,
        required(args, "--grant")?,
    )
    .lock_ttl(ttl)
    .build()?;
    let lock = store
        .lock(&store.single_grant(), Duration::from_secs(3600))
        .await?;
    println!("LOCKED");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    lock.release().await;
    Ok(())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
