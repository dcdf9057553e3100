//! Tests of `nifty_auth::testing::FakeNifty` itself, through a real hyper client.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nifty_auth::testing::{FakeNifty, Grant, TokenFault};
use serde_json::{json, Value};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn basic(id: &str, secret: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    format!("Basic {encoded}")
}

async fn send(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> Result<Answer, hyper_util::client::legacy::Error> {
    let response = client.request(request).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn token_request(fake: &FakeNifty, body: &Value) -> Request<Full<Bytes>> {
    Request::post(fake.token_url())
        .header(
            "authorization",
            basic(fake.client_id(), fake.client_secret()),
        )
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

async fn token(client: &HttpClient, fake: &FakeNifty, body: Value) -> Answer {
    send(client, token_request(fake, &body))
        .await
        .expect("token request")
}

async fn refresh(client: &HttpClient, fake: &FakeNifty, refresh_token: &str) -> Answer {
    token(
        client,
        fake,
        json!({ "grant_type": "refresh_token", "refresh_token": refresh_token }),
    )
    .await
}

async fn api(
    client: &HttpClient,
    fake: &FakeNifty,
    method: Method,
    path: &str,
    access_token: Option<&str>,
    body: &'static str,
) -> Answer {
    let mut request = Request::builder().method(method).uri(fake.api_url(path));
    if let Some(access_token) = access_token {
        request = request.header("authorization", format!("Bearer {access_token}"));
    }
    let request = request
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request");
    send(client, request).await.expect("API request")
}

async fn get(client: &HttpClient, fake: &FakeNifty, path: &str, token: Option<&str>) -> Answer {
    api(client, fake, Method::GET, path, token, "").await
}

fn str_field<'a>(json: &'a Value, name: &str) -> &'a str {
    json[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} in {json}"))
}

fn assert_invalid_grant(answer: &Answer) {
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let json = answer.json();
    assert_eq!(json["error"], "invalid_grant");
    assert!(json["error_description"].is_string());
}

#[tokio::test]
async fn authorization_code_grant() {
    let fake = FakeNifty::start().await.expect("start");
    let client = client();
    let redirect_uri = "http://localhost:8080/callback";
    let code = fake.issue_code(redirect_uri);
    let exchange =
        json!({ "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri });

    let answer = token(&client, &fake, exchange.clone()).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.headers["content-type"], "application/json");
    let body = answer.json();
    assert!(str_field(&body, "access_token").starts_with("at-"));
    assert_eq!(body["token_type"], "bearer");
    assert!(str_field(&body, "refresh_token").starts_with("rt-"));
    assert_eq!(body["expires_in"].as_f64(), Some(3600.0));
    assert!(std::str::from_utf8(&answer.body)
        .expect("utf-8")
        .contains("\"expires_in\":3600.0"));
    assert_eq!(body["scope"], "project task");
    assert_eq!(
        fake.current_refresh_token().as_deref(),
        Some(str_field(&body, "refresh_token"))
    );
    let access_token = str_field(&body, "access_token");
    assert_eq!(
        get(&client, &fake, "/users/me", Some(access_token))
            .await
            .status,
        StatusCode::OK
    );

    // Single use.
    assert_invalid_grant(&token(&client, &fake, exchange).await);
    // Bound to its redirect_uri.
    let code = fake.issue_code(redirect_uri);
    let wrong_redirect = json!({
        "grant_type": "authorization_code", "code": code, "redirect_uri": "http://localhost/other"
    });
    assert_invalid_grant(&token(&client, &fake, wrong_redirect).await);
    // Unknown code.
    let unknown =
        json!({ "grant_type": "authorization_code", "code": "nope", "redirect_uri": redirect_uri });
    assert_invalid_grant(&token(&client, &fake, unknown).await);

    assert_eq!(fake.token_calls(), 4);
    assert_eq!(fake.token_calls_for(Grant::AuthorizationCode), 4);
    assert_eq!(fake.token_calls_for(Grant::RefreshToken), 0);
    assert_eq!(fake.invalid_grants_served(), 3);
    assert_eq!(fake.token_calls_in_flight(), 0);

    let recorded = fake.token_requests();
    assert_eq!(recorded.len(), 4);
    let first = &recorded[0];
    assert_eq!(first.method, Method::POST);
    assert_eq!(
        first.authorization.as_deref(),
        Some("Basic ZmFrZS1jbGllbnQtaWQ6ZmFrZS1jbGllbnQtc2VjcmV0")
    );
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(first.accept.as_deref(), Some("application/json"));
    let json = first.json.as_ref().expect("recorded JSON");
    assert_eq!(json["grant_type"], "authorization_code");
    assert_eq!(json["redirect_uri"], redirect_uri);
    assert_eq!(
        serde_json::from_slice::<Value>(&first.body).ok().as_ref(),
        Some(json)
    );
}

#[tokio::test]
async fn refresh_rotation_and_replay_revokes_grant() {
    let fake = FakeNifty::start().await.expect("start");
    let client = client();
    let rt0 = fake.issue_refresh_token();
    assert_eq!(fake.current_refresh_token().as_deref(), Some(rt0.as_str()));

    let answer = refresh(&client, &fake, &rt0).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let body = answer.json();
    let rt1 = str_field(&body, "refresh_token").to_owned();
    let at1 = str_field(&body, "access_token").to_owned();
    assert_ne!(rt1, rt0);
    assert_eq!(fake.current_refresh_token().as_deref(), Some(rt1.as_str()));
    assert_eq!(
        get(&client, &fake, "/projects", Some(&at1)).await.status,
        StatusCode::OK
    );

    // Replaying the retired token fails and revokes the grant.
    assert_invalid_grant(&refresh(&client, &fake, &rt0).await);
    assert_eq!(fake.current_refresh_token(), None);
    assert_invalid_grant(&refresh(&client, &fake, &rt1).await);
    let answer = get(&client, &fake, "/projects", Some(&at1)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    // Unknown refresh token.
    assert_invalid_grant(&refresh(&client, &fake, "rt-bogus").await);

    // Other grants are unaffected.
    let other = fake.issue_refresh_token();
    assert_eq!(
        refresh(&client, &fake, &other).await.status,
        StatusCode::CREATED
    );

    assert_eq!(fake.token_calls(), 5);
    assert_eq!(fake.token_calls_for(Grant::RefreshToken), 5);
    assert_eq!(fake.token_calls_for(Grant::AuthorizationCode), 0);
    assert_eq!(fake.invalid_grants_served(), 3);
    assert_eq!(fake.api_calls(), 2);
    assert_eq!(fake.unauthorized_served(), 1);
}

#[tokio::test]
async fn replay_without_revocation_keeps_the_grant() {
    let fake = FakeNifty::builder()
        .replay_revokes_grant(false)
        .start()
        .await
        .expect("start");
    let client = client();
    let rt0 = fake.issue_refresh_token();
    let rt1 = refresh(&client, &fake, &rt0).await.json()["refresh_token"]
        .as_str()
        .expect("rotated")
        .to_owned();
    assert_invalid_grant(&refresh(&client, &fake, &rt0).await);
    assert_eq!(fake.current_refresh_token().as_deref(), Some(rt1.as_str()));
    assert_eq!(
        refresh(&client, &fake, &rt1).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn without_rotation_the_refresh_token_stays_valid() {
    let fake = FakeNifty::builder()
        .rotation(false)
        .token_lifetime(None)
        .start()
        .await
        .expect("start");
    let client = client();
    let rt = fake.issue_refresh_token();
    for _ in 0..2 {
        let answer = refresh(&client, &fake, &rt).await;
        assert_eq!(answer.status, StatusCode::CREATED);
        let body = answer.json();
        assert!(body.get("refresh_token").is_none(), "{body}");
        assert!(body.get("expires_in").is_none(), "{body}");
        assert!(body["access_token"].is_string());
    }
    assert_eq!(fake.current_refresh_token().as_deref(), Some(rt.as_str()));

    // Knobs change at any time.
    fake.set_rotation(true);
    fake.set_token_lifetime(Some(Duration::from_secs(90)));
    let body = refresh(&client, &fake, &rt).await.json();
    assert_eq!(body["expires_in"].as_f64(), Some(90.0));
    let rotated = str_field(&body, "refresh_token");
    assert_ne!(rotated, rt);
    assert_eq!(fake.current_refresh_token().as_deref(), Some(rotated));
}

#[tokio::test]
async fn client_authentication_and_request_validation() {
    let fake = FakeNifty::builder()
        .client("my-id", "my-secret")
        .start()
        .await
        .expect("start");
    assert_eq!(fake.client_id(), "my-id");
    assert_eq!(fake.client_secret(), "my-secret");
    assert_eq!(fake.credentials().client_id(), "my-id");
    assert_eq!(fake.credentials().client_secret(), "my-secret");
    assert!(!format!("{fake:?}").contains("my-secret"));
    let client = client();
    let rt = fake.issue_refresh_token();
    let body = json!({ "grant_type": "refresh_token", "refresh_token": rt }).to_string();

    let post = |auth: Option<String>, content_type: &str, body: String| {
        let mut request = Request::post(fake.token_url()).header("content-type", content_type);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.body(Full::new(Bytes::from(body))).expect("request")
    };
    let good_auth = || Some(basic("my-id", "my-secret"));

    let wrong_secret = send(
        &client,
        post(
            Some(basic("my-id", "nope")),
            "application/json",
            body.clone(),
        ),
    )
    .await
    .expect("answer");
    assert_eq!(wrong_secret.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_secret.json()["error"], "invalid_client");

    let missing = send(&client, post(None, "application/json", body.clone()))
        .await
        .expect("answer");
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.json()["error"], "invalid_client");

    let form = send(
        &client,
        post(
            good_auth(),
            "application/x-www-form-urlencoded",
            body.clone(),
        ),
    )
    .await
    .expect("answer");
    assert_eq!(form.status, StatusCode::BAD_REQUEST);
    assert_eq!(form.json()["error"], "invalid_request");

    for bad_body in ["[1,2]", "not json", r#"{"refresh_token":"x"}"#] {
        let answer = send(
            &client,
            post(good_auth(), "application/json", bad_body.to_owned()),
        )
        .await
        .expect("answer");
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad_body}");
        assert_eq!(answer.json()["error"], "invalid_request");
    }

    let unsupported = send(
        &client,
        post(
            good_auth(),
            "application/json",
            json!({ "grant_type": "password" }).to_string(),
        ),
    )
    .await
    .expect("answer");
    assert_eq!(unsupported.status, StatusCode::BAD_REQUEST);
    assert_eq!(unsupported.json()["error"], "unsupported_grant_type");

    let get = Request::get(fake.token_url())
        .body(Full::new(Bytes::new()))
        .expect("request");
    let get = send(&client, get).await.expect("answer");
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);

    // The refresh token was never consumed by the rejected requests.
    let ok = send(
        &client,
        post(good_auth(), "application/json; charset=utf-8", body),
    )
    .await
    .expect("answer");
    assert_eq!(ok.status, StatusCode::CREATED);

    assert_eq!(fake.token_calls(), 9);
    // Counted before validation: wrong secret, missing auth, form, and the success.
    assert_eq!(fake.token_calls_for(Grant::RefreshToken), 4);
    assert_eq!(fake.token_calls_for(Grant::AuthorizationCode), 0);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(fake.token_requests().len(), 9);
}

#[tokio::test]
async fn api_answers_by_token() {
    let fake = FakeNifty::start().await.expect("start");
    let client = client();
    let token = fake.issue_access_token(None);

    let me = get(&client, &fake, "/users/me", Some(&token)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(
        me.json(),
        json!({ "id": "u-1", "email": "dev@example.com", "name": "Fake Dev", "grant": null })
    );
    let projects = get(&client, &fake, "/projects", Some(&token)).await;
    assert_eq!(projects.json()["projects"][1]["name"], "Roadmap");
    let created = api(
        &client,
        &fake,
        Method::POST,
        "/tasks?project=p-1",
        Some(&token),
        r#"{"name":"x"}"#,
    )
    .await;
    assert_eq!(created.status, StatusCode::OK);
    assert_eq!(
        created.json(),
        json!({ "ok": true, "method": "POST", "path": "/api/v1.0/tasks?project=p-1", "body_len": 12 })
    );

    let bogus = get(&client, &fake, "/users/me", Some("at-bogus")).await;
    assert_eq!(bogus.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        bogus.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(bogus.json(), json!({ "message": "unauthorized" }));
    let anonymous = get(&client, &fake, "/users/me", None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // Outside the API: 404, not counted.
    let other = Request::get(format!("{}/nope", fake.base_url()))
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(
        send(&client, other).await.expect("answer").status,
        StatusCode::NOT_FOUND
    );

    assert_eq!(fake.api_calls(), 5);
    assert_eq!(fake.unauthorized_served(), 2);
    let recorded = fake.api_requests();
    let statuses: Vec<u16> = recorded.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 401, 401]);
    assert_eq!(recorded[2].method, Method::POST);
    assert_eq!(recorded[2].path, "/api/v1.0/tasks?project=p-1");
    assert_eq!(&recorded[2].body[..], br#"{"name":"x"}"#);
    assert_eq!(
        recorded[0].authorization.as_deref(),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(recorded[4].authorization, None);
    assert_eq!(fake.token_calls(), 0);
}

#[tokio::test]
async fn pushed_api_statuses_and_revocation() {
    let fake = FakeNifty::start().await.expect("start");
    let client = client();
    let token = fake.issue_access_token(Some(Duration::from_secs(60)));
    fake.push_api_status(503);
    fake.push_api_status(401);

    let first = get(&client, &fake, "/users/me", Some(&token)).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(first.json()["message"].is_string());
    let second = get(&client, &fake, "/users/me", Some(&token)).await;
    assert_eq!(second.status, StatusCode::UNAUTHORIZED);
    let third = get(&client, &fake, "/users/me", Some(&token)).await;
    assert_eq!(third.status, StatusCode::OK);

    fake.revoke_access_tokens();
    let revoked = get(&client, &fake, "/users/me", Some(&token)).await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED);
    let fresh = fake.issue_access_token(None);
    assert_eq!(
        get(&client, &fake, "/users/me", Some(&fresh)).await.status,
        StatusCode::OK
    );

    assert_eq!(fake.api_calls(), 5);
    assert_eq!(fake.unauthorized_served(), 2);
    let statuses: Vec<u16> = fake.api_requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 401, 200, 401, 200]);
}

#[tokio::test(start_paused = true)]
async fn access_tokens_expire_on_the_tokio_clock() {
    let fake = FakeNifty::builder()
        .token_lifetime(Some(Duration::from_secs(120)))
        .start()
        .await
        .expect("start");
    let client = client();
    let standalone = fake.issue_access_token(Some(Duration::from_secs(60)));
    let rt = fake.issue_refresh_token();
    let refreshed = refresh(&client, &fake, &rt).await.json();
    assert_eq!(refreshed["expires_in"].as_f64(), Some(120.0));
    let issued = str_field(&refreshed, "access_token").to_owned();

    for token in [&standalone, &issued] {
        assert_eq!(
            get(&client, &fake, "/projects", Some(token)).await.status,
            StatusCode::OK
        );
    }
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(
        get(&client, &fake, "/projects", Some(&standalone))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&client, &fake, "/projects", Some(&issued)).await.status,
        StatusCode::OK
    );
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(
        get(&client, &fake, "/projects", Some(&issued)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(fake.unauthorized_served(), 2);
}

#[tokio::test]
async fn fault_respond() {
    let fake = FakeNifty::start().await.expect("start");
    let client = client();
    let rt = fake.issue_refresh_token();
    fake.push_token_fault(TokenFault::status(
        503,
        r#"{"error":"temporarily_unavailable"}"#,
    ));
    fake.push_token_fault(TokenFault::Respond {
        status: 502,
        content_type: "text/html".to_owned(),
        body: "<h1>Bad gateway</h1>".to_owned(),
    });
    fake.push_token_fault(TokenFault::status(400, r#"{"error":"invalid_grant"}"#));

    let first = refresh(&client, &fake, &rt).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.headers["content-type"], "application/json");
    assert_eq!(&first.body[..], br#"{"error":"temporarily_unavailable"}"#);
    let second = refresh(&client, &fake, &rt).await;
    assert_eq!(second.status, StatusCode::BAD_GATEWAY);
    assert_eq!(second.headers["content-type"], "text/html");
    assert_eq!(&second.body[..], b"<h1>Bad gateway</h1>");
    let third = refresh(&client, &fake, &rt).await;
    assert_eq!(third.status, StatusCode::BAD_REQUEST);
    assert_eq!(third.json(), json!({ "error": "invalid_grant" }));
    // The faults did not consume the refresh token.
    assert_eq!(
        refresh(&client, &fake, &rt).await.status,
        StatusCode::CREATED
    );

    assert_eq!(fake.token_calls(), 4);
    assert_eq!(fake.token_calls_for(Grant::RefreshToken), 4);
    assert_eq!(fake.invalid_grants_served(), 1);
    assert_eq!(fake.token_requests().len(), 4);
}

#[tokio::test]
async fn fault_reset_is_a_client_error() {
    let fake = FakeNifty::start().await.expect("start");
    let client = client();
    let rt = fake.issue_refresh_token();
    fake.push_token_fault(TokenFault::Reset);

    let error = send(
        &client,
        token_request(
            &fake,
            &json!({ "grant_type": "refresh_token", "refresh_token": rt }),
        ),
    )
    .await
    .err()
    .expect("a connection error");
    assert!(!error.is_connect(), "{error:?}");
    assert!(is_reset_or_incomplete(&error), "{error:?}");

    // The next request gets a normal answer on a new connection.
    assert_eq!(
        refresh(&client, &fake, &rt).await.status,
        StatusCode::CREATED
    );
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.token_calls_for(Grant::RefreshToken), 2);
    assert_eq!(fake.token_calls_in_flight(), 0);
}

/// Waits (real time, at most 2 s) until `condition` holds.
async fn until(condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "condition never held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The connection was reset, or closed before the response was complete.
fn is_reset_or_incomplete(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionReset {
                return true;
            }
        }
        if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
            if hyper.is_incomplete_message() {
                return true;
            }
        }
        source = error.source();
    }
    false
}

#[tokio::test]
async fn fault_hang_until_the_client_gives_up() {
    let fake = FakeNifty::start().await.expect("start");
    let client = client();
    let rt = fake.issue_refresh_token();
    fake.push_token_fault(TokenFault::Hang);

    let request = token_request(
        &fake,
        &json!({ "grant_type": "refresh_token", "refresh_token": rt }),
    );
    let mut pending = Box::pin(client.request(request));
    // Drive the request until the fake holds it...
    tokio::select! {
        answer = &mut pending => panic!("a hung request was answered: {answer:?}"),
        () = until(|| fake.token_calls_in_flight() == 1) => {}
    }
    // ...then give up on the client side.
    let outcome = tokio::time::timeout(Duration::from_millis(200), pending).await;
    assert!(outcome.is_err(), "the hung request timed out");
    assert_eq!(fake.token_calls(), 1);
    // The client dropped the connection: the request is no longer in flight.
    until(|| fake.token_calls_in_flight() == 0).await;

    assert_eq!(
        refresh(&client, &fake, &rt).await.status,
        StatusCode::CREATED
    );
    assert_eq!(fake.token_calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn fault_delay_then_normal_answer() {
    let fake = FakeNifty::start().await.expect("start");
    let client = client();
    let rt = fake.issue_refresh_token();
    fake.push_token_fault(TokenFault::Delay(Duration::from_secs(10)));

    let started = tokio::time::Instant::now();
    let answer = refresh(&client, &fake, &rt).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert!(started.elapsed() >= Duration::from_secs(10));
    assert_eq!(fake.token_calls_in_flight(), 0);

    // No fault left: answered at once.
    let rt = str_field(&answer.json(), "refresh_token").to_owned();
    let started = tokio::time::Instant::now();
    assert_eq!(
        refresh(&client, &fake, &rt).await.status,
        StatusCode::CREATED
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn token_delay_shows_requests_in_flight() {
    let fake = FakeNifty::builder()
        .token_delay(Duration::from_millis(200))
        .start()
        .await
        .expect("start");
    let client = client();
    let a = fake.issue_refresh_token();
    let b = fake.issue_refresh_token();

    let observer = until(|| fake.token_calls_in_flight() == 2);
    let (first, second, ()) = tokio::join!(
        refresh(&client, &fake, &a),
        refresh(&client, &fake, &b),
        observer
    );
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(fake.token_calls_in_flight(), 0);

    fake.set_token_delay(Duration::ZERO);
    let started = std::time::Instant::now();
    fake.push_token_fault(TokenFault::status(500, "{}"));
    assert_eq!(
        refresh(&client, &fake, "rt-unknown").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(fake.token_calls(), 3);
}

#[tokio::test]
async fn clones_share_state_and_the_server_stops_with_the_last_one() {
    let fake = FakeNifty::start().await.expect("start");
    let clone = fake.clone();
    let addr = fake.addr();
    assert_eq!(fake.base_url(), format!("http://{addr}"));
    assert_eq!(fake.token_url(), format!("http://{addr}/oauth/token"));
    assert_eq!(
        fake.api_url("/users/me"),
        format!("http://{addr}/api/v1.0/users/me")
    );

    let client = client();
    let token = clone.issue_access_token(None);
    assert_eq!(
        get(&client, &fake, "/users/me", Some(&token)).await.status,
        StatusCode::OK
    );
    assert_eq!(clone.api_calls(), 1);

    drop(fake);
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    drop(clone);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
