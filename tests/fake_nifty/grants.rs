//! Many grants side by side: per-grant codes, refresh tokens, counts and revocation; which grant
//! a bearer belongs to; the rate-limit fault.

use std::time::Duration;

use http::StatusCode;
use nifty_auth::testing::{FakeGrant, FakeNifty, TokenFault};
use serde_json::json;

use super::*;

/// Refreshes `refresh_token` and returns the new access token and refresh token.
async fn refreshed(client: &HttpClient, fake: &FakeNifty, refresh_token: &str) -> (String, String) {
    let answer = refresh(client, fake, refresh_token).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.json());
    let json = answer.json();
    (
        str_field(&json, "access_token").to_owned(),
        str_field(&json, "refresh_token").to_owned(),
    )
}

/// The `grant` field of `users/me` for this bearer, or the status if it was not `200`.
async fn grant_of_me(client: &HttpClient, fake: &FakeNifty, token: &str) -> Result<Value, u16> {
    let me = get(client, fake, "/users/me", Some(token)).await;
    if me.status == StatusCode::OK {
        Ok(me.json()["grant"].clone())
    } else {
        Err(me.status.as_u16())
    }
}

#[tokio::test]
async fn each_grant_rotates_its_own_refresh_token_and_counts_its_own_calls() {
    let (fake, client) = started().await;
    let (a, b) = (fake.new_grant(), fake.new_grant());
    assert_ne!(a.key(), b.key());
    assert_eq!(a.current_refresh_token(), None);
    let (rt_a, rt_b) = (a.issue_refresh_token(), b.issue_refresh_token());

    let (_, rt_a2) = refreshed(&client, &fake, &rt_a).await;
    let (_, rt_a3) = refreshed(&client, &fake, &rt_a2).await;
    let (_, rt_b2) = refreshed(&client, &fake, &rt_b).await;

    assert_eq!(a.current_refresh_token(), Some(rt_a3));
    assert_eq!(b.current_refresh_token(), Some(rt_b2));
    assert_eq!((a.token_calls(), b.token_calls()), (2, 1));
    assert_eq!(fake.token_calls(), 3);
    assert_eq!(
        (a.max_token_calls_in_flight(), a.token_calls_in_flight()),
        (1, 0)
    );
    let grants: Vec<_> = fake.token_requests().iter().map(|r| r.grant).collect();
    assert_eq!(grants, [Some(a.key()), Some(a.key()), Some(b.key())]);
    // A handle from the key is the same grant.
    assert_eq!(fake.grant(b.key()).token_calls(), 1);
}

#[tokio::test]
async fn a_grants_code_exchange_is_counted_for_that_grant() {
    let (fake, client) = started().await;
    let (grant, other) = (fake.new_grant(), fake.new_grant());
    let code = grant.issue_code("http://127.0.0.1/cb");
    let exchange = json!({ "grant_type": "authorization_code", "code": code, "redirect_uri": "http://127.0.0.1/cb" });

    let answer = token(&client, &fake, exchange.clone()).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let access_token = str_field(&answer.json(), "access_token").to_owned();
    assert_eq!(
        grant.current_refresh_token().as_deref(),
        Some(str_field(&answer.json(), "refresh_token"))
    );
    assert_eq!(fake.grant_of_bearer(&access_token), Some(grant.key()));
    // The code is one-time: its replay is this grant's invalid_grant, not the other's.
    assert_invalid_grant(&token(&client, &fake, exchange).await);
    assert_eq!((grant.token_calls(), grant.invalid_grants_served()), (2, 1));
    assert_eq!((other.token_calls(), other.invalid_grants_served()), (0, 0));
    assert_eq!(fake.invalid_grants_served(), 1);
}

#[tokio::test]
async fn users_me_names_the_grant_of_the_bearer_and_api_calls_are_counted_per_grant() {
    let (fake, client) = started().await;
    let grants: Vec<FakeGrant> = (0..3).map(|_| fake.new_grant()).collect();
    let mut tokens = Vec::new();
    for grant in &grants {
        let (access_token, _) = refreshed(&client, &fake, &grant.issue_refresh_token()).await;
        tokens.push(access_token);
    }

    for (i, (grant, token)) in grants.iter().zip(&tokens).enumerate() {
        for _ in 0..=i {
            assert_eq!(
                grant_of_me(&client, &fake, token).await,
                Ok(json!(grant.key().get()))
            );
        }
        assert_eq!(fake.grant_of_bearer(token), Some(grant.key()));
    }
    let counts: Vec<usize> = grants.iter().map(FakeGrant::api_calls).collect();
    assert_eq!(counts, [1, 2, 3]);
    assert_eq!(fake.api_calls(), 6);
    assert_eq!(fake.api_requests()[5].grant, Some(grants[2].key()));

    // A token of no grant, and one the fake never issued.
    let loose = fake.issue_access_token(None);
    assert_eq!(grant_of_me(&client, &fake, &loose).await, Ok(Value::Null));
    assert_eq!(fake.grant_of_bearer(&loose), None);
    assert_eq!(grant_of_me(&client, &fake, "at-bogus").await, Err(401));
    assert_eq!(fake.grant_of_bearer("at-bogus"), None);
    assert_eq!(fake.api_calls(), 8);
    assert_eq!(grants.iter().map(FakeGrant::api_calls).sum::<usize>(), 6);
}

#[tokio::test]
async fn revoking_one_grant_leaves_the_others_working() {
    let (fake, client) = started().await;
    let (a, b) = (fake.new_grant(), fake.new_grant());
    let (at_a, rt_a) = refreshed(&client, &fake, &a.issue_refresh_token()).await;
    let (at_b, rt_b) = refreshed(&client, &fake, &b.issue_refresh_token()).await;

    a.revoke();
    assert!(a.is_revoked() && !b.is_revoked());
    assert_eq!(a.current_refresh_token(), None);
    assert_invalid_grant(&refresh(&client, &fake, &rt_a).await);
    assert_eq!(grant_of_me(&client, &fake, &at_a).await, Err(401));
    // A revoked grant's new code cannot be exchanged either.
    let code = a.issue_code("http://127.0.0.1/cb");
    let exchange = json!({ "grant_type": "authorization_code", "code": code, "redirect_uri": "http://127.0.0.1/cb" });
    assert_invalid_grant(&token(&client, &fake, exchange).await);

    assert_eq!(
        grant_of_me(&client, &fake, &at_b).await,
        Ok(json!(b.key().get()))
    );
    let (at_b2, _) = refreshed(&client, &fake, &rt_b).await;
    assert_eq!(
        grant_of_me(&client, &fake, &at_b2).await,
        Ok(json!(b.key().get()))
    );

    assert_eq!((a.invalid_grants_served(), a.unauthorized_served()), (2, 1));
    assert_eq!((b.invalid_grants_served(), b.unauthorized_served()), (0, 0));
    assert_eq!((a.token_calls(), b.token_calls()), (3, 2));
    // The revoked grant's token still says whose it is.
    assert_eq!(fake.grant_of_bearer(&at_a), Some(a.key()));
}

#[tokio::test]
async fn a_replay_revokes_only_the_replayed_grant() {
    let (fake, client) = started().await;
    let (a, b) = (fake.new_grant(), fake.new_grant());
    let rt_a = a.issue_refresh_token();
    let rt_b = b.issue_refresh_token();
    refreshed(&client, &fake, &rt_a).await;

    assert_invalid_grant(&refresh(&client, &fake, &rt_a).await);
    assert!(a.is_revoked());
    assert_eq!(fake.refresh_token_replays(), 1);
    assert!(!b.is_revoked());
    refreshed(&client, &fake, &rt_b).await;
    assert_eq!(
        (a.invalid_grants_served(), b.invalid_grants_served()),
        (1, 0)
    );
}

#[tokio::test]
async fn a_grants_access_token_revocation_spares_other_grants_and_its_refresh_token() {
    let (fake, client) = started().await;
    let (a, b) = (fake.new_grant(), fake.new_grant());
    let (at_a, rt_a) = refreshed(&client, &fake, &a.issue_refresh_token()).await;
    let at_b = b.issue_access_token(None);
    assert_eq!(fake.grant_of_bearer(&at_b), Some(b.key()));

    a.revoke_access_tokens();
    assert_eq!(grant_of_me(&client, &fake, &at_a).await, Err(401));
    assert_eq!(
        grant_of_me(&client, &fake, &at_b).await,
        Ok(json!(b.key().get()))
    );
    let (at_a2, _) = refreshed(&client, &fake, &rt_a).await;
    assert_eq!(
        grant_of_me(&client, &fake, &at_a2).await,
        Ok(json!(a.key().get()))
    );
    assert_eq!((a.unauthorized_served(), b.unauthorized_served()), (1, 0));
    assert_eq!(fake.token_calls(), 2);
}

#[tokio::test]
async fn fifty_grants_refreshed_at_once_make_one_token_call_each() {
    let (fake, client) = started().await;
    let grants: Vec<FakeGrant> = (0..50).map(|_| fake.new_grant()).collect();
    let refresh_tokens: Vec<String> = grants.iter().map(FakeGrant::issue_refresh_token).collect();

    let answers = futures_util::future::join_all(
        refresh_tokens
            .iter()
            .map(|rt| refreshed(&client, &fake, rt)),
    )
    .await;
    for (grant, (access_token, refresh_token)) in grants.iter().zip(&answers) {
        assert_eq!(grant.token_calls(), 1);
        assert_eq!(grant.current_refresh_token().as_ref(), Some(refresh_token));
        assert_eq!(
            grant_of_me(&client, &fake, access_token).await,
            Ok(json!(grant.key().get()))
        );
        assert_eq!(grant.api_calls(), 1);
    }
    assert_eq!(fake.token_calls(), 50);
    assert_eq!(fake.api_calls(), 50);
    assert_eq!(fake.invalid_grants_served(), 0);
}

#[tokio::test]
async fn in_flight_token_calls_are_counted_per_grant() {
    let fake = FakeNifty::builder()
        .rotation(false)
        .token_delay(Duration::from_millis(200))
        .start()
        .await
        .expect("start");
    let client = client();
    let (a, b) = (fake.new_grant(), fake.new_grant());
    let (rt_a, rt_b) = (a.issue_refresh_token(), b.issue_refresh_token());

    let observer = until(|| a.token_calls_in_flight() == 2 && b.token_calls_in_flight() == 1);
    let (first, second, third, ()) = tokio::join!(
        refresh(&client, &fake, &rt_a),
        refresh(&client, &fake, &rt_a),
        refresh(&client, &fake, &rt_b),
        observer
    );
    for answer in [first, second, third] {
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    assert_eq!(
        (a.max_token_calls_in_flight(), b.max_token_calls_in_flight()),
        (2, 1)
    );
    assert_eq!(fake.max_token_calls_in_flight(), 3);
    assert_eq!(
        (a.token_calls_in_flight(), b.token_calls_in_flight()),
        (0, 0)
    );
}

#[tokio::test]
async fn rate_limited_fault_answers_429_with_retry_after_in_whole_seconds() {
    let (fake, client) = started().await;
    let grant = fake.new_grant();
    let rt = grant.issue_refresh_token();
    fake.push_token_fault(TokenFault::RateLimited {
        retry_after: Duration::from_secs(3),
    });
    fake.push_token_fault(TokenFault::RateLimited {
        retry_after: Duration::from_millis(1500),
    });

    let first = refresh(&client, &fake, &rt).await;
    assert_eq!(first.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(first.headers["retry-after"], "3");
    assert_eq!(first.json(), json!({ "message": "Too Many Requests" }));
    let second = refresh(&client, &fake, &rt).await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.headers["retry-after"], "2");
    // The faults did not consume the refresh token.
    refreshed(&client, &fake, &rt).await;

    assert_eq!(grant.token_calls(), 3);
    assert_eq!(fake.token_calls(), 3);
    assert_eq!(grant.invalid_grants_served(), 0);
}

#[tokio::test]
async fn the_single_grant_methods_follow_the_most_recently_used_grant() {
    let (fake, client) = started().await;
    let rt_a = fake.issue_refresh_token();
    let b = fake.new_grant();
    // A new grant without tokens does not become the latest one...
    assert_eq!(fake.current_refresh_token(), Some(rt_a.clone()));
    // ...issuing its refresh token does.
    let rt_b = b.issue_refresh_token();
    assert_eq!(fake.current_refresh_token(), Some(rt_b));
    // So does presenting a refresh token.
    let (_, rt_a2) = refreshed(&client, &fake, &rt_a).await;
    assert_eq!(fake.current_refresh_token(), Some(rt_a2));
    assert_eq!(b.token_calls(), 0);
}
