//! [`NiftyGrantsMiddleware`]: one reqwest-middleware middleware for every grant of a
//! [`NiftyGrants`].

use super::{GrantId, NiftyGrants};
use crate::error::AuthError;
use crate::middleware::{nifty_middleware, send, wants_token, Replay};

/// A [`reqwest_middleware::Middleware`] authenticating each request as the grant set with
/// `RequestBuilder::with_extension(grant_id)`. Made by [`NiftyGrants::middleware`].
///
/// The same semantics as [`NiftyAuthMiddleware`](crate::NiftyAuthMiddleware) for that grant (see
/// its [module docs](crate::middleware), also for the placement relative to `reqwest-retry`). A
/// request to an allowed origin without a [`GrantId`] in its extensions is not sent: it fails with
/// `reqwest_middleware::Error::Middleware` wrapping [`AuthError::MissingGrant`].
///
/// ```
/// # #[cfg(feature = "testing")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), nifty_auth::BoxError> {
/// use nifty_auth::testing::FakeNifty;
/// use nifty_auth::{GrantId, NiftyGrants, TokenSet};
///
/// let nifty = FakeNifty::start().await?;
/// let grants = NiftyGrants::builder(nifty.credentials())
///     .token_url(nifty.token_url().as_str())
///     .build()?;
/// let acme = GrantId::new("acme")?;
/// let tokens = TokenSet::new(nifty.issue_access_token(None));
/// grants.set_tokens(&acme, tokens).await?;
///
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(grants.middleware())
///     .build();
/// let response = client
///     .get(nifty.api_url("/projects"))
///     .with_extension(acme)
///     .send()
///     .await?;
/// assert_eq!(response.status(), 200);
/// # Ok(()) }
/// # #[cfg(not(feature = "testing"))]
/// # fn main() {}
/// ```
#[derive(Clone, Debug)]
pub struct NiftyGrantsMiddleware {
    grants: NiftyGrants,
    replay: Replay,
}

impl NiftyGrantsMiddleware {
    /// A middleware for every grant of `grants`; the same as [`NiftyGrants::middleware`].
    pub fn new(grants: NiftyGrants) -> Self {
        NiftyGrantsMiddleware {
            grants,
            replay: Replay::new(true),
        }
    }

    /// Buffered bodies up to this size are replayed after a 401; larger ones are sent once. Defaults
    /// to [`DEFAULT_MAX_REPLAY_BODY_BYTES`](crate::DEFAULT_MAX_REPLAY_BODY_BYTES).
    pub fn max_replay_body_bytes(self, max: usize) -> Self {
        let replay = Replay {
            max_replay_body_bytes: max,
            ..self.replay
        };
        NiftyGrantsMiddleware { replay, ..self }
    }

    /// Whether a 401 is retried once with a newer token of the same grant. Defaults to `true`.
    pub fn retry_on_unauthorized(self, retry: bool) -> Self {
        let replay = Replay {
            retry_on_unauthorized: retry,
            ..self.replay
        };
        NiftyGrantsMiddleware { replay, ..self }
    }
}

nifty_middleware!(NiftyGrantsMiddleware, |this, request, extensions, next| {
    let shared = &this.grants.shared;
    if !wants_token(&shared.origins, &request) {
        return next.run(request, extensions).await;
    }
    let Some(grant) = extensions.get::<GrantId>() else {
        return Err(reqwest_middleware::Error::middleware(
            AuthError::MissingGrant,
        ));
    };
    let manager = shared.manager(grant);
    send(&manager, this.replay, request, extensions, next).await
});
