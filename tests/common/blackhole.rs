//! A TCP proxy of the tests' own between the crate and a real server on 127.0.0.1, that can be
//! switched to a blackhole and healed: a network partition that closes nothing.
//!
//! Forwarding, it copies bytes both ways. Blackholed, it still accepts connections and keeps every
//! connection open, but delivers nothing in either direction, on new and existing connections
//! alike: bytes (and a close) sent meanwhile are held, as TCP would retransmit them, and delivered
//! in order once healed. A connection accepted while blackholed reaches the server only once healed.
//!
//! It counts what the crate holds: [`client_connections`](Blackhole::client_connections) is the
//! number of connections whose client side is still open (the proxy saw no close or reset from
//! the crate), watched even while blackholed; [`connections`](Blackhole::connections) also counts
//! those whose held bytes or close are not yet delivered. It runs on a runtime of its own, so its
//! tasks do not show in the test's runtime metrics.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// The proxy; stopped (every connection dropped) on drop.
pub struct Blackhole {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Shared {
    /// `true` while forwarding.
    forwarding: watch::Sender<bool>,
    accepted: AtomicUsize,
    client_open: AtomicUsize,
    open: AtomicUsize,
}

/// What one direction's reader hands its writer.
enum Chunk {
    Bytes(Vec<u8>),
    /// The sender closed its side (or reset it).
    Closed,
}

/// Decrements a counter when dropped (however the task holding it ends).
struct Count(Arc<Shared>, fn(&Shared) -> &AtomicUsize);

impl Count {
    fn new(shared: &Arc<Shared>, counter: fn(&Shared) -> &AtomicUsize) -> Count {
        counter(shared).fetch_add(1, Ordering::SeqCst);
        Count(Arc::clone(shared), counter)
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::SeqCst);
    }
}

impl Blackhole {
    /// A proxy on a free 127.0.0.1 port forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> Blackhole {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("blackhole-proxy")
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (forwarding, _) = watch::channel(true);
        let shared = Arc::new(Shared {
            forwarding,
            accepted: AtomicUsize::new(0),
            client_open: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
        });
        let accepting = Arc::clone(&shared);
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                accepting.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(relay(client, upstream, Arc::clone(&accepting)));
            }
        });
        Blackhole {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    /// The address to give the crate instead of the server's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// From now on, nothing is delivered either way (connections stay open).
    pub fn blackhole(&self) {
        self.shared.forwarding.send_replace(false);
    }

    /// Delivers what was held, in order, and forwards again.
    pub fn heal(&self) {
        self.shared.forwarding.send_replace(true);
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections the crate has not closed.
    pub fn client_connections(&self) -> usize {
        self.shared.client_open.load(Ordering::SeqCst)
    }

    /// Connections not finished: open on the crate's side, or with held bytes or a held close
    /// still to deliver.
    pub fn connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn wait_forwarding(shared: &Shared) {
    let mut forwarding = shared.forwarding.subscribe();
    // The sender lives as long as `shared`: `wait_for` fails only if it is gone.
    let _ = forwarding.wait_for(|on| *on).await;
}

/// One connection: the client side is read from the start (to see the crate close it, even while
/// blackholed); the server is dialled, and anything delivered, only while forwarding.
async fn relay(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let open = Count::new(&shared, |s| &s.open);
    let (mut client_read, mut client_write) = client.into_split();
    let (to_server, mut for_server) = mpsc::unbounded_channel();
    let client_open = Count::new(&shared, |s| &s.client_open);
    let from_client = tokio::spawn(async move {
        let _client_open = client_open;
        read_into(&mut client_read, &to_server).await;
    });

    wait_forwarding(&shared).await;
    let Ok(server) = TcpStream::connect(upstream).await else {
        from_client.abort();
        return;
    };
    let (mut server_read, mut server_write) = server.into_split();
    let (to_client, mut for_client) = mpsc::unbounded_channel();
    let from_server = tokio::spawn(async move {
        read_into(&mut server_read, &to_client).await;
    });
    let up = {
        let shared = Arc::clone(&shared);
        async move { write_from(&mut for_server, &mut server_write, &shared).await }
    };
    let down = {
        let shared = Arc::clone(&shared);
        async move { write_from(&mut for_client, &mut client_write, &shared).await }
    };
    tokio::join!(up, down);
    from_client.abort();
    from_server.abort();
    drop(open);
}

/// Reads until a close or an error, handing every chunk (then `Closed`) to the writer.
async fn read_into<R: AsyncReadExt + Unpin>(reader: &mut R, chunks: &mpsc::UnboundedSender<Chunk>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = chunks.send(Chunk::Closed);
                return;
            }
            Ok(n) => {
                if chunks.send(Chunk::Bytes(buffer[..n].to_vec())).is_err() {
                    return;
                }
            }
        }
    }
}

/// Delivers chunks in order, each only while forwarding; a close shuts the write side down.
async fn write_from<W: AsyncWriteExt + Unpin>(
    chunks: &mut mpsc::UnboundedReceiver<Chunk>,
    writer: &mut W,
    shared: &Shared,
) {
    while let Some(chunk) = chunks.recv().await {
        wait_forwarding(shared).await;
        match chunk {
            Chunk::Bytes(bytes) => {
                if writer.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Chunk::Closed => break,
        }
    }
    let _ = writer.shutdown().await;
}

// Helpers of the partition tests.

/// Far beyond every bound under test: only turns a hang into a failure.
const HANG: Duration = Duration::from_secs(60);

/// Awaits `future`, failing the test if it hangs.
pub async fn no_hang<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG, future)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for {HANG:?}: it is not bounded"))
}

/// The tasks alive on the test's runtime (the proxy's run on its own).
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Polls `value` until it equals `want` (up to 10 s) and returns its last value: tasks and
/// connections end a moment after the call that gave them up.
pub async fn eventually<T: PartialEq + Copy>(want: T, mut value: impl FnMut() -> T) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = value();
        if now == want || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The first success of `call` (tried up to 100 times): right after healing, held bytes are
/// delivered first, and a call with a very short bound may time out behind them.
pub async fn recovered<T, E: std::fmt::Display, Fut: Future<Output = Result<T, E>>>(
    what: &str,
    mut call: impl FnMut() -> Fut,
) -> T {
    for attempt in 1.. {
        match call().await {
            Ok(value) => return value,
            Err(e) if attempt < 100 => eprintln!("after healing, {what}, try {attempt}: {e}"),
            Err(e) => panic!("{what} still fails after healing: {e}"),
        }
    }
    unreachable!()
}
