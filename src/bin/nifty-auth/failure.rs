//! [`Failure`]: what ends a command, with its exit code and a secret-free message.

use std::error::Error;
use std::fmt;

use nifty_auth::authorize::AuthorizeError;
use nifty_auth::AuthError;

use crate::profile::Profile;

/// The API answered an error status (`api` only).
pub(crate) const API_ERROR: u8 = 1;
/// Bad arguments or configuration (also clap's own code for usage errors).
pub(crate) const USAGE: u8 = 2;
/// The grant is gone (or there is none): run `nifty-auth login`.
pub(crate) const REAUTHORIZE: u8 = 3;
/// The network, the token endpoint or the API is unavailable.
pub(crate) const UNAVAILABLE: u8 = 4;
/// The profile's files cannot be read or written.
pub(crate) const STORE: u8 = 5;

type Source = Box<dyn Error + Send + Sync + 'static>;

/// A failed command: exit code, one-line message (never a token or secret), and causes.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
    pub(crate) source: Option<Source>,
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failure")
            .field("code", &self.code)
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            source: None,
        }
    }

    fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }

    pub(crate) fn api(message: impl Into<String>) -> Self {
        Self::new(API_ERROR, message)
    }

    pub(crate) fn reauthorize(message: impl Into<String>) -> Self {
        Self::new(REAUTHORIZE, message)
    }

    pub(crate) fn unavailable(message: impl fmt::Display, source: impl Into<Source>) -> Self {
        let source = source.into();
        Self::new(UNAVAILABLE, format!("{message}: {source}")).with_source(source)
    }

    pub(crate) fn store(message: impl fmt::Display, source: impl Into<Source>) -> Self {
        let source = source.into();
        Self::new(STORE, format!("{message}: {source}")).with_source(source)
    }

    /// A store error without a cause: the profile's files are refused as they are.
    pub(crate) fn store_refused(message: impl Into<String>) -> Self {
        Self::new(STORE, message)
    }

    /// Classifies an [`AuthError`] (whose messages never hold a token or secret).
    pub(crate) fn auth(error: AuthError, profile: &Profile) -> Self {
        let login = profile.login_command();
        let code = match &error {
            AuthError::ReauthorizationRequired { .. } => {
                return Self::reauthorize(format!(
                    "re-authorization required ({error}): run `{login}`"
                ))
            }
            AuthError::InvalidClient { .. } | AuthError::Forbidden => {
                return Self::reauthorize(format!(
                    "{error}: check NIFTY_CLIENT_ID / NIFTY_CLIENT_SECRET and run `{login}`"
                ))
            }
            AuthError::Store { .. } => STORE,
            AuthError::Configuration { .. } | AuthError::MethodNotAllowed => USAGE,
            _ => UNAVAILABLE,
        };
        let message = error.to_string();
        Self::new(code, message).with_source(error)
    }

    /// Classifies an [`AuthorizeError`] of `login`.
    pub(crate) fn authorize(error: AuthorizeError, profile: &Profile) -> Self {
        let login = profile.login_command();
        let code = match &error {
            AuthorizeError::InvalidRedirectUri(_) => USAGE,
            AuthorizeError::Denied { .. } | AuthorizeError::TimedOut { .. } => {
                return Self::reauthorize(format!("{error}: run `{login}` again"))
            }
            _ => UNAVAILABLE,
        };
        let message = error.to_string();
        Self::new(code, message).with_source(error)
    }
}
