//! At-rest encryption of the stored token set: XChaCha20-Poly1305 with a random nonce per save and
//! the Redis key as associated data, stored as `enc:v1:<base64(nonce ‖ ciphertext)>`.

use std::io;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::XNonce;

use super::{invalid, RedisStore};
use crate::{BoxError, TokenSet};

const ENCRYPTED_PREFIX: &str = "enc:v1:";
const NONCE_LEN: usize = 24;

impl RedisStore {
    /// The stored form of `tokens` for the Redis key `key`: JSON, encrypted when a key is
    /// configured, with `key` as associated data (a value copied to another key does not decrypt).
    pub(super) fn seal(&self, tokens: &TokenSet, key: &str) -> Result<Vec<u8>, BoxError> {
        let plain = serde_json::to_vec(tokens)?;
        let Some(cipher) = &self.inner.cipher else {
            return Ok(plain);
        };
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce)
            .map_err(|e| io::Error::other(format!("no OS randomness: {e}")))?;
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: key.as_bytes(),
                },
            )
            .map_err(|_| io::Error::other("cannot encrypt the token set"))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        let text = format!(
            "{ENCRYPTED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        );
        Ok(text.into_bytes())
    }

    /// The token set from its stored form, read from the Redis key `key`.
    pub(super) fn unseal(&self, stored: Vec<u8>, key: &str) -> Result<TokenSet, BoxError> {
        let plain = self.decrypt(stored, key)?;
        // serde's message could quote a token: report the position only.
        serde_json::from_slice(&plain).map_err(|e| {
            invalid(format!(
                "the token set in Redis key {} is not valid (line {} column {})",
                key,
                e.line(),
                e.column()
            ))
        })
    }

    fn decrypt(&self, stored: Vec<u8>, key: &str) -> Result<Vec<u8>, BoxError> {
        let encrypted = stored.starts_with(ENCRYPTED_PREFIX.as_bytes());
        let Some(cipher) = &self.inner.cipher else {
            if encrypted {
                return Err(invalid(format!(
                    "the token set in Redis key {} is encrypted and no encryption key is configured",
                    key
                )));
            }
            return Ok(stored);
        };
        if !encrypted {
            return Err(invalid(format!(
                "the token set in Redis key {} is not encrypted but an encryption key is configured: \
                 delete the key and authorize again, or save it with the key",
                key
            )));
        }
        let corrupt = || invalid(format!("the token set in Redis key {} is corrupt", key));
        let blob = base64::engine::general_purpose::STANDARD
            .decode(&stored[ENCRYPTED_PREFIX.len()..])
            .map_err(|_| corrupt())?;
        if blob.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: key.as_bytes(),
                },
            )
            .map_err(|_| {
                invalid(format!(
                    "cannot decrypt the token set in Redis key {key}: wrong encryption key (or the data was \
                     tampered with, or copied from another key)"
                ))
            })
    }
}
