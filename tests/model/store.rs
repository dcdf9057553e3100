//! A token store whose next saves can be made to fail, recording every refresh token it saved.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nifty_auth::store::{BoxFuture, StoreLock};
use nifty_auth::{BoxError, MemoryStore, TokenSet, TokenStore};

#[derive(Debug, Default)]
struct Shared {
    /// Saves still to fail.
    fail: AtomicUsize,
    /// Whether the latest save attempt failed.
    last_failed: AtomicBool,
    /// Every refresh token ever saved successfully, oldest first (seeded ones included).
    saved: Mutex<Vec<String>>,
    save_attempts: AtomicUsize,
}

/// Delegates to a [`MemoryStore`]; `fail_next_save` makes the next save (through `save` or
/// `save_locked`) fail once.
#[derive(Clone, Debug, Default)]
pub struct FlakyStore {
    inner: MemoryStore,
    shared: Arc<Shared>,
}

impl FlakyStore {
    /// A store holding `tokens`.
    pub fn with_tokens(tokens: TokenSet) -> Self {
        let store = FlakyStore {
            inner: MemoryStore::with_tokens(tokens.clone()),
            shared: Arc::default(),
        };
        store.record(&tokens);
        store
    }

    /// Arms one more failing save.
    pub fn fail_next_save(&self) {
        self.shared.fail.fetch_add(1, Ordering::SeqCst);
    }

    /// Failing saves still armed.
    pub fn armed(&self) -> usize {
        self.shared.fail.load(Ordering::SeqCst)
    }

    /// Whether the latest save attempt failed.
    pub fn last_save_failed(&self) -> bool {
        self.shared.last_failed.load(Ordering::SeqCst)
    }

    /// The number of save attempts so far, failed ones included.
    pub fn save_attempts(&self) -> usize {
        self.shared.save_attempts.load(Ordering::SeqCst)
    }

    /// The refresh token the store holds now.
    pub fn refresh_token(&self) -> Option<String> {
        self.inner
            .get()
            .and_then(|t| t.refresh_token().map(str::to_owned))
    }

    /// Whether `refresh_token` was saved successfully at some point.
    pub fn ever_saved(&self, refresh_token: &str) -> bool {
        let saved = self.shared.saved.lock().unwrap_or_else(|e| e.into_inner());
        saved.iter().any(|s| s == refresh_token)
    }

    fn record(&self, tokens: &TokenSet) {
        if let Some(rt) = tokens.refresh_token() {
            let mut saved = self.shared.saved.lock().unwrap_or_else(|e| e.into_inner());
            saved.push(rt.to_owned());
        }
    }

    /// Consumes one armed failure, if any: whether this save must fail.
    fn take_failure(&self) -> bool {
        self.shared.save_attempts.fetch_add(1, Ordering::SeqCst);
        let fail = self
            .shared
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        self.shared.last_failed.store(fail, Ordering::SeqCst);
        fail
    }
}

impl TokenStore for FlakyStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<TokenSet>, BoxError>> {
        self.inner.load()
    }

    fn save<'a>(&'a self, tokens: &'a TokenSet) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            if self.take_failure() {
                return Err("injected save failure (disk full)".into());
            }
            self.inner.save(tokens).await?;
            self.record(tokens);
            Ok(())
        })
    }

    fn lock(&self, max_hold: Duration) -> BoxFuture<'_, Result<StoreLock, BoxError>> {
        let _ = max_hold;
        Box::pin(async { Ok(StoreLock::none()) })
    }

    fn save_locked<'a>(
        &'a self,
        tokens: &'a TokenSet,
        lock: &'a StoreLock,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        let _ = lock;
        self.save(tokens)
    }
}
