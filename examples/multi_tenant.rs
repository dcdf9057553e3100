//! Three Nifty workspaces behind one tower stack: `NiftyGrants::layer()` over hyper-util's client,
//! each request naming its workspace with a `GrantId` in its extensions. Runs against a fake Nifty
//! on loopback (no credentials needed), and prints which grant the API saw and the token calls.
//!
//! ```text
//! cargo run --example multi_tenant
//! ```

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nifty_auth::testing::FakeNifty;
use nifty_auth::{AuthError, BoxError, GrantId, NiftyGrants};
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let nifty = FakeNifty::start().await?;
    let grants = NiftyGrants::builder(nifty.credentials())
        .token_url(nifty.token_url().as_str())
        .allowed_origins([nifty.base_url()])
        .build()?;

    // Each workspace's admin authorized the app once; the callback exchanged the code.
    let redirect = "https://app.example/nifty/callback";
    let mut workspaces = Vec::new();
    for name in ["acme", "globex", "initech"] {
        let id = GrantId::new(name)?;
        let fake_grant = nifty.new_grant();
        grants
            .exchange_code(&id, fake_grant.issue_code(redirect), redirect)
            .await?;
        workspaces.push((id, fake_grant));
    }

    // One stack for every workspace.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = ServiceBuilder::new().layer(grants.layer()).service(client);

    for (id, fake_grant) in &workspaces {
        for _ in 0..2 {
            let mut request =
                http::Request::get(nifty.api_url("/users/me")).body(Full::new(Bytes::new()))?;
            request.extensions_mut().insert(id.clone());
            let response = svc.clone().oneshot(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            let me: serde_json::Value = serde_json::from_slice(&body)?;
            let seen = me["grant"].as_u64();
            println!("{id}: {status}, the API saw grant {seen:?}");
            if seen != Some(fake_grant.key().get()) {
                return Err(format!("{id}: the API saw another workspace's token").into());
            }
        }
        println!("{id}: {} token call(s)", fake_grant.token_calls());
    }

    // A request that names no workspace is refused before it is sent.
    let request = http::Request::get(nifty.api_url("/projects")).body(Full::new(Bytes::new()))?;
    let err = svc.clone().oneshot(request).await.unwrap_err();
    let missing = err
        .downcast_ref::<AuthError>()
        .is_some_and(AuthError::is_missing_grant);
    println!("without a GrantId: {err}");
    if !missing {
        return Err("expected AuthError::MissingGrant".into());
    }

    let stats = grants.stats();
    println!(
        "total: {} token call(s), {} request(s) authorized, {} grant(s) cached",
        nifty.token_calls(),
        stats.totals.requests_authorized,
        stats.cached_grants
    );
    Ok(())
}
