//! At-rest encryption of the stored token set (the shared scheme of [`crate::store::seal`]) with
//! the Redis key as associated data: a value copied to another key (another grant) does not decrypt.

use super::RedisStore;
use crate::store::seal;
use crate::token::TokenSet;
use tower::BoxError;

impl RedisStore {
    /// The stored form of `tokens` for the Redis key `key`: JSON, encrypted when a key is configured.
    pub(super) fn seal(&self, tokens: &TokenSet, key: &str) -> Result<Vec<u8>, BoxError> {
        seal::seal(self.inner.cipher.as_ref(), tokens, key.as_bytes())
    }

    /// The token set from its stored form, read from the Redis key `key`.
    pub(super) fn unseal(&self, stored: Vec<u8>, key: &str) -> Result<TokenSet, BoxError> {
        seal::unseal(
            self.inner.cipher.as_ref(),
            &stored,
            key.as_bytes(),
            &format!("Redis key {key}"),
        )
    }
}
