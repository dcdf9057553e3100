//! Thin wrappers over `tracing` that compile to nothing without the `tracing` feature.
//!
//! Never pass a token, secret or response body to these macros.

#[cfg(feature = "tracing")]
macro_rules! debug {
    ($($arg:tt)*) => { ::tracing::debug!($($arg)*) };
}
#[cfg(not(feature = "tracing"))]
macro_rules! debug {
    ($($arg:tt)*) => {{}};
}

#[cfg(feature = "tracing")]
macro_rules! warning {
    ($($arg:tt)*) => { ::tracing::warn!($($arg)*) };
}
#[cfg(not(feature = "tracing"))]
macro_rules! warning {
    ($($arg:tt)*) => {{}};
}

/// Records a field on the current span.
#[cfg(feature = "tracing")]
macro_rules! record {
    ($name:literal, $value:expr) => {
        ::tracing::Span::current().record($name, $value)
    };
}
#[cfg(not(feature = "tracing"))]
macro_rules! record {
    ($name:literal, $value:expr) => {{}};
}

pub(crate) use {debug, record, warning};
