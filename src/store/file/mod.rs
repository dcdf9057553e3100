//! [`FileStore`]: a token set in a JSON file; [`DirectoryStore`]: one such file per grant.

use std::future::ready;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use self::disk::{HeldLock, Target};
use super::{BoxFuture, StoreLock, TokenStore};
use crate::grant_id::GrantId;
use crate::token::TokenSet;
use tower::BoxError;

mod disk;
mod name;
#[cfg(test)]
mod tests;

/// Keeps the token set in a JSON file, written atomically with mode `0600`, with a lock file that
/// serializes refreshes across processes.
///
/// A save writes a temporary file in the same directory, `fsync`s it, renames it over the target and
/// `fsync`s the directory: a crash at any moment leaves either the old file or the new one, never a
/// torn one. On Unix the file is created with mode `0600` (readable by its owner only) from its
/// first byte, because it holds bearer credentials. The temporary file has a random name (128 bits
/// from the OS) and is created new without following a symlink (`O_EXCL | O_NOFOLLOW`), so a file
/// or symlink planted in the directory never receives the tokens; a symlink at the token file itself
/// is replaced by the rename, never written through; a symlink at the lock file is refused. A
/// failed save removes its temporary file. File I/O runs on tokio's blocking pool.
///
/// A missing file loads as "no tokens"; a file that is not a valid token set, or is larger than
/// [`MAX_TOKEN_FILE_BYTES`](Self::MAX_TOKEN_FILE_BYTES), is an error (it is never silently replaced by
/// a refresh, and never read whole into memory).
///
/// # Several processes on one file
///
/// Before each refresh the token manager calls [`lock`](Self::lock), which takes an exclusive
/// advisory lock (`flock` on Unix, `LockFileEx` on Windows) on a lock file beside the token file:
/// `<file name>.lock` in the same directory (see [`lock_path`](Self::lock_path)), created with mode
/// `0600` and never deleted (deleting lock files races). The manager then re-reads the token file, so
/// of two processes (a server and a CLI, two workers) or two `NiftyAuth`s on one file that need a new
/// token at the same time, one makes the token call and the other adopts its tokens: a rotated refresh
/// token is never sent twice.
///
/// - The lock belongs to the open lock file, not to the process: two `FileStore`s on one path in the
///   same process exclude each other too.
/// - It is held as long as the [`StoreLock`] lives and released when the lock is released or dropped
///   (dropping never blocks, with or without a tokio runtime). The OS releases it when the holding
///   process dies, however it dies.
/// - Waiting is bounded and never blocks a tokio worker: the store retries a non-blocking attempt every
///   10 ms, backing off to every 100 ms, for at most the time one refresh can take (the `max_hold`
///   the manager passes) or the [`lock_timeout`](Self::lock_timeout) you set, then fails with an error
///   naming the lock file. The wait runs on tokio's clock.
/// - Advisory locks are only as good as every writer taking them: all processes must use `FileStore`
///   (this version or later) on the same path. Some network file systems do not support `flock`.
///
/// One file holds one grant's tokens: a `FileStore` is what a single-grant
/// [`NiftyAuth`](crate::NiftyAuth) takes (see [`OneGrantStore`](super::OneGrantStore)), and it is
/// not a [`TokenStore`], so a [`NiftyGrants`](crate::NiftyGrants) cannot be given one (that would
/// send one workspace's bearer for another). For many grants, use a [`DirectoryStore`].
///
/// ```no_run
/// use nifty_auth::{Credentials, FileStore, NiftyAuth};
///
/// let auth = NiftyAuth::builder(Credentials::new("id", "secret"))
///     .store(FileStore::new("nifty-tokens.json"))
///     .build()?;
/// # Ok::<(), nifty_auth::AuthError>(())
/// ```
#[derive(Clone, Debug)]
pub struct FileStore {
    target: Arc<Target>,
    lock_timeout: Option<Duration>,
}

/// Keeps one token file per grant in a directory: the [`TokenStore`] of files, for
/// [`NiftyGrants`](crate::NiftyGrants) (and for a [`NiftyAuth`](crate::NiftyAuth), which uses the
/// grant [`GrantId::SINGLE`], the file `<dir>/default.json`).
///
/// Grant `g` lives in `<dir>/<escaped g>.json` with its lock file `<dir>/<escaped g>.json.lock`,
/// each written, locked and capped exactly as a [`FileStore`]'s, so two processes (or two stores)
/// on one directory exclude each other per grant and a grant's lock never blocks another grant. The
/// directory is created (mode `0700` on Unix, with any missing parents) by the first save or lock.
///
/// Grant ids come from your users and are never trusted: the escape keeps lower-case ASCII letters,
/// digits, `-`, `_` and `.` (not as the first character) and writes every other byte as `%XX` (so
/// `A` is `%41`, `a/b` is `a%2Fb`, `..` is `%2E.`). No name holds a path separator or NUL, none is
/// `.`, `..` or hidden, no two grants share a name even on a case-insensitive file system, and
/// Windows device names (`con`, `nul`, …) get their first letter escaped. An id whose escaped form
/// passes 200 bytes is named by a readable prefix of it, `~` and the SHA-256 of the whole id, so
/// every name stays within the usual 255-byte limit. No file outside the directory is read or
/// written.
///
/// [`remove`](TokenStore::remove) deletes the grant's token file and leaves its (empty) lock file:
/// deleting a lock file that another process may hold open would let two processes lock different
/// files of the same name. It does not take the grant's lock: to keep a refresh in another process
/// from saving the grant again, take [`lock`](TokenStore::lock) around it.
///
/// ```no_run
/// # async fn run() -> Result<(), nifty_auth::BoxError> {
/// use nifty_auth::store::{DirectoryStore, TokenStore};
/// use nifty_auth::{GrantId, TokenSet};
///
/// let store = DirectoryStore::new("/var/lib/my-app/nifty-grants");
/// let grant = GrantId::new("Workspace/42")?;
/// store.save(&grant, &TokenSet::new("at").with_refresh_token("rt")).await?;
/// assert_eq!(
///     store.grant_path(&grant),
///     std::path::Path::new("/var/lib/my-app/nifty-grants/%57orkspace%2F42.json")
/// );
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct DirectoryStore {
    dir: Arc<PathBuf>,
    lock_timeout: Option<Duration>,
}

impl FileStore {
    /// The largest token file [`load`](Self::load) accepts: 1 MiB. A token set is well under
    /// 10 KiB; a larger file is not one of ours and is refused without being read whole.
    pub const MAX_TOKEN_FILE_BYTES: u64 = 1024 * 1024;

    /// The grant a [`DirectoryStore`] keeps a single-grant `NiftyAuth`'s tokens in:
    /// [`GrantId::SINGLE`].
    #[doc(hidden)]
    pub const DEFAULT_GRANT: &'static str = GrantId::SINGLE;

    /// A store in the file at `path` (created on the first save; its directory must exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore {
            target: Arc::new(Target::new(path.into(), None)),
            lock_timeout: None,
        }
    }

    /// A store of one token file per grant in the directory `dir`: the same as
    /// [`DirectoryStore::new`].
    pub fn directory(dir: impl Into<PathBuf>) -> DirectoryStore {
        DirectoryStore::new(dir)
    }

    /// The longest [`lock`](Self::lock) waits for another holder of the lock file before it
    /// fails.
    ///
    /// Defaults to the `max_hold` the token manager passes: the longest one refresh can take (every
    /// token call attempt timing out, plus the backoff between them), so a waiter outlasts a holder's
    /// whole refresh. A zero timeout makes a single attempt.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = Some(timeout);
        self
    }

    /// The token file's path.
    pub fn path(&self) -> &Path {
        &self.target.path
    }

    /// The lock file's path: the token file's path with `.lock` appended (`tokens.json.lock`).
    pub fn lock_path(&self) -> &Path {
        &self.target.lock_path
    }

    /// Reads the token set; `Ok(None)` when the file does not exist.
    pub async fn load(&self) -> Result<Option<TokenSet>, BoxError> {
        disk::load(Arc::clone(&self.target)).await
    }

    /// Writes `tokens` atomically (see the [type docs](FileStore)), replacing what was there.
    pub async fn save(&self, tokens: &TokenSet) -> Result<(), BoxError> {
        disk::save(Arc::clone(&self.target), to_json(tokens)?).await
    }

    /// Takes the exclusive lock on [`lock_path`](FileStore::lock_path), waiting at most `max_hold`
    /// (or the [`lock_timeout`](Self::lock_timeout)); see the
    /// [type docs](FileStore#several-processes-on-one-file). The lock is held until the
    /// `StoreLock` is released or dropped.
    pub async fn lock(&self, max_hold: Duration) -> Result<StoreLock, BoxError> {
        lock_target(
            Arc::clone(&self.target),
            self.lock_timeout.unwrap_or(max_hold),
        )
        .await
    }

    /// Deletes the token file (keeping its lock file).
    pub(crate) async fn remove(&self) -> Result<(), BoxError> {
        disk::remove(Arc::clone(&self.target)).await
    }

    /// Not public API: the `nifty-auth` command line's writer of its client file (the secret
    /// inside), the one a save uses: a fresh random temporary name created with `O_EXCL`,
    /// `O_NOFOLLOW` and mode `0600`, `fsync`ed and renamed over `path`.
    #[cfg(feature = "cli")]
    #[doc(hidden)]
    pub fn write_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
        disk::write_atomically(path, contents)
    }
}

impl DirectoryStore {
    /// A store of one token file per grant in the directory `dir`, created with mode `0700` by the
    /// first save or lock if missing.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirectoryStore {
            dir: Arc::new(dir.into()),
            lock_timeout: None,
        }
    }

    /// The longest [`lock`](TokenStore::lock) waits for another holder of a grant's lock file
    /// before it fails; see [`FileStore::lock_timeout`].
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = Some(timeout);
        self
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The token file of `grant` (its lock file is this path with `.lock` appended).
    pub fn grant_path(&self, grant: &GrantId) -> PathBuf {
        self.target(grant).path
    }

    fn target(&self, grant: &GrantId) -> Target {
        let path = self
            .dir
            .join(format!("{}.json", name::stem(grant.as_str())));
        Target::new(path, Some(self.dir.to_path_buf()))
    }

    fn bound(&self, max_hold: Duration) -> Duration {
        self.lock_timeout.unwrap_or(max_hold)
    }
}

/// Takes `target`'s lock file. The open file travels in the lock's data, so it is closed (and the
/// lock released) the moment the `StoreLock` is released or dropped, whatever runtime there is or
/// is not.
async fn lock_target(target: Arc<Target>, bound: Duration) -> Result<StoreLock, BoxError> {
    let held = disk::acquire(target, bound).await?;
    Ok(StoreLock::new(|| async {}).with_data(held))
}

fn to_json(tokens: &TokenSet) -> Result<Vec<u8>, BoxError> {
    Ok(serde_json::to_vec_pretty(tokens)?)
}

/// One file per grant; see [`DirectoryStore`].
impl TokenStore for DirectoryStore {
    fn load<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
        Box::pin(disk::load(Arc::new(self.target(grant))))
    }

    fn save<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        match to_json(tokens) {
            Ok(json) => Box::pin(disk::save(Arc::new(self.target(grant)), json)),
            Err(e) => Box::pin(ready(Err(e))),
        }
    }

    /// Deletes the grant's token file and keeps its lock file (see the
    /// [type docs](DirectoryStore)).
    fn remove<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(disk::remove(Arc::new(self.target(grant))))
    }

    /// Takes the exclusive lock on the grant's lock file, as [`FileStore::lock`] does on one file.
    fn lock<'a>(
        &'a self,
        grant: &'a GrantId,
        max_hold: Duration,
    ) -> BoxFuture<'a, Result<StoreLock, BoxError>> {
        Box::pin(lock_target(
            Arc::new(self.target(grant)),
            self.bound(max_hold),
        ))
    }

    /// Saves only under a lock this store took for this grant: a lock of another grant (or none)
    /// is refused, so a mix-up can never write a grant its holder did not lock.
    fn save_locked<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
        lock: &'a StoreLock,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        let target = self.target(grant);
        let held = lock.data::<HeldLock>().map(HeldLock::path);
        if held != Some(target.lock_path.as_path()) {
            return Box::pin(ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "save_locked needs the lock this DirectoryStore's lock() took for the grant \
                     (lock file {})",
                    target.lock_path.display()
                ),
            )
            .into())));
        }
        match to_json(tokens) {
            Ok(json) => Box::pin(disk::save(Arc::new(target), json)),
            Err(e) => Box::pin(ready(Err(e))),
        }
    }
}
