//! Random operation sequences against the real manager over TCP; see [`crate::world`].

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError};

use crate::world::{Fault, Op, World};

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::Unavailable),
        Just(Fault::Reset),
        Just(Fault::Hang),
        Just(Fault::InvalidGrant),
        Just(Fault::Slow),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..=20usize).prop_map(Op::Burst),
        2 => Just(Op::AccessToken),
        2 => Just(Op::Expire),
        1 => Just(Op::Revoke),
        3 => fault().prop_map(Op::Fault),
        1 => Just(Op::FailNextSave),
        1 => (1..=6usize, 0..40u64).prop_map(|(n, after_ms)| Op::Cancel { n, after_ms }),
        1 => Just(Op::Force401),
        1 => Just(Op::SetTokens),
        1 => Just(Op::ExchangeCode),
    ]
}

/// Runs `ops` in a fresh world on a fresh two-thread runtime.
pub fn run(ops: &[Op]) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = runtime.block_on(async {
        let mut world = World::new().await;
        world.run(ops).await
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// `cases` runs, or `PROPTEST_CASES` of them (for a longer exploration).
fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        // Each run takes about a second of real time: shrink briefly.
        max_shrink_iters: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "regressions",
        ))),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(16))]

    #[test]
    fn random_operations_keep_every_invariant(ops in proptest::collection::vec(op(), 1..=12)) {
        run(&ops).map_err(TestCaseError::fail)?;
    }
}
