//! [`AuthError`]: everything that can go wrong while getting a token.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

/// A shareable error cause (every waiter of one refresh gets the same error, so causes are `Arc`ed).
pub(crate) type SharedCause = Arc<dyn StdError + Send + Sync + 'static>;

/// Why a token could not be had.
///
/// One enum for every failure of the token manager. The variants let a program tell *what to do next*
/// without parsing text:
///
/// | variant | what to do |
/// |---|---|
/// | [`InvalidClient`](Self::InvalidClient), [`Forbidden`](Self::Forbidden), [`MethodNotAllowed`](Self::MethodNotAllowed), [`Configuration`](Self::Configuration) | fix the configuration (client id/secret, app rights, token URL) |
/// | [`ReauthorizationRequired`](Self::ReauthorizationRequired), [`GrantRemoved`](Self::GrantRemoved) | send the user through the authorize step again, then [`NiftyAuth::exchange_code`](crate::NiftyAuth::exchange_code) or [`NiftyAuth::set_tokens`](crate::NiftyAuth::set_tokens) |
/// | [`Transport`](Self::Transport), [`Timeout`](Self::Timeout), [`RefreshLockHeld`](Self::RefreshLockHeld), [`Endpoint`](Self::Endpoint) with a 5xx/429 status | retry later ([`is_transient`](Self::is_transient)) |
/// | [`InvalidResponse`](Self::InvalidResponse), [`Endpoint`](Self::Endpoint) | the endpoint answered something unusable; retry later or report it |
/// | [`Store`](Self::Store) | fix the token store (disk, permissions, database) |
/// | [`MissingGrant`](Self::MissingGrant) | fix the calling code: put a [`GrantId`](crate::GrantId) in the request's extensions |
///
/// Messages never contain a token, a secret or a response body that could hold one. Inside the layer's
/// service the error arrives as a [`tower::BoxError`]; get it back with `err.downcast_ref::<AuthError>()`.
///
/// ```
/// use nifty_auth::AuthError;
///
/// fn advice(err: &AuthError) -> &'static str {
///     if err.is_reauthorization_required() {
///         "ask the user to authorize the app again"
///     } else if err.is_transient() {
///         "try again later"
///     } else {
///         "check the configuration"
///     }
/// }
/// # let _ = advice;
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AuthError {
    /// The token endpoint rejected the client credentials (HTTP 401 or `invalid_client`).
    /// Terminal: no further token call is made until new tokens are supplied.
    InvalidClient {
        /// The status the endpoint answered.
        status: StatusCode,
    },
    /// The token endpoint refused this client (HTTP 403): the app has no access rights.
    /// Terminal, like [`InvalidClient`](Self::InvalidClient).
    Forbidden,
    /// The token endpoint does not accept `POST` at this URL (HTTP 405): the token URL is wrong.
    MethodNotAllowed,
    /// The grant is gone (`invalid_grant`: the refresh token or code is expired, revoked or already
    /// used), or there are no tokens at all. The user has to authorize the app again.
    /// Terminal: no further token call is made until new tokens are supplied.
    ReauthorizationRequired {
        /// A short, secret-free explanation (the endpoint's `error_description` when it sent one).
        reason: String,
    },
    /// Any other error answer from the token endpoint.
    Endpoint {
        /// The HTTP status.
        status: StatusCode,
        /// The RFC 6749 `error` code, when the body had one.
        error: Option<String>,
        /// A short excerpt of the body with the known secrets (raw, percent-encoded, JSON-escaped or
        /// base64) and anything token-like masked.
        excerpt: String,
    },
    /// The token endpoint answered success with a body that is not a usable token answer
    /// (not JSON, missing or malformed fields, a non-bearer `token_type`, an absurd `expires_in`,
    /// or larger than the 64 KiB cap).
    InvalidResponse {
        /// What was wrong, never the body itself.
        reason: String,
    },
    /// The token endpoint could not be reached (connection refused or reset, TLS, DNS …).
    Transport {
        /// The underlying error.
        source: SharedCause,
    },
    /// The token endpoint did not answer within the configured timeout.
    Timeout {
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The token store failed to load or save (or did not answer within its operation timeout). A
    /// refresh whose new tokens could not be saved fails with this error; its tokens are kept in
    /// memory (unused, the store's lock still held) and saved by the manager's own retries or the
    /// next attempt, whichever comes first.
    Store {
        /// The store's error.
        source: SharedCause,
    },
    /// The configuration is unusable (a bad URL or origin, no tokio runtime, a missing TLS feature …).
    Configuration {
        /// What is wrong.
        reason: String,
    },
    /// A request to an allowed origin reached the grants layer (or middleware) of a
    /// [`NiftyGrants`](crate::NiftyGrants) without a [`GrantId`](crate::GrantId) in its extensions,
    /// so no grant's token could be chosen. The request was not sent. Insert the id:
    /// `request.extensions_mut().insert(grant_id)` (with reqwest-middleware,
    /// `RequestBuilder::with_extension(grant_id)`).
    MissingGrant,
    /// The grant's store entry is gone: the grant was removed (by [`NiftyGrants::remove`](crate::NiftyGrants::remove)
    /// here or in another process, or its token file was deleted, e.g. by `nifty-auth logout`) while
    /// this process still had it cached. No token call is made and nothing is saved back: removal is
    /// final until the grant is authorized again ([`exchange_code`](crate::NiftyAuth::exchange_code) /
    /// [`set_tokens`](crate::NiftyAuth::set_tokens)). Terminal, and
    /// [`is_reauthorization_required`](Self::is_reauthorization_required) is `true`.
    GrantRemoved,
    /// Another process held this grant's refresh lock for longer than this process waits for it
    /// (the longest one refresh can take). Nothing was sent to the token endpoint. The holder may be
    /// stuck saving rotated tokens to a failing store: [`is_transient`](Self::is_transient) — try
    /// again later.
    RefreshLockHeld {
        /// How long this process waited for the lock.
        waited: Duration,
    },
    /// The refresh task ended without a result (it panicked, or the runtime shut down).
    Internal {
        /// What happened.
        reason: String,
    },
}

impl AuthError {
    pub(crate) fn config(reason: impl Into<String>) -> Self {
        AuthError::Configuration {
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid_response(reason: impl Into<String>) -> Self {
        AuthError::InvalidResponse {
            reason: reason.into(),
        }
    }

    pub(crate) fn store(source: tower::BoxError) -> Self {
        AuthError::Store {
            source: Arc::from(source),
        }
    }

    pub(crate) fn transport(source: tower::BoxError) -> Self {
        AuthError::Transport {
            source: Arc::from(source),
        }
    }

    /// Whether the user has to go through the authorize step again (also for a
    /// [`GrantRemoved`](Self::GrantRemoved) grant).
    pub fn is_reauthorization_required(&self) -> bool {
        matches!(
            self,
            AuthError::ReauthorizationRequired { .. } | AuthError::GrantRemoved
        )
    }

    /// Whether the grant was removed (its store entry is gone) while this process had it cached.
    pub fn is_grant_removed(&self) -> bool {
        matches!(self, AuthError::GrantRemoved)
    }

    /// Whether another process held the grant's refresh lock past this process's bound.
    pub fn is_refresh_lock_held(&self) -> bool {
        matches!(self, AuthError::RefreshLockHeld { .. })
    }

    /// Whether the client id / secret were rejected.
    pub fn is_invalid_client(&self) -> bool {
        matches!(self, AuthError::InvalidClient { .. })
    }

    /// Whether a request reached the grants layer without a [`GrantId`](crate::GrantId) (it was not
    /// sent): a bug in the calling code, not in the grant.
    pub fn is_missing_grant(&self) -> bool {
        matches!(self, AuthError::MissingGrant)
    }

    /// Whether the endpoint did not answer in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, AuthError::Timeout { .. })
    }

    /// Whether trying again later may succeed: transport errors, timeouts, 5xx and 429 answers.
    /// (These were already retried with backoff inside the refresh before being returned.)
    pub fn is_transient(&self) -> bool {
        match self {
            AuthError::Transport { .. }
            | AuthError::Timeout { .. }
            | AuthError::RefreshLockHeld { .. } => true,
            AuthError::Endpoint { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    /// Whether this error stops all further token calls until new tokens are supplied
    /// (`invalid_grant`, invalid client, forbidden).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            AuthError::InvalidClient { .. }
                | AuthError::Forbidden
                | AuthError::ReauthorizationRequired { .. }
                | AuthError::GrantRemoved
        )
    }

    /// The HTTP status the token endpoint answered, for errors that come from an answer.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            AuthError::InvalidClient { status } | AuthError::Endpoint { status, .. } => {
                Some(*status)
            }
            AuthError::Forbidden => Some(StatusCode::FORBIDDEN),
            AuthError::MethodNotAllowed => Some(StatusCode::METHOD_NOT_ALLOWED),
            _ => None,
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::InvalidClient { status } => write!(
                f,
                "the token endpoint rejected the client credentials ({status}): check the client id and secret \
                 of your Nifty app"
            ),
            AuthError::Forbidden => f.write_str(
                "the token endpoint refused this client (403 Forbidden): check the app's access rights in \
                 Nifty's App Center",
            ),
            AuthError::MethodNotAllowed => f.write_str(
                "the token endpoint does not accept POST (405 Method Not Allowed): check the token URL",
            ),
            AuthError::ReauthorizationRequired { reason } => write!(
                f,
                "re-authorization required ({reason}): send the user through the authorize step again and \
                 supply the new tokens"
            ),
            AuthError::Endpoint {
                status,
                error,
                excerpt,
            } => {
                write!(f, "the token endpoint answered {status}")?;
                if let Some(error) = error {
                    write!(f, " ({error})")?;
                }
                if !excerpt.is_empty() {
                    write!(f, ": {excerpt}")?;
                }
                if self.is_transient() {
                    f.write_str("; try again later")?;
                }
                Ok(())
            }
            AuthError::InvalidResponse { reason } => write!(
                f,
                "the token endpoint sent an unusable answer: {reason}; check the token URL, or try again later"
            ),
            AuthError::Transport { .. } => f.write_str(
                "could not reach the token endpoint: check the network and the token URL, or try again later",
            ),
            AuthError::Timeout { after } => write!(
                f,
                "the token endpoint did not answer within {after:?}: try again later, or raise the token timeout"
            ),
            AuthError::Store { .. } => f.write_str(
                "the token store failed: fix the store (disk, permissions, database) and try again; \
                 no unsaved token was used",
            ),
            AuthError::Configuration { reason } => write!(f, "invalid configuration: {reason}"),
            AuthError::MissingGrant => f.write_str(
                "the request names no grant, so it was not sent: insert a GrantId into the request's \
                 extensions (`request.extensions_mut().insert(grant_id)`, or reqwest-middleware's \
                 `.with_extension(grant_id)`) before it reaches the grants layer",
            ),
            AuthError::GrantRemoved => f.write_str(
                "the grant was removed (its stored tokens are gone): authorize it again; nothing was \
                 sent to the token endpoint",
            ),
            AuthError::RefreshLockHeld { waited } => write!(
                f,
                "another process held this grant's refresh lock for longer than {waited:?} (it may be \
                 waiting for its token store): nothing was sent to the token endpoint; try again later"
            ),
            AuthError::Internal { reason } => write!(f, "internal error: {reason}"),
        }
    }
}

impl StdError for AuthError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            AuthError::Transport { source } | AuthError::Store { source } => Some(&**source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_error_keeps_its_source() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let err = AuthError::store(io.into());
        let source = err.source().expect("source");
        assert_eq!(source.to_string(), "denied");
        assert!(err.to_string().contains("token store"));
    }

    #[test]
    fn transient_classification() {
        let e = AuthError::Endpoint {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: None,
            excerpt: String::new(),
        };
        assert!(e.is_transient());
        assert!(e.to_string().contains("try again later"));
        assert!(!AuthError::Forbidden.is_transient());
        assert!(AuthError::Forbidden.is_terminal());
    }
}
