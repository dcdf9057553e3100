//! Single flight: one token call for any number of callers, and a refresh that outlives them.

use crate::manager::harness::{expired, manager, Flaky, Nifty};
use crate::manager::Want;

#[tokio::test(start_paused = true)]
async fn twenty_callers_while_the_endpoint_is_held_make_one_token_call() {
    let nifty = Nifty::new();
    let store = Flaky::with(expired());
    let manager = manager(&nifty, store.clone());
    nifty.hold();

    let callers: Vec<_> = (0..20)
        .map(|_| tokio::spawn(std::sync::Arc::clone(&manager).token(Want::Usable)))
        .collect();
    nifty.arrived(1).await;
    nifty.release();
    let mut generations = Vec::new();
    for caller in callers {
        generations.push(caller.await.unwrap().unwrap().generation);
    }

    assert_eq!(nifty.calls(), 1);
    assert!(
        generations.iter().all(|g| *g == generations[0]),
        "{generations:?}"
    );
    assert_eq!(store.refresh_token().as_deref(), Some("refresh-1"));
    let stats = manager.counters().snapshot();
    assert_eq!(stats.refreshes, 1);
}

#[tokio::test(start_paused = true)]
async fn callers_dropped_mid_refresh_do_not_cancel_it_and_the_rotated_token_is_saved() {
    let nifty = Nifty::new();
    let store = Flaky::with(expired());
    let manager = manager(&nifty, store.clone());
    nifty.hold();

    let callers: Vec<_> = (0..5)
        .map(|_| tokio::spawn(std::sync::Arc::clone(&manager).token(Want::Usable)))
        .collect();
    nifty.arrived(1).await;
    for caller in &callers {
        caller.abort();
    }
    for caller in callers {
        assert!(caller.await.unwrap_err().is_cancelled());
    }
    nifty.release();
    // A new caller joins the refresh still running (or finds its token): no second call.
    let current = std::sync::Arc::clone(&manager)
        .token(Want::Usable)
        .await
        .unwrap();

    assert_eq!(nifty.calls(), 1);
    assert_eq!(current.access_token(), Some("access-token-1-0123456789"));
    assert_eq!(store.refresh_token().as_deref(), Some("refresh-1"));
}

#[tokio::test(start_paused = true)]
async fn a_stale_token_is_served_at_once_and_refreshed_once_in_the_background() {
    let nifty = Nifty::new();
    // Inside the 60 s skew: usable, not fresh.
    let stale = expired().with_expires_in(std::time::Duration::from_secs(30));
    let store = Flaky::with(stale);
    let manager = manager(&nifty, store.clone());
    // The first use loads the store (no call: its access token is still usable).
    std::sync::Arc::clone(&manager)
        .token(Want::Usable)
        .await
        .unwrap();
    assert_eq!(nifty.calls(), 0);
    // Past its refresh point (half its 30 s life: the skew is clamped to that), not expired.
    tokio::time::advance(std::time::Duration::from_secs(16)).await;
    nifty.hold();

    for _ in 0..10 {
        let (header, _) = manager.header_now().expect("the stale token is served");
        assert_eq!(header, "Bearer access-token-0-0123456789");
    }
    nifty.arrived(1).await;
    nifty.release();
    let current = std::sync::Arc::clone(&manager)
        .token(Want::Background)
        .await
        .unwrap();

    assert_eq!(current.access_token(), Some("access-token-1-0123456789"));
    assert_eq!(
        nifty.calls(),
        1,
        "ten stale reads start one background refresh"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_background_refresh_is_not_retried_by_requests_until_its_cooldown_passes() {
    use std::time::Duration;
    let nifty = Nifty::new();
    let store = Flaky::with(expired().with_expires_in(Duration::from_secs(30)));
    let manager = manager(&nifty, store);
    std::sync::Arc::clone(&manager)
        .token(Want::Usable)
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(16)).await; // past the refresh point
    nifty.fail_next(1);

    manager.header_now().expect("stale, still served");
    nifty.arrived(1).await;
    // Let the failed background refresh land.
    for _ in 0..10_000 {
        if !manager.busy() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(!manager.busy(), "the failed background refresh never ended");
    // Within the cooldown (the backoff's max, 10 ms here) stale reads start nothing.
    for _ in 0..5 {
        manager.header_now().expect("still served");
    }
    assert_eq!(nifty.calls(), 1);
    assert!(!manager.busy());

    tokio::time::advance(Duration::from_millis(11)).await;
    manager.header_now().expect("still served");
    nifty.arrived(2).await;
    assert_eq!(
        nifty.calls(),
        2,
        "after the cooldown one more background refresh"
    );
}

#[tokio::test(start_paused = true)]
async fn a_manager_is_busy_while_a_refresh_runs_or_tokens_wait_unsaved() {
    use std::sync::atomic::Ordering;
    let nifty = Nifty::new();
    let store = Flaky::with(expired());
    let manager = manager(&nifty, store.clone());
    assert!(!manager.busy());
    assert!(manager.can_refresh());
    assert!(manager.endpoint_client().is_some());

    nifty.hold();
    let caller = tokio::spawn(std::sync::Arc::clone(&manager).token(Want::Usable));
    nifty.arrived(1).await;
    assert!(manager.busy(), "a refresh is running");
    store.fail_saves.store(usize::MAX, Ordering::SeqCst);
    nifty.release();
    caller.await.unwrap().unwrap_err();
    assert!(manager.busy(), "rotated tokens wait unsaved");

    store.fail_saves.store(0, Ordering::SeqCst);
    std::sync::Arc::clone(&manager)
        .token(Want::Usable)
        .await
        .unwrap();
    assert!(!manager.busy());
}
