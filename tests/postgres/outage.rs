//! PostgreSQL going away: cached tokens keep flowing, a needed refresh fails with a store error and
//! makes no token call, and refreshes resume when it is back.

use http::StatusCode;

use crate::common::*;
use crate::server::PgServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_keeps_cached_tokens_flowing_fails_refreshes_without_a_token_call_and_recovers(
) {
    let mut pg = or_skip!(PgServer::start());
    let fake = rotating_fake().await;
    let auth = auth_over(
        &fake,
        fake.issue_refresh_token(),
        pg.store(fake.client_id()).await,
    );
    let svc = service(&auth);
    let first = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(first.0, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);

    pg.stop();
    assert_served_without_the_store(&svc, &fake, 20, "PostgreSQL").await;
    assert_eq!(fake.api_calls(), 21);

    // A refresh is needed now (the API rejects the token); without the lock it must not happen.
    assert_no_refresh_without_the_store(&svc, &fake, "postgres").await;

    pg.launch();
    let recovered = served_within(&svc, &fake, 30).await;
    assert!(
        recovered,
        "refreshes did not resume after PostgreSQL came back"
    );
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(fake.refresh_token_replays(), 0);
}
