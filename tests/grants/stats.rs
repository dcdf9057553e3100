//! `grants.grant(&id).stats()`: the counters of that grant alone; `grants.stats().totals`: every
//! grant's, added up. Driven through `grants.layer()` against a loopback `FakeNifty`.

use std::time::Duration;

use nifty_auth::testing::{FakeNifty, TokenFault};
use nifty_auth::{GrantId, MemoryStore, NiftyGrants, Stats};
use tower::{Layer, ServiceExt};

use crate::common::fake_lasting;
use crate::common::{get, http_client};
use crate::layer::{whoami, GrantsClient};
use crate::{grants_builder, seed};

/// The counts a grant's own `Stats` holds (the refresh path's), as a tuple to compare and add.
fn refresh_path(stats: &Stats) -> [u64; 7] {
    [
        stats.token_calls_succeeded,
        stats.token_calls_failed_transient,
        stats.token_calls_failed_terminal,
        stats.token_calls_failed_other,
        stats.refreshes,
        stats.refreshes_coalesced,
        stats.unauthorized_retries,
    ]
}

fn sum(a: [u64; 7], b: [u64; 7]) -> [u64; 7] {
    std::array::from_fn(|i| a[i] + b[i])
}

/// Two grants through one layer: A refreshes twice (its first request, then a 401) and has one
/// retry; B meets a transient token failure before its one refresh and has no retry. Each grant's
/// handle reports only its own counts; the totals are their sum (and count every request).
async fn two_grants_with_different_histories() -> (FakeNifty, NiftyGrants, GrantId, GrantId) {
    let fake = fake_lasting(Duration::from_secs(3600)).await;
    let store = MemoryStore::new();
    let seeded = seed(&fake, &store, 2).await;
    let grants = grants_builder(&fake).store(store).build().unwrap();
    let svc: GrantsClient = grants.layer().layer(http_client());
    let (a, grant_a) = &seeded[0];
    let (b, grant_b) = &seeded[1];

    // A: three requests (one refresh), then a 401 (a second refresh and one retry).
    for _ in 0..3 {
        assert_eq!(whoami(&svc, &fake, a).await.unwrap(), grant_a.key().get());
    }
    grant_a.revoke_access_tokens();
    assert_eq!(whoami(&svc, &fake, a).await.unwrap(), grant_a.key().get());
    assert_eq!(grant_a.token_calls(), 2);
    assert_eq!(grant_a.unauthorized_served(), 1);

    // B: its refresh's first token call fails transiently (503), the second succeeds; five requests.
    fake.push_token_fault(TokenFault::Respond {
        status: 503,
        content_type: "text/plain".to_owned(),
        body: "try again".to_owned(),
    });
    for _ in 0..5 {
        assert_eq!(whoami(&svc, &fake, b).await.unwrap(), grant_b.key().get());
    }
    assert_eq!(grant_b.token_calls(), 2, "a 503, then tokens");
    (fake, grants, a.clone(), b.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_handle_reports_that_grants_counters_and_the_totals_are_their_sum() {
    let (_fake, grants, a, b) = two_grants_with_different_histories().await;

    let stats_a = grants.grant(&a).stats();
    let stats_b = grants.grant(&b).stats();
    let totals = grants.stats().totals;

    assert_eq!(stats_a.token_calls_succeeded, 2, "{stats_a:?}");
    assert_eq!(stats_a.token_calls_failed_transient, 0, "{stats_a:?}");
    assert_eq!(stats_a.token_calls_failed_terminal, 0, "{stats_a:?}");
    assert_eq!(stats_a.token_calls_failed_other, 0, "{stats_a:?}");
    assert_eq!(stats_a.refreshes, 2, "{stats_a:?}");
    assert_eq!(stats_a.refreshes_coalesced, 0, "{stats_a:?}");
    assert_eq!(stats_a.unauthorized_retries, 1, "{stats_a:?}");

    assert_eq!(stats_b.token_calls_succeeded, 1, "{stats_b:?}");
    assert_eq!(stats_b.token_calls_failed_transient, 1, "{stats_b:?}");
    assert_eq!(stats_b.token_calls_failed_terminal, 0, "{stats_b:?}");
    assert_eq!(stats_b.token_calls_failed_other, 0, "{stats_b:?}");
    assert_eq!(stats_b.refreshes, 1, "{stats_b:?}");
    assert_eq!(stats_b.refreshes_coalesced, 0, "{stats_b:?}");
    assert_eq!(stats_b.unauthorized_retries, 0, "{stats_b:?}");

    // Per-request counts are kept for the totals only (a per-grant count would cost every request
    // an increment on the grant's own memory): a grant's handle reports none.
    for stats in [&stats_a, &stats_b] {
        assert_eq!(stats.requests_authorized, 0, "{stats:?}");
        assert_eq!(stats.requests_without_retry, 0, "{stats:?}");
    }

    assert_eq!(
        refresh_path(&totals),
        sum(refresh_path(&stats_a), refresh_path(&stats_b)),
        "{totals:?}"
    );
    assert_eq!(totals.requests_authorized, 9, "{totals:?}");
    assert_eq!(totals.requests_without_retry, 8, "{totals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_grants_counters_start_again_from_zero_and_the_totals_keep_its_counts() {
    let (fake, grants, a, b) = two_grants_with_different_histories().await;
    let before_b = grants.grant(&b).stats();
    let before_totals = grants.stats().totals;
    assert_eq!(grants.grant(&a).stats().refreshes, 2);

    grants.remove(&a).await.unwrap();

    assert_eq!(grants.grant(&a).stats(), Stats::default());
    assert_eq!(grants.grant(&b).stats(), before_b);
    assert_eq!(grants.stats().totals, before_totals);

    // Authorized again: its counts are its new grant's.
    let redirect = "https://app.example/nifty/callback";
    grants
        .exchange_code(&a, fake.issue_code(redirect), redirect)
        .await
        .unwrap();
    let stats_a = grants.grant(&a).stats();
    assert_eq!(stats_a.token_calls_succeeded, 1, "{stats_a:?}");
    assert_eq!(stats_a.refreshes, 0, "{stats_a:?}");
    assert_eq!(
        grants.stats().totals.token_calls_succeeded,
        before_totals.token_calls_succeeded + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_niftyauth_reports_its_own_requests() {
    // Unchanged for a single-grant `NiftyAuth`: every counter, the per-request ones included.
    let fake = fake_lasting(Duration::from_secs(3600)).await;
    let auth = nifty_auth::NiftyAuth::builder(fake.credentials())
        .token_url(fake.token_url().as_str())
        .allowed_origins([fake.base_url()])
        .refresh_token(fake.issue_refresh_token())
        .http_client(fake.service())
        .build()
        .unwrap();
    let svc = auth.layer().layer(http_client());
    for _ in 0..3 {
        let response = svc
            .clone()
            .oneshot(get(fake.api_url("/users/me")))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let stats = auth.stats();
    assert_eq!(
        (stats.refreshes, stats.token_calls_succeeded),
        (1, 1),
        "{stats:?}"
    );
    assert_eq!(stats.requests_authorized, 3, "{stats:?}");
    assert_eq!(stats.requests_without_retry, 3, "{stats:?}");
}

// An evicted grant's counts going with its token manager is a unit test beside the manager
// (`manager::tests`): when a refresh task lets go of a grant is not observable from here.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_joining_a_grants_refresh_are_counted_as_coalesced_for_that_grant_only() {
    let fake = fake_lasting(Duration::from_secs(3600)).await;
    let store = MemoryStore::new();
    let seeded = seed(&fake, &store, 2).await;
    let grants = grants_builder(&fake).store(store).build().unwrap();
    let (a, b) = (seeded[0].0.clone(), seeded[1].0.clone());

    // Five callers of A at once: one refresh (held until the other four joined it).
    let hold = fake.hold_token_answers();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let (grants, a) = (grants.clone(), a.clone());
        callers.spawn(async move { grants.access_token(&a).await.unwrap() });
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while grants.grant(&a).stats().refreshes_coalesced < 4 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("four callers joined the running refresh");
    hold.release();
    while let Some(token) = callers.join_next().await {
        assert!(!token.unwrap().is_empty());
    }
    grants.access_token(&b).await.unwrap();

    let stats_a = grants.grant(&a).stats();
    let stats_b = grants.grant(&b).stats();
    assert_eq!(refresh_path(&stats_a), [1, 0, 0, 0, 1, 4, 0], "{stats_a:?}");
    assert_eq!(refresh_path(&stats_b), [1, 0, 0, 0, 1, 0, 0], "{stats_b:?}");
    let totals = grants.stats().totals;
    assert_eq!(
        refresh_path(&totals),
        sum(refresh_path(&stats_a), refresh_path(&stats_b)),
        "{totals:?}"
    );
}

/// A terminal answer (`invalid_grant`) and an unusable one (a 405) are each counted as that kind,
/// for their own grant only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_and_other_token_call_failures_are_counted_for_their_grant() {
    let fake = fake_lasting(Duration::from_secs(3600)).await;
    let store = MemoryStore::new();
    let seeded = seed(&fake, &store, 2).await;
    let grants = grants_builder(&fake).store(store).build().unwrap();
    let (terminal, other) = (&seeded[0].0, &seeded[1].0);

    fake.push_token_fault(TokenFault::Respond {
        status: 400,
        content_type: "application/json".to_owned(),
        body: r#"{"error":"invalid_grant"}"#.to_owned(),
    });
    let err = grants.access_token(terminal).await.unwrap_err();
    assert!(err.is_reauthorization_required(), "{err:?}");
    fake.push_token_fault(TokenFault::Respond {
        status: 405,
        content_type: "text/plain".to_owned(),
        body: "method not allowed".to_owned(),
    });
    let err = grants.access_token(other).await.unwrap_err();
    assert!(
        !err.is_transient() && !err.is_reauthorization_required(),
        "{err:?}"
    );
    assert_eq!(fake.token_calls(), 2, "neither is retried");

    let stats_terminal = refresh_path(&grants.grant(terminal).stats());
    let stats_other = refresh_path(&grants.grant(other).stats());
    assert_eq!(stats_terminal, [0, 0, 1, 0, 1, 0, 0]);
    assert_eq!(stats_other, [0, 0, 0, 1, 1, 0, 0]);
    assert_eq!(
        refresh_path(&grants.stats().totals),
        sum(stats_terminal, stats_other)
    );
}
