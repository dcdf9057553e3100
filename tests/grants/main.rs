//! `NiftyGrants`: many grants of one client app in one process, against a `FakeNifty` that tells
//! which grant every token belongs to.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod layer;
mod processes;
#[path = "../common/workers.rs"]
mod workers;

use std::time::Duration;

use nifty_auth::testing::{FakeGrant, FakeNifty};
use nifty_auth::{GrantId, GrantStore, MemoryStore, NiftyGrants, NiftyGrantsBuilder, TokenSet};

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

/// `n` grants known to `fake`, each stored in `store` with an expired access token and a live
/// refresh token: the first use of each makes one refresh.
pub async fn seed(fake: &FakeNifty, store: &MemoryStore, n: usize) -> Vec<(GrantId, FakeGrant)> {
    let mut grants = Vec::with_capacity(n);
    for i in 0..n {
        let id = GrantId::new(format!("workspace-{i}")).unwrap();
        let grant = fake.new_grant();
        let tokens = TokenSet::new(format!("expired-{i}"))
            .with_refresh_token(grant.issue_refresh_token())
            .with_expires_in(Duration::ZERO);
        GrantStore::save_grant(store, &id, &tokens).await.unwrap();
        grants.push((id, grant));
    }
    grants
}
