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
use nifty_auth::NiftyAuthService;
use parking_lot::Mutex;
use tokio::net::TcpListener;

/// The in-process origin's answer, ready at once.
type Answered = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

/// An origin that answers every request with a fixed status and `WWW-Authenticate`, and records the
/// `Authorization` values of each request: on 127.0.0.1 (`start`), or in process (`in_process`).
#[derive(Clone)]
struct Origin {
    base: String,
    status: StatusCode,
    www_authenticate: Option<&'static str>,
    seen: Arc<Mutex<Vec<Vec<String>>>>,
}

impl Origin {
    /// The origin with no socket, at `http://origin.invalid`: reach it through `service`.
    fn in_process(status: StatusCode, www_authenticate: Option<&'static str>) -> Origin {
        Origin {
            base: "http://origin.invalid".to_owned(),
            status,
            www_authenticate,
            seen: Arc::new(Mutex::new(Vec::new())),
        }
    }

    async fn start(status: StatusCode, www_authenticate: Option<&'static str>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let origin = Origin {
            base: format!("http://{addr}"),
            ..Origin::in_process(status, www_authenticate)
        };
        let server = origin.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let response = server.answer(&req);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        origin
    }

    /// Records the request's `Authorization` values and answers it.
    fn answer<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let values = req
            .headers()
            .get_all(AUTHORIZATION)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        self.seen.lock().push(values);
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = self.status;
        if let Some(value) = self.www_authenticate {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, value.parse().unwrap());
        }
        response
    }

    /// The origin as a tower service, without TCP.
    fn service(
        &self,
    ) -> impl tower::Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = Answered,
    > + Clone {
        let origin = self.clone();
        tower::service_fn(move |req: Request<Full<Bytes>>| {
            std::future::ready(Ok(origin.answer(&req)))
        })
    }

    fn url(&self) -> String {
        format!("{}/api/v1.0/projects", self.base)
    }

    fn origin(&self) -> String {
        self.base.clone()
    }

    fn requests(&self) -> usize {
        self.seen.lock().len()
    }
}

/// A `NiftyAuth` for `origin` (only), bootstrapped with a refresh token of `fake`.
fn auth_for(fake: &FakeNifty, origin: &Origin) -> nifty_auth::NiftyAuth {
    builder(fake)
        .allowed_origins([origin.origin()])
        .refresh_token(fake.issue_refresh_token())
        .build()
        .unwrap()
}

/// `request` with these `Authorization` values of the caller's own, in this order.
fn with_authorizations<const N: usize>(
    mut request: Request<Full<Bytes>>,
    values: [&'static str; N],
) -> Request<Full<Bytes>> {
    for value in values {
        request
            .headers_mut()
            .append(AUTHORIZATION, value.parse().unwrap());
    }
    request
}

/// Sends `n` requests to `origin` through `svc`; each must come back 401.
async fn all_rejected(svc: &AuthClient, origin: &Origin, n: usize) {
    for _ in 0..n {
        let (status, _) = send(svc, get(origin.url())).await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn an_origin_that_rejects_every_token_causes_at_most_two_token_calls() {
    let fake = FakeNifty::start().await.unwrap();
    let origin = Origin::start(StatusCode::UNAUTHORIZED, None).await;
    let svc = service(&auth_for(&fake, &origin));
    all_rejected(&svc, &origin, 20).await;
    // The cold start, and one refresh for the first 401; its token was rejected too.
    assert_eq!(fake.token_calls(), 2);
    // 20 first sends and one retry.
    assert_eq!(origin.requests(), 21);
}

#[tokio::test(start_paused = true)]
async fn after_the_cooldown_a_rejected_token_may_be_refreshed_again() {
    let fake = FakeNifty::in_process();
    let origin = Origin::in_process(StatusCode::UNAUTHORIZED, None);
    let auth = builder(&fake)
        .allowed_origins([origin.origin()])
        .refresh_token(fake.issue_refresh_token())
        .unauthorized_cooldown(Duration::from_secs(10))
        .build()
        .unwrap();
    let svc = NiftyAuthService::new(origin.service(), auth.clone());
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
    let svc = service(&auth_for(&fake, &origin));
    all_rejected(&svc, &origin, 10).await;
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(origin.requests(), 10);
}

#[tokio::test]
async fn every_authorization_value_the_caller_set_reaches_the_inner_service() {
    let fake = FakeNifty::start().await.unwrap();
    let origin = Origin::start(StatusCode::OK, None).await;
    let auth = auth_for(&fake, &origin);
    let svc = service(&auth);
    let request = with_authorizations(
        get(origin.url()),
        ["Basic dXNlcjpwYXNz", "Bearer caller-own-token"],
    );
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
    let request = with_authorizations(get(origin.url()), ["Basic a", "Bearer b"]);
    send(&svc, request).await.unwrap();
    assert_eq!(
        origin.seen.lock()[1],
        vec!["Basic a".to_owned(), "Bearer b".to_owned()]
    );
}
