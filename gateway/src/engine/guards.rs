//! What writes in progress hold against garbage collection: the upstream keys they are writing
//! and the stored chunks they will reference.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tensorgate_index::ChunkHash;

/// Upstream keys being written and not yet committed: garbage collection leaves them alone.
#[derive(Debug, Default, Clone)]
pub struct InFlight(Arc<Mutex<HashSet<String>>>);

impl InFlight {
    /// Marks `key` as being written until the returned guard is dropped.
    pub fn begin(&self, key: &str) -> WriteGuard {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(key.to_owned());
        WriteGuard { in_flight: self.clone(), key: key.to_owned() }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(key)
    }
}

/// Keeps an upstream key marked as being written; see [`InFlight`].
#[derive(Debug)]
pub struct WriteGuard {
    in_flight: InFlight,
    key: String,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.in_flight.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.key);
    }
}

/// Chunks that writes in progress found stored and will reference when they commit (dedup
/// hits and delta bases): the sweep leaves them alone, so that a dedup hit never fails a write.
#[derive(Debug, Default, Clone)]
pub struct HeldChunks(Arc<Mutex<HashMap<ChunkHash, usize>>>);

impl HeldChunks {
    /// Holds `hash` until the guard is dropped. Check the index only after this returns: a
    /// sweep either collected the chunk before (the check misses it) or leaves it alone.
    pub fn hold(&self, hash: ChunkHash) -> ChunkGuard {
        *self.lock().entry(hash).or_default() += 1;
        ChunkGuard { held: self.clone(), hash }
    }

    /// Runs `sweep` unless a write holds `hash`, taking no new hold meanwhile; `None` if held.
    pub fn unless_held<T>(&self, hash: &ChunkHash, sweep: impl FnOnce() -> T) -> Option<T> {
        let holds = self.lock();
        if holds.contains_key(hash) {
            return None;
        }
        Some(sweep())
    }

    /// Whether a write in progress holds `hash` (it may be about to take a delta of it).
    pub fn is_held(&self, hash: &ChunkHash) -> bool {
        self.lock().contains_key(hash)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkHash, usize>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Keeps a chunk held; see [`HeldChunks`].
#[derive(Debug)]
pub struct ChunkGuard {
    held: HeldChunks,
    hash: ChunkHash,
}

impl Drop for ChunkGuard {
    fn drop(&mut self) {
        let mut holds = self.held.lock();
        if let Some(count) = holds.get_mut(&self.hash) {
            *count -= 1;
            if *count == 0 {
                holds.remove(&self.hash);
            }
        }
    }
}
