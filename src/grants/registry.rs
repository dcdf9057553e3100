//! The grants registry: a sharded map from [`GrantId`] to its token manager, bounded by
//! `max_cached_grants`.
//!
//! A lookup hashes nothing (a [`GrantId`] carries its hash), takes one shard's uncontended lock and
//! clones a reference count. Each entry keeps, beside the grant's manager, the manager's current
//! token (the same `Arc` its cache published: the manager tells the registry of every change, see
//! [`Mirror`]), so a request reads its token through the entry rather than through the manager: the
//! reads of the manager's line and of the token's go out to memory side by side, not one after the
//! other.
//!
//! Creating a manager does no I/O: its first refresh loads the grant from the store (single flight
//! per grant, like every refresh). When the registry grows past its capacity it evicts idle grants, least recently used first among a sample: never one whose refresh is running,
//! whose rotated tokens wait unsaved, or that anything else still holds (a request in flight, a
//! `NiftyAuth` handle) — so a grant is never managed twice in one process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::grant_id::{BuildGrantIdHasher, GrantId};
use crate::manager::{Mirror, TokenManager};
use crate::token::cache::{Current, Read};

/// Shards of the map; a power of two.
const SHARDS: usize = 16;
/// How many evictable entries of a shard are compared to find the least recently used one.
const SAMPLE: usize = 8;

type Map = HashMap<GrantId, Entry, BuildGrantIdHasher>;

/// A cached grant: its manager, and the manager's current token as of its last change.
struct Entry {
    manager: Arc<TokenManager>,
    current: Arc<Current>,
}

/// One shard, alone on its cache lines.
#[repr(align(128))]
struct Shard(Mutex<Map>);

pub(crate) struct Registry {
    shards: Box<[Shard]>,
    capacity: usize,
    len: AtomicUsize,
    /// Advances with every insertion: what "recently used" is measured in.
    tick: AtomicU64,
    evictions: AtomicU64,
    next_shard: AtomicUsize,
}

impl Registry {
    pub(crate) fn new(capacity: usize) -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Shard(Mutex::default())).collect(),
            capacity: capacity.max(1),
            len: AtomicUsize::new(0),
            tick: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            next_shard: AtomicUsize::new(0),
        }
    }

    fn shard(&self, grant: &GrantId) -> &Mutex<Map> {
        // The high bits: the map itself uses the low ones.
        &self.shards[(grant.precomputed_hash() >> 59) as usize % SHARDS].0
    }

    /// Marks `manager` as used now (a write only when the tick moved: hot grants do not bounce a
    /// cache line between cores).
    #[inline]
    fn touch(&self, manager: &TokenManager) {
        let tick = self.tick.load(Relaxed);
        if manager.last_used.load(Relaxed) != tick {
            manager.last_used.store(tick, Relaxed);
        }
    }

    /// The cached manager of `grant`, if any.
    #[inline]
    pub(crate) fn get(&self, grant: &GrantId) -> Option<Arc<TokenManager>> {
        let manager = Arc::clone(&self.shard(grant).lock().get(grant)?.manager);
        self.touch(&manager);
        Some(manager)
    }

    /// The request path: the manager of `grant` and what its current token gives a request (the
    /// header copy of `stripe`), read from the entry's copy under the shard's lock. The entry holds
    /// both pointers, so the manager's line (its eviction mark) and the token's are read side by
    /// side; the manager's reference count is taken only after the token was read, when its line is
    /// already in cache.
    #[inline]
    pub(crate) fn read(&self, grant: &GrantId, stripe: usize) -> Option<(Arc<TokenManager>, Read)> {
        let map = self.shard(grant).lock();
        let entry = map.get(grant)?;
        self.touch(&entry.manager);
        let read = entry.current.read_for(stripe);
        Some((Arc::clone(&entry.manager), read))
    }

    /// The manager of `grant`, made by `make` if it is not cached (then idle grants may be evicted).
    #[inline]
    pub(crate) fn get_or_insert_with(
        &self,
        grant: &GrantId,
        make: impl FnOnce() -> TokenManager,
    ) -> Arc<TokenManager> {
        if let Some(manager) = self.get(grant) {
            return manager;
        }
        self.insert_with(grant, make)
    }

    #[cold]
    fn insert_with(
        &self,
        grant: &GrantId,
        make: impl FnOnce() -> TokenManager,
    ) -> Arc<TokenManager> {
        let (manager, inserted) = {
            let mut map = self.shard(grant).lock();
            match map.get(grant) {
                Some(entry) => (Arc::clone(&entry.manager), false),
                None => {
                    let manager = Arc::new(make());
                    let entry = Entry {
                        current: manager.cache.load(),
                        manager: Arc::clone(&manager),
                    };
                    map.insert(grant.clone(), entry);
                    self.len.fetch_add(1, Relaxed);
                    (manager, true)
                }
            }
        };
        if inserted {
            self.tick.fetch_add(1, Relaxed);
            self.touch(&manager);
            if self.len.load(Relaxed) > self.capacity {
                self.evict(grant);
            }
        }
        manager
    }

    /// Evicts idle grants until the registry is within its capacity, or nothing more can go.
    fn evict(&self, keep: &GrantId) {
        let mut barren = 0;
        while self.len.load(Relaxed) > self.capacity && barren < SHARDS {
            let index = self.next_shard.fetch_add(1, Relaxed) % SHARDS;
            let mut map = self.shards[index].0.lock();
            let victim = map
                .iter()
                .filter(|(id, entry)| *id != keep && evictable(&entry.manager))
                .take(SAMPLE)
                .min_by_key(|(_, entry)| entry.manager.last_used.load(Relaxed))
                .map(|(id, _)| id.clone());
            match victim {
                Some(id) => {
                    map.remove(&id);
                    self.len.fetch_sub(1, Relaxed);
                    self.evictions.fetch_add(1, Relaxed);
                    barren = 0;
                }
                None => barren += 1,
            }
        }
    }

    /// Takes `grant` out of the registry if it is still `manager`.
    pub(crate) fn remove_if(&self, grant: &GrantId, manager: &Arc<TokenManager>) {
        let mut map = self.shard(grant).lock();
        if map
            .get(grant)
            .is_some_and(|e| Arc::ptr_eq(&e.manager, manager))
        {
            map.remove(grant);
            self.len.fetch_sub(1, Relaxed);
        }
    }

    /// How many grants are cached.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// How many grants were evicted so far.
    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.load(Relaxed)
    }
}

impl Mirror for Registry {
    /// Copies `manager`'s current token into its entry (if the entry is still this manager's).
    /// Loaded under the shard's lock, so of two changes told at once the entry ends with the later.
    fn current_changed(&self, manager: &TokenManager) {
        let mut map = self.shard(&manager.grant).lock();
        if let Some(entry) = map.get_mut(&manager.grant) {
            if std::ptr::eq(Arc::as_ptr(&entry.manager), manager) {
                entry.current = manager.cache.load();
            }
        }
    }
}

/// Only the registry holds it, and it is neither refreshing nor holding unsaved tokens.
fn evictable(manager: &Arc<TokenManager>) -> bool {
    Arc::strong_count(manager) == 1 && !manager.busy()
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("cached", &self.len())
            .field("capacity", &self.capacity)
            .field("evictions", &self.evictions())
            .finish()
    }
}

#[cfg(test)]
mod tests;
