//! `instructions`: a plain binary that sends N requests through one hot-path variant, for
//! instruction counts that a noisy machine cannot skew:
//!
//! ```text
//! cargo bench --bench instructions --no-run
//! for v in a_bare b_tower_http_static b2_tower_http_with_retry c_nifty_auth c2_nifty_auth_no_retry g1_one_grant; do
//!   for n in 100000 200000; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/deps/instructions-* $v $n 2>&1 | grep refs
//!   done
//! done
//! ```
//!
//! Instructions per request = (refs at 200,000 − refs at 100,000) / 100,000 (the setup cancels out).

mod common;

use std::hint::black_box;

use http::Uri;
use tower::{Layer, Service, ServiceExt};

use common::*;

async fn drive<S: Inner2>(mut svc: S, uri: &Uri, n: usize) {
    for _ in 0..n {
        let request = request(uri);
        let response = svc.ready().await.expect("ready").call(request).await;
        black_box(response.expect("call"));
    }
}

/// The services this binary drives (every hot-path variant's type).
trait Inner2:
    Service<
    http::Request<http_body_util::Full<bytes::Bytes>>,
    Response = http::Response<http_body_util::Full<bytes::Bytes>>,
    Error: std::fmt::Debug,
>
{
}

impl<T> Inner2 for T where
    T: Service<
        http::Request<http_body_util::Full<bytes::Bytes>>,
        Response = http::Response<http_body_util::Full<bytes::Bytes>>,
        Error: std::fmt::Debug,
    >
{
}

/// [`drive`] with every request carrying `grant` (for `NiftyGrants::layer()`).
async fn drive_grant<S: Inner2>(mut svc: S, uri: &Uri, grant: &nifty_auth::GrantId, n: usize) {
    for _ in 0..n {
        let mut request = request(uri);
        request.extensions_mut().insert(grant.clone());
        let response = svc.ready().await.expect("ready").call(request).await;
        black_box(response.expect("call"));
    }
}

/// A `NiftyGrants` with one cached grant holding a valid token (no token endpoint is called).
async fn one_grant() -> (nifty_auth::NiftyGrants, nifty_auth::GrantId) {
    let grants = nifty_auth::NiftyGrants::builder(nifty_auth::Credentials::new("bench", "secret"))
        .token_url(DEAD_TOKEN_URL)
        .allowed_origins(["https://openapi.niftypm.com"])
        .build()
        .expect("build NiftyGrants");
    let grant = nifty_auth::GrantId::new("workspace-0").expect("grant id");
    grants
        .set_tokens(
            &grant,
            nifty_auth::TokenSet::new(TOKEN)
                .with_refresh_token("nifty-rt-unused")
                .with_expires_in(std::time::Duration::from_secs(3600)),
        )
        .await
        .expect("set_tokens");
    (grants, grant)
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let variant = args.next().unwrap_or_else(|| "c_nifty_auth".to_owned());
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let uri: Uri = API.parse().expect("uri");
    let auth = rt.block_on(warm_auth());
    rt.block_on(async {
        match variant.as_str() {
            "a_bare" => drive(ok_service(), &uri, n).await,
            "b_tower_http_static" => drive(tower_http_layer().layer(ok_service()), &uri, n).await,
            "b2_tower_http_with_retry" => drive(tower_http_retry(ok_service()), &uri, n).await,
            "c_nifty_auth" => drive(auth.layer().layer(ok_service()), &uri, n).await,
            "g1_one_grant" => {
                let (grants, grant) = one_grant().await;
                drive_grant(grants.layer().layer(ok_service()), &uri, &grant, n).await
            }
            "c2_nifty_auth_no_retry" => {
                let layer = auth.layer().retry_on_unauthorized(false);
                drive(layer.layer(ok_service()), &uri, n).await
            }
            other => panic!("unknown variant {other}"),
        }
    });
}
