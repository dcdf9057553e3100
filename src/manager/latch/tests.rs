//! The latch: a dead grant fails fast until new tokens arrive.

use std::sync::Arc;

use crate::manager::harness::{expired, manager, Flaky, Nifty};
use crate::manager::Want;
use crate::token::TokenSet;

#[tokio::test(start_paused = true)]
async fn invalid_grant_latches_callers_fail_without_a_call_and_set_tokens_lifts_it() {
    let nifty = Nifty::new();
    nifty.spend("refresh-0");
    let store = Flaky::with(expired());
    let manager = manager(&nifty, store.clone());

    let refused = Arc::clone(&manager).token(Want::Usable).await.unwrap_err();
    assert!(refused.is_reauthorization_required(), "{refused:?}");
    assert_eq!(nifty.calls(), 1);

    // Latched: every caller fails at once, with no call.
    for _ in 0..5 {
        let again = Arc::clone(&manager).token(Want::Usable).await.unwrap_err();
        assert!(again.is_reauthorization_required(), "{again}");
        assert!(manager.header_for_request().await.is_err());
    }
    assert_eq!(nifty.calls(), 1);

    Arc::clone(&manager)
        .set_tokens(TokenSet::new("access-token-new-0123456789").with_refresh_token("fresh"))
        .await
        .unwrap();
    assert_eq!(
        manager.header_for_request().await.unwrap().0,
        "Bearer access-token-new-0123456789"
    );
    assert_eq!(store.refresh_token().as_deref(), Some("fresh"));
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_does_not_latch() {
    let nifty = Nifty::new();
    nifty.fail_next(1);
    let manager = manager(&nifty, Flaky::with(expired()));

    let failed = Arc::clone(&manager).token(Want::Usable).await.unwrap_err();
    assert!(!failed.is_reauthorization_required(), "{failed:?}");
    let current = Arc::clone(&manager).token(Want::Usable).await.unwrap();

    assert_eq!(current.access_token(), Some("access-token-2-0123456789"));
    assert_eq!(nifty.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_grant_latched_by_invalid_grant_is_reported_and_lifted_but_a_removed_one_is_not_reported()
{
    use crate::grant_id::GrantId;
    use crate::manager::harness::grant_manager;
    use crate::manager::Latches;
    use crate::store::{MemoryStore, TokenStore};

    let acme = GrantId::new("acme").unwrap();
    let nifty = Nifty::new();
    nifty.spend("refresh-0");
    let store = Arc::new(MemoryStore::new());
    store.save(&acme, &expired()).await.unwrap();
    let manager = grant_manager(&nifty, Arc::clone(&store), Latches::new(None));
    let latches = manager.policy.latches.as_ref().unwrap();

    let refused = Arc::clone(&manager).token(Want::Usable).await.unwrap_err();
    assert!(refused.is_reauthorization_required(), "{refused}");
    assert_eq!(latches.grants(), vec![acme.clone()]);

    Arc::clone(&manager)
        .set_tokens(TokenSet::new("access-token-new-0123456789").with_refresh_token("fresh"))
        .await
        .unwrap();
    assert!(latches.grants().is_empty(), "new tokens lift the latch");
    // Lifted in the manager too: a 401 refreshes again (one more call).
    let (_, generation) = manager.header_for_request().await.unwrap();
    manager
        .header_after_unauthorized(generation)
        .await
        .unwrap()
        .expect("refreshed");
    assert_eq!(nifty.calls(), 2);

    // Removed elsewhere: the next refresh finds the entry gone — latched, never reported.
    store.remove(&acme).await.unwrap();
    let (_, generation) = manager.header_for_request().await.unwrap();
    let gone = manager
        .header_after_unauthorized(generation)
        .await
        .unwrap_err();
    assert!(matches!(gone, crate::AuthError::GrantRemoved), "{gone:?}");
    assert!(
        latches.grants().is_empty(),
        "a removal is not a re-authorization"
    );
    assert_eq!(nifty.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_retired_manager_forgets_its_token_and_fails_every_call_without_a_token_call() {
    let nifty = Nifty::new();
    let manager = manager(&nifty, Flaky::with(expired()));
    manager.header_for_request().await.unwrap();

    Arc::clone(&manager).retire().await.unwrap();

    assert!(manager.header_now().is_none());
    for _ in 0..3 {
        let error = manager.header_for_request().await.unwrap_err();
        assert!(matches!(error, crate::AuthError::GrantRemoved), "{error:?}");
        // Retired for good: not even a store re-read brings it back (the store still has tokens).
        tokio::time::advance(std::time::Duration::from_secs(2)).await;
    }
    assert_eq!(nifty.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn latched_callers_reread_the_store_at_most_once_a_second_and_a_reauthorization_found_there_lifts_it(
) {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use crate::store::TokenStore;

    let nifty = Nifty::new();
    nifty.spend("refresh-0");
    let store = Flaky::with(expired());
    let manager = manager(&nifty, store.clone());
    Arc::clone(&manager).token(Want::Usable).await.unwrap_err();
    let loads = store.loads.load(Ordering::SeqCst);

    // Within a second of the latch: fail fast, no store read, no call.
    for _ in 0..5 {
        Arc::clone(&manager).token(Want::Usable).await.unwrap_err();
    }
    assert_eq!(store.loads.load(Ordering::SeqCst), loads);

    // A second later one caller re-reads: still the refused refresh token, so still latched.
    tokio::time::advance(Duration::from_secs(1)).await;
    Arc::clone(&manager).token(Want::Usable).await.unwrap_err();
    Arc::clone(&manager).token(Want::Usable).await.unwrap_err();
    assert_eq!(store.loads.load(Ordering::SeqCst), loads + 1);

    // Re-authorized elsewhere: the next re-read (a second after the last) finds it and lifts.
    let elsewhere = TokenSet::new("access-token-elsewhere-0123456789")
        .with_refresh_token("refresh-elsewhere")
        .with_expires_in(Duration::from_secs(3600));
    store
        .inner
        .save(&crate::grant_id::GrantId::single(), &elsewhere)
        .await
        .unwrap();
    Arc::clone(&manager).token(Want::Usable).await.unwrap_err();
    tokio::time::advance(Duration::from_secs(1)).await;
    let current = Arc::clone(&manager).token(Want::Usable).await.unwrap();

    assert_eq!(
        current.access_token(),
        Some("access-token-elsewhere-0123456789")
    );
    assert_eq!(store.loads.load(Ordering::SeqCst), loads + 2);
    assert_eq!(nifty.calls(), 1, "the stored token was used, not refreshed");
}
