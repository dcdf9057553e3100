//! The proxy key: what TCP clients present as `Authorization: Bearer <key>`.
//!
//! Taken from `NIFTY_PROXY_KEY`, or generated at start (32 random bytes, base64url) and written to a
//! new file with mode 0600 whose path is printed. Only its SHA-256 digest is kept in memory, and a
//! presented key is compared digest to digest in constant time, so neither its bytes nor its length
//! leak through timing.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::failure::Failure;
use crate::profile::Profile;

/// The environment variable holding the proxy key.
pub(crate) const KEY_ENV: &str = "NIFTY_PROXY_KEY";
/// The environment variable naming a file that holds the proxy key (a systemd credential, a
/// mounted Kubernetes secret); one trailing newline is ignored.
pub(crate) const KEY_FILE_ENV: &str = "NIFTY_PROXY_KEY_FILE";
/// The shortest key accepted from the environment.
const MIN_KEY_BYTES: usize = 16;

/// The proxy key, as its SHA-256 digest.
pub(crate) struct ProxyKey {
    digest: [u8; 32],
}

impl fmt::Debug for ProxyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProxyKey(***)")
    }
}

impl ProxyKey {
    fn new(key: &[u8]) -> Self {
        ProxyKey {
            digest: Sha256::digest(key).into(),
        }
    }

    /// The key from `NIFTY_PROXY_KEY`, or from the file `NIFTY_PROXY_KEY_FILE` names, or a new
    /// one written to `file` (default: beside the profile's tokens) with mode 0600; prints where.
    pub(crate) fn load_or_generate(
        file: Option<PathBuf>,
        profile: &Profile,
    ) -> Result<Self, Failure> {
        if let Some(key) = std::env::var_os(KEY_ENV).filter(|k| !k.is_empty()) {
            eprintln!("nifty-auth proxy: clients authenticate with the key in {KEY_ENV}");
            return Self::given(&key.into_encoded_bytes(), KEY_ENV);
        }
        if let Some(path) = std::env::var_os(KEY_FILE_ENV).filter(|k| !k.is_empty()) {
            let path = PathBuf::from(path);
            let bytes = fs::read(&path).map_err(|e| {
                Failure::store(
                    format_args!("cannot read {KEY_FILE_ENV} {}", path.display()),
                    e,
                )
            })?;
            let key = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            let key = key.strip_suffix(b"\r").unwrap_or(key);
            eprintln!(
                "nifty-auth proxy: clients authenticate with the key in {}",
                path.display()
            );
            return Self::given(key, KEY_FILE_ENV);
        }
        let path = match file {
            Some(path) => path,
            None => {
                profile.ensure_dir()?;
                let stem = profile
                    .tokens_path
                    .file_stem()
                    .map_or_else(|| "tokens".into(), |s| s.to_string_lossy().into_owned());
                profile
                    .tokens_path
                    .with_file_name(format!("{stem}.proxy-key"))
            }
        };
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| Failure::unavailable("cannot generate a proxy key", e.to_string()))?;
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        write_secret(&path, key.as_bytes())
            .map_err(|e| Failure::store(format_args!("cannot write {}", path.display()), e))?;
        eprintln!(
            "nifty-auth proxy: a new proxy key is in {} (mode 0600); clients send \
             `Authorization: Bearer <key>`",
            path.display()
        );
        Ok(ProxyKey::new(key.as_bytes()))
    }

    /// A key given by the operator, at least [`MIN_KEY_BYTES`] long.
    fn given(key: &[u8], source: &str) -> Result<Self, Failure> {
        if key.len() < MIN_KEY_BYTES {
            return Err(Failure::usage(format!(
                "the key in {source} is too short: use at least {MIN_KEY_BYTES} characters (e.g. \
                 `openssl rand -base64 32`)"
            )));
        }
        Ok(ProxyKey::new(key))
    }

    /// Whether the `Authorization` header value presents this key (`Bearer <key>`).
    pub(crate) fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some(presented) = bearer(value) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        constant_time_eq(&digest, &self.digest)
    }
}

/// The credentials of a `Bearer` authorization value (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.first()?.is_ascii_whitespace() {
        return None;
    }
    Some(rest.trim_ascii())
}

/// Compares two digests without an early exit, so the time does not depend on where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut difference = 0u8;
    for (x, y) in a.iter().zip(b) {
        difference |= x ^ y;
    }
    std::hint::black_box(difference) == 0
}

/// Writes `contents` to `path` through a new file (`create_new`, mode 0600; `create_new` also
/// refuses to follow a symlink planted at the temporary name), then renames it over `path` (a
/// rename replaces a symlink at `path`, it never writes through it).
fn write_secret(path: &Path, contents: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map_or_else(|| "proxy-key".into(), |n| n.to_string_lossy());
    let mut nonce = [0u8; 8];
    getrandom::getrandom(&mut nonce).map_err(|e| io::Error::other(e.to_string()))?;
    let tmp = path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        u64::from_le_bytes(nonce)
    ));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = options.open(&tmp).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_key_as_a_bearer_is_accepted() {
        let key = ProxyKey::new(b"a-proxy-key-0123456789");
        assert!(key.accepts(Some(b"Bearer a-proxy-key-0123456789")));
        assert!(key.accepts(Some(b"bearer  a-proxy-key-0123456789 ")));
        assert!(!key.accepts(Some(b"Bearer a-proxy-key-012345678")));
        assert!(!key.accepts(Some(b"Bearer a-proxy-key-01234567890")));
        assert!(!key.accepts(Some(b"Basic a-proxy-key-0123456789")));
        assert!(!key.accepts(Some(b"Bearera-proxy-key-0123456789")));
        assert!(!key.accepts(Some(b"Bearer")));
        assert!(!key.accepts(Some(b"")));
        assert!(!key.accepts(None));
        assert_eq!(format!("{key:?}"), "ProxyKey(***)");
    }

    #[test]
    fn digests_differing_anywhere_are_unequal() {
        let a = [7u8; 32];
        for at in 0..32 {
            let mut b = a;
            b[at] ^= 1;
            assert!(!constant_time_eq(&a, &b));
        }
        assert!(constant_time_eq(&a, &a.clone()));
    }

    #[cfg(unix)]
    #[test]
    fn the_key_file_is_0600_and_replaces_a_planted_symlink_instead_of_writing_through_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        fs::write(&target, b"keep").unwrap();
        let path = dir.path().join("p.proxy-key");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        write_secret(&path, b"secret").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert_eq!(fs::read(&path).unwrap(), b"secret");
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}
