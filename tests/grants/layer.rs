//! `grants.layer()` and `grants.middleware()`: one tower layer (and one reqwest middleware) for every
//! grant, driven through a real hyper-util client against a `FakeNifty` whose `users/me` says which
//! grant a bearer token belongs to.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use nifty_auth::testing::{FakeGrant, FakeNifty};
use nifty_auth::{BoxError, GrantId, MemoryStore, NiftyGrants, NiftyGrantsService};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::{Layer, ServiceExt};

use crate::common::fake_lasting;
use crate::common::status_of;
use crate::common::{auth_error, get, http_client, HttpClient};
use crate::{grants_builder, seed};

pub(crate) type GrantsClient = NiftyGrantsService<HttpClient>;

fn client(grants: &NiftyGrants) -> GrantsClient {
    grants.layer().layer(http_client())
}

/// `GET users/me` as `grant` through `svc`: the grant key the API saw, or the error.
pub(crate) async fn whoami(
    svc: &GrantsClient,
    fake: &FakeNifty,
    grant: &GrantId,
) -> Result<u64, BoxError> {
    let mut request = get(fake.api_url("/users/me"));
    request.extensions_mut().insert(grant.clone());
    let response = svc.clone().oneshot(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    assert_eq!(status, 200, "{grant}: {body:?}");
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(json["grant"].as_u64().expect("users/me names the grant"))
}

fn key(grant: &FakeGrant) -> u64 {
    grant.key().get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_cold_grants_times_ten_requests_through_one_layer_make_two_hundred_token_calls()
{
    let fake = FakeNifty::start().await.unwrap();
    let store = MemoryStore::new();
    let seeded = Arc::new(seed(&fake, &store, 200).await);
    let grants = grants_builder(&fake).store(store).build().unwrap();
    let svc = client(&grants);

    // Every grant's 10 requests run together; 20 grants at a time keep the sockets bounded.
    let gate = Arc::new(Semaphore::new(20));
    let mut tasks = JoinSet::new();
    for index in 0..seeded.len() {
        let (svc, fake, seeded, gate) = (svc.clone(), fake.clone(), seeded.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let (id, grant) = &seeded[index];
            let mut requests = JoinSet::new();
            for _ in 0..10 {
                let (svc, fake, id) = (svc.clone(), fake.clone(), id.clone());
                requests.spawn(async move { whoami(&svc, &fake, &id).await.unwrap() });
            }
            while let Some(seen) = requests.join_next().await {
                assert_eq!(seen.unwrap(), key(grant), "{id} sent another grant's token");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(fake.token_calls(), 200);
    for (id, grant) in seeded.iter() {
        assert_eq!(grant.token_calls(), 1, "{id}");
        assert_eq!(grant.api_calls(), 10, "{id}");
    }
    let stats = grants.stats().totals;
    assert_eq!(stats.requests_authorized, 2000);
    assert_eq!(stats.unauthorized_retries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_fails_alone_through_the_layer_while_the_others_keep_refreshing() {
    let fake = fake_lasting(Duration::from_secs(1)).await;
    let store = MemoryStore::new();
    let seeded = seed(&fake, &store, 5).await;
    let grants = grants_builder(&fake)
        .store(store)
        .refresh_skew(Duration::ZERO)
        .build()
        .unwrap();
    let svc = client(&grants);
    let (dead, dead_grant) = &seeded[2];
    dead_grant.revoke();

    for round in 1..=2 {
        for (id, grant) in &seeded {
            for _ in 0..3 {
                match whoami(&svc, &fake, id).await {
                    Ok(seen) => {
                        assert_ne!(id, dead, "round {round}");
                        assert_eq!(seen, key(grant), "round {round}");
                    }
                    Err(err) => {
                        assert_eq!(id, dead, "round {round}: {err}");
                        assert!(auth_error(&err).is_reauthorization_required(), "{err}");
                    }
                }
            }
        }
        // Past every token's expiry: the next round refreshes each live grant once more.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
    }
    for (id, grant) in &seeded {
        // The dead grant: one token call, then its latch answers; the others: one per round.
        let expected = if id == dead { 1 } else { 2 };
        assert_eq!(grant.token_calls(), expected, "{id}");
    }
    assert_eq!(
        dead_grant.api_calls(),
        0,
        "no request went out without a token"
    );
    assert_eq!(grants.reauthorization_required(), vec![dead.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_401s_of_one_grant_make_one_refresh_of_that_grant_and_none_of_others() {
    let fake = fake_lasting(Duration::from_secs(3600)).await;
    let store = MemoryStore::new();
    let seeded = seed(&fake, &store, 4).await;
    let grants = grants_builder(&fake).store(store).build().unwrap();
    let svc = client(&grants);
    for (id, grant) in &seeded {
        assert_eq!(whoami(&svc, &fake, id).await.unwrap(), key(grant));
    }
    assert_eq!(fake.token_calls(), 4);

    let (rejected, rejected_grant) = &seeded[0];
    rejected_grant.revoke_access_tokens();
    // The refresh is held until all 20 callers were rejected with the old token (an event, not a
    // hope that the refresh is slower than 20 requests).
    let hold = fake.hold_token_answers();
    let mut tasks = JoinSet::new();
    for (id, grant) in &seeded {
        let callers = if id == rejected { 20 } else { 5 };
        for _ in 0..callers {
            let (svc, fake, id, expected) = (svc.clone(), fake.clone(), id.clone(), key(grant));
            tasks.spawn(
                async move { assert_eq!(whoami(&svc, &fake, &id).await.unwrap(), expected) },
            );
        }
    }
    tokio::time::timeout(Duration::from_secs(30), async {
        while rejected_grant.unauthorized_served() < 20 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("all 20 requests of the rejected grant were answered 401");
    hold.release();
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(
        rejected_grant.token_calls(),
        2,
        "one refresh for its 20 401s"
    );
    assert_eq!(rejected_grant.unauthorized_served(), 20);
    for (id, grant) in &seeded[1..] {
        assert_eq!(grant.token_calls(), 1, "{id}");
        assert_eq!(grant.unauthorized_served(), 0, "{id}");
    }
    assert_eq!(grants.stats().totals.unauthorized_retries, 20);
}

#[tokio::test]
async fn a_request_without_a_grant_id_is_never_sent_and_other_origins_pass_untouched() {
    let fake = FakeNifty::start().await.unwrap();
    let elsewhere = FakeNifty::start().await.unwrap();
    let grants = grants_builder(&fake).build().unwrap();
    let svc = client(&grants);

    let err = svc
        .clone()
        .oneshot(get(fake.api_url("/projects")))
        .await
        .unwrap_err();
    let err = auth_error(&err);
    assert!(err.is_missing_grant(), "{err}");
    assert!(!err.is_transient() && !err.is_terminal());
    assert!(err.to_string().contains("GrantId"), "{err}");
    assert_eq!(fake.api_calls(), 0, "the request was not sent");
    assert_eq!(fake.token_calls(), 0);

    // Another origin: sent as it is, with no grant and no token.
    assert_eq!(
        status_of(&svc, get(elsewhere.api_url("/projects"))).await,
        401
    );
    let seen = elsewhere.api_requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization, None);

    // The caller's own Authorization (every value) is kept, grant or not.
    let mut own = get(fake.api_url("/projects"));
    own.headers_mut()
        .append("authorization", "Bearer mine-1".parse().unwrap());
    own.headers_mut()
        .append("authorization", "Bearer mine-2".parse().unwrap());
    let response = svc.clone().oneshot(own).await.unwrap();
    assert_eq!(response.status(), 401);
    let seen = fake.api_requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer mine-1"));
    assert_eq!(fake.token_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_grants_are_reloaded_through_the_layer_without_token_calls() {
    let fake = fake_lasting(Duration::from_secs(3600)).await;
    let store = MemoryStore::new();
    let seeded = seed(&fake, &store, 100).await;
    let grants = grants_builder(&fake)
        .store(store)
        .max_cached_grants(10)
        .build()
        .unwrap();
    let svc = client(&grants);
    for round in 0..3 {
        for (id, grant) in &seeded {
            assert_eq!(
                whoami(&svc, &fake, id).await.unwrap(),
                key(grant),
                "{round}"
            );
            assert!(grants.cached_grants() <= 10, "{}", grants.cached_grants());
        }
        // The first round refreshed each grant once; later rounds reload the saved tokens.
        assert_eq!(fake.token_calls(), 100, "round {round}");
    }
    assert!(grants.stats().evictions >= 290, "{:?}", grants.stats());
}

#[tokio::test]
async fn a_layer_of_one_grant_still_serves_requests_without_a_grant_id() {
    let fake = FakeNifty::start().await.unwrap();
    let store = MemoryStore::new();
    let seeded = seed(&fake, &store, 2).await;
    let grants = grants_builder(&fake).store(store).build().unwrap();
    let (id, grant) = &seeded[1];
    let one = grants.grant(id).layer().layer(http_client());
    let response = one.oneshot(get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["grant"].as_u64(), Some(key(grant)));
}

#[cfg(feature = "reqwest")]
#[tokio::test]
async fn the_middleware_reads_the_grant_from_reqwest_extensions_and_refuses_requests_without_one() {
    use nifty_auth::AuthError;

    let fake = fake_lasting(Duration::from_secs(3600)).await;
    let store = MemoryStore::new();
    let seeded = seed(&fake, &store, 3).await;
    let grants = grants_builder(&fake).store(store).build().unwrap();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(grants.middleware())
        .build();
    for _ in 0..2 {
        for (id, grant) in &seeded {
            let response = client
                .get(fake.api_url("/users/me"))
                .with_extension(id.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let json: serde_json::Value = response.json().await.unwrap();
            assert_eq!(json["grant"].as_u64(), Some(key(grant)), "{id}");
        }
    }
    assert_eq!(fake.token_calls(), 3);

    // 401 on one grant: one refresh of that grant, the retry succeeds.
    let (id, grant) = &seeded[0];
    grant.revoke_access_tokens();
    let response = client
        .post(fake.api_url("/tasks"))
        .body("{}")
        .with_extension(id.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(grant.token_calls(), 2);
    assert_eq!(fake.token_calls(), 4);

    let calls = fake.api_calls();
    let err = client
        .get(fake.api_url("/users/me"))
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(err) = err else {
        panic!("expected a middleware error, got {err:?}");
    };
    let err = err.downcast_ref::<AuthError>().expect("an AuthError");
    assert!(err.is_missing_grant(), "{err}");
    assert_eq!(fake.api_calls(), calls, "the request was not sent");
}

/// A request through the layer in a grant's skew window goes out with the current token and starts
/// that grant's refresh in the background, before the token expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_the_skew_window_starts_the_grants_refresh_in_the_background() {
    let fake = fake_lasting(Duration::from_secs(4)).await;
    let store = MemoryStore::new();
    let seeded = seed(&fake, &store, 1).await;
    let (id, grant) = &seeded[0];
    // The skew is clamped to half a token's life: the refresh point is 2 s after issue.
    let grants = grants_builder(&fake)
        .refresh_skew(Duration::from_secs(60))
        .store(store)
        .build()
        .unwrap();
    let svc = client(&grants);
    assert_eq!(whoami(&svc, &fake, id).await.unwrap(), key(grant));
    assert_eq!(grant.token_calls(), 1);

    // Into the window (2 s to 4 s after issue): the request is served, and the refresh starts.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(whoami(&svc, &fake, id).await.unwrap(), key(grant));
    let mut polls = 0;
    while grant.token_calls() < 2 {
        polls += 1;
        assert!(polls < 500, "no refresh started from the skew window");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(grant.token_calls(), 2);
}
