//! [`FileStore`]: a token set in a JSON file, or one file per grant in a directory.

use std::future::ready;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use self::disk::{HeldLock, Target};
use super::{BoxFuture, GrantStore, StoreLock, TokenStore};
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
/// Before each refresh the token manager calls [`lock`](TokenStore::lock), which takes an exclusive
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
/// # Many grants in a directory
///
/// [`FileStore::directory`] keeps one token file per grant in a directory, for
/// [`NiftyGrants`](crate::NiftyGrants) (through [`GrantStore`]): grant `g` lives in
/// `<dir>/<escaped g>.json` with its lock file `<dir>/<escaped g>.json.lock`, each written, locked
/// and capped exactly as above, so two processes (or two stores) on one directory exclude each other
/// per grant and a grant's lock never blocks another grant. The directory is created (mode `0700`
/// on Unix, with any missing parents) by the first save or lock.
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
/// - [`GrantStore::remove_grant`] deletes the grant's token file and leaves its (empty) lock file:
///   deleting a lock file that another process may hold open would let two processes lock
///   different files of the same name. It does not take the grant's lock: to keep a refresh in
///   another process from saving the grant again, take [`lock`](GrantStore::lock_grant) around it.
/// - Used as a single [`TokenStore`] (with [`NiftyAuth`](crate::NiftyAuth)), a directory store
///   keeps its token set as the grant [`DEFAULT_GRANT`](Self::DEFAULT_GRANT): the file
///   `<dir>/default.json`, shared with a `NiftyGrants` grant of that id.
/// - A store made by [`FileStore::new`] keeps one token set: used as a [`GrantStore`], every call
///   fails with an error that says to use [`FileStore::directory`].
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
    /// The token set used as a [`TokenStore`]: the file (file mode), or the default grant's file
    /// (directory mode).
    single: Arc<Target>,
    /// The directory, in directory mode.
    directory: Option<Arc<PathBuf>>,
    lock_timeout: Option<Duration>,
}

impl FileStore {
    /// The largest token file [`load`](TokenStore::load) accepts: 1 MiB. A token set is well under
    /// 10 KiB; a larger file is not one of ours and is refused without being read whole.
    pub const MAX_TOKEN_FILE_BYTES: u64 = 1024 * 1024;

    /// The grant a [directory store](Self::directory) keeps its token set in when used as a single
    /// [`TokenStore`]: the file `<dir>/default.json`.
    pub const DEFAULT_GRANT: &'static str = "default";

    /// A store in the file at `path` (created on the first save; its directory must exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore {
            single: Arc::new(Target::new(path.into(), None)),
            directory: None,
            lock_timeout: None,
        }
    }

    /// A store of one token file per grant in the directory `dir`, created with mode `0700` by the
    /// first save or lock if missing. See [Many grants in a
    /// directory](FileStore#many-grants-in-a-directory).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), nifty_auth::BoxError> {
    /// use nifty_auth::{FileStore, GrantId, GrantStore, TokenSet};
    ///
    /// let store = FileStore::directory("/var/lib/my-app/nifty-grants");
    /// let grant = GrantId::new("Workspace/42")?;
    /// store.save_grant(&grant, &TokenSet::new("at").with_refresh_token("rt")).await?;
    /// assert_eq!(
    ///     store.grant_path(&grant).unwrap(),
    ///     std::path::Path::new("/var/lib/my-app/nifty-grants/%57orkspace%2F42.json")
    /// );
    /// # Ok(()) }
    /// ```
    pub fn directory(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let default = grant_target(&dir, Self::DEFAULT_GRANT);
        FileStore {
            single: Arc::new(default),
            directory: Some(Arc::new(dir)),
            lock_timeout: None,
        }
    }

    /// The longest [`lock`](TokenStore::lock) waits for another holder of the lock file before it
    /// fails.
    ///
    /// Defaults to the `max_hold` the token manager passes: the longest one refresh can take (every
    /// token call attempt timing out, plus the backoff between them), so a waiter outlasts a holder's
    /// whole refresh. A zero timeout makes a single attempt.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = Some(timeout);
        self
    }

    /// The token file's path (for a [directory store](Self::directory): the file of
    /// [`DEFAULT_GRANT`](Self::DEFAULT_GRANT), used as a single [`TokenStore`]).
    pub fn path(&self) -> &Path {
        &self.single.path
    }

    /// The lock file's path: the token file's path with `.lock` appended (`tokens.json.lock`).
    pub fn lock_path(&self) -> &Path {
        &self.single.lock_path
    }

    /// The directory of a [directory store](Self::directory); `None` for a single file.
    pub fn directory_path(&self) -> Option<&Path> {
        self.directory.as_deref().map(PathBuf::as_path)
    }

    /// The token file of `grant` in a [directory store](Self::directory) (its lock file is this path
    /// with `.lock` appended); `None` for a single file.
    pub fn grant_path(&self, grant: &GrantId) -> Option<PathBuf> {
        self.directory
            .as_deref()
            .map(|dir| grant_target(dir, grant.as_str()).path)
    }

    /// `grant`'s files, or the error every grant call of a single-file store returns.
    fn grant_target(&self, grant: &GrantId) -> Result<Arc<Target>, BoxError> {
        match &self.directory {
            Some(dir) => Ok(Arc::new(grant_target(dir, grant.as_str()))),
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "FileStore::new({}) keeps a single token set, not one per grant: use \
                     FileStore::directory(dir) as the store of many grants",
                    self.single.path.display()
                ),
            )
            .into()),
        }
    }

    /// Not public API: the `nifty-auth` command line's writer of its client file (the secret
    /// inside), the one a save uses: a fresh random temporary name created with `O_EXCL`,
    /// `O_NOFOLLOW` and mode `0600`, `fsync`ed and renamed over `path`.
    #[cfg(feature = "cli")]
    #[doc(hidden)]
    pub fn write_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
        disk::write_atomically(path, contents)
    }

    fn bound(&self, max_hold: Duration) -> Duration {
        self.lock_timeout.unwrap_or(max_hold)
    }
}

/// The files of grant `id` in `dir` (see [`name`]).
fn grant_target(dir: &Path, id: &str) -> Target {
    let path = dir.join(format!("{}.json", name::stem(id)));
    Target::new(path, Some(dir.to_path_buf()))
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

impl TokenStore for FileStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<TokenSet>, BoxError>> {
        Box::pin(disk::load(Arc::clone(&self.single)))
    }

    fn save<'a>(&'a self, tokens: &'a TokenSet) -> BoxFuture<'a, Result<(), BoxError>> {
        match to_json(tokens) {
            Ok(json) => Box::pin(disk::save(Arc::clone(&self.single), json)),
            Err(e) => Box::pin(ready(Err(e))),
        }
    }

    /// Takes the exclusive lock on [`lock_path`](FileStore::lock_path); see the
    /// [type docs](FileStore#several-processes-on-one-file).
    fn lock(&self, max_hold: Duration) -> BoxFuture<'_, Result<StoreLock, BoxError>> {
        Box::pin(lock_target(Arc::clone(&self.single), self.bound(max_hold)))
    }
}

/// One file per grant in a [directory store](FileStore::directory); every call fails on a store
/// made by [`FileStore::new`].
impl GrantStore for FileStore {
    fn load_grant<'a>(
        &'a self,
        grant: &'a GrantId,
    ) -> BoxFuture<'a, Result<Option<TokenSet>, BoxError>> {
        match self.grant_target(grant) {
            Ok(target) => Box::pin(disk::load(target)),
            Err(e) => Box::pin(ready(Err(e))),
        }
    }

    fn save_grant<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        match self
            .grant_target(grant)
            .and_then(|t| Ok((t, to_json(tokens)?)))
        {
            Ok((target, json)) => Box::pin(disk::save(target, json)),
            Err(e) => Box::pin(ready(Err(e))),
        }
    }

    /// Deletes the grant's token file and keeps its lock file (see the
    /// [type docs](FileStore#many-grants-in-a-directory)).
    fn remove_grant<'a>(&'a self, grant: &'a GrantId) -> BoxFuture<'a, Result<(), BoxError>> {
        match self.grant_target(grant) {
            Ok(target) => Box::pin(disk::remove(target)),
            Err(e) => Box::pin(ready(Err(e))),
        }
    }

    /// Takes the exclusive lock on the grant's lock file, as [`TokenStore::lock`] does on one file.
    fn lock_grant<'a>(
        &'a self,
        grant: &'a GrantId,
        max_hold: Duration,
    ) -> BoxFuture<'a, Result<StoreLock, BoxError>> {
        match self.grant_target(grant) {
            Ok(target) => Box::pin(lock_target(target, self.bound(max_hold))),
            Err(e) => Box::pin(ready(Err(e))),
        }
    }

    /// Saves only under a lock this store took for this grant: a lock of another grant (or none)
    /// is refused, so a mix-up can never write a grant its holder did not lock.
    fn save_grant_locked<'a>(
        &'a self,
        grant: &'a GrantId,
        tokens: &'a TokenSet,
        lock: &'a StoreLock,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        let checked = self.grant_target(grant).and_then(|target| {
            let held = lock.data::<HeldLock>().map(HeldLock::path);
            if held != Some(target.lock_path.as_path()) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "save_locked needs the lock this FileStore's lock() took for the grant \
                         (lock file {})",
                        target.lock_path.display()
                    ),
                )
                .into());
            }
            Ok((target, to_json(tokens)?))
        });
        match checked {
            Ok((target, json)) => Box::pin(disk::save(target, json)),
            Err(e) => Box::pin(ready(Err(e))),
        }
    }
}
