//! Unit tests of the single-file store: the atomic write, the caps, the lock file.

use std::fs::{self, File};
use std::time::Duration;

use super::FileStore;
use crate::token::TokenSet;

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

#[cfg(unix)]
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[cfg(unix)]
#[tokio::test]
async fn save_replaces_a_symlink_at_the_token_file_and_never_writes_through_it() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, "victim").unwrap();
    let path = dir.path().join("tokens.json");
    symlink(&victim, &path).unwrap();

    FileStore::new(&path)
        .save(&TokenSet::new("at").with_refresh_token("rt"))
        .await
        .unwrap();

    assert_eq!(fs::read_to_string(&victim).unwrap(), "victim");
    let meta = fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_file(), "the symlink is still there");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(names(dir.path()), ["tokens.json", "victim"]);
}

#[cfg(unix)]
#[tokio::test]
async fn a_symlink_at_the_lock_file_is_refused_and_nothing_is_created_where_it_points() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path().join("tokens.json"));
    let pointee = dir.path().join("elsewhere");
    std::os::unix::fs::symlink(&pointee, store.lock_path()).unwrap();

    let err = store.lock(Duration::ZERO).await.unwrap_err();

    let message = err.to_string();
    assert!(
        message.contains(&store.lock_path().display().to_string()) && message.contains("symlink"),
        "{message}"
    );
    assert!(
        !pointee.exists(),
        "the lock file was created through the symlink"
    );
    assert_eq!(names(dir.path()), ["tokens.json.lock"]);
}

#[cfg(unix)]
#[tokio::test]
async fn a_save_whose_rename_fails_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    // A non-empty directory where the token file should be: the rename over it fails.
    let path = dir.path().join("tokens.json");
    fs::create_dir(&path).unwrap();
    fs::write(path.join("keep"), "").unwrap();

    let err = FileStore::new(&path)
        .save(&TokenSet::new("at").with_refresh_token("rt"))
        .await
        .unwrap_err();

    assert!(err.to_string().contains("cannot write token file"), "{err}");
    assert_eq!(names(dir.path()), ["tokens.json"]);
    assert_eq!(names(&path), ["keep"]);
}

#[cfg(unix)]
#[test]
fn a_private_file_is_never_created_over_a_planted_file_or_through_a_planted_symlink() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let planted = dir.path().join("planted");
    fs::write(&planted, "planted").unwrap();
    fs::set_permissions(&planted, fs::Permissions::from_mode(0o644)).unwrap();
    let to_planted = dir.path().join("to-planted");
    symlink(&planted, &to_planted).unwrap();
    let dangling = dir.path().join("dangling");
    let pointee = dir.path().join("pointee");
    symlink(&pointee, &dangling).unwrap();

    for path in [&planted, &to_planted, &dangling] {
        let err = super::disk::create_private(path).unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::AlreadyExists,
            "{path:?}: {err}"
        );
    }

    assert_eq!(fs::read_to_string(&planted).unwrap(), "planted");
    assert_eq!(
        fs::metadata(&planted).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(!pointee.exists(), "a file was created through the symlink");
    let fresh = dir.path().join("fresh");
    drop(super::disk::create_private(&fresh).unwrap());
    assert_eq!(
        fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        names(dir.path()),
        ["dangling", "fresh", "planted", "to-planted"]
    );
}
