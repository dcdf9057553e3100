//! `/_nifty/healthz`, `/_nifty/readyz` and `/_nifty/metrics` (parsed), and the request log.

use std::collections::HashMap;

use crate::harness::*;

/// Parses Prometheus text: `name{labels}` → value (labels as printed).
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "{series} twice"
        );
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer_without_the_key_and_metrics_need_it() {
    let setup = Setup::new().await;
    let (grant, _) = setup.logged_in().await;
    let proxy = setup.proxy(&[]).await;

    let healthz = curl(&[&format!("{}/_nifty/healthz", proxy.url)]).await;
    assert_eq!(healthz.status, 200);
    let readyz = curl(&[&format!("{}/_nifty/readyz", proxy.url)]).await;
    assert_eq!(readyz.status, 200, "{}", readyz.text());
    let metrics = curl(&[&format!("{}/_nifty/metrics", proxy.url)]).await;
    assert_eq!(metrics.status, 401);

    // The grant dies: the saved token is refused and the refresh token is revoked.
    grant.revoke();
    let api = curl_with_key(&[&format!("{}/api/v1.0/projects", proxy.url)]).await;
    assert_eq!(api.status, 401);
    assert_eq!(
        api.json()["error"],
        "reauthorization_required",
        "{}",
        api.text()
    );
    assert!(api.json()["message"]
        .as_str()
        .unwrap()
        .contains("nifty-auth login"));
    let readyz = curl(&[&format!("{}/_nifty/readyz", proxy.url)]).await;
    assert_eq!(readyz.status, 503);
    assert_eq!(readyz.json()["error"], "reauthorization_required");
    assert_eq!(
        setup.fake.api_calls(),
        1,
        "the 401 that showed the grant is dead"
    );
    assert_eq!(setup.fake.invalid_grants_served(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_page_counts_requests_token_calls_and_upstream_latency() {
    let (setup, proxy) = Setup::serving(&[]).await;
    let api = format!("{}/api/v1.0/projects", proxy.url);
    for _ in 0..3 {
        assert_eq!(curl_with_key(&[&api]).await.status, 200);
    }
    assert_eq!(curl(&[&api]).await.status, 401);
    setup.fake.push_api_status(401);
    assert_eq!(curl_with_key(&[&api]).await.status, 200, "retried once");
    setup.fake.push_api_status(503);
    assert_eq!(curl_with_key(&[&api]).await.status, 503);

    let page = curl_with_key(&[&format!("{}/_nifty/metrics", proxy.url)]).await;
    assert_eq!(page.status, 200);
    assert!(page.headers.contains("text/plain"));
    let samples = parse_metrics(&page.text());
    let sample = |series: &str| {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{}", page.text()))
    };
    assert_eq!(
        sample(r#"nifty_proxy_requests_total{status="200",grant_class="profile"}"#),
        4.0
    );
    assert_eq!(
        sample(r#"nifty_proxy_requests_total{status="503",grant_class="profile"}"#),
        1.0
    );
    assert_eq!(
        sample(r#"nifty_proxy_requests_total{status="401",grant_class="none"}"#),
        1.0
    );
    assert_eq!(sample("nifty_proxy_upstream_duration_seconds_count"), 5.0);
    assert_eq!(
        sample(r#"nifty_auth_token_calls_total{outcome="succeeded"}"#),
        1.0
    );
    assert_eq!(sample("nifty_auth_token_call_duration_seconds_count"), 1.0);
    assert_eq!(sample("nifty_auth_token_calls_in_flight"), 0.0);
    // Two refresh tasks: loading the saved tokens at the first request, and the one after the 401.
    assert_eq!(sample("nifty_auth_refreshes_total"), 2.0);
    assert_eq!(
        sample(r#"nifty_auth_refresh_duration_seconds_count{outcome="ok"}"#),
        2.0
    );
    assert_eq!(sample("nifty_auth_unauthorized_retries_total"), 1.0);
    assert_eq!(
        sample("nifty_proxy_requests_in_flight"),
        1.0,
        "the metrics request itself"
    );
    assert_eq!(setup.fake.token_calls(), 1);

    // One log line per request: method, path without its query, status, grant.
    let query = format!("{api}?secret-looking=q1w2e3");
    assert_eq!(curl_with_key(&[&query]).await.status, 200);
    proxy.wait_for_lines("nifty_auth::proxy: request", 8).await;
    let log = proxy.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("nifty_auth::proxy: request"))
        .count();
    assert_eq!(lines, 8, "{log}");
    assert!(
        log.contains("method=GET path=/api/v1.0/projects status=401"),
        "{log}"
    );
    assert!(!log.contains("q1w2e3"), "the query was logged");
    assert!(!log.contains(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_before_its_answer_is_logged_499_and_leaves_no_request_in_flight() {
    let (setup, proxy) = Setup::serving(&[]).await;
    let mut hold = setup.fake.hold_next_api_answer();
    let mut stream = tokio::net::TcpStream::connect(proxy.authority())
        .await
        .unwrap();
    let request = format!(
        "GET /api/v1.0/projects HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {KEY}\r\n\r\n",
        proxy.authority()
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .unwrap();
    hold.arrived().await;

    drop(stream);
    proxy.wait_for_log("status=499").await;
    hold.release();

    let page = curl_with_key(&[&format!("{}/_nifty/metrics", proxy.url)]).await;
    let samples = parse_metrics(&page.text());
    assert_eq!(
        samples["nifty_proxy_requests_in_flight"], 1.0,
        "only the metrics request"
    );
    assert_eq!(
        samples[r#"nifty_proxy_requests_total{status="499",grant_class="none"}"#],
        1.0
    );
    assert!(proxy
        .log()
        .contains("method=GET path=/api/v1.0/projects status=499"));
}
