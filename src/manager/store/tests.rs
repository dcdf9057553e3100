//! The manager's view of its store: lock errors, fingerprints.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::future::BoxFuture;
use crate::manager::harness::{manager, Nifty};
use crate::store::LockTimeout;

/// How the store of these tests answers `lock`.
#[derive(Default)]
enum Answer {
    #[default]
    Free,
    HeldElsewhere,
    Broken,
}

/// A store that holds nothing, answers every lock as told and records the bound each lock was
/// asked to wait for.
#[derive(Default)]
struct Locks {
    answer: Answer,
    bounds: parking_lot::Mutex<Vec<Duration>>,
}

impl Locks {
    fn answering(answer: Answer) -> Arc<Self> {
        Arc::new(Locks {
            answer,
            ..Locks::default()
        })
    }
}

impl TokenStore for Locks {
    fn load<'a>(&'a self, _: &'a GrantId) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
        Box::pin(async { Ok(None) })
    }
    fn save<'a>(&'a self, _: &'a GrantId, _: &'a TokenSet) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async { Ok(()) })
    }
    fn remove<'a>(&'a self, _: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async { Ok(()) })
    }
    fn lock<'a>(
        &'a self,
        _: &'a GrantId,
        max_hold: Duration,
    ) -> BoxFuture<'a, Result<StoreLock, BoxError>> {
        self.bounds.lock().push(max_hold);
        let answer: Result<StoreLock, BoxError> = match self.answer {
            Answer::Free => Ok(StoreLock::none()),
            Answer::HeldElsewhere => {
                Err(LockTimeout::new(Duration::from_secs(12), "another replica").into())
            }
            Answer::Broken => Err("connection refused".into()),
        };
        Box::pin(async move { answer })
    }
}

#[tokio::test(start_paused = true)]
async fn a_lock_held_elsewhere_is_refresh_lock_held_and_a_broken_one_a_store_error() {
    let nifty = Nifty::new();
    let held = manager(&nifty, Locks::answering(Answer::HeldElsewhere));
    let broken = manager(&nifty, Locks::answering(Answer::Broken));

    match held.lock_store().await {
        Err(AuthError::RefreshLockHeld { waited }) => assert_eq!(waited, Duration::from_secs(12)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        broken.lock_store().await,
        Err(AuthError::Store { .. })
    ));
    assert_eq!(nifty.calls(), 0);
}

#[test]
fn fingerprints_are_never_zero_and_tell_tokens_apart() {
    assert_ne!(fingerprint(""), 0);
    assert_eq!(fingerprint("refresh-1"), fingerprint("refresh-1"));
    assert_ne!(fingerprint("refresh-1"), fingerprint("refresh-2"));
}

#[tokio::test(start_paused = true)]
async fn a_lock_waits_as_long_as_a_refresh_can_take_and_a_try_not_at_all() {
    let nifty = Nifty::new();
    let store = Locks::answering(Answer::Free);
    let manager = manager(&nifty, store.clone());

    manager.lock_store().await.unwrap().release().await;
    manager.try_lock_store().await.unwrap().release().await;

    // One attempt of at most an hour (the harness's timeout), no backoff between attempts, and the
    // store's 10 s margin.
    assert_eq!(
        *store.bounds.lock(),
        vec![Duration::from_secs(3600 + 10), Duration::ZERO]
    );
}
