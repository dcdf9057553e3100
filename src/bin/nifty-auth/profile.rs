//! A profile: its files, its saved client credentials and URLs, and the [`NiftyAuth`] built from them.

use std::fmt;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nifty_auth::store::{BoxFuture, FileStore, StoreLock, TokenStore};
use nifty_auth::{BoxError, Credentials, GrantId, NiftyAuth, TokenSet};
use serde::{Deserialize, Serialize};

use crate::failure::Failure;
use crate::Global;

/// The default API base.
pub(crate) const DEFAULT_API_URL: &str = "https://openapi.niftypm.com/api/v1.0";
/// `token` never prints an access token with less than this left: it refreshes first.
pub(crate) const MIN_VALIDITY: Duration = Duration::from_secs(60);
const DEFAULT_PROFILE: &str = "default";

/// The client credentials and URLs saved by `login` (mode 0600).
#[derive(Clone, Default, Deserialize, Serialize)]
pub(crate) struct ClientConfig {
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) token_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) authorize_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) api_url: Option<String>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .field("token_url", &self.token_url)
            .finish_non_exhaustive()
    }
}

/// One profile: where its files are, and the URLs given on the command line.
#[derive(Debug)]
pub(crate) struct Profile {
    pub(crate) name: String,
    pub(crate) tokens_path: PathBuf,
    pub(crate) client_path: PathBuf,
    /// The profiles directory (created with mode 0700), unless `--store` chose the place.
    own_dir: Option<PathBuf>,
    token_url: Option<String>,
    authorize_url: Option<String>,
    api_url: Option<String>,
}

impl Profile {
    /// The profile named by the options (no I/O).
    pub(crate) fn open(global: &Global) -> Result<Self, Failure> {
        let name = global.profile.clone();
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(Failure::usage(format!(
                "invalid profile name `{}`: use 1 to 64 letters, digits, `-` or `_`",
                name.escape_debug()
            )));
        }
        let (tokens_path, own_dir) = match &global.store {
            Some(path) => (path.clone(), None),
            None => {
                let dir = dirs::config_dir()
                    .ok_or_else(|| {
                        Failure::usage(
                            "no configuration directory on this system: use --store PATH",
                        )
                    })?
                    .join("nifty-auth");
                (dir.join(format!("{name}.json")), Some(dir))
            }
        };
        let stem = tokens_path
            .file_stem()
            .map_or_else(|| "tokens".into(), |s| s.to_string_lossy().into_owned());
        let client_path = tokens_path.with_file_name(format!("{stem}.client.json"));
        Ok(Profile {
            name,
            tokens_path,
            client_path,
            own_dir,
            token_url: global.token_url.clone(),
            authorize_url: global.authorize_url.clone(),
            api_url: global.api_url.clone(),
        })
    }

    /// The command that logs this profile in again.
    pub(crate) fn login_command(&self) -> String {
        if self.name == DEFAULT_PROFILE {
            "nifty-auth login".to_owned()
        } else {
            format!("nifty-auth login --profile {}", self.name)
        }
    }

    /// The token store: the library's `FileStore` on the profile's token file.
    pub(crate) fn file_store(&self) -> FileStore {
        FileStore::new(&self.tokens_path)
    }

    /// The saved client configuration, if any.
    pub(crate) fn load_client(&self) -> Result<Option<ClientConfig>, Failure> {
        let bytes = match fs::read(&self.client_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Failure::store(
                    format_args!("cannot read {}", self.client_path.display()),
                    e,
                ))
            }
        };
        // serde_json's message could quote the secret: report only the position.
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Failure::store(
                format_args!("{} is not a valid client file", self.client_path.display()),
                format!(
                    "line {} column {}: fix or delete it, then run `{}`",
                    e.line(),
                    e.column(),
                    self.login_command()
                ),
            )
        })
    }

    /// Refuses a profiles directory that other users may enter, list or write (any group or
    /// other permission bit): its files would be theirs to replace (a client file naming their own
    /// token URL would receive the secret and the refresh token). Nothing is changed: the error
    /// names the `chmod` that fixes it. A missing directory is fine (it is created 0700); a
    /// `--store` path's directory is the user's choice and is not checked.
    pub(crate) fn check_dir(&self) -> Result<(), Failure> {
        #[cfg(unix)]
        if let Some(dir) = &self.own_dir {
            use std::os::unix::fs::PermissionsExt;
            let mode = match fs::metadata(dir) {
                Ok(meta) => meta.permissions().mode() & 0o777,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => {
                    return Err(Failure::store(
                        format_args!("cannot read {}", dir.display()),
                        e,
                    ))
                }
            };
            if mode & 0o077 != 0 {
                return Err(Failure::store_refused(format!(
                    "the profile directory {dir} is open to other users (mode {mode:04o}): run \
                     `chmod 700 {dir}` and try again",
                    dir = dir.display()
                )));
            }
        }
        Ok(())
    }

    /// Creates the profile's directory and its missing parents, mode 0700.
    pub(crate) fn ensure_dir(&self) -> Result<(), Failure> {
        let dir = match self.tokens_path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => return Ok(()),
        };
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(dir)
            .map_err(|e| Failure::store(format_args!("cannot create {}", dir.display()), e))
    }

    /// Saves the client configuration atomically, mode 0600.
    pub(crate) fn save_client(&self, config: &ClientConfig) -> Result<(), Failure> {
        self.ensure_dir()?;
        let json = serde_json::to_vec_pretty(config)
            .map_err(|e| Failure::store("cannot encode the client file", e))?;
        FileStore::write_private_file(&self.client_path, &json).map_err(|e| {
            Failure::store(
                format_args!("cannot write {}", self.client_path.display()),
                e,
            )
        })
    }

    /// The client credentials: `NIFTY_CLIENT_ID` / `NIFTY_CLIENT_SECRET` over the saved ones.
    pub(crate) fn credentials(&self, saved: Option<&ClientConfig>) -> Result<Credentials, Failure> {
        let env_id = env("NIFTY_CLIENT_ID");
        let Some(id) = env_id
            .clone()
            .or_else(|| saved.map(|c| c.client_id.clone()))
        else {
            return Err(Failure::reauthorize(format!(
                "profile `{}` has no saved login: set NIFTY_CLIENT_ID and NIFTY_CLIENT_SECRET and run `{}`",
                self.name,
                self.login_command()
            )));
        };
        // The saved secret belongs to the saved client id only.
        let saved_secret = saved
            .filter(|c| c.client_id == id)
            .map(|c| c.client_secret.clone());
        match env("NIFTY_CLIENT_SECRET").or(saved_secret) {
            Some(secret) => Ok(Credentials::new(id, secret)),
            None => Err(Failure::usage(
                "NIFTY_CLIENT_SECRET is not set (NIFTY_CLIENT_ID is): set both",
            )),
        }
    }

    /// The token URL: the option or environment, else the saved one, else Nifty's.
    pub(crate) fn token_url(&self, saved: Option<&ClientConfig>) -> String {
        pick(
            &self.token_url,
            saved.and_then(|c| c.token_url.as_ref()),
            NiftyAuth::DEFAULT_TOKEN_URL,
        )
    }

    /// The authorize page URL, like [`token_url`](Self::token_url).
    pub(crate) fn authorize_url(&self, saved: Option<&ClientConfig>) -> String {
        let default = nifty_auth::authorize::AUTHORIZE_URL;
        pick(
            &self.authorize_url,
            saved.and_then(|c| c.authorize_url.as_ref()),
            default,
        )
    }

    /// The API base URL, like [`token_url`](Self::token_url), without a trailing `/`.
    pub(crate) fn api_url(&self, saved: Option<&ClientConfig>) -> String {
        let url = pick(
            &self.api_url,
            saved.and_then(|c| c.api_url.as_ref()),
            DEFAULT_API_URL,
        );
        url.trim_end_matches('/').to_owned()
    }

    /// The token manager for `token` and `api`: the profile's `FileStore`, the saved (or
    /// environment) credentials, and no access token with less than [`MIN_VALIDITY`] left.
    pub(crate) fn auth(&self) -> Result<NiftyAuth, Failure> {
        if !self.tokens_path.exists() {
            return Err(Failure::reauthorize(format!(
                "profile `{}` is not logged in: run `{}`",
                self.name,
                self.login_command()
            )));
        }
        let saved = self.load_client()?;
        let credentials = self.credentials(saved.as_ref())?;
        let api_url = self.api_url(saved.as_ref());
        NiftyAuth::builder(credentials)
            .token_url(self.token_url(saved.as_ref()))
            .allowed_origins([origin(&api_url)?])
            .store(MinValidity(self.file_store()))
            .build()
            .map_err(|e| Failure::auth(e, self))
    }

    /// Deletes the profile's token and client files.
    pub(crate) fn logout(&self) -> Result<(), Failure> {
        let mut removed = 0;
        for path in [&self.tokens_path, &self.client_path] {
            match fs::remove_file(path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Failure::store(
                        format_args!("cannot delete {}", path.display()),
                        e,
                    ))
                }
            }
        }
        if removed == 0 {
            eprintln!("Profile `{}` had no saved login.", self.name);
        } else {
            eprintln!(
                "Logged out of profile `{}`: its tokens and client credentials are deleted.",
                self.name
            );
        }
        Ok(())
    }
}

/// `scheme://authority` of a URL, for the layer's allowed origins.
pub(crate) fn origin(url: &str) -> Result<String, Failure> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| Failure::usage(format!("`{url}` is not a URL")))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme @ ("http" | "https")), Some(authority)) => {
            Ok(format!("{scheme}://{authority}"))
        }
        _ => Err(Failure::usage(format!(
            "`{url}` must be an absolute http(s) URL"
        ))),
    }
}

fn pick(option: &Option<String>, saved: Option<&String>, default: &str) -> String {
    option
        .clone()
        .or_else(|| saved.cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The profile's `FileStore`, showing loaded tokens [`MIN_VALIDITY`] closer to their expiry, so
/// the token manager refreshes (and saves the rotation, through the `FileStore`) before a script
/// gets a token about to expire. Saves and locks go to the `FileStore` unchanged.
///
/// A store of one grant: the profile's `NiftyAuth` is its only user, so the grant id it is asked
/// about (always that handle's) is not needed to find the file.
#[derive(Debug)]
pub(crate) struct MinValidity(pub(crate) FileStore);

impl TokenStore for MinValidity {
    fn load<'a>(&'a self, _: &'a GrantId) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
        Box::pin(async move {
            let tokens = self.0.load().await?;
            Ok(tokens.map(|tokens| match tokens.expires_at() {
                Some(at) => {
                    let earlier = at.checked_sub(MIN_VALIDITY).unwrap_or(UNIX_EPOCH);
                    tokens.with_expires_at(earlier)
                }
                None => tokens,
            }))
        })
    }

    fn save<'a>(
        &'a self,
        _: &'a GrantId,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(self.0.save(tokens))
    }

    fn remove<'a>(&'a self, _: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async { Err("a profile's tokens are deleted by `nifty-auth logout`".into()) })
    }

    fn lock<'a>(
        &'a self,
        _: &'a GrantId,
        max_hold: Duration,
    ) -> BoxFuture<'a, Result<StoreLock, BoxError>> {
        Box::pin(self.0.lock(max_hold))
    }
}

/// Seconds since the Unix epoch (0 before it).
pub(crate) fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
