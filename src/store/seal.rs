//! At-rest encryption of a stored token set, shared by `RedisStore` and `PostgresStore`:
//! XChaCha20-Poly1305 with a random 192-bit nonce per save and the entry's key (the Redis key, or a
//! PostgreSQL row's client id and grant id) as associated data, stored as
//! `enc:v1:<base64(nonce ‖ ciphertext)>`. The associated data binds a ciphertext to its entry: a
//! value copied to another key or row fails to open. Without a key the stored form is the JSON.

use std::io;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::token::TokenSet;
use tower::BoxError;

const ENCRYPTED_PREFIX: &str = "enc:v1:";
const NONCE_LEN: usize = 24;

/// The cipher of a store configured with a 256-bit key.
#[cfg_attr(
    not(feature = "postgres"),
    allow(dead_code, reason = "RedisStore builds its cipher itself")
)]
pub(crate) fn cipher(key: [u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(&key.into())
}

/// The stored form of `tokens`: JSON, encrypted when `cipher` is set, with `aad` bound to it.
pub(crate) fn seal(
    cipher: Option<&XChaCha20Poly1305>,
    tokens: &TokenSet,
    aad: &[u8],
) -> Result<Vec<u8>, BoxError> {
    let plain = serde_json::to_vec(tokens)?;
    let Some(cipher) = cipher else {
        return Ok(plain);
    };
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce)
        .map_err(|e| io::Error::other(format!("no OS randomness: {e}")))?;
    let sealed = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: &plain, aad })
        .map_err(|_| io::Error::other("cannot encrypt the token set"))?;
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&sealed);
    let text = format!(
        "{ENCRYPTED_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(blob)
    );
    Ok(text.into_bytes())
}

/// The token set from its stored form. `place` names the entry in error messages (e.g.
/// `Redis key nifty-auth:id:main:tokens`); messages never quote the stored bytes.
pub(crate) fn unseal(
    cipher: Option<&XChaCha20Poly1305>,
    stored: &[u8],
    aad: &[u8],
    place: &str,
) -> Result<TokenSet, BoxError> {
    let plain = decrypt(cipher, stored, aad, place)?;
    // serde's message could quote a token: report the position only.
    serde_json::from_slice(&plain).map_err(|e| {
        invalid(format!(
            "the token set in {place} is not valid (line {} column {})",
            e.line(),
            e.column()
        ))
    })
}

fn decrypt(
    cipher: Option<&XChaCha20Poly1305>,
    stored: &[u8],
    aad: &[u8],
    place: &str,
) -> Result<Vec<u8>, BoxError> {
    let encrypted = stored.starts_with(ENCRYPTED_PREFIX.as_bytes());
    let Some(cipher) = cipher else {
        if encrypted {
            return Err(invalid(format!(
                "the token set in {place} is encrypted and no encryption key is configured"
            )));
        }
        return Ok(stored.to_vec());
    };
    if !encrypted {
        return Err(invalid(format!(
            "the token set in {place} is not encrypted but an encryption key is configured: \
             delete it and authorize again, or save it with the key"
        )));
    }
    let corrupt = || invalid(format!("the token set in {place} is corrupt"));
    let blob = base64::engine::general_purpose::STANDARD
        .decode(&stored[ENCRYPTED_PREFIX.len()..])
        .map_err(|_| corrupt())?;
    if blob.len() < NONCE_LEN {
        return Err(corrupt());
    }
    let (nonce, sealed) = blob.split_at(NONCE_LEN);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
        .map_err(|_| {
            invalid(format!(
                "cannot decrypt the token set in {place}: wrong encryption key (or the data was \
                 tampered with, or copied from another entry)"
            ))
        })
}

fn invalid(message: String) -> BoxError {
    io::Error::new(io::ErrorKind::InvalidData, message).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_set_opens_only_with_its_key_and_its_associated_data() {
        let tokens = TokenSet::new("at-secret-0123").with_refresh_token("rt-secret-0123");
        let key = cipher([1; 32]);
        let stored = seal(Some(&key), &tokens, b"entry-a").unwrap();
        let text = String::from_utf8(stored.clone()).unwrap();
        assert!(
            text.starts_with("enc:v1:") && !text.contains("secret"),
            "{text}"
        );
        assert_eq!(
            unseal(Some(&key), &stored, b"entry-a", "a").unwrap(),
            tokens
        );

        let moved = unseal(Some(&key), &stored, b"entry-b", "b").unwrap_err();
        assert!(
            moved.to_string().contains("copied from another entry"),
            "{moved}"
        );
        let wrong = unseal(Some(&cipher([2; 32])), &stored, b"entry-a", "a").unwrap_err();
        assert!(
            wrong.to_string().contains("wrong encryption key"),
            "{wrong}"
        );
        let keyless = unseal(None, &stored, b"entry-a", "a").unwrap_err();
        assert!(
            keyless.to_string().contains("no encryption key"),
            "{keyless}"
        );
        let plain = seal(None, &tokens, b"entry-a").unwrap();
        assert_eq!(unseal(None, &plain, b"x", "a").unwrap(), tokens);
        assert!(unseal(Some(&key), &plain, b"entry-a", "a").is_err());
    }
}
