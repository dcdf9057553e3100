//! The crate's numbers through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`).
//!
//! Every [`NiftyAuth`](crate::NiftyAuth) and [`NiftyGrants`](crate::NiftyGrants) reports its token
//! calls, refreshes and 401 retries to whichever `metrics` recorder the program installed
//! (Prometheus, StatsD, OpenTelemetry …); without one, reporting costs a relaxed atomic load. The
//! same numbers are in [`Stats`](crate::Stats), which needs no recorder. Nothing is reported per
//! request: the hot path stays as it is.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | [`TOKEN_CALLS`] | counter | `outcome`: `succeeded`, `failed_transient`, `failed_terminal`, `failed_other` |
//! | [`TOKEN_CALL_DURATION`] | histogram (seconds) | — |
//! | [`TOKEN_CALLS_IN_FLIGHT`] | gauge | — |
//! | [`REFRESHES`] | counter | — |
//! | [`REFRESHES_COALESCED`] | counter | — |
//! | [`REFRESH_DURATION`] | histogram (seconds) | `outcome`: `ok`, `failed` |
//! | [`UNAUTHORIZED_RETRIES`] | counter | — |
//! | [`CACHED_GRANTS`] | gauge | — (set by [`record_grants`]) |
//! | [`GRANTS_REAUTHORIZATION_REQUIRED`] | gauge | — (set by [`record_grants`]) |
//!
//! Labels never hold a grant id, a token or a secret. The two grant gauges are levels, not events:
//! call [`record_grants`] before each scrape (or on a timer).
//!
//! ```
//! # #[cfg(feature = "testing")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), nifty_auth::BoxError> {
//! use nifty_auth::testing::FakeNifty;
//! use nifty_auth::NiftyGrants;
//!
//! let nifty = FakeNifty::start().await?;
//! let grants = NiftyGrants::builder(nifty.credentials())
//!     .token_url(nifty.token_url().as_str())
//!     .build()?;
//! nifty_auth::metrics::describe();
//! // … before each scrape of your exporter:
//! nifty_auth::metrics::record_grants(&grants);
//! # Ok(()) }
//! # #[cfg(not(feature = "testing"))]
//! # fn main() {}
//! ```

use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};

/// Token endpoint calls, by `outcome` (as in [`Stats`](crate::Stats)'s `token_calls_*`).
pub const TOKEN_CALLS: &str = "nifty_auth_token_calls_total";
/// The duration of one token endpoint call (one attempt), in seconds.
pub const TOKEN_CALL_DURATION: &str = "nifty_auth_token_call_duration_seconds";
/// Token endpoint calls running now.
pub const TOKEN_CALLS_IN_FLIGHT: &str = "nifty_auth_token_calls_in_flight";
/// Refreshes run (each one task, with up to `token_attempts` token calls).
pub const REFRESHES: &str = "nifty_auth_refreshes_total";
/// Callers that joined a running refresh instead of starting their own.
pub const REFRESHES_COALESCED: &str = "nifty_auth_refreshes_coalesced_total";
/// The duration of one refresh (store lock, token calls with their backoff, save), by `outcome`.
pub const REFRESH_DURATION: &str = "nifty_auth_refresh_duration_seconds";
/// Requests sent a second time after a 401.
pub const UNAUTHORIZED_RETRIES: &str = "nifty_auth_unauthorized_retries_total";
/// Grants whose tokens are in memory (set by [`record_grants`]).
pub const CACHED_GRANTS: &str = "nifty_auth_cached_grants";
/// Grants that need re-authorization (set by [`record_grants`]).
pub const GRANTS_REAUTHORIZATION_REQUIRED: &str = "nifty_auth_grants_reauthorization_required";

/// Registers the descriptions and units of every metric above with the installed recorder (an
/// exporter then prints `# HELP` lines). Optional; call it once after installing the recorder.
pub fn describe() {
    describe_counter!(TOKEN_CALLS, "Token endpoint calls, by outcome.");
    describe_histogram!(
        TOKEN_CALL_DURATION,
        Unit::Seconds,
        "The duration of one token endpoint call."
    );
    describe_gauge!(TOKEN_CALLS_IN_FLIGHT, "Token endpoint calls running now.");
    describe_counter!(REFRESHES, "Token refreshes run.");
    describe_counter!(
        REFRESHES_COALESCED,
        "Callers that joined a running refresh instead of starting their own."
    );
    describe_histogram!(
        REFRESH_DURATION,
        Unit::Seconds,
        "The duration of one refresh (store lock, token calls, save), by outcome."
    );
    describe_counter!(UNAUTHORIZED_RETRIES, "Requests sent again after a 401.");
    describe_gauge!(CACHED_GRANTS, "Grants whose tokens are in memory.");
    describe_gauge!(
        GRANTS_REAUTHORIZATION_REQUIRED,
        "Grants that need re-authorization."
    );
}

/// Sets [`CACHED_GRANTS`] and [`GRANTS_REAUTHORIZATION_REQUIRED`] from `grants` now.
pub fn record_grants(grants: &crate::NiftyGrants) {
    let stats = grants.stats();
    gauge!(CACHED_GRANTS).set(stats.cached_grants as f64);
    gauge!(GRANTS_REAUTHORIZATION_REQUIRED).set(stats.reauthorization_required as f64);
}

pub(crate) fn token_call(outcome: &'static str) {
    counter!(TOKEN_CALLS, "outcome" => outcome).increment(1);
}

pub(crate) fn token_call_started() {
    gauge!(TOKEN_CALLS_IN_FLIGHT).increment(1.0);
}

pub(crate) fn token_call_ended(duration: Duration) {
    gauge!(TOKEN_CALLS_IN_FLIGHT).decrement(1.0);
    histogram!(TOKEN_CALL_DURATION).record(duration.as_secs_f64());
}

pub(crate) fn refresh_started() {
    counter!(REFRESHES).increment(1);
}

pub(crate) fn refresh_finished(duration: Duration, ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    histogram!(REFRESH_DURATION, "outcome" => outcome).record(duration.as_secs_f64());
}

pub(crate) fn refresh_coalesced() {
    counter!(REFRESHES_COALESCED).increment(1);
}

pub(crate) fn unauthorized_retry() {
    counter!(UNAUTHORIZED_RETRIES).increment(1);
}
