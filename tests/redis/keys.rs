//! Key parts are escaped so no two grants share a key; out-of-range durations are refused.

use std::collections::HashSet;
use std::time::Duration;

use nifty_auth::{AuthError, RedisStore, TokenSet, TokenStore};

use crate::common::or_skip;
use crate::server::*;

#[tokio::test]
async fn key_parts_are_escaped_so_distinct_client_and_grant_pairs_never_share_a_key() {
    let redis = or_skip!(RedisServer::start());
    let long = "x".repeat(300);
    let long_colon = format!("{}:", "x".repeat(299));
    // The grant name is a grant id (at most 256 bytes, no control characters); the client id is
    // not bounded.
    let long_grant = format!("{}:", "x".repeat(255));
    let pairs: Vec<(&str, &str)> = vec![
        ("a:b", "c"),
        ("a", "b:c"),
        ("a%3Ab", "c"),
        ("a", "b%3Ac"),
        ("\n", "id"),
        ("id", " "),
        ("id", "%"),
        ("id", "%25"),
        ("id", "%0A"),
        ("id", "é"),
        (&long, "id"),
        (&long_colon, "id"),
        ("id", &long_grant),
        ("id", "main:tokens"),
        ("id:main", "tokens"),
    ];
    let stores: Vec<RedisStore> = pairs
        .iter()
        .map(|(client, grant)| {
            RedisStore::builder(redis.url(), *client, *grant)
                .build()
                .unwrap()
        })
        .collect();
    let keys: HashSet<&str> = stores
        .iter()
        .flat_map(|s| [s.key(), s.lock_key()])
        .collect();
    assert_eq!(keys.len(), 2 * pairs.len(), "{keys:#?}");
    assert_eq!(stores[0].key(), "nifty-auth:a%3Ab:c:tokens");
    assert_eq!(stores[1].key(), "nifty-auth:a:b%3Ac:tokens");

    for (i, store) in stores.iter().enumerate() {
        store
            .save(&store.single_grant(), &TokenSet::new(format!("at-{i}")))
            .await
            .unwrap();
    }
    for (i, store) in stores.iter().enumerate() {
        let loaded = store.load(&store.single_grant()).await.unwrap().unwrap();
        assert_eq!(loaded.access_token(), format!("at-{i}"), "{:?}", pairs[i]);
    }
}

#[test]
fn plain_client_ids_and_grant_names_keep_their_key_text() {
    let store = RedisStore::builder("redis://127.0.0.1:1", "Client-1_x.y", "user.42-main_")
        .key_prefix("app:nifty")
        .build()
        .unwrap();
    assert_eq!(store.key(), "app:nifty:Client-1_x.y:user.42-main_:tokens");
    assert_eq!(
        store.lock_key(),
        "app:nifty:Client-1_x.y:user.42-main_:lock"
    );
}

#[test]
fn huge_or_zero_redis_durations_are_configuration_errors_not_panics() {
    let builder = || RedisStore::builder("redis://127.0.0.1:1", "id", "main");
    let refused = [
        builder().command_timeout(Duration::MAX).build(),
        builder().command_timeout(Duration::ZERO).build(),
        builder().connect_timeout(Duration::MAX).build(),
        builder().connect_timeout(Duration::ZERO).build(),
        builder().lock_ttl(Duration::MAX).build(),
        builder().lock_ttl(Duration::from_millis(10)).build(),
        builder().token_ttl(Duration::MAX).build(),
        builder().token_ttl(Duration::ZERO).build(),
    ];
    for result in refused {
        let err = result.unwrap_err();
        assert!(matches!(err, AuthError::Configuration { .. }), "{err:?}");
        assert!(err.to_string().contains("must be between"), "{err}");
    }
    builder()
        .command_timeout(Duration::from_secs(3600))
        .connect_timeout(Duration::from_millis(1))
        .lock_ttl(Duration::from_millis(100))
        .token_ttl(Duration::from_secs(100 * 365 * 24 * 60 * 60))
        .build()
        .unwrap();
}

#[tokio::test]
async fn the_longest_token_ttl_is_accepted_by_redis() {
    let (redis, fake) = or_skip!(redis_and_fake().await);
    let store = RedisStore::builder(redis.url(), fake.client_id(), "long")
        .token_ttl(Duration::from_secs(100 * 365 * 24 * 60 * 60))
        .build()
        .unwrap();
    store
        .save(&store.single_grant(), &TokenSet::new("at-long"))
        .await
        .unwrap();
    assert!(pttl(&redis, store.key()).await > 0);
}

#[tokio::test]
async fn a_grant_name_that_is_not_a_grant_id_is_a_configuration_error() {
    let redis = or_skip!(RedisServer::start());
    for bad in ["\n", "a\u{7f}b", &"x".repeat(257)] {
        let err = RedisStore::builder(redis.url(), "id", bad)
            .build()
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, AuthError::Configuration { .. }), "{err:?}");
        assert!(err.to_string().contains("grant name"), "{err}");
    }
}
