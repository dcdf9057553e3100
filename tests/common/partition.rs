//! One scenario for every shared store behind a [`Blackhole`]: a valid cached token needs no store;
//! a needed refresh fails within the store's bound with `AuthError::Store` and makes no token call;
//! after healing, the next refresh succeeds with exactly one token call.

use std::time::{Duration, Instant};

use http::StatusCode;
use nifty_auth::testing::FakeNifty;
use nifty_auth::{AuthError, NiftyAuth};

use crate::blackhole::{no_hang, Blackhole};
use crate::common::*;

/// Runs the scenario on `auth` (whose store goes through `proxy`, with operation bounds of
/// `timeout`) against `fake`; `store` names the store in messages.
pub async fn a_needed_refresh_fails_in_bound_and_heals(
    proxy: &Blackhole,
    fake: &FakeNifty,
    auth: &NiftyAuth,
    timeout: Duration,
    store: &str,
) {
    let svc = service(auth);
    let (status, _) = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);

    proxy.blackhole();
    assert_served_without_the_store(&svc, fake, 20, store).await;
    assert_eq!(fake.api_calls(), 21);

    // A refresh is needed now; the store does not answer, so it must fail, bounded, and not
    // refresh.
    fake.revoke_access_tokens();
    let started = Instant::now();
    let err = no_hang(&format!("a refresh through a blackholed {store}"), async {
        send(&svc, get(fake.api_url("/projects")))
            .await
            .unwrap_err()
    })
    .await;
    let waited = started.elapsed();
    let auth_err = auth_error(&err);
    assert!(matches!(auth_err, AuthError::Store { .. }), "{auth_err:?}");
    let chain = format!(
        "{auth_err}: {}",
        std::error::Error::source(auth_err).unwrap()
    );
    assert!(chain.contains("timed out"), "{chain}");
    assert!(
        waited >= timeout,
        "failed after {waited:?}, before any timeout"
    );
    assert_eq!(fake.token_calls(), 1, "no refresh without the lock");
    assert_eq!(fake.api_calls(), 22);

    proxy.heal();
    let (status, _) = no_hang("the first refresh after healing", async {
        send(&svc, get(fake.api_url("/projects"))).await.unwrap()
    })
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        fake.token_calls(),
        2,
        "exactly one token call after healing"
    );
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(fake.refresh_token_replays(), 0);
}
