//! The store: the index, the upstream and what the read and write paths share.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tensorgate_index::{BaseCandidate, ChunkHash, Index, ObjectKey};

use crate::ingest::StoredTensor;

use crate::background::GcMemory;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::Upstream;

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
    pub upstream: Arc<dyn Upstream>,
    pub config: Config,
    pub metrics: Metrics,
    pub base_cache: Mutex<BaseCache>,
    /// How many frames a GET decodes ahead of the bytes it sends.
    pub prefetch: NonZeroUsize,
    /// Serialize the publish-then-commit of writes to one key (striped by key hash), so the
    /// upstream manifest and the index agree on which write came last.
    key_locks: Vec<tokio::sync::Mutex<()>>,
    /// Upstream keys being written by writes not committed yet.
    pub in_flight: InFlight,
    /// This gateway (its data directory), as named in the garbage-collection lease.
    pub instance: String,
    /// What garbage collection remembers between runs; held by the run in progress.
    pub gc_memory: tokio::sync::Mutex<GcMemory>,
    /// The in-flight byte budget, in units of [`BUDGET_UNIT`] bytes.
    body_budget: Arc<tokio::sync::Semaphore>,
    budget_units: u32,
}

/// Granularity of the in-flight byte budget.
const BUDGET_UNIT: u64 = 64 << 10;
/// What a body of unknown length is charged (one chunk's worth).
const UNKNOWN_BODY_CHARGE: u64 = 4 << 20;

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

/// Stripes of the per-key write locks.
const KEY_LOCK_STRIPES: usize = 64;

impl Store {
    pub fn new(index: Index, upstream: Arc<dyn Upstream>, config: Config) -> anyhow::Result<Store> {
        let base_cache = Mutex::new(BaseCache::new(config.base_cache_bytes));
        let prefetch = NonZeroUsize::new(std::thread::available_parallelism().map_or(2, |n| n.get()) + 1)
            .unwrap_or(NonZeroUsize::MIN);
        let key_locks = (0..KEY_LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        let instance = index.instance_id(new_id)?;
        let budget_units = (config.max_in_flight_bytes / BUDGET_UNIT).clamp(1, u64::from(u32::MAX >> 3)) as u32;
        let body_budget = Arc::new(tokio::sync::Semaphore::new(budget_units as usize));
        Ok(Store {
            index,
            upstream,
            config,
            metrics: Metrics::default(),
            base_cache,
            prefetch,
            key_locks,
            in_flight: InFlight::default(),
            instance,
            gc_memory: tokio::sync::Mutex::new(GcMemory::default()),
            body_budget,
            budget_units,
        })
    }

    /// Takes a body's share of the in-flight byte budget (all of it at most), waiting while
    /// other bodies hold it; the share returns when the permit is dropped.
    pub async fn admit_body(&self, size: Option<u64>) -> anyhow::Result<tokio::sync::OwnedSemaphorePermit> {
        let units = size.unwrap_or(UNKNOWN_BODY_CHARGE).div_ceil(BUDGET_UNIT).max(1);
        let units = u32::try_from(units).unwrap_or(u32::MAX).min(self.budget_units);
        if let Ok(permit) = self.body_budget.clone().try_acquire_many_owned(units) {
            return Ok(permit);
        }
        self.metrics.body_waits.inc();
        Ok(self.body_budget.clone().acquire_many_owned(units).await?)
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
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        self.key_locks[hasher.finish() as usize % KEY_LOCK_STRIPES].lock().await
    }

    /// Reads a range of an upstream object, counting the read. A failed or short read is
    /// retried after a growing, jittered pause, up to [`READ_ATTEMPTS`] attempts in all.
    pub async fn read_upstream(&self, key: &str, range: std::ops::Range<u64>) -> anyhow::Result<Bytes> {
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
            if attempt == READ_ATTEMPTS {
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
