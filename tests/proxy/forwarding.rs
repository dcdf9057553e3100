//! Faithful forwarding: method, path, query, end-to-end headers and bodies; the 401 retry; large
//! bodies streamed both ways in bounded memory; a slow request finishing through SIGTERM.

use nifty_auth::testing::Grant;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_get_reaches_the_api_with_the_profile_token_and_only_end_to_end_headers() {
    let setup = Setup::new().await;
    let (_, access) = setup.logged_in().await;
    let proxy = setup.proxy(&[]).await;

    let url = format!("{}/api/v1.0/projects?limit=5&name=a%20b", proxy.url);
    let answer = curl_with_key(&[
        "-H",
        "X-Request-Id: r-42",
        "-H",
        "Connection: keep-alive, X-Hop",
        "-H",
        "X-Hop: dropped",
        "-H",
        "Proxy-Authorization: Basic Zm9vOmJhcg==",
        "-H",
        "Accept: application/json",
        &url,
    ])
    .await;

    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["projects"][0]["id"], "p-1");
    assert!(!answer.headers.contains(&access), "the token came back");
    let requests = setup.fake.api_requests();
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(sent.method, "GET");
    assert_eq!(sent.path, "/api/v1.0/projects?limit=5&name=a%20b");
    assert_eq!(
        sent.authorization.as_deref(),
        Some(&*format!("Bearer {access}"))
    );
    assert_eq!(sent.headers["x-request-id"], "r-42");
    assert_eq!(sent.headers["accept"], "application/json");
    for hop in ["x-hop", "proxy-authorization", "nifty-grant"] {
        assert!(!sent.headers.contains_key(hop), "{hop} was forwarded");
    }
    assert_eq!(
        sent.headers["host"],
        setup.fake.base_url().trim_start_matches("http://")
    );
    assert_never_sent(&setup.fake, KEY);
    assert_eq!(setup.fake.token_calls(), 0, "the saved token was valid");
    assert!(!proxy.log().contains(&access) && !proxy.log().contains(KEY));
}

const PYTHON_POST: &str = r#"
import json, sys, urllib.request
url, key, body = sys.argv[1], sys.argv[2], sys.argv[3]
request = urllib.request.Request(url, data=body.encode(), method="POST", headers={
    "Authorization": "Bearer " + key, "Content-Type": "application/json"})
with urllib.request.urlopen(request) as response:
    print(json.dumps({"status": response.status, "body": json.loads(response.read())}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_post_with_a_json_body_arrives_byte_for_byte() {
    let (setup, proxy) = Setup::serving(&[]).await;
    let body = r#"{"name":"Write the proxy","project":"p-1","tags":["é","✓"]}"#;

    let url = format!("{}/api/v1.0/tasks", proxy.url);
    let answer = python(PYTHON_POST, &[&url, KEY, body]).await;

    assert_eq!(answer["status"], 200);
    assert_eq!(answer["body"]["method"], "POST");
    assert_eq!(answer["body"]["body_len"], body.len());
    let sent = &setup.fake.api_requests()[0];
    assert_eq!(sent.body, body.as_bytes());
    assert_eq!(sent.headers["content-type"], "application/json");
    assert_eq!(
        sent.headers["content-length"],
        body.len().to_string().as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_from_nifty_is_retried_once_with_a_fresh_token_and_the_same_body() {
    let setup = Setup::new().await;
    let (_, first_token) = setup.logged_in().await;
    let proxy = setup.proxy(&[]).await;
    setup.fake.push_api_status(401);

    let url = format!("{}/api/v1.0/tasks", proxy.url);
    let answer = curl_with_key(&["-X", "POST", "--data-binary", r#"{"a":1}"#, &url]).await;

    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(setup.fake.unauthorized_served(), 1);
    assert_eq!(setup.fake.token_calls_for(Grant::RefreshToken), 1);
    let sent = setup.fake.api_requests();
    assert_eq!(sent.len(), 2, "one send and one retry");
    assert_eq!(sent[0].body, sent[1].body);
    assert_eq!(sent[1].body, br#"{"a":1}"#.as_slice());
    assert_eq!(
        sent[0].authorization.as_deref(),
        Some(&*format!("Bearer {first_token}"))
    );
    assert_ne!(
        sent[1].authorization, sent[0].authorization,
        "a fresh token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_to_a_body_over_64_kib_is_passed_back_without_a_retry() {
    let (setup, proxy) = Setup::serving(&[]).await;
    let (file, _) = random_file(setup.dir.path(), "big", 64 * 1024 + 1);
    setup.fake.push_api_status(401);

    let url = format!("{}/api/v1.0/files", proxy.url);
    let data = format!("@{}", file.display());
    let answer = curl_with_key(&["-X", "POST", "--data-binary", &data, &url]).await;

    assert_eq!(answer.status, 401, "Nifty's own 401, passed back");
    assert_eq!(answer.json()["message"], "Unauthorized");
    assert_eq!(setup.fake.api_calls(), 1);
    assert_eq!(setup.fake.token_calls(), 0);
    assert_eq!(setup.fake.api_requests()[0].body.len(), 64 * 1024 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_up_and_down_stream_through_the_proxy_in_bounded_memory() {
    const LEN: usize = 10 * 1024 * 1024;
    let (setup, proxy) = Setup::serving(&[]).await;
    let url = format!("{}/api/v1.0/files", proxy.url);
    // Warm up: the first request sizes the proxy's buffers and pools.
    assert_eq!(curl_with_key(&[&url]).await.status, 200);
    let before = proxy.peak_rss_kib();

    let (file, bytes) = random_file(setup.dir.path(), "upload", LEN);
    let data = format!("@{}", file.display());
    let up = curl_with_key(&["-X", "POST", "--data-binary", &data, &url]).await;
    assert_eq!(up.status, 200, "{}", up.text());
    assert_eq!(up.json()["body_len"], LEN);
    assert!(
        setup.fake.api_requests()[1].body == bytes,
        "the upload arrived intact"
    );

    setup.fake.push_api_body(bytes.clone());
    let down = curl_with_key(&[&url]).await;
    assert_eq!(down.status, 200);
    assert!(down.body == bytes, "the download arrived intact");

    let growth = proxy.peak_rss_kib().saturating_sub(before);
    eprintln!("peak RSS growth over 2 × 10 MiB: {growth} KiB (before: {before} KiB)");
    assert!(
        growth < 4 * 1024,
        "the proxy's peak memory grew by {growth} KiB: a body was buffered whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_request_stops_accepting_and_lets_it_complete() {
    let (setup, proxy) = Setup::serving(&[]).await;
    let mut hold = setup.fake.hold_next_api_answer();
    let url = format!("{}/api/v1.0/projects", proxy.url);
    let slow = tokio::spawn(async move { curl_with_key(&[&url]).await });
    hold.arrived().await;

    proxy.signal("TERM");
    proxy.wait_for_log("shutting down").await;
    let refused = tokio::net::TcpStream::connect(proxy.authority()).await;
    assert!(
        refused.is_err(),
        "a new connection was accepted after SIGTERM"
    );
    assert!(!slow.is_finished());
    hold.release();

    let answer = tokio::time::timeout(WAIT, slow).await.unwrap().unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["projects"][1]["id"], "p-2");
    let mut proxy = proxy;
    let status = tokio::time::timeout(WAIT, proxy.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    proxy.wait_for_log("nifty-auth proxy: stopped").await;
    let log = proxy.log();
    assert!(
        log.lines().any(|l| l == "nifty-auth proxy: stopped"),
        "{log}"
    );
    assert!(!log.contains("still in flight"), "{log}");
}
