//! The token fetch and the 401 decision in async form, shared by every front end that is not a
//! hand-written future: the reqwest middlewares (one grant and many) and `access_token`. The tower
//! layer's response future polls the same two steps ([`TokenManager::header_now`], then
//! [`TokenManager::token`]; [`TokenManager::after_unauthorized`]).

use super::*;

impl TokenManager {
    /// The header for a request about to be sent: the cached one (starting a background refresh in
    /// the skew window), or the result of the single-flight refresh. With its generation.
    #[cfg_attr(
        not(feature = "reqwest"),
        allow(dead_code, reason = "used by the reqwest middleware")
    )]
    pub(crate) async fn header_for_request(
        self: &Arc<Self>,
    ) -> Result<(HeaderValue, u64), AuthError> {
        match self.header_now() {
            Some(found) => Ok(found),
            None => Arc::clone(self).token(Want::Usable).await?.bearer(),
        }
    }

    /// What to do after a 401 for `generation`: `Ok(None)` to return the 401 as it is, or the header
    /// (and its generation) to retry with — a newer current one, or a refresh's.
    #[cfg_attr(
        not(feature = "reqwest"),
        allow(dead_code, reason = "used by the reqwest middleware")
    )]
    pub(crate) async fn header_after_unauthorized(
        self: &Arc<Self>,
        generation: u64,
    ) -> Result<Option<(HeaderValue, u64)>, AuthError> {
        match self.after_unauthorized(generation) {
            Unauthorized::Newer(header, generation) => Ok(Some((header, generation))),
            Unauthorized::Wait(token) => token.await?.bearer().map(Some),
            Unauthorized::GiveUp => Ok(None),
        }
    }

    /// A valid access token, refreshing first if needed (`NiftyAuth::access_token`,
    /// `NiftyGrants::access_token`).
    pub(crate) async fn access_token(self: &Arc<Self>) -> Result<String, AuthError> {
        // One load: the token of the same publication the freshness was judged on.
        let current = self.cache.load();
        let usable = match current.read() {
            Read::Fresh(..) => true,
            Read::Stale(..) => {
                self.refresh_in_background();
                true
            }
            Read::Missing => false,
        };
        if let Some(token) = current.access_token().filter(|_| usable) {
            return Ok(token.to_owned());
        }
        let current = Arc::clone(self).token(Want::Usable).await?;
        current
            .token_set()
            .map(|tokens| tokens.access_token().to_owned())
    }
}

#[cfg(test)]
mod tests;
