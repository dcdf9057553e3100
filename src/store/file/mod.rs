use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fs4::{FileExt, TryLockError};
use tokio::time::Instant;

use super::{BoxFuture, StoreLock, TokenStore};
use crate::{BoxError, TokenSet};

/// The first and the longest pause between two attempts to take a lock file that is held elsewhere.
const LOCK_POLL_FIRST: Duration = Duration::from_millis(10);
const LOCK_POLL_MAX: Duration = Duration::from_millis(100);

/// Keeps the token set in a JSON file, written atomically with mode `0600`, with a lock file that
/// serializes refreshes across processes.
///
/// A save writes a temporary file in the same directory, `fsync`s it, renames it over the target and
/// `fsync`s the directory: a crash at any moment leaves either the old file or the new one, never a
/// torn one. On Unix the file is created with mode `0600` (readable by its owner only), because it
/// holds bearer credentials. File I/O runs on tokio's blocking pool.
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
    path: Arc<PathBuf>,
    lock_path: Arc<PathBuf>,
    lock_timeout: Option<Duration>,
}

impl FileStore {
    /// The largest token file [`load`](TokenStore::load) accepts: 1 MiB. A token set is well under
    /// 10 KiB; a larger file is not one of ours and is refused without being read whole.
    pub const MAX_TOKEN_FILE_BYTES: u64 = 1024 * 1024;

    /// A store in the file at `path` (created on the first save; its directory must exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        FileStore {
            path: Arc::new(path),
            lock_path: Arc::new(PathBuf::from(lock_path)),
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

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file's path: the token file's path with `.lock` appended (`tokens.json.lock`).
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }
}

impl TokenStore for FileStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<TokenSet>, BoxError>> {
        let path = Arc::clone(&self.path);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || read_tokens(&path))
                .await
                .map_err(|e| io::Error::other(format!("token file read task failed: {e}")))?
        })
    }

    fn save<'a>(&'a self, tokens: &'a TokenSet) -> BoxFuture<'a, Result<(), BoxError>> {
        let path = Arc::clone(&self.path);
        let json = serde_json::to_vec_pretty(tokens);
        Box::pin(async move {
            let json = json?;
            tokio::task::spawn_blocking(move || write_atomically(&path, &json))
                .await
                .map_err(|e| io::Error::other(format!("token file write task failed: {e}")))?
                .map_err(BoxError::from)
        })
    }

    /// Takes the exclusive lock on [`lock_path`](FileStore::lock_path); see the
    /// [type docs](FileStore#several-processes-on-one-file).
    fn lock(&self, max_hold: Duration) -> BoxFuture<'_, Result<StoreLock, BoxError>> {
        let bound = self.lock_timeout.unwrap_or(max_hold);
        Box::pin(async move {
            let held = acquire(Arc::clone(&self.lock_path), bound).await?;
            // The lock file travels in the lock's data, so it is closed (and the lock released) the
            // moment the StoreLock is released or dropped, whatever runtime there is or is not.
            Ok(StoreLock::new(|| async {}).with_data(held))
        })
    }
}

/// The open, locked lock file. Closing it releases the lock.
#[derive(Debug)]
struct HeldLock {
    file: File,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // Closing the file (right after) releases the lock anyway; an explicit unlock also covers a
        // duplicated descriptor. It cannot block, and an error changes nothing.
        let _ = FileExt::unlock(&self.file);
    }
}

/// Tries to lock `lock_path` until `bound` has passed on tokio's clock.
async fn acquire(lock_path: Arc<PathBuf>, bound: Duration) -> Result<HeldLock, BoxError> {
    // `None` (a bound past the end of time) waits for as long as it takes.
    let deadline = Instant::now().checked_add(bound);
    let opened = Arc::clone(&lock_path);
    let file = tokio::task::spawn_blocking(move || open_lock_file(&opened))
        .await
        .map_err(|e| io::Error::other(format!("lock file open task failed: {e}")))??;
    let mut pause = LOCK_POLL_FIRST;
    loop {
        // Non-blocking (LOCK_NB): safe on a tokio worker.
        match FileExt::try_lock(&file) {
            Ok(()) => return Ok(HeldLock { file }),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "cannot lock the token file's lock {}: {e}",
                        lock_path.display()
                    ),
                )
                .into())
            }
        }
        let now = Instant::now();
        if deadline.is_some_and(|deadline| now >= deadline) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "another process holds the token file's lock {} (or another FileStore on the \
                     same file in this process; waited {bound:?}): it is refreshing the tokens or \
                     is stuck; retry later, or stop the other process",
                    lock_path.display()
                ),
            )
            .into());
        }
        let left = deadline.map_or(pause, |deadline| deadline - now);
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(LOCK_POLL_MAX);
    }
}

/// Opens (creating if needed, mode `0600` on Unix) the lock file, without truncating it.
fn open_lock_file(lock_path: &Path) -> io::Result<File> {
    let mut options = fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(lock_path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot open the token file's lock {}: {e}",
                lock_path.display()
            ),
        )
    })
}

fn read_tokens(path: &Path) -> Result<Option<TokenSet>, BoxError> {
    let cannot_read = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot read token file {}: {e}", path.display()),
        )
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cannot_read(e).into()),
    };
    let max = FileStore::MAX_TOKEN_FILE_BYTES;
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "token file {} is larger than {max} bytes, so it is not a token set: fix or delete \
                 it, then authorize again",
                path.display()
            ),
        )
    };
    let len = file.metadata().map_err(cannot_read)?.len();
    if len > max {
        return Err(too_large().into());
    }
    // Never more than `max + 1` bytes, even if the file grows or is not a regular file.
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot_read)?;
    if bytes.len() as u64 > max {
        return Err(too_large().into());
    }
    // serde_json's message for a bad value could quote a token: report only the position.
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "token file {} is not a valid token set (line {} column {}): fix or delete it, then \
                 authorize again",
                path.display(),
                e.line(),
                e.column()
            ),
        )
        .into()
    })
}

fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "token file path has no file name",
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{:016x}",
        name.to_string_lossy(),
        std::process::id(),
        fastrand::u64(..)
    ));
    let result = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        #[cfg(unix)]
        fs::File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot write token file {}: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn save_then_load_round_trips_with_mode_0600_and_no_temp_files_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let store = FileStore::new(&path);
        assert!(store.load().await.unwrap().is_none());

        store
            .save(&TokenSet::new("at-1").with_refresh_token("rt-1"))
            .await
            .unwrap();
        store
            .save(&TokenSet::new("at-2").with_refresh_token("rt-2"))
            .await
            .unwrap();
        let loaded = store.load().await.unwrap().unwrap();
        assert_eq!(loaded.refresh_token(), Some("rt-2"));

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let entries: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1, "temp files left behind");
    }

    #[tokio::test]
    async fn corrupt_file_is_an_error_that_names_the_file_not_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        fs::write(&path, r#"{"access_token": "at-secret", "refresh_token": 5"#).unwrap();
        let err = FileStore::new(&path).load().await.unwrap_err().to_string();
        assert!(err.contains("tokens.json"), "{err}");
        assert!(!err.contains("at-secret"), "{err}");
    }

    #[tokio::test]
    async fn oversized_file_is_refused_with_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        // Sparse: 4 GiB that take no disk and would take 4 GiB of memory if read whole.
        let file = File::create(&path).unwrap();
        file.set_len(4 << 30).unwrap();
        drop(file);
        let err = FileStore::new(&path).load().await.unwrap_err().to_string();
        assert!(err.contains("tokens.json"), "{err}");
        assert!(err.contains("larger than 1048576 bytes"), "{err}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn endless_file_is_read_no_further_than_the_cap() {
        // A device reports length 0 and never ends: only the capped read stops it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        let err = FileStore::new(&path).load().await.unwrap_err().to_string();
        assert!(err.contains("larger than 1048576 bytes"), "{err}");
    }

    #[tokio::test]
    async fn file_of_exactly_the_cap_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let mut json = serde_json::to_vec(&TokenSet::new("at").with_refresh_token("rt")).unwrap();
        json.resize(FileStore::MAX_TOKEN_FILE_BYTES as usize, b' ');
        fs::write(&path, json).unwrap();
        let loaded = FileStore::new(&path).load().await.unwrap().unwrap();
        assert_eq!(loaded.refresh_token(), Some("rt"));
    }

    #[tokio::test]
    async fn lock_file_sits_beside_the_token_file_with_mode_0600_and_outlives_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("tokens.json"));
        assert_eq!(store.lock_path(), dir.path().join("tokens.json.lock"));
        let lock = store.lock(Duration::from_secs(1)).await.unwrap();
        assert!(format!("{lock:?}").contains("held: true"), "{lock:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(store.lock_path())
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600);
        }
        lock.release().await;
        assert!(store.lock_path().exists(), "the lock file was deleted");
        // And it can be taken again at once.
        let again = store.lock(Duration::ZERO).await.unwrap();
        drop(again);
    }

    #[test]
    fn dropping_a_lock_outside_any_runtime_releases_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("tokens.json"));
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
        };
        let lock = runtime()
            .block_on(store.lock(Duration::from_secs(1)))
            .unwrap();
        // The runtime that took it is gone: this drop has no runtime to spawn on.
        drop(lock);
        runtime()
            .block_on(store.lock(Duration::ZERO))
            .expect("the dropped lock was not released");
    }

    #[tokio::test]
    async fn failed_save_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("tokens.json");
        let err = FileStore::new(&path)
            .save(&TokenSet::new("at"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cannot write token file"), "{err}");
    }
}
