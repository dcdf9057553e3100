//! The grants layer sends each grant's *current* token: whatever changed it — a refresh after a
//! 401, `set_tokens` (through `NiftyGrants` or a grant's handle), `remove` — the layer's next request
//! carries the change, never a copy of the token it replaced.

use std::time::Duration;

use nifty_auth::testing::{FakeGrant, FakeNifty};
use nifty_auth::{AuthError, GrantId, MemoryStore, NiftyGrants, TokenSet, TokenStore};
use tower::{Layer, ServiceExt};

use crate::common::{auth_error, fake_lasting, get, http_client};
use crate::layer::{whoami, GrantsClient};
use crate::{grants_builder, seed};

/// A fake Nifty, `n` seeded grants in a store and a grants layer that served each grant once.
struct Served {
    fake: FakeNifty,
    store: MemoryStore,
    grants: NiftyGrants,
    svc: GrantsClient,
    seeded: Vec<(GrantId, FakeGrant)>,
}

async fn served(n: usize) -> Served {
    let fake = fake_lasting(Duration::from_secs(3600)).await;
    let store = MemoryStore::new();
    let seeded = seed(&fake, &store, n).await;
    let grants = grants_builder(&fake).store(store.clone()).build().unwrap();
    let svc = grants.layer().layer(http_client());
    for (id, grant) in &seeded {
        assert_eq!(whoami(&svc, &fake, id).await.unwrap(), grant.key().get());
    }
    Served {
        fake,
        store,
        grants,
        svc,
        seeded,
    }
}

/// After a 401 and its refresh, every later request of the grant goes out with the new token: the
/// API answers 401 once, not once per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_401_and_its_refresh_later_requests_send_the_new_token() {
    let s = served(2).await;

    let (id, grant) = &s.seeded[0];
    grant.revoke_access_tokens();
    for _ in 0..5 {
        assert_eq!(
            whoami(&s.svc, &s.fake, id).await.unwrap(),
            grant.key().get()
        );
    }
    assert_eq!(
        grant.unauthorized_served(),
        1,
        "only the first request met the old token"
    );
    assert_eq!(grant.token_calls(), 2, "one refresh, for that one 401");
    assert_eq!(s.grants.stats().totals.unauthorized_retries, 1);
    assert_eq!(s.seeded[1].1.unauthorized_served(), 0);
}

/// `set_tokens` through `NiftyGrants`, then through a grant's own handle: the layer's next request
/// carries each new token (here tokens of other fake grants, so the API names whose token it got).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_set_through_the_grants_or_a_grant_handle_are_sent_by_the_next_request() {
    let s = served(1).await;
    let (id, grant) = &s.seeded[0];

    let second = s.fake.new_grant();
    let token = second.issue_access_token(Some(Duration::from_secs(3600)));
    s.grants
        .set_tokens(
            id,
            TokenSet::new(token).with_expires_in(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    assert_eq!(
        whoami(&s.svc, &s.fake, id).await.unwrap(),
        second.key().get()
    );

    let third = s.fake.new_grant();
    let token = third.issue_access_token(Some(Duration::from_secs(3600)));
    let handle = s.grants.grant(id);
    handle
        .set_tokens(TokenSet::new(token).with_expires_in(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(
        whoami(&s.svc, &s.fake, id).await.unwrap(),
        third.key().get()
    );
    assert_eq!(
        grant.api_calls(),
        1,
        "the replaced token was sent once, before set_tokens"
    );
    assert_eq!(second.api_calls(), 1);
    assert_eq!(third.api_calls(), 1);
    assert_eq!(s.fake.token_calls(), 1);
}

/// A grant removed elsewhere (its store entry deleted), found out by the refresh after a 401: its
/// cleared token is never sent again through the layer; the next request fails with `GrantRemoved`
/// before anything reaches the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_found_removed_never_sends_its_old_token_again() {
    let s = served(1).await;
    let (id, grant) = &s.seeded[0];

    // Removed by another process: the entry is gone; this process learns it at its next refresh.
    s.store.remove(id).await.unwrap();
    grant.revoke_access_tokens();
    // The first request meets the 401, whose refresh finds the grant gone; then three more.
    for sent in 0..4 {
        let error = send(&s.svc, &s.fake, id).await.unwrap_err();
        assert!(
            matches!(auth_error(&error), AuthError::GrantRemoved),
            "request {sent}: {error:?}"
        );
        assert_eq!(
            (grant.api_calls(), grant.unauthorized_served()),
            (2, 1),
            "the removed grant's old token reached the API again"
        );
    }
    assert_eq!(grant.token_calls(), 1);
}

/// `remove` here: the next request through a layer kept across the removal is not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_removed_here_sends_nothing_through_a_kept_layer() {
    let s = served(1).await;
    let (id, grant) = &s.seeded[0];

    s.grants.remove(id).await.unwrap();
    let error = send(&s.svc, &s.fake, id).await.unwrap_err();
    assert!(
        matches!(
            auth_error(&error),
            AuthError::ReauthorizationRequired { .. } | AuthError::GrantRemoved
        ),
        "{error:?}"
    );
    assert_eq!(
        grant.api_calls(),
        1,
        "the removed grant's token reached the API again"
    );
}

/// `GET users/me` as `grant` through `svc`, the answer unread.
async fn send(
    svc: &GrantsClient,
    fake: &FakeNifty,
    grant: &GrantId,
) -> Result<http::Response<hyper::body::Incoming>, nifty_auth::BoxError> {
    let mut request = get(fake.api_url("/users/me"));
    request.extensions_mut().insert(grant.clone());
    svc.clone().oneshot(request).await
}
