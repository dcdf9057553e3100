//! List your Nifty projects with reqwest-middleware and `NiftyAuthMiddleware`, using the token file
//! written by `examples/authorize.rs`; reqwest-retry outside, nifty-auth inside.
//!
//! ```text
//! NIFTY_CLIENT_ID=… NIFTY_CLIENT_SECRET=… cargo run --example reqwest_client --features reqwest
//! cargo run --example reqwest_client --features reqwest -- --fake    # against a fake Nifty
//! ```

use std::path::PathBuf;

use nifty_auth::store::FileStore;
use nifty_auth::testing::FakeNifty;
use nifty_auth::{BoxError, Credentials, NiftyAuth};
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_retry::RetryTransientMiddleware;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut file = PathBuf::from("nifty-tokens.json");
    let mut fake = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--fake" => fake = true,
            "--file" => file = PathBuf::from(args.next().ok_or("--file needs a path")?),
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }

    // With --fake: a fake Nifty, and a token file made the way examples/authorize.rs makes one.
    let nifty = if fake {
        Some(FakeNifty::start().await?)
    } else {
        None
    };
    let dir = tempfile::tempdir()?;
    let builder = match &nifty {
        Some(nifty) => {
            file = dir.path().join("nifty-tokens.json");
            let setup = NiftyAuth::builder(nifty.credentials())
                .token_url(nifty.token_url().as_str())
                .store(FileStore::new(&file))
                .build()?;
            let redirect = "http://127.0.0.1:8765/callback";
            setup
                .exchange_code(nifty.issue_code(redirect), redirect)
                .await?;
            NiftyAuth::builder(nifty.credentials())
                .token_url(nifty.token_url().as_str())
                .allowed_origins([nifty.base_url()])
        }
        None => {
            let id = std::env::var("NIFTY_CLIENT_ID").map_err(|_| "set NIFTY_CLIENT_ID")?;
            let secret =
                std::env::var("NIFTY_CLIENT_SECRET").map_err(|_| "set NIFTY_CLIENT_SECRET")?;
            NiftyAuth::builder(Credentials::new(id, secret))
        }
    };
    let auth = builder.store(FileStore::new(&file)).build()?;

    let retry = RetryTransientMiddleware::new_with_policy(
        ExponentialBackoff::builder().build_with_max_retries(3),
    );
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(retry) // outer: transient failures
        .with(auth.middleware()) // inner: a current token on every attempt, 401 handled here
        .build();

    let url = match &nifty {
        Some(nifty) => nifty.api_url("/projects"),
        None => format!("{}/api/v1.0/projects", NiftyAuth::DEFAULT_API_ORIGIN),
    };
    let response = client.get(url).send().await?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("Nifty answered {status}").into());
    }
    let json: serde_json::Value = response.json().await?;
    let projects = json["projects"].as_array().cloned().unwrap_or_default();
    println!("{} projects:", projects.len());
    for project in projects {
        println!(
            "  {}  {}",
            project["id"].as_str().unwrap_or("?"),
            project["name"].as_str().unwrap_or("?")
        );
    }
    println!("(token calls made: {})", auth.stats().token_calls_succeeded);
    Ok(())
}
