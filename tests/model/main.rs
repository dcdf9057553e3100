//! Model-based tests of the token manager under faults (issue 8, "prove it beyond examples").
//!
//! * `tcp`: proptest runs random operation sequences (concurrent requests, expiry, token endpoint
//!   faults, failing saves, cancelled callers, 401s, re-authorization) against a real `NiftyAuth` and a
//!   `FakeNifty` on 127.0.0.1, checking the invariants after every step; the sequences it found
//!   failing are kept as named tests.
//! * `state_machine`: the same manager over a `tower::service_fn` token endpoint on tokio's paused
//!   clock, no TCP: exact counts for single flight, leader cancellation, refresh-ahead, the latch and
//!   the pending save.

mod state_machine;
mod store;
mod tcp;
mod world;
