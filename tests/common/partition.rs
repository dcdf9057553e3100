//! One scenario for every shared store behind a [`Blackhole`]: a valid cached token needs no store;
//! a needed refresh fails within the store's bound with `AuthError::Store` and makes no token call;
//! after healing, the next refresh succeeds with exactly one token call.

use std::future::Future;
use std::time::{Duration, Instant};

use http::StatusCode;
use nifty_auth::testing::FakeNifty;
use nifty_auth::{AuthError, BoxError, NiftyAuth};

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

/// 20 rounds of 50 store calls at once through a blackholed store: `call(n)` makes call `n`
/// (0..1000; callers mix lock attempts, loads and saves by `n % 3`). Every call must fail with a
/// timeout, and no round may hang.
pub async fn a_thousand_calls_time_out<F, Fut>(call: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    let mut timed_out = 0;
    for round in 0..20 {
        let calls = (0..50).map(|i| call(round * 50 + i));
        let results = no_hang(
            "a round of blackholed calls",
            futures_util::future::join_all(calls),
        )
        .await;
        for result in results {
            let err = result.expect_err("a blackholed call succeeded").to_string();
            assert!(err.contains("timed out"), "round {round}: {err}");
            timed_out += 1;
        }
    }
    assert_eq!(timed_out, 1_000);
}
