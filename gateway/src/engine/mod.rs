//! The storage engine: the PUT path ([`ingest`], then [`catalog`] commits), the GET path
//! ([`reader`]), and the [`Store`] they share: the index, the guarded upstream, locks, the chunks
//! and keys writes hold ([`guards`]), the decoded chunks kept ([`chunk_cache`]) and admission; [`reads`] retries upstream
//! reads. [`shared`] and [`journal`]
//! keep several gateways over one upstream in step.

pub mod admission;
pub mod bucket_settings;
pub mod catalog;
pub mod chunk_cache;
pub mod cores;
pub mod decode_slots;
pub mod guards;
pub mod ingest;
pub mod journal;
pub mod locks;
pub mod reader;
mod reads;
pub mod shared;

pub use chunk_cache::ChunkCache;
pub use cores::on_cores;
pub use guards::{ChunkGuard, HeldChunks, InFlight, WriteGuard};
pub use locks::WriteLocks;
pub use reads::READ_ATTEMPTS;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;

use tensorgate_index::{Index, ObjectKey};

use crate::ids::new_id;

use crate::engine::admission::{Admission, BytesPermit};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::{GuardedUpstream, Upstream, UpstreamFailure};

pub struct Store {
    pub index: Index,
    /// The upstream behind its guard (see [`crate::upstream::GuardedUpstream`]).
    pub upstream: Arc<dyn Upstream>,
    pub config: Config,
    pub metrics: Metrics,
    /// Decoded chunks: kept, and decoded once for the reads that want them at once.
    pub chunk_cache: ChunkCache,
    /// Buffers that decodes write into, handed round rather than taken fresh each time.
    pub buffers: Arc<crate::buffers::Buffers>,
    /// How many full-sized (4 MiB) frames a GET decodes ahead of the bytes it sends; more of
    /// smaller ones (see `reader::stream`).
    pub prefetch: NonZeroUsize,
    /// Chunks being read and decoded for GETs at once, all responses together, in units of
    /// [`reader::SLOT_BYTES`] (two full-sized chunks per core: one decoding while the next is
    /// read). A chunk waiting for a core would otherwise hold its frame and its base in memory,
    /// for every range in flight. An answer's first piece goes ahead of read-ahead.
    pub decode_slots: decode_slots::DecodeSlots,
    /// The write locks of keys and buckets.
    pub locks: WriteLocks,
    /// Chunks that writes in progress will reference.
    pub held_chunks: HeldChunks,
    /// Upstream keys being written by writes not committed yet.
    pub in_flight: InFlight,
    /// This gateway (its data directory), as named in the garbage-collection lease.
    pub instance: String,
    /// What garbage collection remembers between runs; held by the run in progress.
    pub gc_memory: tokio::sync::Mutex<GcMemory>,
    /// With a shared upstream, the `moved/` and `rebased/` records (key, listing tag) that left
    /// chunks of this index unfollowed: passed over until they change or their pack is
    /// condemned (`maintenance::follow`).
    pub(crate) unfollowed: std::sync::Mutex<HashMap<String, String>>,
    /// Request slots and the in-flight byte budget, with each tenant's share.
    pub admission: Admission,
    /// Bucket settings read lately, for the requests that need them often (CORS).
    pub kept_settings: bucket_settings::KeptSettings,
    /// Later multipart parts waiting for their upload's first part (`ingest::part_mode`).
    pub first_parts: ingest::FirstParts,
    /// Held while a write searches the base candidates of a tensor's shape.
    pub candidate_search: tokio::sync::Mutex<()>,
    /// Held while the packer packs a job, so that the callers in this process (the background
    /// packer, a drain) take jobs one at a time and no job is packed twice at once.
    pub packing: tokio::sync::Mutex<()>,
    /// Set once the gateway is stopping: `/ready` then says no, so load balancers move on.
    pub draining: std::sync::atomic::AtomicBool,
    /// With a shared upstream, when this gateway last acknowledged the collector's
    /// condemnations (its heartbeat); see [`Store::check_in_step`].
    pub caught_up_ms: std::sync::atomic::AtomicI64,
}

impl Store {
    pub fn new(index: Index, upstream: Arc<dyn Upstream>, config: Config) -> anyhow::Result<Store> {
        let chunk_cache = ChunkCache::new(config.chunk_cache_bytes);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let prefetch = NonZeroUsize::new(cores + 1).unwrap_or(NonZeroUsize::MIN);
        let decode_slots = decode_slots::DecodeSlots::new(2 * cores as u32 * reader::SLOTS_PER_FULL_CHUNK);
        let instance = index.instance_id(new_id)?;
        let admission = Admission::new(&config);
        Ok(Store {
            index,
            upstream: Arc::new(GuardedUpstream::new(upstream, &config.upstream_prefixes())),
            config,
            metrics: Metrics::default(),
            chunk_cache,
            // A GET decodes up to two chunks per core at once, but one idle per core is enough.
            buffers: crate::buffers::Buffers::one_idle_per_core(),
            prefetch,
            decode_slots,
            locks: WriteLocks::new(),
            held_chunks: HeldChunks::default(),
            in_flight: InFlight::default(),
            instance,
            gc_memory: tokio::sync::Mutex::new(GcMemory::default()),
            unfollowed: std::sync::Mutex::new(HashMap::new()),
            admission,
            kept_settings: bucket_settings::KeptSettings::default(),
            first_parts: ingest::FirstParts::default(),
            candidate_search: tokio::sync::Mutex::new(()),
            packing: tokio::sync::Mutex::new(()),
            draining: std::sync::atomic::AtomicBool::new(false),
            caught_up_ms: std::sync::atomic::AtomicI64::new(crate::ids::now_ms()),
        })
    }

    /// Takes a body's share of the in-flight byte budget (see [`Admission::hold_bytes`]):
    /// what one write can buffer, or the body's announced length when smaller.
    pub async fn admit_body(&self, tenant: &str, size: Option<u64>) -> anyhow::Result<BytesPermit> {
        let bytes = size.unwrap_or(u64::MAX).min(crate::engine::ingest::body_buffer_bytes());
        let (permit, waited) = self.admission.hold_bytes(tenant, bytes).await?;
        if waited {
            self.metrics.body_waits.inc();
        }
        Ok(permit)
    }

    /// Takes the share of the in-flight byte budget a piece of an answer to `tenant` holds
    /// until its client has taken it (see [`Admission::hold_bytes`]).
    pub async fn hold_answer_bytes(&self, tenant: &str, bytes: u64) -> anyhow::Result<BytesPermit> {
        let (permit, waited) = self.admission.hold_bytes(tenant, bytes).await?;
        if waited {
            self.metrics.response_waits.inc();
        }
        Ok(permit)
    }
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
        if silent_ms > crate::ids::ms_of_secs(self.config.gateway_expiry_secs) / 2 {
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

    /// Upstream key of the settings of a tenant's bucket.
    pub fn bucket_settings_key(&self, tenant: &str, bucket: &str) -> String {
        tensorgate_index::bucket_settings_key(&self.config.upstream_prefix(tenant), tenant, bucket)
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
    /// With a shared upstream, the keys the last listing found referenced upstream (by a
    /// manifest, a part marker or a veto) and not by this index: spared, packs stay in the
    /// trash; blobs leave it, recorded for fsck (`Index::spare_from_orphan_scan`).
    pub(crate) upstream_only: HashSet<String>,
    /// Packs spared whose announcement was withdrawn, so that it is not withdrawn again at each run.
    pub(crate) withdrawn: HashSet<String>,
}

impl GcMemory {
    /// The keys `listed` referenced when it was last read, if it has not changed since.
    pub(crate) fn take_references(&mut self, listed: &crate::upstream::Listed) -> Option<Vec<String>> {
        self.record_references.remove(&listed.key).filter(|(tag, _)| *tag == listed.tag).map(|(_, keys)| keys)
    }

    /// The manifests and part markers that referenced `key` when last read.
    pub(crate) fn referrers_of(&self, key: &str) -> Vec<String> {
        let referrers = self.record_references.iter().filter(|(_, (_, keys))| keys.iter().any(|referenced| referenced == key));
        referrers.map(|(record, _)| record.clone()).collect()
    }
}

/// Reads a record (manifest, marker, settings) from the upstream; `None` when there is none at
/// `key`.
pub async fn read_record<T: tensorgate_index::Envelope>(store: &Store, key: &str) -> anyhow::Result<Option<T>> {
    Ok(read_tagged_record(store, key).await?.map(|(record, _)| record))
}

/// [`read_record`] with the tag of what was read, for a conditional write over it.
pub async fn read_tagged_record<T: tensorgate_index::Envelope>(store: &Store, key: &str) -> anyhow::Result<Option<(T, String)>> {
    let Some(tagged) = store.upstream.read_tagged(key).await? else { return Ok(None) };
    let record = anyhow::Context::with_context(T::open(&tagged.bytes), || format!("upstream record {key}"))?;
    Ok(Some((record, tagged.tag)))
}
