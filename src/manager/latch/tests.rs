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
