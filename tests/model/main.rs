//! Model-based tests of the token manager under faults.
//!
//! * `tcp`: proptest runs random operation sequences against two replicas — two `NiftyAuth`s built
//!   separately on one store with a real cross-replica refresh lock — and a `FakeNifty` on
//!   127.0.0.1: concurrent requests on either or both replicas, expiry, token endpoint faults, store
//!   saves failing `k` times in a row (past the manager's retries), lock and load failures, the
//!   store entry removed, the store losing its last write, cancelled callers, 401s and
//!   re-authorization. The invariants are checked after every step (see `world`); the sequences it
//!   found failing are kept as named tests and their seeds in `proptest-regressions/model/`.
//! * `state_machine`: one manager over a `tower::service_fn` token endpoint on tokio's paused
//!   clock, no TCP: exact counts for single flight, leader cancellation, refresh-ahead, the latch and
//!   the pending save.
//!
//! TESTING.md says how to run them, and how strong they proved against planted bugs and mutants.

mod state_machine;
mod store;
mod tcp;
mod world;
