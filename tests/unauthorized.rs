//! 401s a fresh token does not cure, and requests the caller authorized itself, against an origin
//! server on 127.0.0.1 that answers as told.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use nifty_auth::testing::FakeNifty;
use parking_lot::Mutex;
use tokio::net::TcpListener;

/// An origin that answers every request with a fixed status and `WWW-Authenticate`, and records the
/// `Authorization` values of each request.
#[derive(Clone)]
struct Origin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<String>>>>,
}

impl Origin {
    async fn start(status: StatusCode, www_authenticate: Option<&'static str>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorded = Arc::clone(&recorded);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let values = req
                            .headers()
                            .get_all(AUTHORIZATION)
                            .iter()
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                            .collect();
                        recorded.lock().push(values);
                        let mut response = Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = status;
                        if let Some(value) = www_authenticate {
                            response
                                .headers_mut()
                                .insert(WWW_AUTHENTICATE, value.parse().unwrap());
                        }
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}/api/v1.0/projects", self.addr)
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.seen.lock().len()
    }
}

#[tokio::test]
async fn an_origin_that_rejects_every_token_causes_at_most_two_token_calls() {
    let fake = FakeNifty::start().await.unwrap();
    let origin = Origin::start(StatusCode::UNAUTHORIZED, None).await;
    let auth = builder(&fake)
        .allowed_origins([origin.origin()])
        .refresh_token(fake.issue_refresh_token())
        .build()
        .unwrap();
    let svc = service(&auth);
    for _ in 0..20 {
        let (status, _) = send(&svc, get(origin.url())).await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // The cold start, and one refresh for the first 401; its token was rejected too.
    assert_eq!(fake.token_calls(), 2);
    // 20 first sends and one retry.
    assert_eq!(origin.requests(), 21);
}

#[tokio::test(start_paused = true)]
async fn after_the_cooldown_a_rejected_token_may_be_refreshed_again() {
    let fake = FakeNifty::start().await.unwrap();
    let origin = Origin::start(StatusCode::UNAUTHORIZED, None).await;
    let auth = builder(&fake)
        .allowed_origins([origin.origin()])
        .refresh_token(fake.issue_refresh_token())
        .unauthorized_cooldown(Duration::from_secs(10))
        .build()
        .unwrap();
    let svc = service(&auth);
    for _ in 0..5 {
        send(&svc, get(origin.url())).await.unwrap();
    }
    assert_eq!(fake.token_calls(), 2);
    tokio::time::advance(Duration::from_secs(11)).await;
    for _ in 0..5 {
        send(&svc, get(origin.url())).await.unwrap();
    }
    assert_eq!(fake.token_calls(), 3);
}

#[tokio::test]
async fn insufficient_scope_never_refreshes_or_retries() {
    let fake = FakeNifty::start().await.unwrap();
    let origin = Origin::start(
        StatusCode::UNAUTHORIZED,
        Some(r#"Bearer realm="nifty", error="insufficient_scope", scope="task""#),
    )
    .await;
    let auth = builder(&fake)
        .allowed_origins([origin.origin()])
        .refresh_token(fake.issue_refresh_token())
        .build()
        .unwrap();
    let svc = service(&auth);
    for _ in 0..10 {
        let (status, _) = send(&svc, get(origin.url())).await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(origin.requests(), 10);
}

#[tokio::test]
async fn every_authorization_value_the_caller_set_reaches_the_inner_service() {
    let fake = FakeNifty::start().await.unwrap();
    let origin = Origin::start(StatusCode::OK, None).await;
    let auth = builder(&fake)
        .allowed_origins([origin.origin()])
        .refresh_token(fake.issue_refresh_token())
        .build()
        .unwrap();
    let svc = service(&auth);
    let mut request = get(origin.url());
    request
        .headers_mut()
        .append(AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
    request
        .headers_mut()
        .append(AUTHORIZATION, "Bearer caller-own-token".parse().unwrap());
    let (status, _) = send(&svc, request).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        origin.seen.lock()[0],
        vec![
            "Basic dXNlcjpwYXNz".to_owned(),
            "Bearer caller-own-token".to_owned()
        ]
    );
    assert_eq!(fake.token_calls(), 0);

    // Also with a token cached.
    auth.access_token().await.unwrap();
    let mut request = get(origin.url());
    request
        .headers_mut()
        .append(AUTHORIZATION, "Basic a".parse().unwrap());
    request
        .headers_mut()
        .append(AUTHORIZATION, "Bearer b".parse().unwrap());
    send(&svc, request).await.unwrap();
    assert_eq!(
        origin.seen.lock()[1],
        vec!["Basic a".to_owned(), "Bearer b".to_owned()]
    );
}
