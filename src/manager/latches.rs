//! Which grants need re-authorization, and the callback that tells the app.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::Refused;
use crate::error::AuthError;
use crate::grant_id::{BuildGrantIdHasher, GrantId};

/// What [`NiftyGrantsBuilder::on_reauthorization_required`](super::NiftyGrantsBuilder::on_reauthorization_required)
/// takes.
pub(crate) type Callback = Arc<dyn Fn(&GrantId, &AuthError) + Send + Sync>;

/// The grants whose token endpoint answered with a terminal error (`invalid_grant`, 401, 403), kept
/// even when their manager is evicted, so a reloaded grant starts latched and makes no token call.
#[derive(Default)]
pub(crate) struct Latches {
    set: Mutex<HashMap<GrantId, (AuthError, Refused), BuildGrantIdHasher>>,
    callback: Option<Callback>,
}

impl Latches {
    pub(crate) fn new(callback: Option<Callback>) -> Self {
        Latches {
            set: Mutex::default(),
            callback,
        }
    }

    pub(crate) fn latched(&self, grant: &GrantId, error: &AuthError, refused: Refused) {
        let first = self
            .set
            .lock()
            .insert(grant.clone(), (error.clone(), refused))
            .is_none();
        crate::trace::warning!(grant = grant.as_str(), error = %error, "grant needs re-authorization");
        if first {
            if let Some(callback) = &self.callback {
                callback(grant, error);
            }
        }
    }

    pub(crate) fn lifted(&self, grant: &GrantId) {
        self.set.lock().remove(grant);
    }

    pub(crate) fn error_for(&self, grant: &GrantId) -> Option<(AuthError, Refused)> {
        self.set.lock().get(grant).cloned()
    }

    pub(crate) fn grants(&self) -> Vec<GrantId> {
        let mut grants: Vec<GrantId> = self.set.lock().keys().cloned().collect();
        grants.sort();
        grants
    }

    pub(crate) fn len(&self) -> usize {
        self.set.lock().len()
    }
}

impl std::fmt::Debug for Latches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latches")
            .field("grants", &self.len())
            .field("callback", &self.callback.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests;
