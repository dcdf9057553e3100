//! Get your first Nifty tokens: run once, open the printed URL, approve the app; the tokens are saved
//! to a file (mode 0600) that your program then uses with `FileStore`.
//!
//! ```text
//! NIFTY_CLIENT_ID=… NIFTY_CLIENT_SECRET=… cargo run --example authorize -- \
//!     [--scope "project task"] [--port 8765] [--file nifty-tokens.json] [--pkce]
//! cargo run --example authorize -- --fake      # against a fake Nifty on loopback, no browser needed
//! ```
//!
//! The client id and secret come from the environment only: a command line argument is visible to
//! every local user (`ps`). The secret is never printed. Register `http://127.0.0.1:<port>/callback`
//! as a redirect URI of your app in Nifty's App Center first. `--pkce` adds a PKCE challenge (S256);
//! whether Nifty supports PKCE is not documented, so it is off by default. The `nifty-auth login`
//! command (feature `cli`) is the complete version of this example.

use std::path::PathBuf;
use std::time::Duration;

use nifty_auth::authorize::{AuthorizationRequest, CallbackServer};
use nifty_auth::store::FileStore;
use nifty_auth::testing::FakeNifty;
use nifty_auth::{BoxError, Credentials, NiftyAuth};

const DEFAULT_SCOPE: &str = "project task";
const DEFAULT_PORT: u16 = 8765;
const DEFAULT_FILE: &str = "nifty-tokens.json";
const WAIT: Duration = Duration::from_secs(300);

struct Options {
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: String,
    port: u16,
    file: PathBuf,
    fake: bool,
    pkce: bool,
}

fn options() -> Result<Options, BoxError> {
    let mut options = Options {
        client_id: std::env::var("NIFTY_CLIENT_ID").ok(),
        client_secret: std::env::var("NIFTY_CLIENT_SECRET").ok(),
        scope: std::env::var("NIFTY_SCOPE").unwrap_or_else(|_| DEFAULT_SCOPE.to_owned()),
        port: DEFAULT_PORT,
        file: PathBuf::from(
            std::env::var("NIFTY_TOKEN_FILE").unwrap_or_else(|_| DEFAULT_FILE.to_owned()),
        ),
        fake: false,
        pkce: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--scope" => options.scope = value("--scope")?,
            "--port" => options.port = value("--port")?.parse()?,
            "--file" => options.file = PathBuf::from(value("--file")?),
            "--fake" => options.fake = true,
            "--pkce" => options.pkce = true,
            "-h" | "--help" => {
                println!("usage: [NIFTY_CLIENT_ID=… NIFTY_CLIENT_SECRET=…] authorize [--fake] [--pkce] [--scope \"project task\"] [--port 8765] [--file nifty-tokens.json]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)").into()),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let options = options()?;

    // With --fake, a fake Nifty on loopback plays Nifty, and this program plays the browser.
    let fake = if options.fake {
        Some(FakeNifty::start().await?)
    } else {
        None
    };
    let (credentials, port) = match &fake {
        Some(fake) => (fake.credentials(), 0),
        None => {
            let id = options.client_id.clone().ok_or("set NIFTY_CLIENT_ID")?;
            let secret = options
                .client_secret
                .clone()
                .ok_or("set NIFTY_CLIENT_SECRET")?;
            (Credentials::new(id, secret), options.port)
        }
    };

    let server = CallbackServer::bind(&format!("http://127.0.0.1:{port}/callback")).await?;
    let mut request =
        AuthorizationRequest::try_new(credentials.client_id(), server.redirect_uri())?
            .pkce(options.pkce)
            .scopes(options.scope.split([' ', ',']).filter(|s| !s.is_empty()));
    let mut builder = NiftyAuth::builder(credentials).store(FileStore::new(&options.file));
    if let Some(fake) = &fake {
        request = request.authorize_url(fake.authorize_url());
        builder = builder
            .token_url(fake.token_url().as_str())
            .allowed_origins([fake.base_url()]);
    }
    let auth = builder.build()?;

    println!(
        "Open this URL in your browser and approve the app:\n\n  {}\n",
        request.url()
    );
    println!(
        "Waiting for Nifty to redirect to {} …",
        server.redirect_uri()
    );
    let waiting = {
        let request = request.clone();
        tokio::spawn(async move { server.wait_for_code_within(&request, WAIT).await })
    };
    if fake.is_some() {
        play_browser(&request.url()).await?;
    }
    let code = waiting.await??;

    let tokens = request.exchange(&auth, code).await?;
    println!(
        "Authorized (scope: {}). Tokens saved to {} (mode 0600).",
        tokens.scope().unwrap_or("-"),
        options.file.display()
    );
    Ok(())
}

/// Opens the authorize URL like a browser would and follows the redirect to the callback.
async fn play_browser(url: &str) -> Result<(), BoxError> {
    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let response = client.get(url.parse()?).await?;
    let location = response
        .headers()
        .get(http::header::LOCATION)
        .ok_or("the authorize page did not redirect")?
        .to_str()?
        .to_owned();
    println!("(browser) approved; following the redirect");
    client.get(location.parse()?).await?;
    Ok(())
}
