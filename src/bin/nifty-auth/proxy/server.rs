//! The listener (TCP or a unix socket with mode 0600), the connection limit, the header-size and
//! idle limits, and the graceful shutdown on SIGTERM / Ctrl-C.

use std::convert::Infallible;
use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

use super::forward::Proxy;
use super::ops::CONNECTIONS;
use crate::failure::Failure;

/// The largest request head (request line and headers) read; a larger one is answered `431`.
pub(crate) const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Where to listen, from `--listen`.
#[derive(Debug)]
pub(crate) enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Listen {
    /// `HOST:PORT` (an IP address or `localhost`) or `unix:PATH`. A non-loopback address needs
    /// `allow_non_loopback`.
    pub(crate) fn parse(spec: &str, allow_non_loopback: bool) -> Result<Self, Failure> {
        if let Some(path) = spec.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(Failure::usage("--listen unix: needs a path: unix:PATH"));
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        let addr = match spec.strip_prefix("localhost:") {
            Some(port) => port
                .parse::<u16>()
                .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
                .ok(),
            None => spec.parse::<SocketAddr>().ok(),
        };
        let addr = addr.ok_or_else(|| {
            Failure::usage(format!(
                "--listen `{spec}` is not IP:PORT, localhost:PORT or unix:PATH"
            ))
        })?;
        if !addr.ip().is_loopback() && !allow_non_loopback {
            return Err(Failure::usage(format!(
                "--listen {addr} is not a loopback address: other machines could reach the proxy. \
                 Pass --allow-non-loopback if that is what you want (clients still need the key)"
            )));
        }
        Ok(Listen::Tcp(addr))
    }
}

/// A bound listener.
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listener::Tcp(listener) => match listener.local_addr() {
                Ok(addr) => write!(f, "http://{addr}"),
                Err(_) => f.write_str("a TCP socket"),
            },
            Listener::Unix(_, path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Listener {
    pub(crate) async fn bind(listen: &Listen) -> Result<Self, Failure> {
        match listen {
            Listen::Tcp(addr) => TcpListener::bind(addr)
                .await
                .map(Listener::Tcp)
                .map_err(|e| Failure::unavailable(format_args!("cannot listen on {addr}"), e)),
            Listen::Unix(path) => bind_unix(path)
                .map(|listener| Listener::Unix(listener, path.clone()))
                .map_err(|e| {
                    Failure::unavailable(format_args!("cannot listen on {}", path.display()), e)
                }),
        }
    }
}

/// Binds a unix socket that only this user can connect to: bound inside a new 0700 directory,
/// set to 0600, then renamed into place, so no other user can connect in between. A stale socket
/// at `path` (nobody accepting) is replaced; a live one or any other file is an error.
fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
    if let Ok(meta) = fs::symlink_metadata(path) {
        let stale =
            meta.file_type().is_socket() && std::os::unix::net::UnixStream::connect(path).is_err();
        if !stale {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the path exists (a live socket or another file)",
            ));
        }
        fs::remove_file(path)?;
    }
    let name = path
        .file_name()
        .map_or_else(|| "proxy.sock".into(), |n| n.to_string_lossy());
    let private = path.with_file_name(format!(".{name}.bind-{}", std::process::id()));
    fs::DirBuilder::new().mode(0o700).create(&private)?;
    let bound = (|| {
        let inner = private.join("s");
        let listener = UnixListener::bind(&inner)?;
        fs::set_permissions(&inner, fs::Permissions::from_mode(0o600))?;
        fs::rename(&inner, path)?;
        Ok(listener)
    })();
    let _ = fs::remove_dir_all(&private);
    bound
}

/// The `Host` values a request may carry: the listening address, `localhost` and loopback
/// addresses on its port, and the `--allow-host` names; `None` (any) on a unix socket, where no
/// browser can send a request (its mode is the access control).
pub(crate) fn allowed_hosts(listener: &Listener, extra: &[String]) -> Option<Vec<String>> {
    let Listener::Tcp(tcp) = listener else {
        return None;
    };
    let port = tcp.local_addr().map_or(0, |a| a.port());
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "[::1]".to_owned(),
    ];
    if let Ok(addr) = tcp.local_addr() {
        names.push(match addr.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        });
    }
    let mut hosts = Vec::new();
    for name in names
        .into_iter()
        .chain(extra.iter().map(|h| h.to_ascii_lowercase()))
    {
        let has_port = name
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !name.ends_with(']');
        if has_port {
            hosts.push(name);
            continue;
        }
        hosts.push(format!("{name}:{port}"));
        if port == 80 {
            hosts.push(name);
        }
    }
    Some(hosts)
}

/// The connection limits.
#[derive(Debug)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
}

/// Serves until SIGTERM or Ctrl-C, then stops accepting and waits up to `shutdown_timeout` for the
/// requests in flight.
pub(crate) async fn serve(
    listener: Listener,
    proxy: Arc<Proxy>,
    limits: Limits,
) -> Result<(), Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| Failure::unavailable("cannot watch for SIGTERM", e))?;
    let mut shutdown = pin!(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    });
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    eprintln!("nifty-auth proxy: listening on {listener}");
    loop {
        // Take a connection slot before accepting: over the limit, clients wait in the backlog.
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(_) => {
                tracing::warn!(
                    target: "nifty_auth::proxy",
                    max_connections = limits.max_connections,
                    "connection limit reached: new connections wait until one closes"
                );
                tokio::select! {
                    permit = Arc::clone(&permits).acquire_owned() => permit,
                    () = &mut shutdown => break,
                }
            }
        };
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok(Stream::Tcp(stream)) => {
                let _ = stream.set_nodelay(true);
                spawn_connection(stream, &proxy, &limits, &graceful, permit);
            }
            Ok(Stream::Unix(stream)) => {
                spawn_connection(stream, &proxy, &limits, &graceful, permit)
            }
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(target: "nifty_auth::proxy", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    if let Listener::Unix(_, path) = &listener {
        let _ = fs::remove_file(path);
    }
    drop(listener);
    eprintln!(
        "nifty-auth proxy: shutting down; waiting up to {} s for requests in flight",
        limits.shutdown_timeout.as_secs()
    );
    match tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown()).await {
        Ok(()) => eprintln!("nifty-auth proxy: stopped"),
        Err(_) => eprintln!(
            "nifty-auth proxy: stopped with requests still in flight (--shutdown-timeout)"
        ),
    }
    Ok(())
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Stream> {
    match listener {
        Listener::Tcp(tcp) => tcp.accept().await.map(|(s, _)| Stream::Tcp(s)),
        Listener::Unix(unix, _) => unix.accept().await.map(|(s, _)| Stream::Unix(s)),
    }
}

fn spawn_connection<IO>(
    io: IO,
    proxy: &Arc<Proxy>,
    limits: &Limits,
    graceful: &GracefulShutdown,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let proxy = Arc::clone(proxy);
    let service = service_fn(move |request| {
        let proxy = Arc::clone(&proxy);
        async move { Ok::<_, Infallible>(proxy.handle(request).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        metrics::gauge!(CONNECTIONS).increment(1.0);
        let _ = connection.await;
        metrics::gauge!(CONNECTIONS).decrement(1.0);
        drop(permit);
    });
}
