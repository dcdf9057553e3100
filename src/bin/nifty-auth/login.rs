//! `nifty-auth login`, and the embedded fake Nifty of `--fake`.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::time::{Duration, SystemTime};

use clap::Args;
use nifty_auth::authorize::{AuthorizationRequest, CallbackServer};
use nifty_auth::testing::FakeNifty;
use nifty_auth::{Credentials, NiftyAuth};

use crate::failure::Failure;
use crate::profile::{origin, ClientConfig, Profile};
use crate::text::printable;
use crate::Global;

/// The default `--port`: register `http://127.0.0.1:8765/callback` as a redirect URI in Nifty.
const DEFAULT_PORT: u16 = 8765;
/// The default `--scope`.
const DEFAULT_SCOPE: &str = "project task";
/// The default `--timeout`: how long `login` waits for the browser's callback.
const DEFAULT_TIMEOUT_SECS: u64 = 300;

#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// The scopes to ask for, space- or comma-separated.
    #[arg(long, default_value = DEFAULT_SCOPE)]
    scope: String,
    /// The loopback port of the redirect URI `http://127.0.0.1:PORT/callback` (0: any free port).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// The registered redirect URI, if not `http://127.0.0.1:PORT/callback` (e.g.
    /// `http://localhost:8765/callback`, served on 127.0.0.1 and [::1]).
    #[arg(long, value_name = "URI", conflicts_with = "port")]
    redirect_uri: Option<String>,
    /// Print the URL instead of opening a browser.
    #[arg(long)]
    no_browser: bool,
    /// Add a PKCE challenge (S256). Off by default: Nifty's PKCE support is not documented.
    #[arg(long)]
    pkce: bool,
    /// Seconds to wait for the browser's callback.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECS, value_name = "SECS")]
    timeout: u64,
}

pub(crate) async fn login(
    profile: &Profile,
    args: &LoginArgs,
    fake: Option<&FakeNifty>,
) -> Result<(), Failure> {
    let saved = profile.load_client()?;
    let credentials = login_credentials(profile, saved.as_ref())?;
    let redirect_uri = match &args.redirect_uri {
        Some(uri) => uri.clone(),
        None => format!("http://127.0.0.1:{}/callback", args.port),
    };
    let server = CallbackServer::bind(&redirect_uri)
        .await
        .map_err(|e| Failure::authorize(e, profile))?;
    let authorize_url = profile.authorize_url(saved.as_ref());
    let scopes = args.scope.split([' ', ',']).filter(|s| !s.is_empty());
    let request = AuthorizationRequest::try_new(credentials.client_id(), server.redirect_uri())
        .map_err(|e| Failure::authorize(e, profile))?
        .scopes(scopes)
        .authorize_url(&authorize_url)
        .pkce(args.pkce);
    let config = ClientConfig {
        client_id: credentials.client_id().to_owned(),
        client_secret: credentials.client_secret().to_owned(),
        token_url: Some(profile.token_url(saved.as_ref())),
        authorize_url: Some(authorize_url),
        api_url: Some(profile.api_url(saved.as_ref())),
    };
    let auth = NiftyAuth::builder(credentials)
        .token_url(profile.token_url(saved.as_ref()))
        .allowed_origins([origin(&profile.api_url(saved.as_ref()))?])
        .store(profile.file_store())
        .build()
        .map_err(|e| Failure::auth(e, profile))?;

    let url = request.url();
    let timeout = Duration::from_secs(args.timeout);
    let waiting = {
        let request = request.clone();
        tokio::spawn(async move { server.wait_for_code_within(&request, timeout).await })
    };
    match fake {
        Some(_) => {
            eprintln!("(fake Nifty) approving {url}");
            play_browser(&url).await?;
        }
        None => show_url(&url, !args.no_browser),
    }
    eprintln!(
        "Waiting for the authorization on {} (until {}, {} min) …",
        request.redirect_uri(),
        clock_time(SystemTime::now() + timeout),
        args.timeout.div_ceil(60)
    );
    let code = waiting
        .await
        .map_err(|e| Failure::unavailable("the callback server stopped", e))?
        .map_err(|e| Failure::authorize(e, profile))?;

    profile.ensure_dir()?;
    profile.save_client(&config)?;
    let tokens = request
        .exchange(&auth, code)
        .await
        .map_err(|e| Failure::auth(e, profile))?;
    let expiry = match tokens.expires_in() {
        Some(left) => format!(", the access token expires in {} min", left.as_secs() / 60),
        None => String::new(),
    };
    eprintln!(
        "Logged in (profile `{}`, scope: {}{expiry}). Tokens saved to {} (mode 0600).",
        profile.name,
        printable(tokens.scope().unwrap_or("-")),
        profile.tokens_path.display()
    );
    Ok(())
}

/// The client credentials for `login`: the environment, else the profile's, else prompts on a
/// terminal (the secret hidden). Never an argument.
fn login_credentials(
    profile: &Profile,
    saved: Option<&ClientConfig>,
) -> Result<Credentials, Failure> {
    let have_id = std::env::var_os("NIFTY_CLIENT_ID").is_some_and(|v| !v.is_empty());
    if have_id || saved.is_some() {
        return profile.credentials(saved);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::usage(
            "NIFTY_CLIENT_ID is not set and there is no terminal to ask on: set NIFTY_CLIENT_ID and \
             NIFTY_CLIENT_SECRET (from Nifty's App Center) in the environment",
        ));
    }
    eprint!("Nifty client id: ");
    let _ = std::io::stderr().flush();
    let mut id = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut id)
        .map_err(|e| Failure::usage(format!("cannot read the client id: {e}")))?;
    let id = id.trim().to_owned();
    let secret = match std::env::var("NIFTY_CLIENT_SECRET") {
        Ok(secret) if !secret.is_empty() => secret,
        _ => rpassword::prompt_password("Nifty client secret (hidden): ")
            .map_err(|e| Failure::usage(format!("cannot read the client secret: {e}")))?,
    };
    if id.is_empty() || secret.is_empty() {
        return Err(Failure::usage("the client id and secret must not be empty"));
    }
    Ok(Credentials::new(id, secret))
}

/// Shows the authorize URL: on stderr for the user, and alone on stdout when stdout is not the
/// terminal (so a script or test can read it), then opens the browser if asked and possible.
fn show_url(url: &str, open: bool) {
    let opened = open && open_browser(url);
    if opened {
        eprintln!("Opened the browser. If it did not open, visit:\n\n  {url}\n");
    } else {
        eprintln!("Open this URL in a browser and approve the app:\n\n  {url}\n");
    }
    if !std::io::stdout().is_terminal() {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{url}").and_then(|()| stdout.flush());
    }
}

/// Starts the platform's URL opener; `false` if there is none to start.
fn open_browser(url: &str) -> bool {
    let (program, args): (&str, &[&str]) = if cfg!(target_os = "macos") {
        ("open", &[])
    } else if cfg!(windows) {
        ("rundll32", &["url.dll,FileProtocolHandler"])
    } else {
        let graphical = ["DISPLAY", "WAYLAND_DISPLAY"]
            .iter()
            .any(|v| std::env::var_os(v).is_some());
        if !graphical {
            return false;
        }
        ("xdg-open", &[])
    };
    std::process::Command::new(program)
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

/// `HH:MM:SS UTC` of `at`.
pub(crate) fn clock_time(at: SystemTime) -> String {
    let secs = crate::profile::unix_seconds(at) % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Starts the embedded fake Nifty and points the options at it (profile `fake` unless `--store`).
pub(crate) async fn start_fake(global: &mut Global) -> Result<FakeNifty, Failure> {
    let fake = FakeNifty::start()
        .await
        .map_err(|e| Failure::unavailable("cannot start the fake Nifty", e))?;
    global.token_url = Some(fake.token_url());
    global.authorize_url = Some(fake.authorize_url());
    global.api_url = Some(fake.api_url(""));
    if global.store.is_none() {
        global.profile = "fake".to_owned();
    }
    eprintln!("(fake Nifty) running at {}", fake.base_url());
    Ok(fake)
}

/// Logs the profile in to the fake, playing the browser (`--fake`, before any command).
pub(crate) async fn login_to_fake(profile: &Profile, fake: &FakeNifty) -> Result<(), Failure> {
    let config = ClientConfig {
        client_id: fake.client_id().to_owned(),
        client_secret: fake.client_secret().to_owned(),
        token_url: Some(fake.token_url()),
        authorize_url: Some(fake.authorize_url()),
        api_url: Some(fake.api_url("")),
    };
    profile.save_client(&config)?;
    let args = LoginArgs {
        scope: DEFAULT_SCOPE.to_owned(),
        port: 0,
        redirect_uri: None,
        no_browser: true,
        pkce: false,
        timeout: 30,
    };
    login(profile, &args, Some(fake)).await
}

/// Plays the browser for the fake: opens the authorize URL and follows its redirect.
async fn play_browser(url: &str) -> Result<(), Failure> {
    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let get = |url: &str| {
        let uri = url.parse::<http::Uri>();
        let client = client.clone();
        async move {
            let uri = uri.map_err(|e| Failure::unavailable("bad URL", e))?;
            client
                .get(uri)
                .await
                .map_err(|e| Failure::unavailable("the fake Nifty did not answer", e))
        }
    };
    let response = get(url).await?;
    let location = response
        .headers()
        .get(http::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .ok_or_else(|| Failure::usage("the fake authorize page did not redirect"))?
        .to_owned();
    get(&location).await.map(drop)
}
