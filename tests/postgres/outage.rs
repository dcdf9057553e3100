//! PostgreSQL going away: cached tokens keep flowing, a needed refresh fails with a store error and
//! makes no token call, and refreshes resume when it is back.

use std::time::Duration;

use http::StatusCode;
use nifty_auth::AuthError;

use crate::common::*;
use crate::server::PgServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_keeps_cached_tokens_flowing_fails_refreshes_without_a_token_call_and_recovers(
) {
    let Some(mut pg) = PgServer::start() else {
        return;
    };
    let fake = rotating_fake().await;
    let auth = builder(&fake)
        .store(pg.store(fake.client_id()).await)
        .refresh_token(fake.issue_refresh_token())
        .build()
        .unwrap();
    let svc = service(&auth);
    let first = send(&svc, get(fake.api_url("/users/me"))).await.unwrap();
    assert_eq!(first.0, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);

    pg.stop();
    for _ in 0..20 {
        let (status, _) = send(&svc, get(fake.api_url("/projects"))).await.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "a valid cached token needs no PostgreSQL"
        );
    }
    assert_eq!(fake.api_calls(), 21);

    // A refresh is needed now (the API rejects the token); without the lock it must not happen.
    fake.revoke_access_tokens();
    let err = send(&svc, get(fake.api_url("/projects")))
        .await
        .unwrap_err();
    let auth_err = auth_error(&err);
    assert!(matches!(auth_err, AuthError::Store { .. }), "{auth_err:?}");
    let chain = format!(
        "{auth_err}: {}",
        std::error::Error::source(auth_err).unwrap()
    );
    assert!(chain.contains("postgres"), "{chain}");
    assert_eq!(fake.token_calls(), 1, "no refresh without the lock");

    pg.launch();
    let mut recovered = false;
    for _ in 0..30 {
        match send(&svc, get(fake.api_url("/projects"))).await {
            Ok((StatusCode::OK, _)) => {
                recovered = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(
        recovered,
        "refreshes did not resume after PostgreSQL came back"
    );
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(fake.refresh_token_replays(), 0);
}
