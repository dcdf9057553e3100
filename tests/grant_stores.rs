//! `FileStore::directory` as a `TokenStore`: one token file per grant, hostile grant ids escaped so
//! that nothing is read or written outside the directory, per-grant locks that exclude each other
//! across stores, and what each mode does in the other's role.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::auth_over;
use common::hostile_ids;
use common::{get, send, service};
use http::StatusCode;
use nifty_auth::testing::FakeNifty;
use nifty_auth::{FileStore, GrantId, TokenSet, TokenStore};

fn grant(id: &str) -> GrantId {
    GrantId::new(id).unwrap()
}

fn tokens(tag: &str) -> TokenSet {
    TokenSet::new(format!("at-{tag}")).with_refresh_token(format!("rt-{tag}"))
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[tokio::test]
async fn each_grant_round_trips_its_own_tokens_and_remove_removes_only_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::directory(dir.path().join("grants"));
    let (a, b, c) = (grant("alpha"), grant("beta"), grant("gamma"));
    assert!(
        store.load(&a).await.unwrap().is_none(),
        "empty before any save"
    );

    store.save(&a, &tokens("a1")).await.unwrap();
    store.save(&b, &tokens("b1")).await.unwrap();
    store.save(&a, &tokens("a2")).await.unwrap();

    let loaded_a = store.load(&a).await.unwrap().unwrap();
    let loaded_b = store.load(&b).await.unwrap().unwrap();
    assert_eq!(loaded_a.access_token(), "at-a2");
    assert_eq!(loaded_a.refresh_token(), Some("rt-a2"));
    assert_eq!(loaded_b.access_token(), "at-b1");
    assert!(store.load(&c).await.unwrap().is_none());
    // A second store on the directory (another process, a restart) sees the same.
    let other = FileStore::directory(dir.path().join("grants"));
    assert_eq!(
        other.load(&b).await.unwrap().unwrap().access_token(),
        "at-b1"
    );

    store.remove(&a).await.unwrap();
    assert!(store.load(&a).await.unwrap().is_none(), "remove left it");
    assert_eq!(
        store.load(&b).await.unwrap().unwrap().access_token(),
        "at-b1"
    );
    // Removing what is not there succeeds.
    store.remove(&a).await.unwrap();
    store.remove(&c).await.unwrap();
    assert_eq!(
        listing(&dir.path().join("grants")),
        BTreeSet::from(["beta.json".to_owned()])
    );
    // A removed grant can be stored again.
    store.save(&a, &tokens("a3")).await.unwrap();
    assert_eq!(
        store.load(&a).await.unwrap().unwrap().access_token(),
        "at-a3"
    );
}

#[tokio::test]
async fn hostile_ids_are_stored_apart_and_nothing_is_written_outside_the_directory() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("store");
    let store = FileStore::directory(&dir);
    let ids = hostile_ids();
    for (i, id) in ids.iter().enumerate() {
        let id = grant(id);
        let lock = store.lock(&id, Duration::from_secs(5)).await.unwrap();
        store
            .save_locked(&id, &tokens(&i.to_string()), &lock)
            .await
            .unwrap();
        lock.release().await;
    }
    for (i, id) in ids.iter().enumerate() {
        let loaded = store.load(&grant(id)).await.unwrap().unwrap();
        assert_eq!(loaded.access_token(), format!("at-{i}"), "{id:?}");
    }

    // The parent holds the store directory only: no `etc`, no `passwd`, no `b`, no `x`.
    assert_eq!(listing(parent.path()), BTreeSet::from(["store".to_owned()]));
    // The directory holds one token file and one lock file per id, all regular files.
    let names = listing(&dir);
    assert_eq!(names.len(), 2 * ids.len(), "{names:#?}");
    let folded: BTreeSet<String> = names.iter().map(|n| n.to_lowercase()).collect();
    assert_eq!(folded.len(), names.len(), "names that differ only in case");
    for name in &names {
        assert!(name.len() <= 255, "{name}");
        assert!(!name.starts_with('.'), "{name}");
        assert!(name.ends_with(".json") || name.ends_with(".json.lock"));
        assert!(fs::symlink_metadata(dir.join(name)).unwrap().is_file());
    }
    for id in &ids {
        let path = store.grant_path(&grant(id));
        assert_eq!(path.parent(), Some(dir.as_path()), "{id:?}");
    }
    assert_eq!(
        store.grant_path(&grant("../../etc/passwd")),
        dir.join("%2E.%2F..%2Fetc%2Fpasswd.json")
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for name in &names {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }
    }
}

#[tokio::test]
async fn one_grants_lock_does_not_block_another_grant() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::directory(dir.path()).lock_timeout(Duration::ZERO);
    let a = store
        .lock(&grant("a"), Duration::from_secs(5))
        .await
        .unwrap();
    // `A` and `a` are different grants, with different lock files even on a case-insensitive disk.
    let upper = store.lock(&grant("A"), Duration::ZERO).await.unwrap();
    let b = store.lock(&grant("b"), Duration::ZERO).await.unwrap();
    drop((a, upper, b));
}

#[tokio::test]
async fn two_directory_stores_exclude_each_other_on_the_same_grant() {
    let dir = tempfile::tempdir().unwrap();
    let first = FileStore::directory(dir.path());
    let second = FileStore::directory(dir.path()).lock_timeout(Duration::from_millis(200));
    let id = grant("a:b/../c");

    let held = first.lock(&id, Duration::from_secs(5)).await.unwrap();
    let started = std::time::Instant::now();
    let err = second
        .lock(&id, Duration::from_secs(5))
        .await
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(err.contains("a%3Ab%2F..%2Fc.json.lock"), "{err}");
    // Nor can it save under a lock it does not hold: the one it holds is for another grant.
    let other = second.lock(&grant("other"), Duration::ZERO).await.unwrap();
    let refused = second
        .save_locked(&id, &tokens("x"), &other)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("save_locked needs the lock"), "{refused}");
    assert!(
        first.load(&id).await.unwrap().is_none(),
        "the refused save wrote"
    );

    held.release().await;
    let taken = second.lock(&id, Duration::ZERO).await.unwrap();
    second.save_locked(&id, &tokens("x"), &taken).await.unwrap();
    assert_eq!(
        first.load(&id).await.unwrap().unwrap().access_token(),
        "at-x"
    );
}

// A single-file `FileStore` is not a `TokenStore`: giving it to `NiftyGrants` does not compile (the
// `compile_fail` example of `nifty_auth::store::OneGrantStore`), so there is no run-time refusal to test.

#[tokio::test]
async fn a_directory_store_used_by_one_niftyauth_keeps_the_default_grant() {
    let fake = FakeNifty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let grants = dir.path().join("grants");
    let store = FileStore::directory(&grants);
    assert_eq!(
        store.grant_path(&GrantId::single()),
        grants.join("default.json")
    );
    assert_eq!(store.path(), grants.as_path());

    let auth = auth_over(&fake, fake.issue_refresh_token(), store.clone());
    let (status, _) = send(&service(&auth), get(fake.api_url("/projects")))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.token_calls(), 1);

    // The rotated tokens were saved as the grant `default`, and nothing else was written.
    let saved = TokenStore::load(&store, &GrantId::single())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        saved.refresh_token(),
        fake.current_refresh_token().as_deref()
    );
    let single = FileStore::new(grants.join("default.json"))
        .load()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(single.access_token(), saved.access_token());
    assert_eq!(
        listing(&grants),
        BTreeSet::from(["default.json".to_owned(), "default.json.lock".to_owned()])
    );
}

#[tokio::test]
async fn remove_deletes_the_token_file_and_keeps_the_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::directory(dir.path());
    let id = grant("Workspace 7");
    let lock = store.lock(&id, Duration::from_secs(1)).await.unwrap();
    store.save_locked(&id, &tokens("w"), &lock).await.unwrap();
    lock.release().await;
    let path = store.grant_path(&id);
    assert_eq!(path, dir.path().join("%57orkspace%207.json"));
    assert!(path.exists());

    store.remove(&id).await.unwrap();
    assert!(!path.exists());
    assert_eq!(
        listing(dir.path()),
        BTreeSet::from(["%57orkspace%207.json.lock".to_owned()])
    );
    // The kept lock file still works.
    drop(store.lock(&id, Duration::ZERO).await.unwrap());
}

/// One store trait: a `NiftyAuth` is the grant `GrantId::single()` of the same store a
/// `NiftyGrants` uses, so the two share that grant's tokens (and its single flight through the store).
#[tokio::test]
async fn a_niftyauth_keeps_its_tokens_as_the_single_grant_of_a_store_a_niftygrants_reads() {
    let fake = FakeNifty::start().await.unwrap();
    let store = nifty_auth::MemoryStore::new();
    assert_eq!(store.grant_count(), 0);
    let auth = auth_over(&fake, fake.issue_refresh_token(), store.clone());
    let token = auth.access_token().await.unwrap();
    assert_eq!(fake.token_calls(), 1);

    // The rotation was saved as the grant `default`, the store's only entry.
    assert_eq!(store.grant_count(), 1);
    let debug = format!("{store:?}");
    assert_eq!(debug, "MemoryStore { grants: 1 }", "no token in Debug");
    let saved = store.get_grant(&GrantId::single()).unwrap();
    assert_eq!(saved.access_token(), token);
    assert_eq!(
        saved.refresh_token(),
        fake.current_refresh_token().as_deref()
    );

    // Many grants on the same store find that grant's tokens: no second token call.
    let grants = common::grants_over(&fake, store.clone());
    assert_eq!(
        grants.access_token(&GrantId::single()).await.unwrap(),
        token
    );
    assert_eq!(fake.token_calls(), 1);
    assert!(grants.access_token(&grant("other")).await.is_err());
    assert_eq!(
        fake.token_calls(),
        1,
        "an unknown grant has nothing to refresh"
    );
}
