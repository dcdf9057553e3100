//! The manager's pure decisions: what a caller's want accepts, what lifts a latch.

use super::*;
use crate::clock::Clock;
use crate::token::cache::CachePolicy;

fn token(access: &str, expires_in: Duration) -> TokenSet {
    TokenSet::new(access).with_expires_in(expires_in)
}

#[tokio::test(start_paused = true)]
async fn what_each_want_accepts() {
    let cache = TokenCache::new(CachePolicy::single(Duration::from_secs(10), Clock::new()));
    let empty = cache.load();
    for want in [
        Want::Usable,
        Want::NewerThan(0),
        Want::Background,
        Want::Save,
    ] {
        assert!(!satisfies(&empty, want), "{want:?} accepted no token");
    }

    let first = cache
        .publish(token(
            "access-token-one-0123456789",
            Duration::from_secs(100),
        ))
        .unwrap();
    assert!(satisfies(&first, Want::Usable));
    assert!(satisfies(&first, Want::Save));
    assert!(satisfies(&first, Want::Background), "a fresh token");
    assert!(satisfies(&first, Want::NewerThan(0)));
    assert!(
        !satisfies(&first, Want::NewerThan(1)),
        "a 401 for generation 1 wants a newer one"
    );
    assert!(!satisfies(&first, Want::NewerThan(2)));

    // Past the refresh point: still usable, no longer enough for a background refresh.
    tokio::time::advance(first.refresh_at - Instant::now()).await;
    assert!(satisfies(&first, Want::Usable));
    assert!(!satisfies(&first, Want::Background));
    // Expired: nothing accepts it, not even a newer generation's want.
    tokio::time::advance(first.expires_at - Instant::now()).await;
    for want in [
        Want::Usable,
        Want::NewerThan(0),
        Want::Background,
        Want::Save,
    ] {
        assert!(
            !satisfies(&first, want),
            "{want:?} accepted an expired token"
        );
    }
}

fn stored(refresh_token: Option<&str>) -> TokenSet {
    let tokens = TokenSet::new("access-token-0123456789");
    match refresh_token {
        Some(rt) => tokens.with_refresh_token(rt),
        None => tokens,
    }
}

#[tokio::test(start_paused = true)]
async fn what_lifts_a_latch() {
    let refused = Latched::new(
        AuthError::ReauthorizationRequired {
            reason: "invalid_grant".to_owned(),
        },
        Refused::RefreshToken(fingerprint("refresh-token-refused")),
    );
    assert!(!refused.lifted_by(None), "nothing stored");
    assert!(
        !refused.lifted_by(Some(&stored(Some("refresh-token-refused")))),
        "the store still holds the refused refresh token"
    );
    assert!(refused.lifted_by(Some(&stored(Some("refresh-token-new")))));
    assert!(
        refused.lifted_by(Some(&stored(None))),
        "tokens without a refresh token are a re-authorization too"
    );

    let removed = Latched::new(AuthError::GrantRemoved, Refused::Removed);
    assert!(!removed.lifted_by(None), "still removed");
    assert!(removed.lifted_by(Some(&stored(Some("refresh-token-refused")))));

    let client = Latched::new(
        AuthError::ReauthorizationRequired {
            reason: "invalid_client".to_owned(),
        },
        Refused::Client,
    );
    assert!(!client.lifted_by(None));
    assert!(!client.lifted_by(Some(&stored(Some("refresh-token-new")))));
}

#[test]
fn fingerprints_tell_refresh_tokens_apart_and_are_never_zero() {
    assert_ne!(
        fingerprint("refresh-token-a"),
        fingerprint("refresh-token-b")
    );
    assert_eq!(
        fingerprint("refresh-token-a"),
        fingerprint("refresh-token-a")
    );
    assert_ne!(fingerprint(""), 0);
}

#[test]
fn the_store_has_moved_on_past_parked_tokens_only_with_a_refresh_token_this_manager_never_had() {
    let mut state = State::default();
    for replaced in ["refresh-token-0", "refresh-token-1"] {
        state.remember_replaced(replaced);
    }
    let parked = stored(Some("refresh-token-2"));
    // The store lost our saves (holds what we replaced): ours are newer.
    assert!(!persist::moved_on(
        &state,
        &stored(Some("refresh-token-1")),
        &parked
    ));
    assert!(!persist::moved_on(
        &state,
        &stored(Some("refresh-token-0")),
        &parked
    ));
    // The store holds the parked tokens' own refresh token: nothing newer there.
    assert!(!persist::moved_on(
        &state,
        &stored(Some("refresh-token-2")),
        &parked
    ));
    // Someone refreshed from our saved tokens, or re-authorized: the store's are newer.
    assert!(persist::moved_on(
        &state,
        &stored(Some("refresh-token-3")),
        &parked
    ));
    assert!(persist::moved_on(&state, &stored(None), &parked));
}

#[test]
fn a_manager_remembers_its_last_two_replaced_refresh_tokens_in_a_small_state() {
    let mut state = State::default();
    for i in 0..4 {
        state.remember_replaced(&format!("refresh-token-{i}"));
    }
    let remembered: Vec<bool> = (0..4)
        .map(|i| state.replaced(&format!("refresh-token-{i}")))
        .collect();
    assert_eq!(remembered, [false, false, true, true]);
    // What a grant of 100,000 keeps idle: the history costs no more than one 64-bit fingerprint did.
    assert!(
        std::mem::size_of::<State>() <= 56,
        "{}",
        std::mem::size_of::<State>()
    );
}

/// A grant of many counts its own refresh path beside the totals, in its manager (allocated at the
/// first event: an evicted or removed grant's next manager starts from 0); a single grant counts
/// only the totals.
#[tokio::test(start_paused = true)]
async fn a_grant_of_many_counts_its_own_refresh_path_and_a_single_grant_only_the_totals() {
    use crate::manager::harness::{expired, grant_manager, manager, Nifty};
    use crate::manager::latches::Latches;
    use crate::store::MemoryStore;

    let nifty = Nifty::new();
    let store = Arc::new(MemoryStore::new());
    let acme = GrantId::new("acme").unwrap();
    store.save(&acme, &expired()).await.unwrap();
    let first = grant_manager(&nifty, Arc::clone(&store), Latches::new(None));
    assert!(!first.own.allocated(), "no counts before the first event");
    first.access_token().await.unwrap();
    assert_eq!(nifty.calls(), 1);
    let own = first.counters().snapshot();
    assert_eq!((own.refreshes, own.token_calls_succeeded), (1, 1));

    // The grant's next manager (after an eviction) on the same policy starts from 0; the totals
    // keep every count.
    let second = Arc::new(TokenManager::new(ManagerParts {
        cache: TokenCache::new(CachePolicy::single(Duration::from_secs(60), Clock::new())),
        policy: Arc::clone(&first.policy),
        store: store.clone(),
        grant: acme.clone(),
    }));
    second.counters().refresh_coalesced();
    second.counters().unauthorized_retry();
    let own = second.counters().snapshot();
    assert_eq!(
        (
            own.refreshes,
            own.refreshes_coalesced,
            own.unauthorized_retries
        ),
        (0, 1, 1),
        "{own:?}"
    );
    let totals = first.policy.counters.snapshot();
    assert_eq!(
        (
            totals.refreshes,
            totals.refreshes_coalesced,
            totals.unauthorized_retries
        ),
        (1, 1, 1)
    );

    // A single grant's handle reports the totals and allocates no counts of its own.
    let single = manager(&Nifty::new(), Arc::new(MemoryStore::with_tokens(expired())));
    single.access_token().await.unwrap();
    assert_eq!(single.counters().snapshot().refreshes, 1);
    assert!(!single.own.allocated());
}
