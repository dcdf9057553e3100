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

/// After a renewal failed, the watchdog tries again this soon, doubling up to
/// [`RENEW_RETRY_MAX`] (never beyond its period).
const RENEW_RETRY_MIN: Duration = Duration::from_millis(100);
const RENEW_RETRY_MAX: Duration = Duration::from_secs(1);

/// Spawns the watchdog of a lease of length `lease`: every third of it, `renew` extends the lease
/// if this holder still holds it (`Ok(true)`); `Ok(false)` (gone, or someone else's) marks it
/// `lost` and stops. A renewal that fails (a failover, a restart, a store briefly unreachable) is
/// tried again within a second (100 ms doubling to 1 s, never beyond a period), not a period later:
/// a store that answers again before the lease lapses gets it renewed in time, so no other process
/// takes a lock whose holder is alive (and may hold rotated tokens unsaved). If the lease lapses
/// anyway, the fenced save refuses. `lock` names the lock in warnings (a key, a grant; no secret).
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
        let mut pause = period;
        loop {
            tokio::time::sleep(pause).await;
            match renew().await {
                Ok(true) => pause = period,
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
                        "could not extend the refresh lock's lease; trying again soon"
                    );
                    let _ = e;
                    pause = retry_pause(pause, period);
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

/// The watchdog's pause after a failed renewal, given the pause before it.
fn retry_pause(previous: Duration, period: Duration) -> Duration {
    let next = if previous >= period {
        RENEW_RETRY_MIN
    } else {
        previous.saturating_mul(2).min(RENEW_RETRY_MAX)
    };
    next.min(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_renewal_is_tried_again_within_a_second_never_later_than_a_period() {
        let period = Duration::from_millis(3_333);
        let pauses: Vec<u64> =
            std::iter::successors(Some(period), |&p| Some(retry_pause(p, period)))
                .skip(1)
                .take(6)
                .map(|p| p.as_millis() as u64)
                .collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1_000, 1_000]);
        let short = Duration::from_millis(150);
        assert_eq!(retry_pause(short, short), Duration::from_millis(100));
        assert_eq!(retry_pause(Duration::from_millis(100), short), short);
    }
}
