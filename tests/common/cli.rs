//! The command line binary as the tests run it: its configuration and home in a directory of the
//! test's, every Nifty URL at a `FakeNifty`, nothing inherited that could pick another profile or
//! store, no stdin, killed with its handle.

use std::process::Stdio;

use nifty_auth::testing::FakeNifty;
use tokio::process::Command;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_nifty-auth");

/// A fake Nifty with one client app, and a private directory for the binary's configuration.
pub struct Setup {
    pub fake: FakeNifty,
    pub dir: tempfile::TempDir,
    client: (&'static str, &'static str),
}

impl Setup {
    /// A fake Nifty on loopback knowing the client `id` with `secret`, and an empty directory.
    pub async fn start(id: &'static str, secret: &'static str) -> Self {
        let fake = FakeNifty::builder()
            .client(id, secret)
            .start()
            .await
            .unwrap();
        Setup {
            fake,
            dir: tempfile::tempdir().unwrap(),
            client: (id, secret),
        }
    }

    /// [`BIN`] as that client of the fake, its configuration and home in the directory; stderr
    /// piped. The caller adds the arguments and stdout.
    pub fn cli_command(&self) -> Command {
        let home = self.dir.path();
        let mut command = Command::new(BIN);
        command
            .env("XDG_CONFIG_HOME", home)
            .env("HOME", home)
            .env("NIFTY_TOKEN_URL", self.fake.token_url())
            .env("NIFTY_API_URL", self.fake.api_url(""))
            .env("NIFTY_CLIENT_ID", self.client.0)
            .env("NIFTY_CLIENT_SECRET", self.client.1)
            .env_remove("NIFTY_AUTH_PROFILE")
            .env_remove("NIFTY_AUTH_STORE")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }
}
