//! Not an open proxy, not open to every local user: the proxy key on TCP, only the API origin
//! reachable, a 0600 unix socket without a key, loopback unless told otherwise.

use std::os::unix::fs::PermissionsExt as _;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_proxy_key_is_refused_and_nothing_is_forwarded() {
    let (setup, proxy) = Setup::serving(&[]).await;
    let url = format!("{}/api/v1.0/projects", proxy.url);

    let missing = curl(&[&url]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["error"], "proxy_key_required");
    assert!(missing
        .headers
        .to_ascii_lowercase()
        .contains("www-authenticate: bearer"));

    let near_miss = &KEY[..KEY.len() - 1];
    for wrong in [
        format!("Bearer {near_miss}"),
        format!("Bearer {KEY}x"),
        format!("Basic {KEY}"),
        "Bearer ".to_owned(),
    ] {
        let header = format!("Authorization: {wrong}");
        let answer = curl(&["-H", &header, &url]).await;
        assert_eq!(answer.status, 401, "{wrong}");
        assert_eq!(answer.json()["error"], "proxy_key_invalid", "{wrong}");
    }
    assert_eq!(setup.fake.api_calls(), 0);
    assert_eq!(setup.fake.token_calls(), 0);
    assert!(!proxy.log().contains(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_connect_and_foreign_hosts_are_refused_without_forwarding() {
    let (setup, proxy) = Setup::serving(&[]).await;
    let auth = format!("Authorization: Bearer {KEY}");

    // curl as an HTTP proxy client: an absolute-form target.
    let absolute = curl(&[
        "-H",
        &auth,
        "-x",
        &proxy.url,
        "http://example.com/api/v1.0/projects",
    ])
    .await;
    assert_eq!(absolute.status, 403);
    assert_eq!(absolute.json()["error"], "destination_not_allowed");
    let api_itself = setup.fake.api_url("/projects");
    let absolute = curl(&["-H", &auth, "-x", &proxy.url, &api_itself]).await;
    assert_eq!(
        absolute.status, 403,
        "absolute-form is refused even for the API"
    );

    let connect = raw_status(
        proxy.authority(),
        &format!("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n{auth}\r\n\r\n"),
    )
    .await;
    assert_eq!(connect, 405);

    let url = format!("{}/api/v1.0/projects", proxy.url);
    for host in [
        "evil.example",
        "evil.example:80",
        "127.0.0.1:1",
        "localhost",
    ] {
        let header = format!("Host: {host}");
        let answer = curl(&["-H", &auth, "-H", &header, &url]).await;
        assert_eq!(answer.status, 403, "{host}");
        assert_eq!(answer.json()["error"], "host_not_allowed");
    }
    let no_host = raw_status(
        proxy.authority(),
        &format!("GET /api/v1.0/projects HTTP/1.0\r\n{auth}\r\n\r\n"),
    )
    .await;
    assert_eq!(no_host, 403);

    assert_eq!(setup.fake.api_calls(), 0);
    assert_eq!(setup.fake.token_calls(), 0);

    // The names of the proxy itself are fine.
    let port = proxy.authority().rsplit(':').next().unwrap();
    let localhost = format!("Host: localhost:{port}");
    let answer = curl(&["-H", &auth, "-H", &localhost, &url]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_is_0600_and_needs_no_key() {
    let setup = Setup::new().await;
    let (_, access) = setup.logged_in().await;
    let socket = setup.dir.path().join("nifty.sock");
    let listen = format!("unix:{}", socket.display());
    let mut command = setup.command(&["proxy", "--listen", &listen]);
    command.env_remove("NIFTY_PROXY_KEY");
    let proxy = Proxy::spawn(command).await;

    let mode = std::fs::symlink_metadata(&socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let socket_arg = socket.display().to_string();
    let answer = curl(&[
        "--unix-socket",
        &socket_arg,
        "-H",
        "Authorization: Bearer anything-the-client-had",
        "http://localhost/api/v1.0/projects",
    ])
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let sent = &setup.fake.api_requests()[0];
    assert_eq!(
        sent.authorization.as_deref(),
        Some(&*format!("Bearer {access}"))
    );
    assert_never_sent(&setup.fake, "anything-the-client-had");

    assert_eq!(proxy.stop().await, Some(0));
    assert!(!socket.exists(), "the socket is removed at exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nifty_proxy_key_a_key_is_generated_into_a_0600_file() {
    let setup = Setup::new().await;
    setup.logged_in().await;
    let mut command = setup.command(&["proxy", "--listen", "127.0.0.1:0"]);
    command.env_remove("NIFTY_PROXY_KEY");
    let proxy = Proxy::spawn(command).await;

    let key_file = setup.dir.path().join("tokens.proxy-key");
    assert!(
        proxy.log().contains(&key_file.display().to_string()),
        "{}",
        proxy.log()
    );
    let meta = std::fs::symlink_metadata(&key_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert!(key.len() >= 43);
    assert!(!proxy.log().contains(&key), "the key was printed");

    let url = format!("{}/api/v1.0/projects", proxy.url);
    let header = format!("Authorization: Bearer {key}");
    assert_eq!(curl(&["-H", &header, &url]).await.status, 200);
    assert_eq!(
        curl_with_key(&[&url]).await.status,
        401,
        "only the generated key"
    );
}

#[tokio::test]
async fn a_non_loopback_address_needs_the_explicit_flag() {
    let setup = Setup::new().await;
    setup.logged_in().await;
    let output = setup
        .command(&["proxy", "--listen", "0.0.0.0:0"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--allow-non-loopback"), "{stderr}");

    let mut command = setup.command(&["proxy", "--listen", "0.0.0.0:0", "--allow-non-loopback"]);
    command.env("NIFTY_PROXY_KEY", KEY);
    let proxy = Proxy::spawn(command).await;
    assert!(proxy.url.starts_with("http://0.0.0.0:"), "{}", proxy.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_can_come_from_a_file_and_a_short_key_is_refused() {
    let setup = Setup::new().await;
    setup.logged_in().await;
    let file = setup.dir.path().join("credential");
    std::fs::write(&file, format!("{KEY}-from-file\n")).unwrap();
    let mut command = setup.command(&["proxy", "--listen", "127.0.0.1:0"]);
    command
        .env_remove("NIFTY_PROXY_KEY")
        .env("NIFTY_PROXY_KEY_FILE", &file);
    let proxy = Proxy::spawn(command).await;
    let url = format!("{}/api/v1.0/projects", proxy.url);
    let header = format!("Authorization: Bearer {KEY}-from-file");
    assert_eq!(curl(&["-H", &header, &url]).await.status, 200);
    assert_eq!(curl_with_key(&[&url]).await.status, 401);

    let output = setup
        .command(&["proxy", "--listen", "127.0.0.1:0"])
        .env("NIFTY_PROXY_KEY", "short")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("too short"));
}
