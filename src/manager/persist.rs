//! One refresh under the store's lock: parked tokens first, the re-read of the store, the token
//! call, the save before publication; re-authorizations (`set_tokens`, `exchange_code`).

use super::*;

/// How many times a failed save is tried within one refresh (the lock is held throughout).
const SAVE_ATTEMPTS: u32 = 3;

/// The delay after the first failed save; it quadruples.
const SAVE_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Tokens whose save failed: saved before anything else, under `lock` if it is still held.
pub(super) struct Pending {
    tokens: TokenSet,
    lock: Option<StoreLock>,
    /// From a re-authorization (`set_tokens`, `exchange_code`): saved whether or not the grant is
    /// still stored. Rotated tokens of a grant removed meanwhile are dropped instead.
    reauthorized: bool,
}

/// Whether a save failed because a fenced store refused the lock it was made under.
fn lock_lost(error: &AuthError) -> bool {
    match error {
        AuthError::Store { source } => source.downcast_ref::<LockLost>().is_some(),
        _ => false,
    }
}

/// Whether the store has moved on past `pending` (rotated tokens parked by this manager): it holds
/// a refresh token that is neither the parked one nor one this manager's refreshes replaced.
pub(super) fn moved_on(state: &State, stored: &TokenSet, pending: &TokenSet) -> bool {
    match stored.refresh_token() {
        Some(rt) => Some(rt) != pending.refresh_token() && !state.replaced(rt),
        // Tokens without a refresh token: a re-authorization (rotated tokens always carry one).
        None => pending.refresh_token().is_some(),
    }
}

impl TokenManager {
    /// One refresh under the store's lock (a lock kept from an earlier failed save is reused).
    pub(super) async fn refresh_once(
        self: &Arc<Self>,
        current: &Current,
    ) -> Result<Arc<Current>, AuthError> {
        let (pending, kept) = self.take_pending_lock();
        let was_kept = kept.is_some();
        let lock = match kept {
            Some(lock) => lock,
            None => self.lock_store_or_rescue().await?,
        };
        let result = self.refresh_locked(current, pending.clone(), &lock).await;
        if was_kept && result.is_err() && self.state.lock().pending.is_some() {
            // The kept lock may have lapsed (a fenced store refuses every save under it). Try for a
            // new one *while still holding it*: if it is still ours, the try fails at once and
            // nothing changes hands — releasing it first would let another process in, to refresh
            // with the refresh token the parked tokens replaced.
            // A fenced store that said the lock no longer protects the save (`LockLost`) gets it
            // given up for a new one even if the try fails (its session may still hold it).
            let fresh = match self.try_lock_store().await {
                Ok(fresh) => {
                    lock.release().await;
                    fresh
                }
                Err(_) if result.as_ref().is_err_and(lock_lost) => {
                    lock.release().await;
                    self.lock_store_or_rescue().await?
                }
                Err(_) => {
                    self.settle(lock).await;
                    return result;
                }
            };
            // The tokens parked *now*: the first attempt may have saved the ones it started with
            // and parked newer ones from a token call since (saving the old ones again would
            // drop the newer ones, the only live refresh token).
            let (pending, _) = self.take_pending_lock();
            let result = self.refresh_locked(current, pending, &fresh).await;
            self.settle(fresh).await;
            return result;
        }
        self.settle(lock).await;
        result
    }

    async fn refresh_locked(
        &self,
        current: &Current,
        pending: Option<(TokenSet, bool)>,
        lock: &StoreLock,
    ) -> Result<Arc<Current>, AuthError> {
        // 1. Tokens whose save failed: save them first, never call again while holding an unsaved
        //    rotated refresh token — unless the grant was removed meanwhile (then they go with it).
        //    Nor over newer tokens: a save whose answer was lost may have landed, and another
        //    replica (in once this lock had lapsed) refreshed from it; a re-authorization wins.
        let mut refresh_token = None;
        if let Some((pending, reauthorized)) = pending {
            let superseded = if reauthorized {
                false
            } else {
                let stored = self.store_load().await.map_err(AuthError::store)?;
                let mut state = self.state.lock();
                match stored {
                    None if state.stored => {
                        state.pending = None;
                        drop(state);
                        return Err(self.removed());
                    }
                    None => false,
                    Some(stored) => moved_on(&state, &stored, &pending),
                }
            };
            if superseded {
                trace::warning!(
                    "the store holds newer tokens than the unsaved ones (another process refreshed \
                     from them, or a re-authorization): using the store's"
                );
                self.state.lock().pending = None;
            } else {
                let saved = self.save_parked(pending, reauthorized, lock).await?;
                if self.cache.adoptable(&saved) {
                    return self.publish(saved);
                }
                refresh_token = saved.refresh_token().map(str::to_owned);
            }
        }

        // 2. The store may hold newer tokens (another instance or process refreshed) — or none: the
        //    grant was removed — or older ones: the store lost this manager's last save.
        if refresh_token.is_none() {
            let stored = self.store_load().await.map_err(AuthError::store)?;
            // A latched grant: only tokens stored by a re-authorization elsewhere lift the latch.
            let latch = {
                let mut state = self.state.lock();
                match state.terminal.as_deref() {
                    Some(latched) if !latched.lifted_by(stored.as_ref()) => {
                        Some(latched.error.clone())
                    }
                    Some(_) => {
                        self.lift(&mut state);
                        None
                    }
                    None => None,
                }
            };
            if let Some(error) = latch {
                return Err(error);
            }
            match stored {
                None if self.state.lock().stored => return Err(self.removed()),
                None => {}
                Some(stored) => {
                    self.state.lock().stored = true;
                    let ours = current.tokens.as_ref().filter(|ours| {
                        ours.refresh_token() != stored.refresh_token()
                            && stored
                                .refresh_token()
                                .is_some_and(|rt| self.state.lock().replaced(rt))
                    });
                    if let Some(ours) = ours {
                        // Never refresh with (nor adopt) a set this manager already replaced: put
                        // the newer set back first.
                        trace::warning!(
                            "the store holds tokens this process already replaced (it lost a save): \
                             saving the newer tokens back"
                        );
                        let saved = self.save_parked(ours.clone(), false, lock).await?;
                        refresh_token = saved.refresh_token().map(str::to_owned);
                    } else {
                        let newer = current.access_token() != Some(stored.access_token());
                        if newer && self.cache.adoptable(&stored) {
                            trace::record!("outcome", "adopted_from_store");
                            trace::debug!("adopting tokens from the store");
                            return self.publish(stored);
                        }
                        refresh_token = stored.refresh_token().map(str::to_owned);
                    }
                }
            }
        }
        let refresh_token = refresh_token
            .or_else(|| {
                current
                    .tokens
                    .as_ref()
                    .and_then(|t| t.refresh_token().map(str::to_owned))
            })
            .or_else(|| self.policy.bootstrap_refresh_token.clone())
            .ok_or_else(|| AuthError::ReauthorizationRequired {
                reason:
                    "there is no refresh token: authorize the app (exchange_code) or supply tokens \
                         (set_tokens, the builder's refresh_token)"
                        .to_owned(),
            })?;

        // 3. The token call (the call slot is already held: see `refresh_gated`).
        let endpoint = self.endpoint()?;
        let grant = GrantType::RefreshToken {
            refresh_token: &refresh_token,
        };
        let (result, attempts) = endpoint
            .request(&grant, Some(&refresh_token), self.counters(), true)
            .await;
        trace::record!("attempts", attempts);
        let tokens = match result {
            Ok(tokens) => tokens,
            Err(error) => {
                if error.is_terminal() {
                    let refused = if error.is_reauthorization_required() {
                        Refused::RefreshToken(fingerprint(&refresh_token))
                    } else {
                        Refused::Client
                    };
                    self.latch(&error, refused);
                }
                return Err(error);
            }
        };
        if tokens.refresh_token() != Some(refresh_token.as_str()) {
            self.state.lock().remember_replaced(&refresh_token);
        }

        // 4. Save before anyone uses the new access token; 5. publish.
        let saved = self.save_parked(tokens, false, lock).await?;
        self.publish(saved)
    }

    /// Parks `tokens` as unsaved, then saves them under `lock`, retrying a failed save while the lock
    /// is held. On success they are no longer parked; on failure they stay parked for the next
    /// attempt, and [`settle`](Self::settle) keeps the lock with them.
    async fn save_parked(
        &self,
        tokens: TokenSet,
        reauthorized: bool,
        lock: &StoreLock,
    ) -> Result<TokenSet, AuthError> {
        // Parked first, so even a store that panics cannot lose a rotated refresh token.
        self.state.lock().pending = Some(Box::new(Pending {
            tokens: tokens.clone(),
            lock: None,
            reauthorized,
        }));
        let mut delay = SAVE_RETRY_DELAY;
        let mut attempt = 1;
        loop {
            match self.store_save_locked(&tokens, lock).await {
                Ok(()) => {
                    let mut state = self.state.lock();
                    state.pending = None;
                    state.stored = true;
                    return Ok(tokens);
                }
                Err(error) if attempt >= SAVE_ATTEMPTS => return Err(AuthError::store(error)),
                Err(error) => {
                    trace::warning!(attempt, error = %error, "saving the tokens failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(4);
                    attempt += 1;
                }
            }
        }
    }

    /// The pending tokens (if any, with whether they come from a re-authorization) and the lock
    /// kept with them, taken out for this attempt. The tokens stay parked until they are saved.
    fn take_pending_lock(&self) -> (Option<(TokenSet, bool)>, Option<StoreLock>) {
        let mut state = self.state.lock();
        match state.pending.as_mut() {
            Some(pending) => (
                Some((pending.tokens.clone(), pending.reauthorized)),
                pending.lock.take(),
            ),
            None => (None, None),
        }
    }

    /// After an attempt: while tokens wait unsaved, keep the store lock with them, so no other process
    /// refreshes with the refresh token they replaced, and make sure a rescue task retries the save
    /// (nobody else may call this process soon); otherwise release the lock.
    async fn settle(self: &Arc<Self>, lock: StoreLock) {
        let release = {
            let mut state = self.state.lock();
            match state.pending.as_mut() {
                Some(pending) if pending.lock.is_none() => {
                    pending.lock = Some(lock);
                    None
                }
                _ => Some(lock),
            }
        };
        if let Some(lock) = release {
            lock.release().await;
        }
        self.rescue_if_parked();
    }

    /// Replaces the tokens (after a re-authorization): waits for a running refresh, saves, publishes,
    /// and lifts a terminal latch.
    pub(crate) async fn set_tokens(
        self: Arc<Self>,
        tokens: TokenSet,
    ) -> Result<Arc<Current>, AuthError> {
        tokens.validate()?;
        self.spawn_exclusive(move |manager| async move { manager.install(tokens).await })
            .await
    }

    /// The authorization_code grant, run like a refresh (own task, after any running refresh).
    pub(crate) async fn exchange_code(
        self: Arc<Self>,
        code: String,
        redirect_uri: String,
        code_verifier: Option<String>,
    ) -> Result<Arc<Current>, AuthError> {
        self.spawn_exclusive(move |manager| async move {
            let grant = GrantType::AuthorizationCode {
                code: &code,
                redirect_uri: &redirect_uri,
                code_verifier: code_verifier.as_deref(),
            };
            let (result, _attempts) = manager
                .endpoint()?
                .request(&grant, None, manager.counters(), false)
                .await;
            manager.install(result?).await
        })
        .await
    }

    /// Installs tokens from a re-authorization: they supersede everything, so the latch is lifted
    /// *before* the save — a failed save leaves them parked, and the next attempt saves and uses them.
    async fn install(self: &Arc<Self>, tokens: TokenSet) -> Result<Arc<Current>, AuthError> {
        let kept = {
            let mut state = self.state.lock();
            if state.retired {
                return Err(AuthError::GrantRemoved);
            }
            self.lift(&mut state);
            state.rare = None;
            let kept = state.pending.as_mut().and_then(|p| p.lock.take());
            state.pending = Some(Box::new(Pending {
                tokens: tokens.clone(),
                lock: None,
                reauthorized: true,
            }));
            kept
        };
        let lock = match kept {
            Some(lock) => lock,
            None => self.lock_store_or_rescue().await?,
        };
        let result = match self.save_parked(tokens, true, &lock).await {
            Ok(saved) => self.publish(saved),
            Err(error) => Err(error),
        };
        self.settle(lock).await;
        result
    }
}

#[cfg(test)]
mod tests;
