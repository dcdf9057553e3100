//! Terminal errors latched per grant: what lifts them (new tokens here, or a re-authorization
//! found in the store), and a grant retired or found removed.

use super::*;

/// A latched terminal error. Tokens supplied here lift it; so do tokens found in the store, for the
/// errors a re-authorization cures: the store is re-read at most every [`LATCH_RECHECK`] (by a
/// caller, never in the background), so a grant re-authorized through another process (or by
/// `nifty-auth login`) is picked up without a token call while it is still dead.
pub(crate) struct Latched {
    pub(crate) error: AuthError,
    pub(crate) refused: Refused,
    /// No store re-read before this.
    pub(super) recheck_at: Instant,
}

/// What a latch was refused with: what stored tokens must differ from to lift it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The endpoint refused this refresh token (its fingerprint): stored tokens with another one
    /// are a re-authorization.
    RefreshToken(u64),
    /// The grant was removed: any stored tokens are a re-authorization.
    Removed,
    /// The client itself was refused (401 `invalid_client`, 403): no stored token cures that.
    Client,
}

impl Latched {
    pub(crate) fn new(error: AuthError, refused: Refused) -> Self {
        Latched {
            error,
            refused,
            recheck_at: instant_after(Instant::now(), LATCH_RECHECK),
        }
    }

    /// Whether `stored` (what the store holds now) lifts this latch.
    pub(super) fn lifted_by(&self, stored: Option<&TokenSet>) -> bool {
        let Some(stored) = stored else { return false };
        match self.refused {
            Refused::RefreshToken(refused) => {
                stored.refresh_token().map(fingerprint) != Some(refused)
            }
            Refused::Removed => true,
            Refused::Client => false,
        }
    }
}

/// How often a latched grant's callers may have the store re-read (see [`Latched`]).
pub(super) const LATCH_RECHECK: Duration = Duration::from_secs(1);

impl TokenManager {
    /// Latches a terminal error and reports it.
    pub(super) fn latch(&self, error: &AuthError, refused: Refused) {
        self.state.lock().terminal = Some(Box::new(Latched::new(error.clone(), refused)));
        // A removed grant was removed on purpose (by another process): not one to re-authorize.
        if refused == Refused::Removed {
            return;
        }
        if let Some(latches) = &self.policy.latches {
            latches.latched(&self.grant, error, refused);
        }
    }

    /// Lifts the latch (new tokens from a re-authorization) and reports it.
    pub(super) fn lift(&self, state: &mut State) {
        if state.terminal.take().is_some() {
            if let Some(latches) = &self.policy.latches {
                latches.lifted(&self.grant);
            }
        }
    }

    /// Retires this manager for good (its grant was removed): waits for a running refresh, drops
    /// unsaved tokens, forgets the current token, and fails every later call.
    pub(crate) async fn retire(self: Arc<Self>) -> Result<(), AuthError> {
        self.spawn_exclusive(|manager| async move {
            {
                let mut state = manager.state.lock();
                // Dropping the parked tokens releases a lock kept with them.
                state.pending = None;
                state.retired = true;
                state.terminal = Some(Box::new(Latched::new(
                    AuthError::GrantRemoved,
                    Refused::Removed,
                )));
            }
            manager.clear_current();
            Ok(manager.cache.load())
        })
        .await
        .map(drop)
    }

    /// The grant's store entry is gone after this manager had seen it: the grant was removed (here
    /// through another handle, in another process, or its token file deleted). Its token is
    /// forgotten; every later refresh re-reads the store (a re-authorization elsewhere brings it
    /// back) and makes no token call while the entry is absent.
    pub(super) fn removed(&self) -> AuthError {
        trace::warning!("the grant's stored tokens are gone: it was removed");
        self.clear_current();
        self.latch(&AuthError::GrantRemoved, Refused::Removed);
        AuthError::GrantRemoved
    }
}

#[cfg(test)]
mod tests;
