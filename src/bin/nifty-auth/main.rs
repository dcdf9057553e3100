//! `nifty-auth`: log in to Nifty PM once, then `$(nifty-auth token)` anywhere.
//!
//! ```text
//! export NIFTY_CLIENT_ID=… NIFTY_CLIENT_SECRET=…    # or answer the prompts (secret hidden)
//! nifty-auth login                                  # browser, loopback callback, tokens saved
//! curl -H "Authorization: Bearer $(nifty-auth token)" https://openapi.niftypm.com/api/v1.0/projects
//! nifty-auth api GET /projects                      # the same through the crate's own layer
//! nifty-auth status --json
//! nifty-auth logout
//! nifty-auth --fake api GET /projects               # a demo against an embedded fake Nifty
//! nifty-auth proxy --listen 127.0.0.1:8787          # any language: the API with the token attached
//! ```
//!
//! # Profiles
//! A profile (`--profile NAME`, `NIFTY_AUTH_PROFILE`, default `default`) is two files in the
//! platform's config directory (`$XDG_CONFIG_HOME/nifty-auth/` on Linux; the directory mode 0700):
//! `NAME.json`, the tokens (the library's `FileStore` format, mode 0600), and `NAME.client.json`,
//! the client id and secret and the URLs given at `login` (mode 0600). `token` and `api` read the
//! client credentials from there, so `$(nifty-auth token)` works in scripts; `NIFTY_CLIENT_ID` /
//! `NIFTY_CLIENT_SECRET` override them. `--store PATH` puts the tokens in `PATH` (and the client
//! file beside it, `STEM.client.json`). The secret is never taken from an argument (every local user
//! can read arguments with `ps`) and never printed.
//!
//! Files are written through the library's `FileStore` writer (a random temporary name created with
//! `O_EXCL | O_NOFOLLOW` and mode 0600, renamed over the file); directories are created 0700. A
//! profiles directory that other users can access is refused (exit 5) with the `chmod 700` that
//! fixes it, never silently changed. Text from the token endpoint is printed without control
//! characters.
//!
//! # Exit codes
//! 0 success · 1 the API answered an error status (`api`) · 2 usage or configuration error ·
//! 3 re-authorization required (run `nifty-auth login`) · 4 network error or token endpoint
//! unavailable · 5 profile store error. Errors are one line on stderr (`--verbose` adds the causes).

mod api;
mod failure;
mod login;
mod profile;
mod proxy;
mod status;
mod text;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use failure::Failure;
use profile::Profile;

/// Log in to Nifty PM once, then get fresh access tokens for scripts and `curl`.
#[derive(Debug, Parser)]
#[command(name = "nifty-auth", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 success, 1 API error status (api), 2 usage or configuration, \
3 re-authorization required (run `nifty-auth login`), 4 network or token endpoint unavailable, 5 store error.\n\
Client credentials: NIFTY_CLIENT_ID / NIFTY_CLIENT_SECRET, or the prompts of `login` (saved with the profile, mode 0600).";

/// Options every command takes.
#[derive(Debug, Args)]
struct Global {
    /// The profile: which saved login to use.
    #[arg(
        long,
        global = true,
        env = "NIFTY_AUTH_PROFILE",
        default_value = "default"
    )]
    profile: String,
    /// The token file to use instead of the profile's (its client file goes beside it).
    #[arg(long, global = true, env = "NIFTY_AUTH_STORE", value_name = "PATH")]
    store: Option<PathBuf>,
    /// Nifty's token endpoint [default: the profile's, or https://openapi.niftypm.com/oauth/token].
    #[arg(long, global = true, env = "NIFTY_TOKEN_URL", value_name = "URL")]
    token_url: Option<String>,
    /// Nifty's authorize page [default: the profile's, or https://nifty.pm/authorize].
    #[arg(long, global = true, env = "NIFTY_AUTHORIZE_URL", value_name = "URL")]
    authorize_url: Option<String>,
    /// Nifty's API base [default: the profile's, or https://openapi.niftypm.com/api/v1.0].
    #[arg(long, global = true, env = "NIFTY_API_URL", value_name = "URL")]
    api_url: Option<String>,
    /// Run against an embedded fake Nifty (profile `fake`), logging in to it first: a demo.
    #[arg(long, global = true)]
    fake: bool,
    /// On error, print the chain of causes too.
    #[arg(long, short, global = true)]
    verbose: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Authorize in the browser and save the tokens in the profile.
    Login(login::LoginArgs),
    /// Print a valid access token (refreshing and saving it when needed) and nothing else.
    Token,
    /// Show the profile: client id, expiry, scope, whether a refresh token is there. No secrets.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete the profile's tokens and saved client credentials.
    Logout,
    /// Call Nifty's API with the profile's token: `nifty-auth api GET /projects`.
    Api(api::ApiArgs),
    /// Serve Nifty's API on a local address with the token attached, for any language or tool:
    /// `curl -H "Authorization: Bearer $KEY" http://127.0.0.1:8787/api/v1.0/projects`.
    Proxy(proxy::ProxyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = cli.global.verbose;
    // The proxy serves many connections at once: one worker thread per core.
    let mut builder = match cli.command {
        Command::Proxy(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            return report(
                &Failure::unavailable("cannot start the async runtime", e),
                verbose,
            )
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(&failure, verbose),
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let Cli {
        mut global,
        command,
    } = cli;
    // Keeps the embedded fake running until the command is done.
    let _fake = if global.fake {
        Some(login::start_fake(&mut global).await?)
    } else {
        None
    };
    let profile = Profile::open(&global)?;
    profile.check_dir()?;
    if let Some(fake) = &_fake {
        login::login_to_fake(&profile, fake).await?;
        if let Command::Login(_) = command {
            return Ok(());
        }
    }
    match command {
        Command::Login(args) => login::login(&profile, &args, None).await,
        Command::Token => {
            let token = profile.auth()?.access_token().await;
            let token = token.map_err(|e| Failure::auth(e, &profile))?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{token}")
                .and_then(|()| stdout.flush())
                .map_err(|e| Failure::usage(format!("cannot write to stdout: {e}")))
        }
        Command::Status { json } => status::status(&profile, json).await,
        Command::Logout => profile.logout(),
        Command::Api(args) => api::api(&profile, &args).await,
        Command::Proxy(args) => proxy::proxy(&profile, &args, _fake.as_ref()).await,
    }
}

/// Prints the failure as one line (and its causes with `--verbose`) and returns its exit code.
fn report(failure: &Failure, verbose: bool) -> ExitCode {
    let mut line = format!("nifty-auth: {}", failure.message);
    if verbose {
        let mut source = failure
            .source
            .as_deref()
            .map(|s| s as &dyn std::error::Error);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            // The first cause is often the error the message was made from.
            if !line.contains(&cause_text) {
                line.push_str(&format!(": caused by: {cause_text}"));
            }
            source = cause.source();
        }
    }
    // Error texts quote the token endpoint and the browser's callback: one line, nothing a
    // terminal would act on.
    eprintln!("{}", text::printable(&line));
    ExitCode::from(failure.code)
}
