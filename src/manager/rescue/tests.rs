//! The rescue task: tokens whose save failed are saved by the manager on its own.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::manager::harness::{expired, manager, Flaky, Nifty};
use crate::manager::Want;

#[tokio::test(start_paused = true)]
async fn parked_tokens_are_saved_by_the_rescue_task_with_no_caller_and_no_new_token_call() {
    let nifty = Nifty::new();
    let store = Flaky::with(expired());
    // The refresh's save and the rescue's first two tries fail.
    store.fail_saves.store(3, Ordering::SeqCst);
    let manager = manager(&nifty, store.clone());

    Arc::clone(&manager).token(Want::Usable).await.unwrap_err();
    assert_eq!(store.refresh_token().as_deref(), Some("refresh-0"));

    // Each try waits 50–100 ms, then 100–200 ms, … capped at 1 s: a few seconds cover four tries.
    let mut waited = Duration::ZERO;
    while store.saves.load(Ordering::SeqCst) < 4 {
        assert!(
            waited < Duration::from_secs(60),
            "no rescue within a minute"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }

    assert_eq!(store.refresh_token().as_deref(), Some("refresh-1"));
    assert_eq!(
        nifty.calls(),
        1,
        "the rescue saves; it never calls the endpoint"
    );
    // Once saved, the rotated token is published.
    assert_eq!(
        manager.header_now().unwrap().0,
        "Bearer access-token-1-0123456789"
    );
    // And the task has ended: no further save however long we wait.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(store.saves.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn the_rescue_first_tries_50_to_100_ms_after_the_failed_refresh() {
    let nifty = Nifty::new();
    let store = Flaky::with(expired());
    // The refresh's three saves fail; the rescue's first try succeeds.
    store.fail_saves.store(3, Ordering::SeqCst);
    let manager = manager(&nifty, store.clone());

    Arc::clone(&manager).token(Want::Usable).await.unwrap_err();
    assert_eq!(store.saves.load(Ordering::SeqCst), 3);

    tokio::time::sleep(Duration::from_millis(49)).await;
    assert_eq!(
        store.saves.load(Ordering::SeqCst),
        3,
        "not before half the first delay"
    );
    tokio::time::sleep(Duration::from_millis(52)).await;
    assert_eq!(
        store.saves.load(Ordering::SeqCst),
        4,
        "within the first delay"
    );
    assert_eq!(store.refresh_token().as_deref(), Some("refresh-1"));
}
