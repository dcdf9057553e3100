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

use std::time::Duration;

use nifty_auth::testing::FakeNifty;
use nifty_auth::{NiftyGrants, NiftyGrantsBuilder};

/// A grants builder aimed at `fake`, with fast backoff.
pub fn grants_builder(fake: &FakeNifty) -> NiftyGrantsBuilder {
    let builder = NiftyGrants::builder(fake.credentials())
        .token_url(fake.token_url().as_str())
        .allowed_origins([fake.base_url()])
        .token_backoff(Duration::from_millis(5), Duration::from_millis(20));
    if fake.is_in_process() {
        builder.http_client(fake.service())
    } else {
        builder
    }
}

pub use common::seed_grants as seed;
