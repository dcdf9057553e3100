//! The grants' latch registry.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;

fn dead() -> AuthError {
    AuthError::ReauthorizationRequired {
        reason: "invalid_grant".to_owned(),
    }
}

#[test]
fn the_callback_runs_once_per_latch_and_the_list_is_sorted() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let latches = Latches::new(Some(Arc::new(move |_: &GrantId, _: &AuthError| {
        counted.fetch_add(1, Ordering::SeqCst);
    })));
    let (b, a) = (GrantId::new("b").unwrap(), GrantId::new("a").unwrap());

    latches.latched(&b, &dead(), Refused::RefreshToken(7));
    latches.latched(&b, &dead(), Refused::RefreshToken(7));
    latches.latched(&a, &dead(), Refused::Client);

    assert_eq!(calls.load(Ordering::SeqCst), 2, "once per grant latched");
    assert_eq!(latches.grants(), vec![a.clone(), b.clone()]);
    assert_eq!(latches.len(), 2);
    assert_eq!(
        format!("{latches:?}"),
        "Latches { grants: 2, callback: true }"
    );
    assert!(matches!(
        latches.error_for(&b),
        Some((
            AuthError::ReauthorizationRequired { .. },
            Refused::RefreshToken(7)
        ))
    ));

    latches.lifted(&b);
    assert_eq!(latches.grants(), vec![a]);
    assert!(latches.error_for(&b).is_none());
    // Latched again after a lift: the callback runs again.
    latches.latched(&b, &dead(), Refused::Removed);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
