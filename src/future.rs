//! The boxed future every store and the token endpoint return.

use std::future::Future;
use std::pin::Pin;

/// A boxed, `Send` future: what the store traits' methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
