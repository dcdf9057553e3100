//! A token store shared by replicas, with a real cross-replica refresh lock and faults switched per
//! replica: saves that fail `k` times in a row, a failing `lock` or `load`, a removed entry, and a
//! lost write. It records every token set it ever saved, and who holds its lock.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nifty_auth::store::{BoxFuture, LockTimeout, StoreLock};
use nifty_auth::{BoxError, GrantId, TokenSet, TokenStore};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What the store holds, and its history.
#[derive(Debug, Default)]
struct Data {
    value: Option<TokenSet>,
    /// The value before the latest successful save, and the replica that made that save: what a
    /// lost write reverts to. `None` after a removal or a revert.
    previous: Option<(Option<TokenSet>, usize)>,
    /// Every token set ever saved successfully, oldest first (the seed included), with the clock's
    /// reading when it was saved.
    saved: Vec<Saved>,
    /// Which replica holds the refresh lock.
    holder: Option<usize>,
    /// Saves made without holding the lock (a manager bug; the store refuses them).
    unlocked_saves: usize,
}

/// A token set saved, and when.
#[derive(Debug, Clone)]
struct Saved {
    access_token: String,
    refresh_token: Option<String>,
    at: Tick,
}

/// What a [`Clock`] reads: how many token requests and API requests the fake had recorded (a
/// request is recorded after it arrived, so one sent after a save always comes after its reading).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tick {
    pub token_requests: usize,
    pub api_requests: usize,
}

/// Reads the fake's request counters when a save lands.
pub type Clock = Arc<dyn Fn() -> Tick + Send + Sync>;

struct Backing {
    data: Mutex<Data>,
    lock: Arc<Semaphore>,
    /// How long `lock` waits for a lock held elsewhere (at most the manager's `max_hold`).
    lock_wait: Duration,
    save_attempts: AtomicUsize,
    clock: Mutex<Option<Clock>>,
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backing")
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

impl Backing {
    fn data(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One replica's fault switches.
#[derive(Debug, Default)]
struct Switches {
    fail_saves: AtomicUsize,
    fail_locks: AtomicUsize,
    fail_loads: AtomicUsize,
    /// Whether this replica's latest save attempt failed.
    last_failed: AtomicBool,
    saves_ok: AtomicUsize,
}

/// A replica's handle on the shared store: [`view`](Self::view) gives another replica its own
/// handle (its own fault switches) on the same data and lock.
#[derive(Clone, Debug)]
pub struct FlakyStore {
    backing: Arc<Backing>,
    switches: Arc<Switches>,
    replica: usize,
}

/// The lock's data: which replica took it.
struct Holder(usize);

/// A write the store lost.
#[derive(Debug, Clone)]
pub struct LostWrite {
    /// The replica whose save was lost (it holds those tokens in memory).
    pub writer: usize,
    /// The refresh token the store holds again.
    pub reverted: Option<String>,
}

impl FlakyStore {
    /// A store holding `tokens`; this handle is replica 0's. Its lock waits at most `max_hold`.
    pub fn with_tokens(tokens: TokenSet) -> Self {
        Self::with_lock_wait(tokens, Duration::MAX)
    }

    /// A store holding `tokens` whose lock waits at most `lock_wait` (or the manager's `max_hold`,
    /// if shorter) for a lock held elsewhere.
    pub fn with_lock_wait(tokens: TokenSet, lock_wait: Duration) -> Self {
        let mut data = Data::default();
        record(&mut data, &tokens, Tick::default());
        data.value = Some(tokens);
        FlakyStore {
            backing: Arc::new(Backing {
                data: Mutex::new(data),
                lock: Arc::new(Semaphore::new(1)),
                lock_wait,
                save_attempts: AtomicUsize::new(0),
                clock: Mutex::new(None),
            }),
            switches: Arc::default(),
            replica: 0,
        }
    }

    /// Stamps every save from now on with `clock`'s reading.
    pub fn set_clock(&self, clock: Clock) {
        *self.backing.clock.lock().unwrap_or_else(|e| e.into_inner()) = Some(clock);
    }

    /// Replica `replica`'s handle on the same store, with its own fault switches.
    pub fn view(&self, replica: usize) -> Self {
        FlakyStore {
            backing: Arc::clone(&self.backing),
            switches: Arc::default(),
            replica,
        }
    }

    /// Arms one more failing save.
    pub fn fail_next_save(&self) {
        self.fail_saves(1);
    }

    /// The next `k` saves of this replica fail.
    pub fn fail_saves(&self, k: usize) {
        self.switches.fail_saves.fetch_add(k, Ordering::SeqCst);
    }

    /// The next `lock` of this replica fails (an error, not a wait).
    pub fn fail_next_lock(&self) {
        self.switches.fail_locks.fetch_add(1, Ordering::SeqCst);
    }

    /// The next `load` of this replica fails.
    pub fn fail_next_load(&self) {
        self.switches.fail_loads.fetch_add(1, Ordering::SeqCst);
    }

    /// Failing saves still armed for this replica.
    pub fn armed_saves(&self) -> usize {
        self.switches.fail_saves.load(Ordering::SeqCst)
    }

    /// Every fault still armed for this replica.
    pub fn armed(&self) -> usize {
        self.armed_saves()
            + self.switches.fail_locks.load(Ordering::SeqCst)
            + self.switches.fail_loads.load(Ordering::SeqCst)
    }

    /// Whether this replica's latest save attempt failed.
    pub fn last_save_failed(&self) -> bool {
        self.switches.last_failed.load(Ordering::SeqCst)
    }

    /// This replica's successful saves so far.
    pub fn saves_ok(&self) -> usize {
        self.switches.saves_ok.load(Ordering::SeqCst)
    }

    /// Save attempts of every replica so far, failed ones included.
    pub fn save_attempts(&self) -> usize {
        self.backing.save_attempts.load(Ordering::SeqCst)
    }

    /// Which replica holds the refresh lock.
    pub fn holder(&self) -> Option<usize> {
        self.backing.data().holder
    }

    /// Saves made without holding the lock.
    pub fn unlocked_saves(&self) -> usize {
        self.backing.data().unlocked_saves
    }

    /// Whether the store holds a token set.
    pub fn is_present(&self) -> bool {
        self.backing.data().value.is_some()
    }

    /// The access token the store holds now.
    pub fn access_token(&self) -> Option<String> {
        self.backing
            .data()
            .value
            .as_ref()
            .map(|t| t.access_token().to_owned())
    }

    /// The refresh token the store holds now.
    pub fn refresh_token(&self) -> Option<String> {
        self.backing
            .data()
            .value
            .as_ref()
            .and_then(|t| t.refresh_token().map(str::to_owned))
    }

    /// When `refresh_token` was first saved, if it ever was.
    pub fn saved_refresh_at(&self, refresh_token: &str) -> Option<Tick> {
        self.backing
            .data()
            .saved
            .iter()
            .find(|s| s.refresh_token.as_deref() == Some(refresh_token))
            .map(|s| s.at)
    }

    /// When `access_token` was first saved, if it ever was.
    pub fn saved_access_at(&self, access_token: &str) -> Option<Tick> {
        self.backing
            .data()
            .saved
            .iter()
            .find(|s| s.access_token == access_token)
            .map(|s| s.at)
    }

    /// Deletes the entry under the refresh lock (waiting at most `wait` for it), as a logout or a
    /// grant removal does. Whether it was deleted.
    pub async fn remove(&self, wait: Duration) -> bool {
        let Ok(Ok(permit)) =
            tokio::time::timeout(wait, Arc::clone(&self.backing.lock).acquire_owned()).await
        else {
            return false;
        };
        {
            let mut data = self.backing.data();
            data.value = None;
            data.previous = None;
        }
        drop(permit);
        true
    }

    /// The store loses its latest acknowledged write: it holds the value from before it again.
    /// `None` if there is nothing to lose (no save since the last removal or revert).
    pub fn lose_last_write(&self) -> Option<LostWrite> {
        let mut data = self.backing.data();
        let (previous, writer) = data.previous.take()?;
        let reverted = previous
            .as_ref()
            .and_then(|t| t.refresh_token().map(str::to_owned));
        data.value = previous;
        Some(LostWrite { writer, reverted })
    }

    fn take(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    async fn save_as(&self, tokens: &TokenSet, locked: bool) -> Result<(), BoxError> {
        self.backing.save_attempts.fetch_add(1, Ordering::SeqCst);
        let fail = Self::take(&self.switches.fail_saves);
        self.switches.last_failed.store(fail, Ordering::SeqCst);
        if fail {
            return Err("injected save failure (store denies writes)".into());
        }
        {
            let mut data = self.backing.data();
            if !locked || data.holder != Some(self.replica) {
                data.unlocked_saves += 1;
                return Err("a save without the refresh lock".into());
            }
            let before = data.value.replace(tokens.clone());
            data.previous = Some((before, self.replica));
            let clock = self
                .backing
                .clock
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            record(&mut data, tokens, clock.map(|c| c()).unwrap_or_default());
        }
        self.switches.saves_ok.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn record(data: &mut Data, tokens: &TokenSet, at: Tick) {
    data.saved.push(Saved {
        access_token: tokens.access_token().to_owned(),
        refresh_token: tokens.refresh_token().map(str::to_owned),
        at,
    });
}

/// The entry of the model's one grant: every call is about the grant of the replicas' `NiftyAuth`,
/// so the id is not needed to find it.
impl TokenStore for FlakyStore {
    fn load<'a>(&'a self, _: &'a GrantId) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
        Box::pin(async move {
            if Self::take(&self.switches.fail_loads) {
                return Err("injected load failure (store unreachable)".into());
            }
            Ok(self.backing.data().value.clone())
        })
    }

    /// Only for direct use by a test: the manager saves with [`save_locked`](Self::save_locked).
    fn save<'a>(
        &'a self,
        _: &'a GrantId,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(self.save_as(tokens, false))
    }

    /// Not used by a `NiftyAuth`; the model removes the entry with [`FlakyStore::remove`].
    fn remove<'a>(&'a self, _: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async { Err("the model removes its entry with FlakyStore::remove".into()) })
    }

    fn lock<'a>(
        &'a self,
        _: &'a GrantId,
        max_hold: Duration,
    ) -> BoxFuture<'a, Result<StoreLock, BoxError>> {
        Box::pin(async move {
            if Self::take(&self.switches.fail_locks) {
                return Err("injected lock failure (store unreachable)".into());
            }
            let wait = self.backing.lock_wait.min(max_hold);
            let permit: OwnedSemaphorePermit =
                match tokio::time::timeout(wait, Arc::clone(&self.backing.lock).acquire_owned())
                    .await
                {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(closed)) => return Err(closed.into()),
                    Err(_) => {
                        return Err(LockTimeout::new(
                            wait,
                            format!(
                                "another replica holds the model store's lock (waited {wait:?})"
                            ),
                        )
                        .into())
                    }
                };
            self.backing.data().holder = Some(self.replica);
            let backing = Arc::clone(&self.backing);
            Ok(StoreLock::new(move || async move {
                backing.data().holder = None;
                drop(permit);
            })
            .with_data(Holder(self.replica)))
        })
    }

    fn save_locked<'a>(
        &'a self,
        _: &'a GrantId,
        tokens: &'a TokenSet,
        lock: &'a StoreLock,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        let locked = lock
            .data::<Holder>()
            .is_some_and(|holder| holder.0 == self.replica);
        Box::pin(self.save_as(tokens, locked))
    }
}
