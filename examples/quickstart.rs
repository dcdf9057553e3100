//! nifty-auth in two minutes: a fake Nifty on loopback, a hyper-util client wrapped in
//! `NiftyAuthLayer`, and bursts of 100 concurrent requests across a cold start, a token expiry and a
//! forced 401. Watch the token endpoint get one call per event.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nifty_auth::layer::NiftyAuthService;
use nifty_auth::testing::{FakeNifty, Grant};
use nifty_auth::{BoxError, NiftyAuth};
use tower::{ServiceBuilder, ServiceExt};

/// The client stack: hyper-util's client wrapped in the auth layer.
type Api = NiftyAuthService<Client<HttpConnector, Full<Bytes>>>;

const BURST: usize = 100;
const TOKEN_LIFETIME: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // A fake Nifty: token endpoint + API on 127.0.0.1, 2-second tokens, a 50 ms token endpoint.
    let nifty = FakeNifty::builder()
        .token_lifetime(Some(TOKEN_LIFETIME))
        .token_delay(Duration::from_millis(50))
        .start()
        .await?;
    println!("fake Nifty listening on {}", nifty.base_url());

    // The app already went through the authorize step once: start from its refresh token.
    let auth = NiftyAuth::builder(nifty.credentials())
        .token_url(nifty.token_url().as_str())
        .allowed_origins([nifty.base_url()])
        .refresh_token(nifty.issue_refresh_token())
        .build()?;

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let api: Api = ServiceBuilder::new().layer(auth.layer()).service(client);

    println!();
    println!(
        "{:<34} {:>8} {:>6} {:>12} {:>12}",
        "burst", "requests", "200 OK", "token calls", "401 retried"
    );
    let mut last = (0, 0);
    let mut report = |label: &str, ok: usize| {
        let (token_calls, unauthorized) = (nifty.token_calls(), nifty.unauthorized_served());
        println!(
            "{label:<34} {BURST:>8} {ok:>6} {:>12} {:>12}",
            token_calls - last.0,
            unauthorized - last.1
        );
        last = (token_calls, unauthorized);
    };

    // 1. Cold start: no token yet. 100 requests wait on one refresh.
    let ok = burst(&api, &nifty).await?;
    report("cold start (no token cached)", ok);

    // 2. Steady state: the cached token is valid; no token call at all.
    let ok = burst(&api, &nifty).await?;
    report("token cached", ok);

    // 3. The token expires: one refresh, shared by the whole burst. An expired token is never sent.
    tokio::time::sleep(TOKEN_LIFETIME + Duration::from_millis(100)).await;
    let ok = burst(&api, &nifty).await?;
    report("after expiry", ok);

    // 4. Nifty revokes the token: 100 requests answered 401, one refresh, each retried once.
    nifty.revoke_access_tokens();
    let ok = burst(&api, &nifty).await?;
    report("token revoked (forced 401)", ok);

    println!();
    println!(
        "token endpoint: {} calls in all ({} refresh_token grants), {} invalid_grant; API: {} requests",
        nifty.token_calls(),
        nifty.token_calls_for(Grant::RefreshToken),
        nifty.invalid_grants_served(),
        nifty.api_calls(),
    );
    println!("single flight: one token call per cold start, expiry and revocation, whatever the burst size.");
    Ok(())
}

/// Sends `BURST` concurrent requests; returns how many were answered 200.
async fn burst(api: &Api, nifty: &FakeNifty) -> Result<usize, BoxError> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..BURST {
        let request = http::Request::get(nifty.api_url(&format!("/projects?offset={i}")))
            .body(Full::new(Bytes::new()))?;
        tasks.spawn(api.clone().oneshot(request));
    }
    let mut ok = 0;
    while let Some(joined) = tasks.join_next().await {
        let response = joined??;
        if response.status() == http::StatusCode::OK {
            ok += 1;
        }
    }
    Ok(ok)
}
