//! Two proxy processes on one Redis (or PostgreSQL) grants store, 100 grants, a round-robin client:
//! exactly one token call per grant per expiry, and no `invalid_grant`.

use std::time::{Duration, SystemTime};

use nifty_auth::testing::Grant;
use nifty_auth::{GrantId, TokenSet, TokenStore};

use crate::harness::*;

#[cfg(feature = "redis")]
#[path = "../redis/server.rs"]
#[allow(
    dead_code,
    reason = "the Redis tests' harness, of which this uses a part"
)]
mod redis_server;

#[cfg(feature = "postgres")]
#[path = "../postgres/server.rs"]
#[allow(
    dead_code,
    reason = "the PostgreSQL tests' harness, of which this uses a part"
)]
mod postgres_server;

const GRANTS: usize = 100;
const REQUESTS_PER_GRANT: usize = 4;

/// Sends `REQUESTS_PER_GRANT` requests per grant, alternating between the proxies, 48 at a time;
/// prints `[[grant index, status, grant the fake saw], …]`.
const ROUND_ROBIN: &str = r#"
import json, sys, urllib.request, urllib.error
from concurrent.futures import ThreadPoolExecutor
proxies, key, grants, per_grant = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def call(n):
    index = n // per_grant
    request = urllib.request.Request(proxies[n % len(proxies)] + "/api/v1.0/users/me", headers={
        "Authorization": "Bearer " + key, "Nifty-Grant": "ws-%d" % index})
    try:
        with urllib.request.urlopen(request) as response:
            return [index, response.status, json.loads(response.read()).get("grant")]
    except urllib.error.HTTPError as e:
        return [index, e.code, e.read().decode()]
with ThreadPoolExecutor(max_workers=48) as pool:
    print(json.dumps(list(pool.map(call, range(grants * per_grant)))))
"#;

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_on_one_redis_make_one_token_call_per_grant_per_expiry() {
    let Some(redis) = redis_server::RedisServer::start() else {
        return;
    };
    let setup = Setup::new().await;
    let store = redis_server::store(&redis, &setup.fake, "seed");
    two_proxies_on_one_store(&setup, &store, &redis.url()).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_on_one_postgres_make_one_token_call_per_grant_per_expiry() {
    let Some(postgres) = postgres_server::PgServer::start() else {
        return;
    };
    let setup = Setup::new().await;
    let store = postgres.store(CLIENT_ID).await;
    two_proxies_on_one_store(&setup, &store, &postgres.url()).await;
}

/// Seeds 100 grants with expired access tokens into `store`, starts two proxies on `url`, and
/// sends every grant's requests round robin, twice.
async fn two_proxies_on_one_store(setup: &Setup, store: &dyn TokenStore, url: &str) {
    let mut fake_grants = Vec::new();
    for i in 0..GRANTS {
        let grant = setup.fake.new_grant();
        let refresh = grant.issue_refresh_token();
        let expired = grant.issue_access_token(Some(Duration::from_secs(1)));
        let tokens = TokenSet::new(expired)
            .with_refresh_token(refresh)
            .with_expires_at(SystemTime::now() - Duration::from_secs(60));
        let id = GrantId::new(format!("ws-{i}")).unwrap();
        store.save(&id, &tokens).await.unwrap();
        fake_grants.push(grant);
    }
    let a = setup.proxy(&["--grants-store", url]).await;
    let b = setup.proxy(&["--grants-store", url]).await;
    let proxies = format!("{},{}", a.url, b.url);
    let (grants, per_grant) = (GRANTS.to_string(), REQUESTS_PER_GRANT.to_string());

    for round in 0..2 {
        let answers = python(ROUND_ROBIN, &[&proxies, KEY, &grants, &per_grant]).await;
        let answers = answers.as_array().unwrap();
        assert_eq!(answers.len(), GRANTS * REQUESTS_PER_GRANT);
        for answer in answers {
            let index = answer[0].as_u64().unwrap() as usize;
            assert_eq!(answer[1], 200, "round {round}: {answer}");
            assert_eq!(
                answer[2],
                fake_grants[index].key().get(),
                "round {round}: {answer}"
            );
        }
        // The first round refreshed every grant once; the second needed no token at all.
        assert_eq!(
            setup.fake.token_calls_for(Grant::RefreshToken),
            GRANTS,
            "round {round}"
        );
        for (i, grant) in fake_grants.iter().enumerate() {
            assert_eq!(grant.token_calls(), 1, "round {round}: grant ws-{i}");
        }
        assert_eq!(setup.fake.invalid_grants_served(), 0);
        assert_eq!(setup.fake.refresh_token_replays(), 0);
    }
    assert_eq!(setup.fake.api_calls(), 2 * GRANTS * REQUESTS_PER_GRANT);
    assert_eq!(setup.fake.unauthorized_served(), 0);
    let served_by = |proxy: &Proxy| {
        proxy
            .log()
            .lines()
            .filter(|l| l.contains("path=/api/v1.0/users/me status=200"))
            .count()
    };
    a.wait_for_lines("status=200", GRANTS * REQUESTS_PER_GRANT)
        .await;
    b.wait_for_lines("status=200", GRANTS * REQUESTS_PER_GRANT)
        .await;
    assert_eq!(served_by(&a), GRANTS * REQUESTS_PER_GRANT, "round robin");
    assert_eq!(served_by(&b), GRANTS * REQUESTS_PER_GRANT, "round robin");
}
