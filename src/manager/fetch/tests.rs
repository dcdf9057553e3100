//! The token fetch and the 401 decision the async front ends share.

use std::sync::Arc;

use crate::manager::harness::{expired, manager, Flaky, Nifty};

#[tokio::test(start_paused = true)]
async fn a_request_waits_for_the_first_token_then_reads_the_cache() {
    let nifty = Nifty::new();
    let manager = manager(&nifty, Flaky::with(expired()));

    let (first, generation) = manager.header_for_request().await.unwrap();
    let (again, same) = manager.header_for_request().await.unwrap();

    assert_eq!(first, "Bearer access-token-1-0123456789");
    assert_eq!((again, same), (first, generation));
    assert_eq!(nifty.calls(), 1);
    assert_eq!(
        manager.access_token().await.unwrap(),
        "access-token-1-0123456789"
    );
    assert_eq!(nifty.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_401_refreshes_once_then_an_older_401_uses_the_newer_token_without_a_call() {
    let nifty = Nifty::new();
    let manager = manager(&nifty, Flaky::with(expired()));
    let (_, g1) = manager.header_for_request().await.unwrap();

    let (header, g2) = manager
        .header_after_unauthorized(g1)
        .await
        .unwrap()
        .expect("a 401 for the current token refreshes");
    assert_eq!(header, "Bearer access-token-2-0123456789");
    assert!(g2 > g1);
    assert_eq!(nifty.calls(), 2);

    // Another request rejected with the old token: the newer one, no call.
    let (newer, g) = manager
        .header_after_unauthorized(g1)
        .await
        .unwrap()
        .expect("retry with the newer token");
    assert_eq!((newer, g), (header, g2));
    assert_eq!(nifty.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_token_rejected_again_within_the_cooldown_is_not_refreshed_until_it_passes() {
    let nifty = Nifty::new();
    let manager = manager(&nifty, Flaky::with(expired()));
    let (_, g1) = manager.header_for_request().await.unwrap();
    let (_, g2) = manager
        .header_after_unauthorized(g1)
        .await
        .unwrap()
        .unwrap();
    // The retry with the new token was answered 401 too.
    manager.rejected_again(g2);

    assert!(manager
        .header_after_unauthorized(g2)
        .await
        .unwrap()
        .is_none());
    assert_eq!(nifty.calls(), 2);

    tokio::time::advance(std::time::Duration::from_secs(31)).await;
    let (_, g3) = Arc::clone(&manager)
        .header_after_unauthorized(g2)
        .await
        .unwrap()
        .expect("after the cooldown a 401 refreshes again");
    assert!(g3 > g2);
    assert_eq!(nifty.calls(), 3);
}
