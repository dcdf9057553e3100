//! Tokens: the parsed [`TokenSet`], the lock-free cache of the current one, and the single-flight
//! refresh.

pub(crate) mod cache;
mod set;

pub use set::{TokenSet, MAX_EXPIRES_IN, MAX_TOKEN_RESPONSE_BYTES};
