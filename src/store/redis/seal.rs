//! At-rest encryption of the stored token set (the shared scheme of [`crate::store::seal`]) with
//! the Redis key as associated data.

use super::RedisStore;
use crate::store::seal;
use crate::{BoxError, TokenSet};

impl RedisStore {
    /// The stored form of `tokens`: JSON, encrypted when a key is configured.
    pub(super) fn seal(&self, tokens: &TokenSet) -> Result<Vec<u8>, BoxError> {
        seal::seal(
            self.inner.cipher.as_ref(),
            tokens,
            self.inner.key.as_bytes(),
        )
    }

    /// The token set from its stored form.
    pub(super) fn unseal(&self, stored: Vec<u8>) -> Result<TokenSet, BoxError> {
        seal::unseal(
            self.inner.cipher.as_ref(),
            &stored,
            self.inner.key.as_bytes(),
            &format!("Redis key {}", self.inner.key),
        )
    }
}
