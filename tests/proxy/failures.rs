//! Upstream failures answered 502 / 504 with a JSON body naming the cause, and the connection
//! limits: request head size, idle connections.

use std::time::{Duration, SystemTime};

use nifty_auth::{FileStore, TokenSet};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::harness::*;

/// A loopback port with nothing listening.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_is_a_502_naming_the_cause() {
    let setup = Setup::new().await;
    setup.logged_in().await;
    let api = format!("http://127.0.0.1:{}/api/v1.0", closed_port());
    let mut command = setup.command(&["proxy", "--listen", "127.0.0.1:0"]);
    command.env("NIFTY_API_URL", &api);
    let proxy = Proxy::spawn(command).await;

    let answer = curl_with_key(&[&format!("{}/api/v1.0/projects", proxy.url)]).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    let json = answer.json();
    assert_eq!(json["error"], "api_unreachable");
    let message = json["message"].as_str().unwrap();
    assert!(message.contains("onnect"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_slower_than_the_upstream_timeout_is_a_504() {
    let (setup, proxy) = Setup::serving(&["--upstream-timeout", "1"]).await;
    let hold = setup.fake.hold_next_api_answer();

    let answer = curl_with_key(&[&format!("{}/api/v1.0/projects", proxy.url)]).await;
    assert_eq!(answer.status, 504, "{}", answer.text());
    assert_eq!(answer.json()["error"], "api_timeout");
    drop(hold);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_token_endpoint_is_a_502_and_nothing_reaches_the_api() {
    let setup = Setup::new().await;
    let grant = setup.fake.new_grant();
    let tokens = TokenSet::new(grant.issue_access_token(Some(Duration::from_secs(1))))
        .with_refresh_token(grant.issue_refresh_token())
        .with_expires_at(SystemTime::now() - Duration::from_secs(60));
    FileStore::new(setup.tokens_file())
        .save(&tokens)
        .await
        .unwrap();
    let token_url = format!("http://127.0.0.1:{}/oauth/token", closed_port());
    let mut command = setup.command(&["proxy", "--listen", "127.0.0.1:0"]);
    command.env("NIFTY_TOKEN_URL", &token_url);
    let proxy = Proxy::spawn(command).await;

    let answer = curl_with_key(&[&format!("{}/api/v1.0/projects", proxy.url)]).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(answer.json()["error"], "token_unavailable");
    assert_eq!(setup.fake.api_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_is_refused_431() {
    let (setup, proxy) = Setup::serving(&[]).await;
    let big = "x".repeat(40 * 1024);
    let request = format!(
        "GET /api/v1.0/projects HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {KEY}\r\nX-Big: {big}\r\n\r\n",
        proxy.authority()
    );
    assert_eq!(raw_status(proxy.authority(), &request).await, 431);
    assert_eq!(setup.fake.api_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let (_setup, proxy) = Setup::serving(&["--idle-timeout", "1"]).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.authority())
        .await
        .unwrap();
    let request = format!(
        "GET /_nifty/healthz HTTP/1.1\r\nHost: {}\r\n\r\n",
        proxy.authority()
    );
    stream.write_all(request.as_bytes()).await.unwrap();

    // The answer, then nothing: the proxy closes the idle connection (EOF).
    let mut received = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut received)).await;
    read.expect("the idle connection was not closed").unwrap();
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_limit_a_client_waits_until_a_connection_closes() {
    let (setup, proxy) = Setup::serving(&["--max-connections", "1"]).await;
    let url = format!("{}/api/v1.0/projects", proxy.url);
    let mut first_hold = setup.fake.hold_next_api_answer();
    let mut second_hold = setup.fake.hold_next_api_answer();

    let first = tokio::spawn({
        let url = url.clone();
        async move { curl_with_key(&[&url]).await }
    });
    first_hold.arrived().await;
    proxy.wait_for_log("connection limit reached").await;
    let second = tokio::spawn(async move { curl_with_key(&[&url]).await });

    first_hold.release();
    let first = tokio::time::timeout(WAIT, first).await.unwrap().unwrap();
    assert_eq!(first.status, 200);
    // The second client is accepted only once the first connection closed (curl exited).
    second_hold.arrived().await;
    second_hold.release();
    let second = tokio::time::timeout(WAIT, second).await.unwrap().unwrap();
    assert_eq!(second.status, 200);
    assert_eq!(setup.fake.api_calls(), 2);
}
