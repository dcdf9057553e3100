//! The `nifty-auth` binary run as a user would, against a `FakeNifty` started here, with
//! `XDG_CONFIG_HOME` in a temporary directory. The test plays the browser.
#![cfg(feature = "cli")]

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cli::Setup;
use common::http_client;
use http::StatusCode;
use nifty_auth::testing::{Grant, TokenFault};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const SECRET: &str = "cli-test-secret-7f3a9c";
const WAIT: Duration = Duration::from_secs(30);

impl Setup {
    async fn new() -> Self {
        Setup::start("cli-test-id", SECRET).await
    }

    fn profile_dir(&self) -> PathBuf {
        self.dir.path().join("nifty-auth")
    }

    fn tokens_file(&self) -> PathBuf {
        self.profile_dir().join("default.json")
    }

    /// The binary with the environment pointing at the fake and the temporary config directory.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = self.cli_command();
        command
            .args(args)
            .env("NIFTY_AUTHORIZE_URL", self.fake.authorize_url())
            .stdout(Stdio::piped());
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
        self.login_planting(stray, |_| {}).await
    }

    /// [`login_with`](Self::login_with), calling `plant` with the login process's id once it
    /// waits for the browser (before it writes any file).
    async fn login_planting(&self, stray: Option<&str>, plant: impl FnOnce(u32)) -> Output {
        let command = self.command(&["login", "--no-browser", "--port", "0"]);
        self.login_command_with(command, stray, plant).await
    }

    /// [`login_planting`](Self::login_planting) of this `login` command.
    async fn login_command_planting(&self, command: Command, plant: impl FnOnce(u32)) -> Output {
        self.login_command_with(command, None, plant).await
    }

    async fn login_command_with(
        &self,
        mut command: Command,
        stray: Option<&str>,
        plant: impl FnOnce(u32),
    ) -> Output {
        let mut child = command.spawn().unwrap();
        let pid = child.id().unwrap();
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
        plant(pid);
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

// Files and what reaches the terminal.

/// The profile directory, created here with mode `mode` (exactly, whatever the umask).
#[cfg(unix)]
fn make_profile_dir(setup: &Setup, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = setup.profile_dir();
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}

#[cfg(unix)]
fn plant_file(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, "planted").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// The names in `dir`, sorted.
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The characters a terminal may act on: controls (but the line breaks between lines) and the
/// bidirectional overrides and isolates that reorder what is shown.
fn terminal_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c)
        })
        .collect()
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_writes_its_files_0600_at_fresh_names_and_never_opens_a_file_planted_at_a_temp_name()
{
    let setup = Setup::new().await;
    let dir = make_profile_dir(&setup, 0o700);
    let mut planted = Vec::new();

    let output = setup
        .login_planting(None, |pid| {
            // The names the writers used to take (`.NAME.tmp-PID`), for both files.
            for name in ["default.client.json", "default.json"] {
                let path = dir.join(format!(".{name}.tmp-{pid}"));
                plant_file(&path);
                planted.push(path);
            }
        })
        .await;

    assert!(output.status.success(), "{}", stderr(&output));
    let client_file = dir.join("default.client.json");
    assert!(std::fs::symlink_metadata(&client_file)
        .unwrap()
        .file_type()
        .is_file());
    assert_eq!(mode(&client_file), 0o600);
    assert_eq!(mode(&setup.tokens_file()), 0o600);
    let client: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&client_file).unwrap()).unwrap();
    assert_eq!(client["client_secret"], SECRET);
    assert_eq!(planted.len(), 2);
    for path in &planted {
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            "planted",
            "{path:?}"
        );
        assert_eq!(mode(path), 0o644, "{path:?}");
    }
    // Nothing else is left behind: no temporary file of a write.
    let mut expected: Vec<String> = planted
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    expected.extend(["default.client.json", "default.json", "default.json.lock"].map(String::from));
    expected.sort();
    assert_eq!(names(&dir), expected);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_replaces_symlinks_at_its_files_and_never_writes_through_one() {
    use std::os::unix::fs::symlink;
    let setup = Setup::new().await;
    let dir = make_profile_dir(&setup, 0o700);
    let outside = setup.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let victim = outside.join("victim");
    plant_file(&victim);
    // Symlinks at the files themselves, pointing at files that do not exist yet.
    symlink(
        outside.join("stolen-client.json"),
        dir.join("default.client.json"),
    )
    .unwrap();
    symlink(outside.join("stolen-tokens.json"), setup.tokens_file()).unwrap();
    let mut links = Vec::new();

    let output = setup
        .login_planting(None, |pid| {
            for name in ["default.client.json", "default.json"] {
                let link = dir.join(format!(".{name}.tmp-{pid}"));
                symlink(&victim, &link).unwrap();
                links.push(link);
            }
        })
        .await;

    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "planted");
    assert_eq!(mode(&victim), 0o644);
    assert_eq!(
        names(&outside),
        ["victim"],
        "a file was created through a symlink"
    );
    for file in [dir.join("default.client.json"), setup.tokens_file()] {
        let meta = std::fs::symlink_metadata(&file).unwrap();
        assert!(meta.file_type().is_file(), "{file:?} is still a symlink");
        assert_eq!(mode(&file), 0o600, "{file:?}");
    }
    assert_eq!(links.len(), 2);
    for link in &links {
        assert_eq!(std::fs::read_link(link).unwrap(), victim, "{link:?}");
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_login_creates_are_0700_with_their_missing_parents() {
    let setup = Setup::new().await;
    let parent = setup.dir.path().join("a");
    let store = parent.join("b").join("tokens.json");
    let store_text = store.to_str().unwrap();

    let profile = setup.login().await;
    let mut command = setup.command(&["login", "--no-browser", "--port", "0"]);
    command.env("NIFTY_AUTH_STORE", store_text);
    let elsewhere = setup.login_command_planting(command, |_| {}).await;

    assert!(profile.status.success(), "{}", stderr(&profile));
    assert!(elsewhere.status.success(), "{}", stderr(&elsewhere));
    assert_eq!(mode(&setup.profile_dir()), 0o700);
    assert_eq!(mode(&parent), 0o700);
    assert_eq!(mode(&parent.join("b")), 0o700);
    assert_eq!(mode(&store), 0o600);
    assert_eq!(mode(&parent.join("b").join("tokens.client.json")), 0o600);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_directory_open_to_other_users_is_refused_with_the_chmod_fix_and_left_as_is() {
    let setup = Setup::new().await;
    let dir = make_profile_dir(&setup, 0o755);
    let shown = dir.display().to_string();

    let mut outputs = Vec::new();
    for args in [
        &["status"][..],
        &["token"],
        &["login", "--no-browser", "--port", "0", "--timeout", "1"],
        &["logout"],
    ] {
        outputs.push(setup.run(args).await);
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o710)).unwrap();
    }
    let group_only = setup.run(&["status"]).await;

    for output in &outputs {
        assert_eq!(output.status.code(), Some(5), "{}", stderr(output));
        assert_eq!(
            stderr(output),
            format!(
                "nifty-auth: the profile directory {shown} is open to other users (mode 0755): \
                 run `chmod 700 {shown}` and try again\n"
            )
        );
        assert_eq!(stdout(output), "");
    }
    assert_eq!(group_only.status.code(), Some(5), "{}", stderr(&group_only));
    assert!(
        stderr(&group_only).contains("(mode 0710)"),
        "{}",
        stderr(&group_only)
    );
    assert_eq!(mode(&dir), 0o710, "the directory's mode was changed");
    assert!(names(&dir).is_empty(), "{:?}", names(&dir));
    assert_eq!(setup.fake.authorize_calls(), 0);
    assert_eq!(setup.fake.token_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_and_error_text_from_the_token_endpoint_reach_the_terminal_without_control_characters(
) {
    let setup = Setup::new().await;
    let scope = "project\u{1b}[31m task\r\u{202e}x";
    let answer = serde_json::json!({
        "access_token": "at-planted-answer",
        "token_type": "bearer",
        "expires_in": 3600,
        "refresh_token": "rt-planted-answer",
        "scope": scope,
    });
    setup
        .fake
        .push_token_fault(TokenFault::status(201, answer.to_string()));

    let login = setup.login().await;
    let status = setup.run(&["status"]).await;
    let status_json = setup.run(&["status", "--json"]).await;
    setup.expire_saved_token();
    let description = "revoked\u{1b}]0;owned\u{7} \u{1b}[2J\u{202e}exe.txt\u{2066}";
    setup.fake.push_token_fault(TokenFault::status(
        400,
        serde_json::json!({"error": "invalid_grant", "error_description": description}).to_string(),
    ));
    let token = setup.run(&["token", "--verbose"]).await;

    assert!(login.status.success(), "{}", stderr(&login));
    assert!(status.status.success(), "{}", stderr(&status));
    assert_eq!(token.status.code(), Some(3), "{}", stderr(&token));
    let shown = "project[31m task x";
    assert!(
        stderr(&login).contains(&format!("scope: {shown},")),
        "{}",
        stderr(&login)
    );
    assert!(
        stdout(&status).contains(&format!("\nscope:            {shown}\n")),
        "{}",
        stdout(&status)
    );
    let json: serde_json::Value = serde_json::from_slice(&status_json.stdout).unwrap();
    assert_eq!(json["scope"], shown);
    assert!(stderr(&token).contains("revoked"), "{}", stderr(&token));
    for output in [&login, &status, &status_json, &token] {
        assert_eq!(
            terminal_controls(&stdout(output)),
            [char::MIN; 0],
            "{}",
            stdout(output)
        );
        assert_eq!(
            terminal_controls(&stderr(output)),
            [char::MIN; 0],
            "{}",
            stderr(output)
        );
    }
    assert_eq!(setup.fake.token_calls(), 2);
}
