//! What the Redis and PostgreSQL refresh locks share: a lease with a random holder token, kept
//! alive by a watchdog task while its [`StoreLock`](super::StoreLock) lives, and lost for good once
//! a renewal finds another holder (the fenced save then refuses).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tower::BoxError;

/// Aborts the watchdog task when dropped: with the lock's release, or with the lock itself.
pub(crate) struct Watchdog(JoinHandle<()>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether a lease is known lost: set by the watchdog or the fenced save when they find the lock
/// gone or held by someone else. Shared by the lock's data and its watchdog.
#[derive(Clone, Default)]
pub(crate) struct Lost(Arc<AtomicBool>);

impl Lost {
    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub(crate) fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Spawns the watchdog of a lease of length `lease`: every third of it, `renew` extends the lease
/// if this holder still holds it (`Ok(true)`); `Ok(false)` (gone, or someone else's) marks it
/// `lost` and stops; an error is tried again next period (if the lease lapses meanwhile, the fenced
/// save refuses). `lock` names the lock in warnings (a key, a grant; no secret).
pub(crate) fn watch<F, Fut>(
    runtime: &tokio::runtime::Handle,
    lease: Duration,
    lost: Lost,
    lock: String,
    mut renew: F,
) -> Watchdog
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<bool, BoxError>> + Send + 'static,
{
    let period = (lease / 3).max(Duration::from_millis(1));
    Watchdog(runtime.spawn(async move {
        let _ = &lock; // only in warnings (feature `tracing`)
        loop {
            tokio::time::sleep(period).await;
            match renew().await {
                Ok(true) => {}
                Ok(false) => {
                    lost.set();
                    crate::trace::warning!(
                        lock = %lock,
                        "the refresh lock's lease was lost; this process will not save under it"
                    );
                    return;
                }
                Err(e) => {
                    crate::trace::warning!(
                        lock = %lock,
                        error = %e,
                        "could not extend the refresh lock's lease"
                    );
                    let _ = e;
                }
            }
        }
    }))
}

/// A unique holder token for one lock attempt: process id and 128 random bits.
pub(crate) fn holder_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{hex}", std::process::id())
}
