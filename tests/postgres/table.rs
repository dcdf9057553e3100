//! Encryption at rest, hostile grant ids, migrations and table names.

use std::time::Duration;

use nifty_auth::testing::FakeNifty;
use nifty_auth::{AuthError, GrantId, PostgresStore, TokenSet, TokenStore};

use crate::common::grants_over;
use crate::common::or_skip;
use crate::server::PgServer;

fn tokens(tag: &str) -> TokenSet {
    TokenSet::new(format!("at-visible-{tag}"))
        .with_refresh_token(format!("rt-visible-{tag}"))
        .with_expires_in(Duration::from_secs(600))
}

/// The tokens of `a` and `b` (the expiry is computed at each `tokens` call).
fn same(a: &TokenSet, b: &TokenSet) -> bool {
    a.access_token() == b.access_token() && a.refresh_token() == b.refresh_token()
}

#[tokio::test]
async fn encrypted_rows_hide_the_tokens_a_wrong_key_is_clear_and_a_moved_ciphertext_fails() {
    let pg = or_skip!(PgServer::start());
    let fake = FakeNifty::start().await.unwrap();
    let keyed = |key: [u8; 32]| {
        PostgresStore::connect_builder(&pg.url(), fake.client_id())
            .encryption_key(key)
            .build()
            .unwrap()
    };
    let store = keyed([42; 32]);
    store.migrate().await.unwrap();
    let (alpha, beta) = (
        GrantId::new("alpha").unwrap(),
        GrantId::new("beta").unwrap(),
    );
    TokenStore::save(&store, &alpha, &tokens("alpha"))
        .await
        .unwrap();
    TokenStore::save(&store, &beta, &tokens("beta"))
        .await
        .unwrap();

    let raw = pg.pool().await;
    let column: Vec<u8> =
        sqlx::query_scalar("SELECT token_set FROM nifty_auth_tokens WHERE grant_id = 'alpha'")
            .fetch_one(&raw)
            .await
            .unwrap();
    let text = String::from_utf8_lossy(&column);
    assert!(text.starts_with("enc:v1:"), "{text}");
    assert!(!text.contains("visible"), "{text}");
    assert!(same(
        &TokenStore::load(&store, &alpha).await.unwrap().unwrap(),
        &tokens("alpha")
    ));

    let wrong = keyed([7; 32]);
    let err = TokenStore::load(&wrong, &alpha)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrong encryption key"), "{err}");
    assert!(!err.contains("visible"), "{err}");
    // Through NiftyGrants: a store error, and no token call.
    let grants = grants_over(&fake, wrong);
    let err = grants.access_token(&alpha).await.unwrap_err();
    assert!(matches!(err, AuthError::Store { .. }), "{err:?}");
    assert_eq!(fake.token_calls(), 0);

    // alpha's ciphertext copied into beta's row does not open as beta.
    sqlx::query(
        "UPDATE nifty_auth_tokens SET token_set = \
         (SELECT token_set FROM nifty_auth_tokens WHERE grant_id = 'alpha') WHERE grant_id = 'beta'",
    )
    .execute(&raw)
    .await
    .unwrap();
    let err = TokenStore::load(&store, &beta)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot decrypt"), "{err}");
    assert!(same(
        &TokenStore::load(&store, &alpha).await.unwrap().unwrap(),
        &tokens("alpha")
    ));

    let keyless = PostgresStore::new(raw.clone(), fake.client_id()).unwrap();
    let err = TokenStore::load(&keyless, &alpha)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no encryption key"), "{err}");
}

#[tokio::test]
async fn hostile_grant_ids_round_trip_as_parameters() {
    let pg = or_skip!(PgServer::start());
    let store = pg.store("client'; DROP TABLE nifty_auth_tokens; --").await;
    let ids = [
        "'; DROP TABLE x; --".to_owned(),
        "'; DROP TABLE nifty_auth_tokens; --".to_owned(),
        "it's \"quoted\"".to_owned(),
        "back\\slash\\".to_owned(),
        "$1 $$ %s ?".to_owned(),
        "x".repeat(256),
        "ワークスペース 🚀 é".to_owned(),
    ];
    for (i, id) in ids.iter().enumerate() {
        let id = GrantId::new(id.clone()).unwrap();
        TokenStore::save(&store, &id, &tokens(&i.to_string()))
            .await
            .unwrap();
        let lock = TokenStore::lock(&store, &id, Duration::from_secs(5))
            .await
            .unwrap();
        TokenStore::save_locked(&store, &id, &tokens(&format!("{i}-locked")), &lock)
            .await
            .unwrap();
        lock.release().await;
    }
    for (i, id) in ids.iter().enumerate() {
        let id = GrantId::new(id.clone()).unwrap();
        let loaded = TokenStore::load(&store, &id).await.unwrap().unwrap();
        assert!(same(&loaded, &tokens(&format!("{i}-locked"))), "{id:?}");
    }
    let raw = pg.pool().await;
    let rows: Vec<String> = sqlx::query_scalar("SELECT grant_id FROM nifty_auth_tokens")
        .fetch_all(&raw)
        .await
        .unwrap();
    assert_eq!(rows.len(), ids.len());
    for id in &ids {
        assert!(rows.contains(id), "{id:?} not stored as given");
    }
    TokenStore::remove(&store, &GrantId::new(ids[0].clone()).unwrap())
        .await
        .unwrap();
    assert!(
        TokenStore::load(&store, &GrantId::new(ids[0].clone()).unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn migrate_twice_is_fine_a_schema_qualified_table_works_and_a_bad_name_is_a_config_error() {
    let pg = or_skip!(PgServer::start());
    let store = pg.store("client").await;
    store.migrate().await.unwrap();
    // As the single store of a NiftyAuth: the builder's grant, "default" unless set.
    TokenStore::save(&store, &store.single_grant(), &tokens("single"))
        .await
        .unwrap();
    assert_eq!(store.grant().as_str(), "default");
    assert!(same(
        &TokenStore::load(&store, &store.single_grant())
            .await
            .unwrap()
            .unwrap(),
        &tokens("single")
    ));

    let raw = pg.pool().await;
    sqlx::query("CREATE SCHEMA auth")
        .execute(&raw)
        .await
        .unwrap();
    let qualified = PostgresStore::builder(raw.clone(), "client")
        .table("auth.user")
        .grant("main")
        .build()
        .unwrap();
    qualified.migrate().await.unwrap();
    qualified.migrate().await.unwrap();
    TokenStore::save(&qualified, &qualified.single_grant(), &tokens("qualified"))
        .await
        .unwrap();
    assert_eq!(only_grant_id(&raw, "auth.\"user\"").await, "main");
    // The lock table sits beside it, and a lock on it is a row there.
    let lock = TokenStore::lock(
        &qualified,
        &qualified.single_grant(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(only_grant_id(&raw, "auth.user_lock").await, "main");
    lock.release().await;

    for bad in ["tokens; DROP TABLE x", "Tokens", "a.b.c", "", "\"t\""] {
        let err = PostgresStore::builder(raw.clone(), "client")
            .table(bad)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, AuthError::Configuration { .. }),
            "{bad:?}: {err:?}"
        );
    }
    let err = PostgresStore::connect("not a url", "client").unwrap_err();
    assert!(matches!(err, AuthError::Configuration { .. }), "{err:?}");
    let err = PostgresStore::connect("postgres://u:hunter2@[bad", "client").unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test]
async fn zero_or_huge_postgres_timeouts_are_configuration_errors() {
    let url = "postgres://u@127.0.0.1:1/db";
    let builder = || PostgresStore::connect_builder(url, "client");
    let refused = [
        builder().query_timeout(Duration::ZERO).build(),
        builder().query_timeout(Duration::MAX).build(),
        builder().acquire_timeout(Duration::ZERO).build(),
        builder().acquire_timeout(Duration::from_secs(3601)).build(),
        builder().lock_wait(Duration::ZERO).build(),
        builder().lock_lease(Duration::from_millis(99)).build(),
        builder().lock_lease(Duration::from_secs(3601)).build(),
    ];
    for result in refused {
        let err = result.unwrap_err();
        assert!(matches!(err, AuthError::Configuration { .. }), "{err:?}");
        assert!(err.to_string().contains("must be between"), "{err}");
    }
    let store = builder()
        .query_timeout(Duration::from_millis(1))
        .acquire_timeout(Duration::from_secs(3600))
        .lock_lease(Duration::from_millis(100))
        .build()
        .unwrap();
    let shown = format!("{store:?}");
    assert!(shown.contains("query_timeout: 1ms"), "{shown}");
    assert!(shown.contains("lock_lease: 100ms"), "{shown}");
    let default = format!("{:?}", builder().build().unwrap());
    assert!(default.contains("lock_lease: 10s"), "{default}");
}

/// The `grant_id` of the one row of `table`.
async fn only_grant_id(raw: &sqlx::PgPool, table: &str) -> String {
    sqlx::query_scalar(&format!("SELECT grant_id FROM {table}"))
        .fetch_one(raw)
        .await
        .unwrap()
}
