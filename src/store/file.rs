use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{BoxFuture, TokenStore};
use crate::{BoxError, TokenSet};

/// Keeps the token set in a JSON file, written atomically with mode `0600`.
///
/// A save writes a temporary file in the same directory, `fsync`s it, renames it over the target and
/// `fsync`s the directory: a crash at any moment leaves either the old file or the new one, never a
/// torn one. On Unix the file is created with mode `0600` (readable by its owner only), because it
/// holds bearer credentials. File I/O runs on tokio's blocking pool.
///
/// A missing file loads as "no tokens"; a file that is not a valid token set is an error (it is never
/// silently replaced by a refresh).
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
}

impl FileStore {
    /// A store in the file at `path` (created on the first save; its directory must exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore {
            path: Arc::new(path.into()),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
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
}

fn read_tokens(path: &Path) -> Result<Option<TokenSet>, BoxError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot read token file {}: {e}", path.display()),
            )
            .into())
        }
    };
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
