//! The 401 retry resends the caller's request exactly: method, URI, version, headers (order,
//! repeated values, sensitivity), extensions and body — only `Authorization` changes.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::header::AUTHORIZATION;
use http::{Extensions, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use nifty_auth::testing::FakeNifty;
use nifty_auth::BoxError;
use parking_lot::Mutex;
use tower::{Layer, ServiceExt};

/// A request as the layer handed it to the inner service.
#[derive(Debug)]
struct Seen {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    body: Bytes,
}

#[derive(Clone, Debug, PartialEq)]
struct Trace(&'static str, u64);

#[tokio::test]
async fn the_retry_resends_identical_method_uri_version_headers_extensions_and_body() {
    let fake = FakeNifty::start().await.unwrap();
    let auth = auth(&fake);
    auth.access_token().await.unwrap();
    fake.revoke_access_tokens();

    // The inner service records what it gets, then sends it to the fake API over loopback HTTP
    // (as HTTP/1.1: the fake speaks nothing else).
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let recorder = Arc::clone(&seen);
    let client = http_client();
    let inner = tower::service_fn(move |mut request: Request<Full<Bytes>>| {
        let recorder = Arc::clone(&recorder);
        let client = client.clone();
        async move {
            let body = request.body().clone().collect().await?.to_bytes();
            recorder.lock().push(Seen {
                method: request.method().clone(),
                uri: request.uri().clone(),
                version: request.version(),
                headers: request.headers().clone(),
                extensions: request.extensions().clone(),
                body,
            });
            *request.version_mut() = Version::HTTP_11;
            client.request(request).await.map_err(BoxError::from)
        }
    });
    let svc = auth.layer().layer(inner);

    let mut secret = HeaderValue::from_static("k-123");
    secret.set_sensitive(true);
    let mut request = Request::patch(fake.api_url("/tasks/t-7?notify=true&x=%20y"))
        .version(Version::HTTP_10)
        .header("content-type", "application/json")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header("x-api-key", secret)
        .header("x-bytes", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap())
        .body(Full::new(Bytes::from_static(br#"{"done":true}"#)))
        .unwrap();
    request.extensions_mut().insert(Trace("span", 42));
    let expected_uri = request.uri().clone();

    let response = svc.oneshot(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.token_calls(), 2, "the first token and one refresh");
    let seen = seen.lock();
    assert_eq!(seen.len(), 2, "the first send and one retry");
    let (first, retry) = (&seen[0], &seen[1]);
    assert_eq!(fake.api_requests()[0].status, 401);
    for sent in [first, retry] {
        assert_eq!(sent.method, Method::PATCH);
        assert_eq!(sent.uri, expected_uri);
        assert_eq!(sent.version, Version::HTTP_10);
        assert_eq!(sent.extensions.get::<Trace>(), Some(&Trace("span", 42)));
        assert_eq!(&sent.body[..], br#"{"done":true}"#);
        assert!(sent.headers[AUTHORIZATION].is_sensitive());
    }
    assert_eq!(retry.uri.to_string(), first.uri.to_string());
    let without_authorization = |headers: &HeaderMap| {
        let mut headers = headers.clone();
        headers.remove(AUTHORIZATION);
        headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone(), v.is_sensitive()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        without_authorization(&retry.headers),
        without_authorization(&first.headers),
        "same headers, same order, same sensitivity"
    );
    let multi: Vec<_> = retry.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"]);
    assert!(retry.headers["x-api-key"].is_sensitive());
    assert_ne!(
        retry.headers[AUTHORIZATION], first.headers[AUTHORIZATION],
        "only the token changed"
    );
}
