//! Many grants in one process: [`NiftyGrants`] and [`GrantId`].

mod id;

#[allow(unused_imports, reason = "used by the registry next")]
pub(crate) use id::BuildGrantIdHasher;
pub use id::{GrantId, MAX_GRANT_ID_BYTES};

/// Many grants of one Nifty app (being built).
#[derive(Debug)]
pub struct NiftyGrants {}
