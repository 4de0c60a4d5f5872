//! The storage engine: the PUT path ([`ingest`], then [`catalog`] commits), the GET path
//! ([`reader`]), and the [`Store`] they share: the index, the guarded upstream, locks, the chunks
//! and keys writes hold ([`guards`]), the base cache and admission. [`shared`] and [`journal`]
//! keep several gateways over one upstream in step.

pub mod admission;
pub mod base_cache;
pub mod catalog;
pub mod cores;
pub mod guards;
pub mod ingest;
pub mod journal;
pub mod reader;
pub mod shared;

pub use base_cache::BaseCache;
pub use cores::on_cores;
pub use guards::{ChunkGuard, HeldChunks, InFlight, WriteGuard};

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tensorgate_index::{BaseCandidate, Index, ObjectKey};

use crate::engine::ingest::StoredTensor;
use crate::ids::new_id;

use crate::engine::admission::{Admission, BodyPermit};
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
    /// With a shared upstream, when this gateway last acknowledged the collector's
    /// condemnations (its heartbeat); see [`Store::check_in_step`].
    pub caught_up_ms: std::sync::atomic::AtomicI64,
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
            caught_up_ms: std::sync::atomic::AtomicI64::new(crate::ids::now_ms()),
        })
    }

    /// Takes a body's share of the in-flight byte budget (see [`Admission::admit_body`]):
    /// what one write can buffer, or the body's announced length when smaller.
    pub async fn admit_body(&self, tenant: &str, size: Option<u64>) -> anyhow::Result<BodyPermit> {
        let bytes = size.unwrap_or(u64::MAX).min(crate::engine::ingest::body_buffer_bytes());
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

impl Store {
    /// With a shared upstream, refuses a commit (as a retryable upstream failure) once this
    /// gateway has not acknowledged condemnations for half of `gateway_expiry_secs`: past
    /// `gateway_expiry_secs` the collector stops waiting for it and may delete packs that the
    /// commit's manifest would name.
    pub fn check_in_step(&self) -> anyhow::Result<()> {
        if !self.config.shared_upstream {
            return Ok(());
        }
        let silent_ms = crate::ids::now_ms() - self.caught_up_ms.load(std::sync::atomic::Ordering::Relaxed);
        if silent_ms > (self.config.gateway_expiry_secs as i64) * 500 {
            let error = anyhow::anyhow!("this gateway last caught up with the shared upstream {} s ago; writes wait for the next sync", silent_ms / 1000);
            return Err(error.context(UpstreamFailure::Failed));
        }
        Ok(())
    }

    /// Upstream key of the manifest of the object at `key`.
    pub fn manifest_key(&self, key: &ObjectKey) -> String {
        tensorgate_index::manifest_key(&self.config.upstream_prefix(&key.tenant), &key.tenant, &key.bucket, &key.key)
    }

    /// Upstream key of the marker of a tenant's bucket.
    pub fn bucket_key(&self, tenant: &str, bucket: &str) -> String {
        tensorgate_index::bucket_key(&self.config.upstream_prefix(tenant), tenant, bucket)
    }

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

/// What garbage collection remembers between runs of one gateway process. The store holds it
/// (behind a lock that also keeps runs from overlapping), so that the background loop, admin
/// commands and fsck share it; the garbage collector is its only user.
#[derive(Debug, Default)]
pub struct GcMemory {
    /// The upstream keys each manifest and part marker references, with the record's listing
    /// tag: only records whose tag changed are read again.
    pub(crate) record_references: HashMap<String, (String, Vec<String>)>,
    /// When the upstream was last listed for orphans.
    pub(crate) last_orphan_scan_ms: Option<i64>,
}

impl GcMemory {
    /// The keys `listed` referenced when it was last read, if it has not changed since.
    pub(crate) fn take_references(&mut self, listed: &crate::upstream::Listed) -> Option<Vec<String>> {
        self.record_references.remove(&listed.key).filter(|(tag, _)| *tag == listed.tag).map(|(_, keys)| keys)
    }
}
