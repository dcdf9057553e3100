//! The `nifty-auth` binary run as a user would, against a `FakeNifty` started here, with
//! `XDG_CONFIG_HOME` in a temporary directory. The test plays the browser.
#![cfg(feature = "cli")]

mod common;

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::http_client;
use http::StatusCode;
use nifty_auth::testing::{FakeNifty, Grant, TokenFault};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_nifty-auth");
const SECRET: &str = "cli-test-secret-7f3a9c";
const WAIT: Duration = Duration::from_secs(30);

/// A fake Nifty and a private config directory.
struct Setup {
    fake: FakeNifty,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Self {
        let fake = FakeNifty::builder()
            .client("cli-test-id", SECRET)
            .start()
            .await
            .unwrap();
        Setup {
            fake,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn profile_dir(&self) -> PathBuf {
        self.dir.path().join("nifty-auth")
    }

    fn tokens_file(&self) -> PathBuf {
        self.profile_dir().join("default.json")
    }

    /// The binary with the environment pointing at the fake and the temporary config directory.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("XDG_CONFIG_HOME", self.dir.path())
            .env("HOME", self.dir.path())
            .env("NIFTY_TOKEN_URL", self.fake.token_url())
            .env("NIFTY_AUTHORIZE_URL", self.fake.authorize_url())
            .env("NIFTY_API_URL", self.fake.api_url(""))
            .env("NIFTY_CLIENT_ID", self.fake.client_id())
            .env("NIFTY_CLIENT_SECRET", SECRET)
            .env_remove("NIFTY_AUTH_PROFILE")
            .env_remove("NIFTY_AUTH_STORE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> Output {
        let output = tokio::time::timeout(WAIT, self.command(args).output()).await;
        let output = output.expect("the command hung").unwrap();
        assert_no_secret(&output, &[SECRET]);
        output
    }

    /// Runs `login --no-browser --port 0`; `stray` is called with the redirect URI before the
    /// browser follows the authorize URL.
    async fn login_with(&self, stray: Option<&str>) -> Output {
        let mut child = self
            .command(&["login", "--no-browser", "--port", "0"])
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            let line = tokio::time::timeout(WAIT, lines.next_line()).await;
            let line = line
                .expect("no URL printed")
                .unwrap()
                .expect("stdout ended");
            if line.starts_with("http") {
                break line;
            }
        };
        if let Some(query) = stray {
            let redirect_uri = query_param(&url, "redirect_uri");
            let (status, _) = get(&format!("{redirect_uri}?{query}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
        }
        let (status, page) = browse(&url).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let mut rest = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            rest.push_str(&line);
        }
        let mut output = tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .expect("login did not finish")
            .unwrap();
        output.stdout = format!("{url}\n{rest}").into_bytes();
        assert_no_secret(&output, &[SECRET]);
        output
    }

    async fn login(&self) -> Output {
        self.login_with(None).await
    }

    /// Moves the saved access token's expiry into the past, as if an hour went by.
    fn expire_saved_token(&self) {
        let path = self.tokens_file();
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        json["expires_at"] = serde_json::json!(now.as_secs() - 10);
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn stdout(output: &Output) -> String {
    text(&output.stdout)
}

fn stderr(output: &Output) -> String {
    text(&output.stderr)
}

fn assert_no_secret(output: &Output, secrets: &[&str]) {
    for secret in secrets {
        assert!(!stdout(output).contains(secret), "secret on stdout");
        assert!(!stderr(output).contains(secret), "secret on stderr");
    }
}

fn query_param(url: &str, name: &str) -> String {
    let query = url.split_once('?').unwrap().1;
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
        .unwrap()
}

async fn get(url: &str) -> (StatusCode, http::HeaderMap) {
    let response = http_client().get(url.parse().unwrap()).await.unwrap();
    (response.status(), response.headers().clone())
}

/// The browser: GETs `url` and follows one redirect.
async fn browse(url: &str) -> (StatusCode, String) {
    use http_body_util::BodyExt;
    let client = http_client();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let response = client.get(location.parse().unwrap()).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, text(&body))
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_no_browser_saves_a_0600_profile_and_status_json_shows_the_expiry_and_no_secret() {
    let setup = Setup::new().await;

    let output = setup.login().await;

    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(setup.fake.authorize_calls(), 1);
    assert_eq!(setup.fake.token_calls_for(Grant::AuthorizationCode), 1);
    assert_eq!(setup.fake.token_calls(), 1);
    #[cfg(unix)]
    {
        assert_eq!(mode(&setup.tokens_file()), 0o600);
        assert_eq!(
            mode(&setup.profile_dir().join("default.client.json")),
            0o600
        );
        assert_eq!(mode(&setup.profile_dir()), 0o700);
    }
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(setup.tokens_file()).unwrap()).unwrap();
    let refresh_token = setup.fake.current_refresh_token().unwrap();
    assert_eq!(
        saved["refresh_token"].as_str(),
        Some(refresh_token.as_str())
    );

    let status = setup.run(&["status", "--json"]).await;
    assert!(status.status.success(), "{}", stderr(&status));
    let access_token = saved["access_token"].as_str().unwrap();
    assert_no_secret(&status, &[access_token, &refresh_token]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["profile"], "default");
    assert_eq!(json["client_id"], "cli-test-id");
    assert_eq!(json["logged_in"], true);
    assert_eq!(json["has_refresh_token"], true);
    assert_eq!(json["reauthorization_required"], false);
    assert_eq!(json["scope"], "project task");
    let left = json["expires_in_seconds"].as_i64().unwrap();
    assert!((3500..=3600).contains(&left), "{left}");
    assert!(json["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(setup.fake.token_calls(), 1, "status made a token call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_twice_prints_the_same_token_with_one_token_call_and_refreshes_once_after_expiry() {
    let setup = Setup::new().await;
    assert!(setup.login().await.status.success());

    let first = setup.run(&["token"]).await;
    let second = setup.run(&["token"]).await;

    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(stdout(&first), stdout(&second));
    let token = stdout(&first).trim_end().to_owned();
    assert!(token.starts_with("at-"), "{token}");
    assert_eq!(
        stdout(&first),
        format!("{token}\n"),
        "stdout is the token only"
    );
    assert_eq!(
        setup.fake.token_calls(),
        1,
        "one token call in all (the login)"
    );

    setup.expire_saved_token();
    let third = setup.run(&["token"]).await;
    let fourth = setup.run(&["token"]).await;

    assert!(third.status.success(), "{}", stderr(&third));
    assert_ne!(stdout(&third), stdout(&first));
    assert_eq!(stdout(&third), stdout(&fourth));
    assert_eq!(setup.fake.token_calls_for(Grant::RefreshToken), 1);
    assert_eq!(setup.fake.token_calls(), 2);
    // The rotation was saved: the file holds the fake's current refresh token.
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(setup.tokens_file()).unwrap()).unwrap();
    assert_eq!(
        saved["refresh_token"].as_str(),
        setup.fake.current_refresh_token().as_deref()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_token_processes_after_expiry_make_exactly_one_token_call() {
    let setup = Setup::new().await;
    assert!(setup.login().await.status.success());
    setup.expire_saved_token();
    // Keeps the first refresh in flight while the second process starts.
    setup.fake.set_token_delay(Duration::from_millis(300));

    let a = setup.command(&["token"]).spawn().unwrap();
    let b = setup.command(&["token"]).spawn().unwrap();
    let (a, b) = tokio::join!(a.wait_with_output(), b.wait_with_output());
    let (a, b) = (a.unwrap(), b.unwrap());

    assert!(a.status.success(), "{}", stderr(&a));
    assert!(b.status.success(), "{}", stderr(&b));
    assert_eq!(stdout(&a), stdout(&b));
    assert_eq!(setup.fake.token_calls_for(Grant::RefreshToken), 1);
    assert_eq!(setup.fake.invalid_grants_served(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_makes_token_exit_3_saying_to_run_login() {
    let setup = Setup::new().await;
    assert!(setup.login().await.status.success());
    setup.expire_saved_token();
    setup.fake.push_token_fault(TokenFault::status(
        400,
        r#"{"error":"invalid_grant","error_description":"grant revoked"}"#,
    ));

    let output = setup.run(&["token"]).await;

    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("nifty-auth login"),
        "{}",
        stderr(&output)
    );
    assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
    assert_eq!(stdout(&output), "");
    assert_eq!(setup.fake.token_calls_for(Grant::RefreshToken), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_callback_with_a_wrong_state_does_not_stop_login_from_completing() {
    let setup = Setup::new().await;
    let code = setup.fake.issue_code("http://127.0.0.1/elsewhere");

    let output = setup
        .login_with(Some(&format!("code={code}&state=forged")))
        .await;

    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        setup.fake.token_calls(),
        1,
        "only the right code was exchanged"
    );
    assert!(setup.tokens_file().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_client_id_exits_2_naming_the_variable_and_never_prints_the_secret() {
    let setup = Setup::new().await;
    let mut command = setup.command(&["login", "--no-browser", "--port", "0"]);
    command.env_remove("NIFTY_CLIENT_ID");

    let output = command.output().await.unwrap();

    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("NIFTY_CLIENT_ID"),
        "{}",
        stderr(&output)
    );
    assert_no_secret(&output, &[SECRET]);
    assert_eq!(setup.fake.token_calls(), 0);
    assert!(!setup.profile_dir().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_and_refresh_token_never_appear_in_any_output() {
    let setup = Setup::new().await;
    let mut outputs = vec![setup.login().await];
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["token", "--verbose"],
        &["api", "GET", "/users/me"],
    ] {
        outputs.push(setup.run(args).await);
    }
    let refresh_token = setup.fake.current_refresh_token().unwrap();
    for _ in 0..nifty_auth::DEFAULT_TOKEN_ATTEMPTS {
        setup.fake.push_token_fault(TokenFault::status(500, "{}"));
    }
    setup.expire_saved_token();
    outputs.push(setup.run(&["token", "--verbose"]).await);
    outputs.push(setup.run(&["logout"]).await);
    outputs.push(setup.run(&["token", "--verbose"]).await);

    for output in &outputs {
        assert_no_secret(output, &[SECRET, &refresh_token]);
    }
    assert_eq!(outputs[0].status.code(), Some(0));
    assert_eq!(outputs[4].status.code(), Some(0), "{}", stderr(&outputs[4]));
    assert_eq!(outputs[5].status.code(), Some(4), "{}", stderr(&outputs[5]));
    assert_eq!(outputs[6].status.code(), Some(0));
    assert_eq!(outputs[7].status.code(), Some(3), "{}", stderr(&outputs[7]));
    assert!(!setup.tokens_file().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_get_projects_prints_the_fakes_projects() {
    let setup = Setup::new().await;
    assert!(setup.login().await.status.success());

    let output = setup.run(&["api", "GET", "/projects"]).await;

    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["projects"][0]["name"], "Launch");
    assert_eq!(json["projects"][1]["name"], "Roadmap");
    assert_eq!(setup.fake.api_calls(), 1);
    assert_eq!(setup.fake.token_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_before_any_login_exits_3_and_usage_errors_exit_2() {
    let setup = Setup::new().await;

    let token = setup.run(&["token"]).await;
    let bad_profile = setup.run(&["token", "--profile", "../etc"]).await;
    let bad_flag = setup.run(&["token", "--no-such-flag"]).await;

    assert_eq!(token.status.code(), Some(3));
    assert!(
        stderr(&token).contains("nifty-auth login"),
        "{}",
        stderr(&token)
    );
    assert_eq!(bad_profile.status.code(), Some(2));
    assert_eq!(bad_flag.status.code(), Some(2));
    assert_eq!(setup.fake.token_calls(), 0);
}
