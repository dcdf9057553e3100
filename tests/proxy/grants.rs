//! Many grants from a `dir:` grants store: the `Nifty-Grant` header picks the grant; a request
//! without one (or naming one the store does not know) is answered and never forwarded.

use std::time::{Duration, SystemTime};

use nifty_auth::store::DirectoryStore;
use nifty_auth::testing::{FakeGrant, Grant};
use nifty_auth::{GrantId, TokenSet, TokenStore as _};

use crate::harness::*;

/// Saves a new fake grant under `id` in the directory store; its access token is expired when
/// `expired`, so the first request refreshes it.
async fn save_grant(setup: &Setup, store: &DirectoryStore, id: &str, expired: bool) -> FakeGrant {
    let grant = setup.fake.new_grant();
    let refresh = grant.issue_refresh_token();
    let (lifetime, expires_at) = if expired {
        (
            Duration::from_secs(1),
            SystemTime::now() - Duration::from_secs(60),
        )
    } else {
        (
            Duration::from_secs(3600),
            SystemTime::now() + Duration::from_secs(3600),
        )
    };
    let access = grant.issue_access_token(Some(lifetime));
    let tokens = TokenSet::new(access)
        .with_refresh_token(refresh)
        .with_expires_at(expires_at);
    store
        .save(&GrantId::new(id).unwrap(), &tokens)
        .await
        .unwrap();
    grant
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_gets_the_token_of_the_grant_its_header_names() {
    let setup = Setup::new().await;
    let dir = setup.dir.path().join("grants");
    let store = DirectoryStore::new(&dir);
    let acme = save_grant(&setup, &store, "acme", false).await;
    let globex = save_grant(&setup, &store, "globex/eu", true).await;
    let spec = format!("dir:{}", dir.display());
    let proxy = setup.proxy(&["--grants-store", &spec]).await;
    let me = format!("{}/api/v1.0/users/me", proxy.url);

    for (id, grant) in [("acme", &acme), ("globex/eu", &globex), ("acme", &acme)] {
        let header = format!("Nifty-Grant: {id}");
        let answer = curl_with_key(&["-H", &header, &me]).await;
        assert_eq!(answer.status, 200, "{id}: {}", answer.text());
        assert_eq!(answer.json()["grant"], grant.key().get(), "{id}");
    }
    assert_eq!(
        setup.fake.token_calls_for(Grant::RefreshToken),
        1,
        "globex's expired token"
    );
    assert_eq!(globex.token_calls(), 1);
    assert_eq!(acme.token_calls(), 0);
    assert_never_sent(&setup.fake, KEY);
    assert!(proxy.log().contains("grant=globex/eu"), "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_unknown_grant_is_answered_400_or_404_and_never_forwarded() {
    let setup = Setup::new().await;
    let dir = setup.dir.path().join("grants");
    let store = DirectoryStore::new(&dir);
    save_grant(&setup, &store, "acme", false).await;
    let spec = format!("dir:{}", dir.display());
    let proxy = setup.proxy(&["--grants-store", &spec]).await;
    let url = format!("{}/api/v1.0/projects", proxy.url);

    let missing = curl_with_key(&[&url]).await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json()["error"], "grant_required");
    let twice = curl_with_key(&["-H", "Nifty-Grant: acme", "-H", "Nifty-Grant: acme", &url]).await;
    assert_eq!(twice.status, 400);
    let empty = curl_with_key(&["-H", "Nifty-Grant;", &url]).await;
    assert_eq!(empty.status, 400);
    assert_eq!(empty.json()["error"], "grant_invalid");

    let unknown = curl_with_key(&["-H", "Nifty-Grant: initech", &url]).await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert_eq!(unknown.json()["error"], "unknown_grant");
    assert_eq!(unknown.json()["grant"], "initech");

    assert_eq!(setup.fake.api_calls(), 0);
    assert_eq!(setup.fake.token_calls(), 0);
    let known = curl_with_key(&["-H", "Nifty-Grant: acme", &url]).await;
    assert_eq!(known.status, 200);
    assert_eq!(setup.fake.api_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_needing_reauthorization_is_answered_401_naming_it() {
    let setup = Setup::new().await;
    let dir = setup.dir.path().join("grants");
    let store = DirectoryStore::new(&dir);
    let dead = save_grant(&setup, &store, "dead", true).await;
    let alive = save_grant(&setup, &store, "alive", true).await;
    dead.revoke();
    let spec = format!("dir:{}", dir.display());
    let proxy = setup.proxy(&["--grants-store", &spec]).await;
    let url = format!("{}/api/v1.0/projects", proxy.url);

    for _ in 0..2 {
        let answer = curl_with_key(&["-H", "Nifty-Grant: dead", &url]).await;
        assert_eq!(answer.status, 401, "{}", answer.text());
        let json = answer.json();
        assert_eq!(json["error"], "reauthorization_required");
        assert_eq!(json["grant"], "dead");
        assert!(json["message"].as_str().unwrap().contains("`dead`"));
    }
    assert_eq!(dead.token_calls(), 1, "the latch holds: one invalid_grant");
    assert_eq!(setup.fake.invalid_grants_served(), 1);
    let answer = curl_with_key(&["-H", "Nifty-Grant: alive", &url]).await;
    assert_eq!(answer.status, 200, "other grants are not affected");
    assert_eq!(setup.fake.api_calls(), 1);

    let readyz = format!("{}/_nifty/readyz", proxy.url);
    assert_eq!(curl(&[&readyz]).await.status, 200, "the store answers");
    let one = curl(&["-H", "Nifty-Grant: alive", &readyz]).await;
    assert_eq!(one.status, 401, "asking about one grant needs the key");
    let alive_ready = curl_with_key(&["-H", "Nifty-Grant: alive", &readyz]).await;
    assert_eq!(alive_ready.status, 200, "{}", alive_ready.text());
    let dead_ready = curl_with_key(&["-H", "Nifty-Grant: dead", &readyz]).await;
    assert_eq!(dead_ready.status, 503);
    assert_eq!(dead_ready.json()["error"], "reauthorization_required");
    assert_eq!(dead_ready.json()["grant"], "dead");
    assert_eq!(
        setup.fake.invalid_grants_served(),
        1,
        "readyz made no token call"
    );

    let page = curl_with_key(&[&format!("{}/_nifty/metrics", proxy.url)]).await;
    let text = page.text();
    assert!(
        text.contains("nifty_auth_grants_reauthorization_required 1"),
        "{text}"
    );
    assert!(text.contains("nifty_auth_cached_grants 2"), "{text}");
    assert!(
        text.contains(
            r#"nifty_proxy_requests_total{status="401",grant_class="reauthorization_required"} 2"#
        ),
        "{text}"
    );
    let _ = alive;
}
