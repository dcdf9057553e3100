//! `nifty-auth proxy`: an HTTP proxy to Nifty's API that attaches the Nifty token, so any language
//! or tool can call the API through it without handling tokens.
//!
//! The proxy is a hyper server whose upstream client is the crate's own layer over a hyper-util
//! client: [`NiftyAuth::layer`](nifty_auth::NiftyAuth::layer) for the profile's grant, or
//! [`NiftyGrants::layer`](nifty_auth::NiftyGrants::layer) with the grant named per request by the
//! `Nifty-Grant` header. It has no token logic of its own: refresh, single flight, the 401 retry and
//! body replay are the layer's.
//!
//! - `server`: listeners (TCP, unix socket), connection limit, timeouts, graceful shutdown.
//! - `forward`: one request: checks, the upstream request, the answer or a JSON error.
//! - `body`: the request body sent upstream (small ones kept for the 401 retry, others streamed).
//! - `keys`: the proxy key (from `NIFTY_PROXY_KEY` or generated into a 0600 file).
//! - `ops`: `/_nifty/healthz`, `/_nifty/readyz`, `/_nifty/metrics` and the request log.
//! - `upstream`: the layer and client, for one grant or many.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use nifty_auth::testing::FakeNifty;

use crate::failure::Failure;
use crate::profile::{origin, Profile};

mod body;
mod errors;
mod forward;
mod keys;
mod ops;
mod server;
mod upstream;

/// The default `--listen`.
const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// The default `--max-connections`.
const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// The default `--idle-timeout`, in seconds: a connection with no request for this long is closed
/// (also the time a client has to send a request's headers).
const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
/// The default `--upstream-timeout`, in seconds: the API must start answering within this time.
const DEFAULT_UPSTREAM_TIMEOUT_SECS: u64 = 120;
/// The default `--shutdown-timeout`, in seconds: how long SIGTERM waits for requests in flight.
const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 30;

/// The proxy's options.
#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    /// Where to listen: `HOST:PORT` (loopback unless --allow-non-loopback), or `unix:PATH` (a
    /// socket with mode 0600; clients need no proxy key).
    #[arg(long, default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    listen: String,
    /// Serve many grants from this store, each request naming its grant with the header
    /// `Nifty-Grant: <id>`: `dir:PATH` (a file per grant), `redis://…` or `postgres://…`.
    /// Without it, the proxy serves the profile's grant.
    #[arg(long, value_name = "STORE")]
    grants_store: Option<String>,
    /// Allow listening on an address that is not loopback (every client still needs the key).
    #[arg(long)]
    allow_non_loopback: bool,
    /// Also accept requests whose `Host` header names this host (e.g. a service name); the
    /// listening address and `localhost` are always accepted. Repeatable.
    #[arg(long = "allow-host", value_name = "HOST")]
    allow_hosts: Vec<String>,
    /// Where a generated proxy key is written (mode 0600) when neither NIFTY_PROXY_KEY nor
    /// NIFTY_PROXY_KEY_FILE gives one [default: beside the profile's tokens,
    /// `<profile>.proxy-key`]. A new key is generated at each start.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// At most this many client connections at once; more wait to be accepted.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_name = "N")]
    max_connections: usize,
    /// Close a client connection idle for this many seconds.
    #[arg(long, default_value_t = DEFAULT_IDLE_TIMEOUT_SECS, value_name = "SECS")]
    idle_timeout: u64,
    /// Answer 504 when the API has not started answering within this many seconds.
    #[arg(long, default_value_t = DEFAULT_UPSTREAM_TIMEOUT_SECS, value_name = "SECS")]
    upstream_timeout: u64,
    /// On SIGTERM or Ctrl-C, wait at most this many seconds for requests in flight.
    #[arg(long, default_value_t = DEFAULT_SHUTDOWN_TIMEOUT_SECS, value_name = "SECS")]
    shutdown_timeout: u64,
}

/// Runs the proxy until SIGTERM or Ctrl-C.
pub(crate) async fn proxy(
    profile: &Profile,
    args: &ProxyArgs,
    fake: Option<&FakeNifty>,
) -> Result<(), Failure> {
    ops::init_logging();
    let listen = server::Listen::parse(&args.listen, args.allow_non_loopback)?;
    let saved = profile.load_client()?;
    let api_origin = origin(&profile.api_url(saved.as_ref()))?;
    let upstream = match &args.grants_store {
        Some(spec) => {
            upstream::Upstream::grants(profile, saved.as_ref(), spec, &api_origin).await?
        }
        None => upstream::Upstream::single(profile)?,
    };
    let key = match listen {
        server::Listen::Unix(_) => None,
        server::Listen::Tcp(_) => Some(keys::ProxyKey::load_or_generate(
            args.key_file.clone(),
            profile,
        )?),
    };
    let metrics = ops::Metrics::install()?;
    let listener = server::Listener::bind(&listen).await?;
    let config = forward::Config {
        api_origin: api_origin
            .parse()
            .map_err(|_| Failure::usage(format!("`{api_origin}` is not a URL origin")))?,
        hosts: server::allowed_hosts(&listener, &args.allow_hosts),
        upstream_timeout: Duration::from_secs(args.upstream_timeout.max(1)),
        login_command: profile.login_command(),
    };
    let proxy = Arc::new(forward::Proxy {
        config,
        key,
        upstream,
        metrics,
    });
    let limits = server::Limits {
        max_connections: args.max_connections.max(1),
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
    };
    if fake.is_some() {
        eprintln!("(fake Nifty) the proxy forwards to {api_origin}");
    }
    server::serve(listener, proxy, limits).await
}
