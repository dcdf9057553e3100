//! List your Nifty projects with hyper-util's client and `NiftyAuthLayer`, using the token file
//! written by `examples/authorize.rs`.
//!
//! ```text
//! NIFTY_CLIENT_ID=… NIFTY_CLIENT_SECRET=… cargo run --example hyper_client [-- --file nifty-tokens.json]
//! cargo run --example hyper_client -- --fake    # against a fake Nifty on loopback
//! ```

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nifty_auth::store::FileStore;
use nifty_auth::testing::FakeNifty;
use nifty_auth::{BoxError, Credentials, NiftyAuth};
use tower::{ServiceBuilder, ServiceExt};

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
    let _dir;
    let builder = match &nifty {
        Some(nifty) => {
            let dir = tempfile_dir()?;
            file = dir.path().join("nifty-tokens.json");
            _dir = dir;
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

    let client = Client::builder(TokioExecutor::new()).build(
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .build(),
    );
    let api = ServiceBuilder::new().layer(auth.layer()).service(client);

    let url = match &nifty {
        Some(nifty) => nifty.api_url("/projects"),
        None => format!("{}/api/v1.0/projects", NiftyAuth::DEFAULT_API_ORIGIN),
    };
    let request = http::Request::get(url).body(Full::new(Bytes::new()))?;
    let response = api.oneshot(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        return Err(format!("Nifty answered {status}").into());
    }
    let json: serde_json::Value = serde_json::from_slice(&body)?;
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

/// A private temporary directory for the fake run's token file.
fn tempfile_dir() -> Result<tempfile::TempDir, BoxError> {
    Ok(tempfile::tempdir()?)
}
