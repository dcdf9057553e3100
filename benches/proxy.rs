//! `nifty-auth proxy` against the floor: a bare hyper pass-through proxy written here.
//!
//! Three processes per target, as in production: this load generator, the proxy (the real
//! `nifty-auth proxy` binary, or this file re-executed as the floor), and a loopback upstream (this
//! file re-executed) answering every request at once. For 1, 64 and 512 concurrent keep-alive
//! connections, each target is driven for the same time, alternating, in the same run:
//! throughput, p50 and p99 latency, and their ratios to the floor. Then the resident memory each
//! proxy needs per idle client connection (VmRSS before and after opening 1,000, each after one
//! request).
//!
//! `cargo bench --features cli --bench proxy` (`PROXY_BENCH_SECS` sets the seconds per measurement,
//! default 4; `PROXY_BENCH_ROUNDS` the rounds, default 3: the targets alternate, medians reported).

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nifty_auth::{FileStore, TokenSet};
use tokio::net::{TcpListener, TcpStream};

const ROLE: &str = "PROXY_BENCH_ROLE";
const KEY: &str = "bench-proxy-key-0123456789";
const LEVELS: [usize; 3] = [1, 64, 512];
const IDLE_CONNECTIONS: usize = 1000;
const PATH: &str = "/api/v1.0/projects";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("upstream") => serve(upstream),
        Ok("floor") => {
            let upstream: SocketAddr = std::env::var("UPSTREAM").unwrap().parse().unwrap();
            serve(move |request| floor(upstream, request));
        }
        _ => bench(),
    }
}

// ---- the upstream and the floor (child processes) ----------------------------------------------

/// Serves `handler` on a free loopback port (printed on stdout) until killed.
fn serve<F, Fut>(handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<BoxedBody>> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(request).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

type BoxedBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn full(bytes: &'static [u8]) -> BoxedBody {
    Full::new(Bytes::from_static(bytes))
        .map_err(|never| match never {})
        .boxed()
}

/// The API: answers at once.
async fn upstream(request: Request<Incoming>) -> Response<BoxedBody> {
    let _ = request.into_body().collect().await;
    let mut response = Response::new(full(br#"{"projects":[{"id":"p-1","name":"Launch"}]}"#));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

type FloorClient = Client<hyper_util::client::legacy::connect::HttpConnector, Incoming>;

/// The floor: forwards to the upstream with nothing but the URI rewritten and the hop-by-hop
/// headers dropped; bodies streamed both ways.
async fn floor(upstream: SocketAddr, request: Request<Incoming>) -> Response<BoxedBody> {
    static CLIENT: std::sync::OnceLock<FloorClient> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_nodelay(true);
        Client::builder(TokioExecutor::new()).build(http)
    });
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("http://{upstream}{path}").parse().unwrap();
    for name in [header::CONNECTION, header::HOST, header::TRANSFER_ENCODING] {
        parts.headers.remove(name);
    }
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(_) => {
            let mut response = Response::new(full(b"bad gateway"));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            response
        }
    }
}

// ---- the load generator --------------------------------------------------------------------------

/// A child process, killed on drop.
struct Process {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line["VmRSS:".len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap()
    }
}

/// Re-executes this file in `role`; it prints its address.
fn spawn_role(role: &str, envs: &[(&str, String)]) -> Process {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env(ROLE, role)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (name, value) in envs {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    Process {
        addr: line.trim().parse().unwrap(),
        child,
    }
}

/// The real `nifty-auth proxy`, with a valid saved token, forwarding to `upstream`.
fn spawn_nifty_proxy(upstream: SocketAddr, dir: &std::path::Path) -> Process {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tokens = dir.join("tokens.json");
    let child = Command::new(env!("CARGO_BIN_EXE_nifty-auth"))
        .arg("--store")
        .arg(&tokens)
        .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .env("XDG_CONFIG_HOME", dir)
        .env("NIFTY_TOKEN_URL", "http://127.0.0.1:9/oauth/token")
        .env("NIFTY_API_URL", format!("http://{upstream}/api/v1.0"))
        .env("NIFTY_CLIENT_ID", "bench-client")
        .env("NIFTY_CLIENT_SECRET", "bench-secret")
        .env("NIFTY_PROXY_KEY", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Killed and waited for on drop, also if it does not start.
    let process = Process { child, addr };
    for _ in 0..500 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return process;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nifty-auth proxy did not start");
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

async fn one_request(sender: &mut Sender, addr: SocketAddr) {
    sender.ready().await.unwrap();
    let request = Request::get(PATH)
        .header(header::HOST, addr.to_string())
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let _ = response.into_body().collect().await.unwrap();
}

/// One measurement: `connections` keep-alive connections sending one request after another for
/// `secs` (after a warm-up of a quarter of that).
async fn measure(addr: SocketAddr, connections: usize, secs: f64) -> Measurement {
    let warm_up = Duration::from_secs_f64(secs / 4.0);
    let span = Duration::from_secs_f64(secs);
    let start = Instant::now() + warm_up;
    let end = start + span;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await;
            let mut latencies = Vec::new();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    return latencies;
                }
                one_request(&mut sender, addr).await;
                if sent >= start {
                    latencies.push(sent.elapsed().as_nanos() as u64);
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Measurement {
        throughput: latencies.len() as f64 / span.as_secs_f64(),
        p50_us: at(0.50) as f64 / 1000.0,
        p99_us: at(0.99) as f64 / 1000.0,
    }
}

struct Measurement {
    throughput: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Measurement {
    /// The median of each figure over `rounds`.
    fn median(rounds: &[Measurement]) -> Measurement {
        let median = |figure: fn(&Measurement) -> f64| {
            let mut values: Vec<f64> = rounds.iter().map(figure).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        Measurement {
            throughput: median(|m| m.throughput),
            p50_us: median(|m| m.p50_us),
            p99_us: median(|m| m.p99_us),
        }
    }
}

/// KiB of resident memory per idle client connection (each after one request).
async fn idle_cost(process: &Process) -> f64 {
    let before = process.rss_kib();
    let mut idle = Vec::new();
    for _ in 0..IDLE_CONNECTIONS {
        let mut sender = connect(process.addr).await;
        one_request(&mut sender, process.addr).await;
        idle.push(sender);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = process.rss_kib();
    drop(idle);
    after.saturating_sub(before) as f64 / IDLE_CONNECTIONS as f64
}

fn bench() {
    let secs: f64 = std::env::var("PROXY_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let rounds: usize = std::env::var("PROXY_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let tokens = TokenSet::new("bench-access-token-0123456789")
            .with_refresh_token("bench-refresh-token-0123456789")
            .with_expires_at(SystemTime::now() + Duration::from_secs(24 * 3600));
        FileStore::new(dir.path().join("tokens.json"))
            .save(&tokens)
            .await
            .unwrap();
        let upstream = spawn_role("upstream", &[]);
        let floor = spawn_role("floor", &[("UPSTREAM", upstream.addr.to_string())]);
        let proxy = spawn_nifty_proxy(upstream.addr, dir.path());
        let targets = [("floor (bare hyper)", &floor), ("nifty-auth proxy", &proxy)];

        println!(
            "proxy bench: {rounds} rounds × {secs} s per target and level (the two targets \
             alternating, medians of the rounds), {} cores",
            cores()
        );
        println!(
            "| connections | target | requests/s | p50 | p99 | throughput ÷ floor | p50 ÷ floor | p99 ÷ floor |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for connections in LEVELS {
            let mut results: [Vec<Measurement>; 2] = [Vec::new(), Vec::new()];
            for round in 0..rounds {
                // Alternate the order, so neither target always runs on a warmer machine.
                let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
                for i in order {
                    results[i].push(measure(targets[i].1.addr, connections, secs).await);
                }
            }
            let [floor_m, proxy_m] = results.map(|rounds| Measurement::median(&rounds));
            for ((name, _), m) in targets.iter().zip([&floor_m, &proxy_m]) {
                println!(
                    "| {connections} | {name} | {:.0} | {:.0} µs | {:.0} µs | {:.2} | {:.2} | {:.2} |",
                    m.throughput,
                    m.p50_us,
                    m.p99_us,
                    m.throughput / floor_m.throughput,
                    m.p50_us / floor_m.p50_us,
                    m.p99_us / floor_m.p99_us
                );
            }
        }
        println!();
        println!("| target | RSS per idle client connection ({IDLE_CONNECTIONS} connections) |");
        println!("|---|---|");
        for (name, process) in targets {
            println!("| {name} | {:.1} KiB |", idle_cost(process).await);
        }
    });
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
