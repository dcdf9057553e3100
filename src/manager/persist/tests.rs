//! Save before use: a rotated token is used only once saved, and never lost when a save fails.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::AuthError;
use crate::manager::harness::{expired, manager, Flaky, Nifty};
use crate::manager::Want;
use crate::token::TokenSet;

#[tokio::test(start_paused = true)]
async fn a_failed_save_keeps_the_new_token_unused_and_the_next_refresh_saves_it_without_a_call() {
    let nifty = Nifty::new();
    let store = Flaky::with(expired());
    // The store is down: the caller waits out its bound (the rescue retrying meanwhile), then fails.
    store.fail_saves.store(usize::MAX, Ordering::SeqCst);
    let manager = manager(&nifty, store.clone());

    let error = Arc::clone(&manager).token(Want::Usable).await.unwrap_err();
    assert!(matches!(error, AuthError::Store { .. }), "{error:?}");
    assert!(
        manager.header_now().is_none(),
        "an unsaved token is never used"
    );
    assert_eq!(store.refresh_token().as_deref(), Some("refresh-0"));

    // The store is back: the next caller gets the parked tokens, saved first.
    store.fail_saves.store(0, Ordering::SeqCst);
    let current = Arc::clone(&manager).token(Want::Usable).await.unwrap();
    assert_eq!(current.access_token(), Some("access-token-1-0123456789"));
    assert_eq!(store.refresh_token().as_deref(), Some("refresh-1"));
    assert_eq!(
        nifty.calls(),
        1,
        "the parked tokens were saved, not fetched again"
    );
}

#[tokio::test(start_paused = true)]
async fn set_tokens_saves_then_publishes_and_an_exchanged_code_is_saved() {
    let nifty = Nifty::new();
    let store = Flaky::with(expired());
    let manager = manager(&nifty, store.clone());

    Arc::clone(&manager)
        .set_tokens(TokenSet::new("access-token-mine-0123456789").with_refresh_token("mine"))
        .await
        .unwrap();
    assert_eq!(store.refresh_token().as_deref(), Some("mine"));
    assert_eq!(
        manager.header_now().unwrap().0,
        "Bearer access-token-mine-0123456789"
    );

    let bad = Arc::clone(&manager)
        .exchange_code("bad-code".into(), "http://127.0.0.1/cb".into(), None)
        .await
        .unwrap_err();
    assert!(bad.is_reauthorization_required(), "{bad}");
    assert_eq!(
        store.refresh_token().as_deref(),
        Some("mine"),
        "nothing saved"
    );

    Arc::clone(&manager)
        .exchange_code("good-code".into(), "http://127.0.0.1/cb".into(), None)
        .await
        .unwrap();
    assert_eq!(store.refresh_token().as_deref(), Some("refresh-2"));
    assert_eq!(nifty.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_set_tokens_save_leaves_the_current_token_in_use() {
    let nifty = Nifty::new();
    let store = Flaky::with(expired());
    let manager = manager(&nifty, store.clone());
    let (before, _) = manager.header_for_request().await.unwrap();
    store.fail_saves.store(usize::MAX, Ordering::SeqCst);

    let error = Arc::clone(&manager)
        .set_tokens(TokenSet::new("access-token-mine-0123456789"))
        .await
        .unwrap_err();

    assert!(matches!(error, AuthError::Store { .. }), "{error:?}");
    assert_eq!(manager.header_now().unwrap().0, before);
}
