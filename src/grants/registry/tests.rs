//! The registry's bound: how many grants stay cached, which one goes, which ones never do.

use std::time::Duration;

use super::*;
use crate::clock::Clock;
use crate::manager::{ManagerParts, Policy};
use crate::stats::Counters;
use crate::store::MemoryStore;
use crate::token::cache::{CachePolicy, Read, TokenCache};

fn id(name: &str) -> GrantId {
    GrantId::new(name).unwrap()
}

/// An idle manager of `grant` (no endpoint: nothing here refreshes).
fn manager(grant: &GrantId) -> TokenManager {
    TokenManager::new(ManagerParts {
        cache: TokenCache::new(CachePolicy::grants(Duration::from_secs(60), Clock::new())),
        policy: Arc::new(Policy {
            endpoint: None,
            bootstrap_refresh_token: None,
            unauthorized_cooldown: Duration::from_secs(5),
            latches: None,
            counters: Counters::default(),
            mirror: None,
        }),
        store: Arc::new(MemoryStore::new()),
        grant: grant.clone(),
    })
}

fn insert(registry: &Registry, name: &str) -> Arc<TokenManager> {
    let grant = id(name);
    registry.get_or_insert_with(&grant, || manager(&grant))
}

fn cached(registry: &Registry, name: &str) -> bool {
    registry.get(&id(name)).is_some()
}

#[test]
fn a_registry_at_its_capacity_evicts_nothing() {
    let registry = Registry::new(3);
    for name in ["a", "b", "c"] {
        drop(insert(&registry, name));
    }
    assert_eq!(registry.len(), 3);
    assert_eq!(registry.evictions(), 0);
    assert!(["a", "b", "c"].iter().all(|n| cached(&registry, n)));
}

/// `n` grant names whose ids fall in one shard.
fn same_shard(registry: &Registry, n: usize) -> Vec<String> {
    let first = id("g-0");
    let names: Vec<String> = (0..)
        .map(|i| format!("g-{i}"))
        .filter(|name| std::ptr::eq(registry.shard(&id(name)), registry.shard(&first)))
        .take(n)
        .collect();
    names
}

#[test]
fn one_past_its_capacity_it_evicts_exactly_one_the_least_recently_used() {
    let registry = Registry::new(3);
    let names = same_shard(&registry, 4);
    let [p, q, r, s] = [&names[0], &names[1], &names[2], &names[3]];
    for name in [p, q, r] {
        drop(insert(&registry, name));
    }
    // `p` is used after `q` was inserted: `q` is now the least recently used.
    drop(registry.get(&id(p)));
    drop(insert(&registry, s));
    assert_eq!(registry.len(), 3);
    assert_eq!(registry.evictions(), 1);
    assert!(
        !cached(&registry, q),
        "the least recently used idle grant goes"
    );
    assert!([p, r, s].iter().all(|n| cached(&registry, n)));
}

#[test]
fn a_grant_held_elsewhere_is_never_evicted_and_the_registry_may_stay_over_capacity() {
    let registry = Registry::new(1);
    let held = insert(&registry, "held");
    let also_held = insert(&registry, "also-held");
    assert_eq!(registry.len(), 2, "nothing could go");
    assert_eq!(registry.evictions(), 0);
    drop(held);
    // The next insertion evicts the idle ones (not the new one, not the held one).
    drop(insert(&registry, "new"));
    assert_eq!(registry.len(), 2);
    assert_eq!(registry.evictions(), 1);
    assert!(cached(&registry, "also-held") && cached(&registry, "new"));
    drop(also_held);
}

#[test]
fn the_same_grant_is_one_manager() {
    let registry = Registry::new(2);
    let first = insert(&registry, "a");
    let second = insert(&registry, "a");
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(registry.len(), 1);
    registry.remove_if(&id("a"), &first);
    assert_eq!(registry.len(), 0);
    assert!(!cached(&registry, "a"));
    // A stale handle removes nothing newer.
    let newer = insert(&registry, "a");
    registry.remove_if(&id("a"), &first);
    assert_eq!(registry.len(), 1);
    assert!(Arc::ptr_eq(&registry.get(&id("a")).unwrap(), &newer));
}

#[test]
fn using_a_grant_marks_it_used_now() {
    let registry = Registry::new(8);
    let first = insert(&registry, "a");
    assert_eq!(first.last_used.load(Relaxed), 1, "marked at its insertion");
    drop(insert(&registry, "b"));
    assert_eq!(first.last_used.load(Relaxed), 1);
    drop(registry.get(&id("a")));
    assert_eq!(
        first.last_used.load(Relaxed),
        2,
        "a lookup marks it with the current tick"
    );
}

#[test]
fn grants_spread_over_every_shard() {
    let registry = Registry::new(8);
    let mut used = std::collections::HashSet::new();
    for i in 0..1_000 {
        used.insert(registry.shard(&id(&format!("g-{i}"))) as *const Mutex<Map>);
    }
    assert_eq!(used.len(), SHARDS);
}

#[test]
fn its_debug_says_how_full_it_is() {
    let registry = Registry::new(3);
    drop(insert(&registry, "a"));
    drop(insert(&registry, "b"));
    assert_eq!(
        format!("{registry:?}"),
        "Registry { cached: 2, capacity: 3, evictions: 0 }"
    );
}

fn read_header(registry: &Registry, name: &str) -> Option<String> {
    match registry.read(&id(name), 0)?.1 {
        Read::Fresh(header, _) | Read::Stale(header, _) => {
            Some(header.to_str().unwrap().to_owned())
        }
        Read::Missing => None,
    }
}

fn tokens(access: &str) -> crate::token::TokenSet {
    crate::token::TokenSet::new(access).with_expires_in(Duration::from_secs(3600))
}

#[test]
fn an_entry_reads_its_managers_current_token_as_of_its_last_change() {
    let registry = Registry::new(4);
    let manager = insert(&registry, "g");
    assert_eq!(read_header(&registry, "g"), None);

    manager.cache.publish(tokens("first")).unwrap();
    // Not told yet: the entry still has the token of its last change.
    assert_eq!(read_header(&registry, "g"), None);
    registry.current_changed(&manager);
    assert_eq!(read_header(&registry, "g").as_deref(), Some("Bearer first"));

    manager.cache.publish(tokens("second")).unwrap();
    registry.current_changed(&manager);
    assert_eq!(
        read_header(&registry, "g").as_deref(),
        Some("Bearer second")
    );
    manager.cache.clear();
    registry.current_changed(&manager);
    assert_eq!(read_header(&registry, "g"), None);
}

#[test]
fn a_replaced_manager_never_writes_over_its_successors_entry() {
    let registry = Registry::new(4);
    let old = insert(&registry, "g");
    registry.remove_if(&id("g"), &old);
    let new = insert(&registry, "g");
    assert!(!Arc::ptr_eq(&old, &new));
    new.cache.publish(tokens("new")).unwrap();
    registry.current_changed(&new);

    old.cache.publish(tokens("old")).unwrap();
    registry.current_changed(&old);
    assert_eq!(read_header(&registry, "g").as_deref(), Some("Bearer new"));
}
