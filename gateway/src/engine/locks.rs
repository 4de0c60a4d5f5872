//! The write locks: per key (striped), so that the publish-then-commit of writes to one key
//! happens one at a time and the upstream manifest and the index agree on which write came
//! last; per bucket, so that no write lands in a bucket being deleted.

/// Stripes of the per-key and per-bucket locks.
const STRIPES: usize = 64;

pub struct WriteLocks {
    keys: Vec<tokio::sync::Mutex<()>>,
    /// Commits share their bucket's stripe; deleting a bucket takes it alone.
    buckets: Vec<tokio::sync::RwLock<()>>,
}

impl WriteLocks {
    pub fn new() -> WriteLocks {
        WriteLocks {
            keys: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            buckets: (0..STRIPES).map(|_| tokio::sync::RwLock::new(())).collect(),
        }
    }

    /// Holds off every write (each holds its key's stripe between choosing chunks and
    /// committing) until dropped: compaction moves chunks only while no write is in between.
    pub async fn lock_all_keys(&self) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut guards = Vec::with_capacity(self.keys.len());
        for lock in &self.keys {
            guards.push(lock.lock().await);
        }
        guards
    }

    /// Holds off other writes to `key` (and to the keys sharing its stripe) until dropped.
    pub async fn lock_key(&self, key: &tensorgate_index::ObjectKey) -> tokio::sync::MutexGuard<'_, ()> {
        self.keys[stripe(key)].lock().await
    }

    /// Held by a commit into `bucket`: the bucket cannot be deleted meanwhile.
    pub async fn share_bucket(&self, tenant: &str, bucket: &str) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.buckets[stripe(&(tenant, bucket))].read().await
    }

    /// Held while deleting `bucket`: waits for the commits into it to end, and holds off new ones.
    pub async fn own_bucket(&self, tenant: &str, bucket: &str) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.buckets[stripe(&(tenant, bucket))].write().await
    }
}

impl Default for WriteLocks {
    fn default() -> WriteLocks {
        WriteLocks::new()
    }
}

/// The lock stripe of a key.
fn stripe(key: &impl std::hash::Hash) -> usize {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish() as usize % STRIPES
}
