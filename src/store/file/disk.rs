//! The blocking file work of [`FileStore`](super::FileStore): the capped read, the atomic write, the
//! advisory lock with its bounded wait, and the directory created on demand.

use crate::store::wait::LockWait;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fs4::{FileExt, TryLockError};

use super::FileStore;
use crate::token::TokenSet;
use tower::BoxError;

/// The first and the longest pause between two attempts to take a lock file that is held elsewhere.
const LOCK_POLL_FIRST: Duration = Duration::from_millis(10);
const LOCK_POLL_MAX: Duration = Duration::from_millis(100);

/// Where one token set lives: its file, its lock file, and the directory to create (mode `0700`)
/// before writing either, in directory mode.
#[derive(Debug)]
pub(super) struct Target {
    pub(super) path: PathBuf,
    pub(super) lock_path: PathBuf,
    pub(super) create_dir: Option<PathBuf>,
}

impl Target {
    /// A token file at `path`, its lock file `<path>.lock` beside it.
    pub(super) fn new(path: PathBuf, create_dir: Option<PathBuf>) -> Target {
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        Target {
            path,
            lock_path: PathBuf::from(lock_path),
            create_dir,
        }
    }

    /// Creates the store's directory (mode `0700` on Unix) if it is missing.
    fn ensure_dir(&self) -> io::Result<()> {
        let Some(dir) = &self.create_dir else {
            return Ok(());
        };
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create the token directory {}: {e}", dir.display()),
            )
        })
    }
}

/// Runs `work` on tokio's blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, BoxError> + Send + 'static,
) -> Result<T, BoxError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io::Error::other(format!("{what} task failed: {e}")))?
}

pub(super) async fn load(target: Arc<Target>) -> Result<Option<TokenSet>, BoxError> {
    blocking("token file read", move || read_tokens(&target.path)).await
}

pub(super) async fn save(target: Arc<Target>, json: Vec<u8>) -> Result<(), BoxError> {
    blocking("token file write", move || {
        target.ensure_dir()?;
        write_atomically(&target.path, &json).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot write token file {}: {e}", target.path.display()),
            )
            .into()
        })
    })
    .await
}

/// Deletes the token file (a missing one is fine); the lock file stays (see
/// [`FileStore`](super::FileStore#many-grants-in-a-directory)).
pub(super) async fn remove(target: Arc<Target>) -> Result<(), BoxError> {
    blocking("token file removal", move || {
        match fs::remove_file(&target.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot delete token file {}: {e}", target.path.display()),
                )
                .into())
            }
        }
        // Make the removal durable, like a save's rename.
        #[cfg(unix)]
        if let Some(dir) = target.path.parent() {
            fs::File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot sync the token directory {}: {e}", dir.display()),
                    )
                })?;
        }
        Ok(())
    })
    .await
}

/// The open, locked lock file. Closing it releases the lock.
#[derive(Debug)]
pub(super) struct HeldLock {
    file: File,
    path: PathBuf,
}

impl HeldLock {
    /// The lock file's path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // Closing the file (right after) releases the lock anyway; an explicit unlock also covers a
        // duplicated descriptor. It cannot block, and an error changes nothing.
        let _ = FileExt::unlock(&self.file);
    }
}

/// Tries to lock `target`'s lock file until `bound` has passed on tokio's clock.
pub(super) async fn acquire(target: Arc<Target>, bound: Duration) -> Result<HeldLock, BoxError> {
    let opened = Arc::clone(&target);
    let file = blocking("lock file open", move || {
        opened.ensure_dir()?;
        Ok(open_lock_file(&opened.lock_path)?)
    })
    .await?;
    let lock_path = &target.lock_path;
    let mut wait = LockWait::new(bound, LOCK_POLL_FIRST, LOCK_POLL_MAX);
    loop {
        // Non-blocking (LOCK_NB): safe on a tokio worker.
        match FileExt::try_lock(&file) {
            Ok(()) => {
                return Ok(HeldLock {
                    file,
                    path: lock_path.clone(),
                })
            }
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
        wait.pause(|bound| {
            format!(
                "another process holds the token file's lock {} (or another FileStore on the same \
                 file in this process; waited {bound:?}): it is refreshing the tokens or is stuck; \
                 retry later, or stop the other process",
                lock_path.display()
            )
        })
        .await?;
    }
}

/// Opens (creating if needed, mode `0600` on Unix) the lock file, without truncating it.
fn open_lock_file(lock_path: &Path) -> io::Result<File> {
    let mut options = fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A symlink planted at the lock file's name is refused, never followed.
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    options.open(lock_path).map_err(|e| {
        #[cfg(unix)]
        let hint = if e.raw_os_error() == Some(libc::ELOOP) {
            " (it is a symlink; the lock file must be a regular file: delete the symlink)"
        } else {
            ""
        };
        #[cfg(not(unix))]
        let hint = "";
        io::Error::new(
            e.kind(),
            format!(
                "cannot open the token file's lock {}: {e}{hint}",
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

/// Writes `contents` to `path` so that no other user ever sees them and a crash leaves the old
/// file or the new one, never a torn one: a temporary file at a random name in the same directory,
/// created new (`O_CREAT | O_EXCL`: a file or symlink planted at that name makes it fail, never
/// receives the bytes) without following a symlink (`O_NOFOLLOW`) and with mode `0600` from its
/// first byte on Unix, is written, `fsync`ed and renamed over `path` (a symlink at `path` is
/// replaced, not followed), then the directory is `fsync`ed. The temporary file is removed on any
/// failure.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let (tmp, mut file) = create_temporary(&dir, &name.to_string_lossy())?;
    let result = (|| {
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
    result
}

/// How many random names [`create_temporary`] tries before it gives up.
const TEMPORARY_ATTEMPTS: usize = 4;

/// Creates `<dir>/.<name>.tmp-<128 random bits>` with [`create_private`].
fn create_temporary(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    let mut attempt = 0;
    loop {
        let tmp = dir.join(format!(".{name}.tmp-{:032x}", random_u128()));
        match create_private(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            // Someone else's file at a name no one could guess: take another.
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists && attempt + 1 < TEMPORARY_ATTEMPTS =>
            {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Creates the file `path` for writing: a new file (whatever is at `path`, a file or a symlink,
/// makes it fail with [`io::ErrorKind::AlreadyExists`] and is left as it is), never through a
/// symlink, with mode `0600` on Unix from the start.
pub(super) fn create_private(path: &Path) -> io::Result<File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path)
}

/// 128 bits from the OS's random source (`fastrand` if that fails: the name's secrecy guards
/// nothing, `O_EXCL` and `O_NOFOLLOW` do; it only keeps names from colliding).
fn random_u128() -> u128 {
    let mut bytes = [0u8; 16];
    match getrandom::getrandom(&mut bytes) {
        Ok(()) => u128::from_le_bytes(bytes),
        Err(_) => fastrand::u128(..),
    }
}
