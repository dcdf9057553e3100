//! [`GrantId`]: the key of one grant among many.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use crate::error::AuthError;

/// The longest grant id, in bytes ([`GrantId::MAX_BYTES`]).
#[doc(hidden)]
pub const MAX_GRANT_ID_BYTES: usize = 256;

/// The key of one grant of a [`NiftyGrants`](crate::NiftyGrants): whatever identifies a connected Nifty
/// workspace in your app (a workspace id, a user id, a tenant id).
///
/// Cheap to clone (a reference count). Put it in a request's extensions for the grants layer:
///
/// ```
/// use nifty_auth::GrantId;
///
/// let grant = GrantId::new("workspace-42")?;
/// let mut request = http::Request::get("https://openapi.niftypm.com/api/v1.0/projects").body(())?;
/// request.extensions_mut().insert(grant);
/// # Ok::<(), nifty_auth::BoxError>(())
/// ```
///
/// Stores never trust it: they escape it before it becomes a file name, a Redis key or a SQL value.
#[derive(Clone)]
pub struct GrantId(Arc<Inner>);

struct Inner {
    /// Computed once with a per-process random key: the grants registry hashes nothing per request.
    hash: u64,
    id: Box<str>,
}

fn hasher() -> &'static std::collections::hash_map::RandomState {
    static STATE: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    STATE.get_or_init(Default::default)
}

impl GrantId {
    /// The longest grant id, in bytes.
    pub const MAX_BYTES: usize = MAX_GRANT_ID_BYTES;

    /// A grant id.
    ///
    /// # Errors
    /// [`AuthError::Configuration`] for an empty id, one over [`MAX_BYTES`](Self::MAX_BYTES) bytes, or one
    /// holding control characters.
    pub fn new(id: impl Into<String>) -> Result<GrantId, AuthError> {
        let id = id.into();
        if id.is_empty() {
            return Err(AuthError::config("a grant id must not be empty"));
        }
        if id.len() > MAX_GRANT_ID_BYTES {
            return Err(AuthError::config(format!(
                "a grant id must be at most {MAX_GRANT_ID_BYTES} bytes (this one has {})",
                id.len()
            )));
        }
        if id.chars().any(char::is_control) {
            return Err(AuthError::config(
                "a grant id must not hold control characters",
            ));
        }
        let hash = hasher().hash_one(id.as_str());
        Ok(GrantId(Arc::new(Inner {
            hash,
            id: id.into_boxed_str(),
        })))
    }

    /// The id a single-grant [`NiftyAuth`](crate::NiftyAuth) keeps its tokens under in a store
    /// (unless the store names another, see
    /// [`TokenStore::single_grant`](crate::store::TokenStore::single_grant)): `default`.
    pub const SINGLE: &'static str = "default";

    /// The grant id [`SINGLE`](Self::SINGLE).
    ///
    /// ```
    /// use nifty_auth::GrantId;
    ///
    /// assert_eq!(GrantId::single().as_str(), "default");
    /// assert_eq!(GrantId::single(), GrantId::new(GrantId::SINGLE)?);
    /// # Ok::<(), nifty_auth::AuthError>(())
    /// ```
    pub fn single() -> GrantId {
        static SINGLE: OnceLock<GrantId> = OnceLock::new();
        SINGLE
            .get_or_init(|| GrantId::new(GrantId::SINGLE).expect("a valid grant id"))
            .clone()
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0.id
    }

    pub(crate) fn precomputed_hash(&self) -> u64 {
        self.0.hash
    }
}

impl PartialEq for GrantId {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || (self.0.hash == other.0.hash && self.0.id == other.0.id)
    }
}

impl Eq for GrantId {}

impl Hash for GrantId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl PartialOrd for GrantId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for GrantId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GrantId").field(&self.as_str()).finish()
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for GrantId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl TryFrom<&str> for GrantId {
    type Error = AuthError;
    fn try_from(id: &str) -> Result<Self, Self::Error> {
        GrantId::new(id)
    }
}

impl TryFrom<String> for GrantId {
    type Error = AuthError;
    fn try_from(id: String) -> Result<Self, Self::Error> {
        GrantId::new(id)
    }
}

/// A hasher for maps keyed by [`GrantId`]: passes its precomputed hash through.
#[derive(Default)]
pub(crate) struct GrantIdHasher(u64);

impl Hasher for GrantIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `GrantId`; fold anything else in, just in case.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(crate) type BuildGrantIdHasher = std::hash::BuildHasherDefault<GrantIdHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_long_and_control_character_ids() {
        assert!(GrantId::new("").is_err());
        assert!(GrantId::new("a".repeat(257)).is_err());
        assert!(GrantId::new("a".repeat(256)).is_ok());
        assert!(GrantId::new("a\nb").is_err());
        assert!(GrantId::new("a\u{7f}").is_err());
        let err = GrantId::new("").unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn equal_ids_hash_alike_and_hostile_ids_are_accepted_as_data() {
        let a = GrantId::new("../../etc/passwd").unwrap();
        let b = GrantId::new(String::from("../../etc/passwd")).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.precomputed_hash(), b.precomputed_hash());
        assert_ne!(a, GrantId::new("a:b").unwrap());
        let mut map = std::collections::HashMap::<GrantId, u8, BuildGrantIdHasher>::default();
        map.insert(a.clone(), 1);
        assert_eq!(map.get(&b), Some(&1));
    }
}
