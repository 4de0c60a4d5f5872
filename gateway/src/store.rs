//! The store: the index, the guarded upstream and what the read and write paths share (locks,
//! chunks held by writes, keys being written, the base cache, admission).

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tensorgate_index::{BaseCandidate, ChunkHash, Index, ObjectKey};

use crate::ingest::StoredTensor;

use crate::admission::{Admission, BodyPermit};
use crate::background::GcMemory;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::{GuardedUpstream, Upstream, UpstreamFailure};

/// Attempts of one upstream read before its error is returned.
pub const READ_ATTEMPTS: u32 = 4;

/// Pause before retry number `attempt`: 50 ms doubling each time, with up to half again of
/// jitter so that many readers do not retry in step.
fn backoff(attempt: u32) -> std::time::Duration {
    let base = 50u64 << attempt.min(6);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    std::time::Duration::from_millis(base + u64::from(nanos) % (base / 2 + 1))
}

/// Decoded base chunks, least recently used first out, bounded in bytes.
pub struct BaseCache {
    entries: lru::LruCache<ChunkHash, Bytes>,
    bytes: u64,
    limit: u64,
}

impl BaseCache {
    fn new(limit: u64) -> BaseCache {
        BaseCache { entries: lru::LruCache::unbounded(), bytes: 0, limit }
    }

    pub fn get(&mut self, hash: &ChunkHash) -> Option<Bytes> {
        self.entries.get(hash).cloned()
    }

    pub fn insert(&mut self, hash: ChunkHash, bytes: Bytes) {
        if bytes.len() as u64 > self.limit {
            return;
        }
        self.bytes += bytes.len() as u64;
        if let Some(old) = self.entries.put(hash, bytes) {
            self.bytes -= old.len() as u64;
        }
        while self.bytes > self.limit {
            match self.entries.pop_lru() {
                Some((_, evicted)) => self.bytes -= evicted.len() as u64,
                None => break,
            }
        }
    }
}

pub struct Store {
    pub index: Index,
    /// The upstream behind its guard (see [`crate::upstream::GuardedUpstream`]).
    pub upstream: Arc<dyn Upstream>,
    pub config: Config,
    pub metrics: Metrics,
    pub base_cache: Mutex<BaseCache>,
    /// How many frames a GET decodes ahead of the bytes it sends.
    pub prefetch: NonZeroUsize,
    /// Serialize the publish-then-commit of writes to one key (striped by key hash), so the
    /// upstream manifest and the index agree on which write came last.
    key_locks: Vec<tokio::sync::Mutex<()>>,
    /// Commits share their bucket's stripe; deleting a bucket takes it alone, so that no write
    /// lands in a bucket being deleted.
    bucket_locks: Vec<tokio::sync::RwLock<()>>,
    /// Chunks that writes in progress will reference.
    pub held_chunks: HeldChunks,
    /// Upstream keys being written by writes not committed yet.
    pub in_flight: InFlight,
    /// This gateway (its data directory), as named in the garbage-collection lease.
    pub instance: String,
    /// What garbage collection remembers between runs; held by the run in progress.
    pub gc_memory: tokio::sync::Mutex<GcMemory>,
    /// Request slots and the in-flight byte budget, with each tenant's share.
    pub admission: Admission,
    /// Set once the gateway is stopping: `/ready` then says no, so load balancers move on.
    pub draining: std::sync::atomic::AtomicBool,
}

/// Upstream keys being written and not yet committed: garbage collection leaves them alone.
#[derive(Debug, Default, Clone)]
pub struct InFlight(Arc<Mutex<std::collections::HashSet<String>>>);

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
pub struct HeldChunks(Arc<Mutex<std::collections::HashMap<ChunkHash, usize>>>);

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

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<ChunkHash, usize>> {
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

/// Stripes of the per-key write locks.
const KEY_LOCK_STRIPES: usize = 64;

impl Store {
    pub fn new(index: Index, upstream: Arc<dyn Upstream>, config: Config) -> anyhow::Result<Store> {
        let base_cache = Mutex::new(BaseCache::new(config.base_cache_bytes));
        let prefetch = NonZeroUsize::new(std::thread::available_parallelism().map_or(2, |n| n.get()) + 1)
            .unwrap_or(NonZeroUsize::MIN);
        let key_locks = (0..KEY_LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        let bucket_locks = (0..KEY_LOCK_STRIPES).map(|_| tokio::sync::RwLock::new(())).collect();
        let instance = index.instance_id(new_id)?;
        let admission = Admission::new(&config);
        Ok(Store {
            index,
            upstream: Arc::new(GuardedUpstream::new(upstream, &config.upstream_prefixes())),
            config,
            metrics: Metrics::default(),
            base_cache,
            prefetch,
            key_locks,
            bucket_locks,
            held_chunks: HeldChunks::default(),
            in_flight: InFlight::default(),
            instance,
            gc_memory: tokio::sync::Mutex::new(GcMemory::default()),
            admission,
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Takes a body's share of the in-flight byte budget (see [`Admission::admit_body`]):
    /// what one write can buffer, or the body's announced length when smaller.
    pub async fn admit_body(&self, tenant: &str, size: Option<u64>) -> anyhow::Result<BodyPermit> {
        let bytes = size.unwrap_or(u64::MAX).min(crate::ingest::body_buffer_bytes());
        let (permit, waited) = self.admission.admit_body(tenant, bytes).await?;
        if waited {
            self.metrics.body_waits.inc();
        }
        Ok(permit)
    }

    /// Holds off every write (each holds its key's stripe between choosing chunks and
    /// committing) until dropped: compaction moves chunks only while no write is in between.
    pub async fn lock_all_keys(&self) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut guards = Vec::with_capacity(self.key_locks.len());
        for lock in &self.key_locks {
            guards.push(lock.lock().await);
        }
        guards
    }

    /// Holds off other writes to `key` (and to the keys sharing its stripe) until dropped.
    pub async fn lock_key(&self, key: &ObjectKey) -> tokio::sync::MutexGuard<'_, ()> {
        self.key_locks[stripe(key)].lock().await
    }

    /// Held by a commit into `bucket`: the bucket cannot be deleted meanwhile.
    pub async fn share_bucket(&self, tenant: &str, bucket: &str) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.bucket_locks[stripe(&(tenant, bucket))].read().await
    }

    /// Held while deleting `bucket`: waits for the commits into it to end, and holds off new ones.
    pub async fn own_bucket(&self, tenant: &str, bucket: &str) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.bucket_locks[stripe(&(tenant, bucket))].write().await
    }

    /// Reads a range of an upstream object, counting the read. A failed or short read is
    /// retried after a growing, jittered pause, up to [`READ_ATTEMPTS`] attempts in all.
    pub async fn read_upstream(&self, key: &str, range: std::ops::Range<u64>) -> anyhow::Result<Bytes> {
        self.read_upstream_tries(key, range, READ_ATTEMPTS).await
    }

    /// [`Store::read_upstream`] with `attempts` attempts at most (1 for a read the caller can
    /// do without, so that a down upstream costs it little).
    pub async fn read_upstream_tries(&self, key: &str, range: std::ops::Range<u64>, attempts: u32) -> anyhow::Result<Bytes> {
        self.metrics.upstream_reads.inc();
        let wanted = range.end.saturating_sub(range.start);
        self.metrics.upstream_read_bytes.inc_by(wanted);
        let mut attempt = 1;
        loop {
            let error = match self.upstream.read(key, range.clone()).await {
                Ok(bytes) if bytes.len() as u64 == wanted => return Ok(bytes),
                Ok(bytes) => anyhow::anyhow!("upstream gave {} bytes of {key} where {wanted} were asked", bytes.len()),
                Err(error) => error,
            };
            let circuit_open = matches!(error.downcast_ref::<UpstreamFailure>(), Some(UpstreamFailure::CircuitOpen));
            if attempt >= attempts || circuit_open {
                self.metrics.upstream_errors.inc();
                return Err(error);
            }
            self.metrics.upstream_retries.inc();
            tracing::warn!(%key, attempt, error = format!("{error:#}"), "upstream read failed; retrying");
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }
}

/// The lock stripe of a key.
fn stripe(key: &impl std::hash::Hash) -> usize {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish() as usize % KEY_LOCK_STRIPES
}

/// Runs CPU-bound work (encoding, decoding) on the rayon pool, one thread per core, and waits
/// for it without blocking the async runtime. Keeping codec work off tokio's blocking pool
/// bounds the number of threads that hold chunk-sized buffers, and so the memory.
pub async fn on_cores<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let _ = sender.send(work());
    });
    receiver.await.map_err(|_| anyhow::anyhow!("codec work was dropped"))
}

impl Store {
    /// Makes the whole tensors of a committed write findable as bases: by name (for the name
    /// strategy) and by fingerprint.
    pub fn register_tensors(&self, tenant: &str, tensors: &[StoredTensor]) -> anyhow::Result<()> {
        let scope = self.config.dedup_scope_of(tenant);
        for tensor in tensors {
            self.index.remember_tensor(&scope, &tensor.name, &tensor.signature, &tensor.chunks)?;
            let candidate = BaseCandidate { sketch: tensor.sketch.to_bytes(), chunks: tensor.chunks.clone() };
            self.index.add_candidate(&scope, &tensor.signature, &candidate)?;
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A fresh unique id for versions, blobs and packs.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
