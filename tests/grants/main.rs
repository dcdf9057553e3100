//! `NiftyGrants`: many grants of one client app in one process, against a `FakeNifty` that tells
//! which grant every token belongs to.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod current;
mod layer;
mod processes;
mod stats;
#[path = "../common/workers.rs"]
mod workers;

use nifty_auth::testing::FakeNifty;
use nifty_auth::{NiftyGrants, NiftyGrantsBuilder};

/// A grants builder aimed at `fake`, with fast backoff.
pub fn grants_builder(fake: &FakeNifty) -> NiftyGrantsBuilder {
    common::aimed_at(NiftyGrants::builder(fake.credentials()), fake)
}

pub use common::seed_grants as seed;
