//! Bad days across replicas: two managers (two `NiftyAuth` / `NiftyGrants` of one app, as two
//! processes would have) on one real store with a real cross-process lock (`FileStore`'s lock
//! file). A replica whose save failed hands its rotated tokens over on its own; a grant removed by
//! one replica stays removed for the other; a refresh storm holds store resources only for the
//! refreshes the token-call cap lets run.

mod common;

use std::fmt;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use nifty_auth::store::{BoxFuture, LockLost, StoreLock};
use nifty_auth::testing::FakeNifty;
use nifty_auth::{AuthError, BoxError, FileStore, GrantId, NiftyAuth, TokenSet, TokenStore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What a save fails with while writes are denied.
#[derive(Debug)]
struct WritesDenied;

impl fmt::Display for WritesDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the store denies writes")
    }
}

impl std::error::Error for WritesDenied {}

/// One replica's view of a shared `FileStore`: the real file and the real lock file, with a switch
/// that makes this replica's saves fail (its path to the store is down for writes).
#[derive(Clone)]
struct Replica {
    store: FileStore,
    deny_writes: Arc<AtomicBool>,
    denied: Arc<AtomicUsize>,
    loads: Arc<AtomicUsize>,
}

impl Replica {
    fn new(path: &Path) -> Self {
        Replica {
            store: FileStore::new(path),
            deny_writes: Arc::default(),
            denied: Arc::default(),
            loads: Arc::default(),
        }
    }

    fn deny_writes(&self, deny: bool) {
        self.deny_writes.store(deny, Ordering::SeqCst);
    }

    fn denied(&self) -> usize {
        self.denied.load(Ordering::SeqCst)
    }

    fn refuse(&self) -> Option<BoxFuture<'static, Result<(), BoxError>>> {
        if !self.deny_writes.load(Ordering::SeqCst) {
            return None;
        }
        self.denied.fetch_add(1, Ordering::SeqCst);
        Some(Box::pin(async { Err(Box::new(WritesDenied) as BoxError) }))
    }
}

/// The one grant of a replica's `NiftyAuth`, in one token file: the id is not needed to find it.
impl TokenStore for Replica {
    fn load<'a>(&'a self, _: &'a GrantId) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        Box::pin(self.store.load())
    }

    fn save<'a>(
        &'a self,
        _: &'a GrantId,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        self.refuse()
            .unwrap_or_else(|| Box::pin(self.store.save(tokens)))
    }

    fn remove<'a>(&'a self, _: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async { Err("a replica's grant is not removed in these tests".into()) })
    }

    fn lock<'a>(
        &'a self,
        _: &'a GrantId,
        max_hold: Duration,
    ) -> BoxFuture<'a, Result<StoreLock, BoxError>> {
        Box::pin(self.store.lock(max_hold))
    }
}

/// A replica of the app on `store`: one token call attempt of at most 500 ms, so a refresh lock
/// held elsewhere is waited for at most the longest refresh (500 ms + the store margin).
fn replica(fake: &FakeNifty, store: impl nifty_auth::store::OneGrantStore) -> NiftyAuth {
    builder(fake)
        .token_timeout(Duration::from_millis(500))
        .token_attempts(1)
        .store(store)
        .build()
        .expect("build")
}

/// Stores tokens whose access token has expired and whose refresh token is live at `fake`.
async fn seed_expired(fake: &FakeNifty, path: &Path) -> String {
    let refresh_token = fake.issue_refresh_token();
    let tokens = TokenSet::new("expired-access-token")
        .with_refresh_token(refresh_token.clone())
        .with_expires_in(Duration::ZERO);
    FileStore::new(path).save(&tokens).await.expect("seed");
    refresh_token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_holder_whose_save_failed_saves_on_its_own_and_the_waiting_replica_gets_its_tokens()
{
    let fake = FakeNifty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let seeded = seed_expired(&fake, &path).await;
    let (store_a, store_b) = (Replica::new(&path), Replica::new(&path));
    let (a, b) = (
        replica(&fake, store_a.clone()),
        replica(&fake, store_b.clone()),
    );

    // A refreshes; every save fails: it keeps the rotated tokens and the store's lock.
    store_a.deny_writes(true);
    let err = a.access_token().await.expect_err("the save failed");
    assert!(matches!(err, AuthError::Store { .. }), "{err:?}");
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(store_a.denied(), 3, "the save is tried three times");
    assert!(
        !fake.refresh_token_is_live(&seeded),
        "the seeded token was rotated"
    );

    // The store takes writes again. Nobody calls A: its own rescue saves and hands the lock over.
    store_a.deny_writes(false);
    let healed = Instant::now();
    let token = b.access_token().await.expect("B gets A's rotated tokens");
    eprintln!(
        "B had A's tokens {:?} after the store healed",
        healed.elapsed()
    );
    assert_eq!(
        fake.token_calls(),
        1,
        "B adopted A's tokens: no second call"
    );
    assert_eq!(fake.invalid_grants_served(), 0, "nothing was replayed");
    let stored = FileStore::new(&path).load().await.unwrap().expect("saved");
    assert_eq!(stored.access_token(), token);
    assert!(fake.refresh_token_is_live(stored.refresh_token().unwrap()));
    assert_eq!(
        a.access_token().await.unwrap(),
        token,
        "A serves what it saved"
    );
    assert_eq!(fake.token_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_waiting_past_its_bound_gets_refresh_lock_held_and_makes_no_token_call() {
    let fake = FakeNifty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    seed_expired(&fake, &path).await;
    let (store_a, store_b) = (Replica::new(&path), Replica::new(&path));
    let (a, b) = (replica(&fake, store_a.clone()), replica(&fake, store_b));

    store_a.deny_writes(true);
    a.access_token().await.expect_err("the save failed");
    assert_eq!(fake.token_calls(), 1);

    // A's store stays down for writes: A keeps the lock (and its rescue keeps trying); B's wait is
    // bounded and ends in a typed, transient error that says why.
    let err = b.access_token().await.expect_err("the lock is held");
    assert!(err.is_refresh_lock_held(), "{err:?}");
    // B waited its whole bound: the longest refresh (one 500 ms attempt) plus the store margin.
    assert!(
        matches!(err, AuthError::RefreshLockHeld { waited } if waited >= Duration::from_secs(10)),
        "{err:?}"
    );
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("refresh lock"), "{err}");
    assert_eq!(fake.token_calls(), 1, "B made no token call");
    assert_eq!(fake.invalid_grants_served(), 0);
    assert!(store_a.denied() > 3, "A's rescue kept trying");

    // And when the store heals, A's tokens reach it.
    store_a.deny_writes(false);
    let token = b.access_token().await.expect("after healing");
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.invalid_grants_served(), 0);
    assert_eq!(a.access_token().await.unwrap(), token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_token_file_stays_deleted_while_a_server_runs() {
    let fake = FakeNifty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    seed_expired(&fake, &path).await;
    let auth = builder(&fake).store(FileStore::new(&path)).build().unwrap();
    let svc = service(&auth);
    assert_eq!(
        send(&svc, get(fake.api_url("/users/me"))).await.unwrap().0,
        StatusCode::OK
    );
    assert_eq!(fake.token_calls(), 1);

    // `nifty-auth logout` deletes the file under the running server; then its token is rejected.
    fs::remove_file(&path).unwrap();
    fake.revoke_access_tokens();
    for _ in 0..3 {
        let err = send(&svc, get(fake.api_url("/projects")))
            .await
            .expect_err("removed");
        let err = auth_error(&err);
        assert!(err.is_grant_removed(), "{err:?}");
        assert!(err.is_reauthorization_required(), "{err:?}");
    }
    assert_eq!(fake.token_calls(), 1, "no token call for a removed grant");
    assert!(!path.exists(), "nothing was saved back");
    assert!(
        auth.tokens().is_none(),
        "the removed grant's token is forgotten"
    );

    // Logging in again (another process writes the file) brings it back: the latched grant's
    // callers fail fast, and have the store re-read at most once a second, until they find it.
    let tokens =
        TokenSet::new(fake.issue_access_token(None)).with_refresh_token(fake.issue_refresh_token());
    FileStore::new(&path).save(&tokens).await.unwrap();
    let mut removed_answers = 0;
    let status = loop {
        match send(&svc, get(fake.api_url("/projects"))).await {
            Ok((status, _)) => break status,
            Err(err) => {
                assert!(auth_error(&err).is_grant_removed(), "{err:?}");
                removed_answers += 1;
                assert!(
                    removed_answers < 1_000,
                    "the new tokens were never picked up"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1, "the new tokens were adopted");
    assert_eq!(fake.invalid_grants_served(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_removed_by_another_replica_is_never_refreshed_nor_saved_back() {
    let fake = FakeNifty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let grants = || {
        nifty_auth::NiftyGrants::builder(fake.credentials())
            .token_url(fake.token_url().as_str())
            .allowed_origins([fake.base_url()])
            .store(FileStore::directory(dir.path()))
            .build()
            .unwrap()
    };
    let (a, b) = (grants(), grants());
    let id = GrantId::new("customer-7").unwrap();
    let grant = fake.new_grant();
    let tokens = TokenSet::new("expired")
        .with_refresh_token(grant.issue_refresh_token())
        .with_expires_in(Duration::ZERO);
    b.set_tokens(&id, tokens).await.unwrap();
    let token = a.grant(&id).access_token().await.unwrap();
    assert_eq!(b.grant(&id).access_token().await.unwrap(), token);
    assert_eq!(fake.token_calls(), 1);
    let files = || fs::read_dir(dir.path()).unwrap().count();
    let stored_files = files();

    // B removes it (the customer disconnected the app); A still has it cached.
    b.remove(&id).await.unwrap();
    assert!(files() < stored_files, "the grant's file is gone");
    grant.revoke_access_tokens();
    let layer_a = a.layer();
    let svc = tower::ServiceBuilder::new()
        .layer(layer_a)
        .service(http_client());
    let mut request = get(fake.api_url("/projects"));
    request.extensions_mut().insert(id.clone());
    let err = tower::ServiceExt::oneshot(svc, request)
        .await
        .expect_err("removed");
    let err = auth_error(&err);
    assert!(err.is_grant_removed(), "{err:?}");
    let err = a.grant(&id).access_token().await.expect_err("removed");
    assert!(err.is_grant_removed(), "{err:?}");
    assert_eq!(fake.token_calls(), 1, "A made no token call");
    assert_eq!(files(), stored_files - 1, "A saved nothing back");
    assert!(
        b.grant(&id).access_token().await.is_err(),
        "B has nothing to serve"
    );
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.invalid_grants_served(), 0);
}

/// The lock files this process has open in `dir`.
fn open_lock_files(dir: &Path) -> usize {
    fs::read_dir("/proc/self/fd")
        .map(|fds| {
            fds.filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
                .filter(|target| {
                    target.starts_with(dir) && target.extension().is_some_and(|e| e == "lock")
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_1000_expired_grants_over_a_file_directory_keeps_a_lock_file_open_only_per_running_token_call(
) {
    const GRANTS: usize = 1000;
    const MAX_CALLS: usize = 2;
    let fake = fake_delayed(Duration::from_millis(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::directory(dir.path());
    let ids: Vec<_> = seed_grants(&fake, &store, GRANTS)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let grants = nifty_auth::NiftyGrants::builder(fake.credentials())
        .token_url(fake.token_url().as_str())
        .allowed_origins([fake.base_url()])
        .store(store)
        .max_concurrent_token_calls(MAX_CALLS)
        .build()
        .unwrap();

    let storming = Arc::new(AtomicBool::new(true));
    let most_open = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (storming, most_open, dir) = (
            Arc::clone(&storming),
            Arc::clone(&most_open),
            dir.path().to_owned(),
        );
        std::thread::spawn(move || {
            while storming.load(Ordering::SeqCst) {
                most_open.fetch_max(open_lock_files(&dir), Ordering::SeqCst);
                std::thread::yield_now();
            }
        })
    };
    let mut storm = JoinSet::new();
    for id in &ids {
        let handle = grants.grant(id);
        storm.spawn(async move { handle.access_token().await });
    }
    let mut failed = 0;
    while let Some(done) = storm.join_next().await {
        failed += usize::from(done.unwrap().is_err());
    }
    storming.store(false, Ordering::SeqCst);
    sampler.join().unwrap();

    assert_eq!(failed, 0);
    assert_eq!(fake.token_calls(), GRANTS);
    assert!(fake.max_token_calls_in_flight() <= MAX_CALLS);
    let most_open = most_open.load(Ordering::SeqCst);
    eprintln!("at most {most_open} lock files open at once");
    // + 2: listing /proc/self/fd is not atomic, so one refresh's lock file closing and the next
    // one's opening may both be seen in one listing.
    assert!(
        most_open <= MAX_CALLS + 2,
        "{most_open} lock files open at once: only a refresh holding a token-call slot may hold one"
    );
    assert_eq!(fake.invalid_grants_served(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_latched_by_invalid_grant_picks_up_a_reauthorization_made_through_another() {
    let fake = FakeNifty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let dead = fake.new_grant();
    let tokens = TokenSet::new("expired-access-token")
        .with_refresh_token(dead.issue_refresh_token())
        .with_expires_in(Duration::ZERO);
    FileStore::new(&path).save(&tokens).await.unwrap();
    dead.revoke();
    let store_a = Replica::new(&path);
    let (a, b) = (
        replica(&fake, store_a.clone()),
        replica(&fake, Replica::new(&path)),
    );

    // A finds the grant dead: latched, and it stays so while the store holds the refused token.
    let err = a.access_token().await.expect_err("invalid_grant");
    assert!(err.is_reauthorization_required(), "{err:?}");
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.invalid_grants_served(), 1);
    // Its callers fail fast: the store is re-read at most once a second, not once a call.
    let loads = store_a.loads.load(Ordering::SeqCst);
    let latched_at = Instant::now();
    for _ in 0..50 {
        let err = a.access_token().await.expect_err("latched");
        assert!(err.is_reauthorization_required(), "{err:?}");
    }
    let rereads = store_a.loads.load(Ordering::SeqCst) - loads;
    let seconds = latched_at.elapsed().as_secs() as usize;
    assert!(
        rereads <= seconds + 1,
        "{rereads} store reads by 50 latched calls in {seconds} s"
    );
    assert_eq!(fake.token_calls(), 1);

    // The user re-authorizes through B (another process of the app).
    let redirect = "http://127.0.0.1/callback";
    let code = fake.new_grant().issue_code(redirect);
    let reauthorized = b.exchange_code(code, redirect).await.unwrap();
    assert_eq!(fake.token_calls(), 2);

    // A's callers fail fast until one of them has the store re-read, then A uses B's tokens.
    let mut latched_answers = 0;
    let token = loop {
        match a.access_token().await {
            Ok(token) => break token,
            Err(err) => {
                assert!(err.is_reauthorization_required(), "{err:?}");
                latched_answers += 1;
                assert!(latched_answers < 1_000, "A never saw the re-authorization");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(token, reauthorized.access_token());
    assert_eq!(fake.token_calls(), 2, "A adopted B's tokens: no token call");
    assert_eq!(
        fake.invalid_grants_served(),
        1,
        "the dead token was not sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_tokens_parked_when_the_token_file_is_deleted_are_dropped_not_saved_back() {
    let fake = FakeNifty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    seed_expired(&fake, &path).await;
    let store_a = Replica::new(&path);
    let a = replica(&fake, store_a.clone());

    // A refreshes and cannot save: it keeps the rotated tokens and the lock; its rescue retries.
    store_a.deny_writes(true);
    a.access_token().await.expect_err("the save failed");
    assert_eq!(fake.token_calls(), 1);

    // The grant is deleted meanwhile (`nifty-auth logout`, an operator), then the store heals.
    fs::remove_file(&path).unwrap();
    store_a.deny_writes(false);

    // A's rescue finds the grant gone: it drops the rotated tokens and gives the lock up (the event
    // waited for: another holder gets the lock).
    let lock = FileStore::new(&path)
        .lock(Duration::from_secs(30))
        .await
        .expect("A gives the lock up");
    assert!(!path.exists(), "the removed grant's tokens were saved back");
    lock.release().await;
    let err = a.access_token().await.expect_err("removed");
    assert!(err.is_grant_removed(), "{err:?}");
    assert!(!path.exists());
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.invalid_grants_served(), 0);
}

/// A rescue task dies with its runtime (an app that shuts one runtime down and goes on in another):
/// the next failed save must start a new one, or the kept lock is a hostage again.
#[test]
fn a_rescue_ended_by_its_runtime_shutting_down_is_started_again_by_the_next_failed_save() {
    let main = two_thread_runtime();
    let fake = main.block_on(FakeNifty::start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    main.block_on(seed_expired(&fake, &path));
    let (store_a, store_b) = (Replica::new(&path), Replica::new(&path));
    let (a, b) = (
        replica(&fake, store_a.clone()),
        replica(&fake, store_b.clone()),
    );

    // In a runtime of its own, A refreshes and cannot save; its rescue task is spawned there, and
    // that runtime shuts down (the task is dropped unrun).
    store_a.deny_writes(true);
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    first
        .block_on(a.access_token())
        .expect_err("the save failed");
    assert_eq!(store_a.denied(), 3);
    drop(first);

    main.block_on(async {
        // Back on the app's runtime the save fails again: that must start a new rescue.
        a.access_token().await.expect_err("the save failed again");
        assert_eq!(store_a.denied(), 6);
        // Nobody calls A again: its rescue saves once the store heals, and B gets A's tokens.
        store_a.deny_writes(false);
        let token = b.access_token().await.expect("B gets A's rotated tokens");
        assert_eq!(fake.token_calls(), 1, "B adopted A's tokens");
        assert_eq!(fake.invalid_grants_served(), 0);
        let stored = FileStore::new(&path).load().await.unwrap().expect("saved");
        assert_eq!(stored.access_token(), token);
    });
}

/// A fenced view of a shared `FileStore`: every lock it hands out is numbered, and the locks taken
/// so far can be declared lost (a lease that lapsed while its holder was cut off): a save under one
/// is refused with `store::LockLost`, as a fenced Redis or PostgreSQL store refuses it.
#[derive(Clone)]
struct Fenced {
    store: FileStore,
    taken: Arc<AtomicUsize>,
    lost_below: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    /// The next saves write, then report a failure (their answer was lost).
    answers_lost: Arc<AtomicUsize>,
    /// While set, the store is unreachable for this replica: no lock, no load.
    closed: Arc<AtomicBool>,
    /// The store becomes unreachable right after the last lost answer.
    close_after_lost_answers: Arc<AtomicBool>,
    /// The file locks behind the locks handed out, so that a lapse can free them.
    file_locks: Arc<std::sync::Mutex<Vec<FileLock>>>,
}

/// A file lock behind a lock [`Fenced`] handed out, until released (by its holder or a lapse).
type FileLock = Arc<tokio::sync::Mutex<Option<StoreLock>>>;

/// The number of a lock [`Fenced`] handed out.
struct LockNumber(usize);

impl Fenced {
    fn new(path: &Path) -> Self {
        Fenced {
            store: FileStore::new(path),
            taken: Arc::default(),
            lost_below: Arc::default(),
            refused: Arc::default(),
            answers_lost: Arc::default(),
            closed: Arc::default(),
            close_after_lost_answers: Arc::default(),
            file_locks: Arc::default(),
        }
    }

    /// Every lock handed out so far lapses (as a lease does while its holder is cut off): its file
    /// lock is freed for others, and saves under it are refused.
    async fn lapse(&self) {
        self.lose_locks(0);
        let held: Vec<_> = self.file_locks.lock().unwrap().drain(..).collect();
        for file_lock in held {
            if let Some(file_lock) = file_lock.lock().await.take() {
                file_lock.release().await;
            }
        }
    }

    /// Every lock taken from now on (until the next call) is lost from the start.
    fn lose_locks(&self, count: usize) {
        let taken = self.taken.load(Ordering::SeqCst);
        self.lost_below.store(taken + count, Ordering::SeqCst);
    }
}

/// The one grant of a replica's `NiftyAuth`, in one token file: the id is not needed to find it.
impl TokenStore for Fenced {
    fn load<'a>(&'a self, _: &'a GrantId) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
        if self.closed.load(Ordering::SeqCst) {
            return Box::pin(async { Err("the store is unreachable".into()) });
        }
        Box::pin(self.store.load())
    }

    fn save<'a>(
        &'a self,
        _: &'a GrantId,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(self.store.save(tokens))
    }

    fn remove<'a>(&'a self, _: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async { Err("a replica's grant is not removed in these tests".into()) })
    }

    fn lock<'a>(
        &'a self,
        _: &'a GrantId,
        max_hold: Duration,
    ) -> BoxFuture<'a, Result<StoreLock, BoxError>> {
        Box::pin(async move {
            if self.closed.load(Ordering::SeqCst) {
                return Err("the store is unreachable".into());
            }
            let file_lock = Arc::new(tokio::sync::Mutex::new(Some(
                self.store.lock(max_hold).await?,
            )));
            self.file_locks.lock().unwrap().push(Arc::clone(&file_lock));
            let number = self.taken.fetch_add(1, Ordering::SeqCst);
            let release = move || async move {
                if let Some(file_lock) = file_lock.lock().await.take() {
                    file_lock.release().await;
                }
            };
            Ok(StoreLock::new(release).with_data(LockNumber(number)))
        })
    }

    fn save_locked<'a>(
        &'a self,
        _: &'a GrantId,
        tokens: &'a TokenSet,
        lock: &'a StoreLock,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        let number = lock.data::<LockNumber>().map(|n| n.0);
        if number.is_none_or(|n| n < self.lost_below.load(Ordering::SeqCst)) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Box::pin(async {
                Err(Box::new(LockLost::new("the lease lapsed")) as BoxError)
            });
        }
        if Replica::take(&self.answers_lost) {
            if self.answers_lost.load(Ordering::SeqCst) == 0
                && self.close_after_lost_answers.load(Ordering::SeqCst)
            {
                self.closed.store(true, Ordering::SeqCst);
            }
            return Box::pin(async move {
                self.store.save(tokens).await?;
                Err("the answer to the save was lost".into())
            });
        }
        Box::pin(self.store.save(tokens))
    }
}

impl Replica {
    fn take(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_tokens_whose_lock_the_fence_says_is_lost_are_saved_under_a_new_lock() {
    let fake = FakeNifty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    seed_expired(&fake, &path).await;
    let fenced = Fenced::new(&path);
    let (a, b) = (
        replica(&fake, fenced.clone()),
        replica(&fake, Replica::new(&path)),
    );

    // A's lock is lost from the start: every save under it is refused by the fence. A keeps the
    // rotated tokens, and — the fence having said so — gives that lock up for a new one instead of
    // retrying under it for ever (its own lock file stays held until then: nobody else gets in).
    fenced.lose_locks(1);
    let err = a
        .access_token()
        .await
        .expect_err("the fence refused the save");
    assert!(matches!(err, AuthError::Store { .. }), "{err:?}");
    assert_eq!(fake.token_calls(), 1);

    // Nobody calls A again: its rescue saves under a new lock, and B gets A's tokens.
    let token = b.access_token().await.expect("B gets A's rotated tokens");
    assert_eq!(fake.token_calls(), 1, "B adopted A's tokens");
    assert_eq!(fake.invalid_grants_served(), 0);
    let stored = FileStore::new(&path).load().await.unwrap().expect("saved");
    assert_eq!(stored.access_token(), token);
    assert!(fake.refresh_token_is_live(stored.refresh_token().unwrap()));
    assert_eq!(
        fenced.refused.load(Ordering::SeqCst),
        6,
        "three saves in the call, three in the rescue's first try, none after the new lock"
    );
    assert_eq!(fenced.taken.load(Ordering::SeqCst), 2, "one new lock");
}

/// The lost update: A's save landed although A saw it fail, A's lease lapsed, and B refreshed from
/// the tokens A saved. A's parked tokens are older than the store's now: saving them over B's would
/// put a refresh token B already used back in the store (and the next refresh replays it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_tokens_older_than_what_another_replica_saved_meanwhile_are_dropped_not_saved_over_it(
) {
    // Tokens too short-lived to adopt: every replica that needs one refreshes.
    let fake = rotating_fake_lasting(Duration::from_millis(50)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    seed_expired(&fake, &path).await;
    let fenced = Fenced::new(&path);
    let (a, b) = (
        replica(&fake, fenced.clone()),
        replica(&fake, Replica::new(&path)),
    );

    // A refreshes; its saves land but their answers are lost: A parks its tokens, keeps the lock.
    // Right after the last lost answer A is cut off from the store (its rescue can do nothing).
    fenced.answers_lost.store(3, Ordering::SeqCst);
    fenced
        .close_after_lost_answers
        .store(true, Ordering::SeqCst);
    a.access_token().await.expect_err("A saw its saves fail");
    assert_eq!(fake.token_calls(), 1);
    let saved_by_a = FileStore::new(&path).load().await.unwrap().unwrap();

    // A's lease lapses. B refreshes from what A saved, and saves newer tokens.
    fenced.lapse().await;
    b.access_token()
        .await
        .expect("B refreshes from A's saved tokens");
    assert_eq!(fake.token_calls(), 2);
    let saved_by_b = FileStore::new(&path).load().await.unwrap().unwrap();
    assert_ne!(saved_by_b.refresh_token(), saved_by_a.refresh_token());

    // A is back. Its parked tokens are not saved over B's: A goes on from the store's.
    fenced.closed.store(false, Ordering::SeqCst);
    a.access_token().await.expect("A refreshes from B's tokens");
    assert_eq!(
        fake.invalid_grants_served(),
        0,
        "no refresh token was replayed"
    );
    assert_eq!(fake.refresh_token_replays(), 0);
    let stored = FileStore::new(&path).load().await.unwrap().unwrap();
    assert!(fake.refresh_token_is_live(stored.refresh_token().unwrap()));
    // A's fourth call: from B's tokens A refreshed under its lapsed lease, the fence refused the
    // save three times (0.5 s: past the 50 ms lifetime), and under a new lock A saved those
    // tokens and, as they had expired meanwhile, refreshed once more.
    assert_eq!(fake.token_calls(), 4);
}
