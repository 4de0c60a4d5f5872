//! Prometheus metrics: counters move where the work happens; per-tenant bytes and the packer
//! queue are gauges set from the index in the background (`maintenance::usage`);
//! `server::status` serves them.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tensorgate_index::Usage;


#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

/// What became of a chunk a write brought: already stored, or encoded as a delta or alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChunkLabels {
    pub outcome: &'static str,
}

/// How a completed multipart upload is stored: `encoded` as its parts arrived, or left
/// `for_packer`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CompletionLabels {
    pub stored: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

/// Every metric of the gateway.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<MethodLabels, Histogram>,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub chunks: Family<ChunkLabels, Counter>,
    pub multipart_completions: Family<CompletionLabels, Counter>,
    /// Objects the packer stored again as chunks.
    pub packed_objects: Counter,
    pub chunk_cache: Family<CacheLabels, Counter>,
    /// Raw bytes of the chunks GETs decoded (their bases not counted), to set beside
    /// `bytes_out`: what ranged reads decode beyond what they return.
    pub read_decoded_bytes: Counter,
    pub upstream_reads: Counter,
    pub upstream_read_bytes: Counter,
    pub upstream_retries: Counter,
    pub upstream_errors: Counter,
    pub frames_decoded: Counter,
    /// Request bodies that waited for the in-flight byte budget.
    pub body_waits: Counter,
    /// Request bodies that sent no byte for `body_idle_timeout_secs` and were refused.
    pub body_idle_timeouts: Counter,
    /// Connections closed because their request headers did not arrive in time.
    pub header_timeouts: Counter,
    /// Connections closed because their client took no byte of an answer in time.
    pub response_timeouts: Counter,
    /// Pieces of answers that waited for the in-flight byte budget.
    pub response_waits: Counter,
    /// Re-basing: raw bytes re-encoded, chunks switched to new frames, and the frame bytes those
    /// chunks took before and after.
    pub rebase_raw_bytes: Counter,
    pub rebase_chunks: Counter,
    pub rebase_bytes_before: Counter,
    pub rebase_bytes_after: Counter,
    /// Families of tensors the last re-basing pass found, and how many of them it found settled
    /// (nothing left to gain): its progress.
    pub rebase_families: Gauge,
    pub rebase_families_settled: Gauge,
    packer_queue: Gauge,
    logical_bytes: Family<TenantLabels, Gauge>,
    physical_bytes: Family<TenantLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("tensorgate");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds = Family::<MethodLabels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)));
        let metrics = Metrics {
            requests,
            request_seconds,
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            chunks: Family::default(),
            multipart_completions: Family::default(),
            packed_objects: Counter::default(),
            chunk_cache: Family::default(),
            read_decoded_bytes: Counter::default(),
            upstream_reads: Counter::default(),
            upstream_read_bytes: Counter::default(),
            upstream_retries: Counter::default(),
            upstream_errors: Counter::default(),
            frames_decoded: Counter::default(),
            body_waits: Counter::default(),
            body_idle_timeouts: Counter::default(),
            header_timeouts: Counter::default(),
            response_timeouts: Counter::default(),
            response_waits: Counter::default(),
            rebase_raw_bytes: Counter::default(),
            rebase_chunks: Counter::default(),
            rebase_bytes_before: Counter::default(),
            rebase_bytes_after: Counter::default(),
            rebase_families: Gauge::default(),
            rebase_families_settled: Gauge::default(),
            packer_queue: Gauge::default(),
            logical_bytes: Family::default(),
            physical_bytes: Family::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "S3 requests by HTTP method and status", metrics.requests.clone());
        registry.register("request_seconds", "S3 request latency until the response starts", metrics.request_seconds.clone());
        registry.register("bytes_in", "Object bytes received from clients", metrics.bytes_in.clone());
        registry.register("bytes_out", "Object bytes sent to clients", metrics.bytes_out.clone());
        registry.register("chunks", "Chunks written: deduplicated, delta, standalone (tensors) or opaque (other bytes)", metrics.chunks.clone());
        registry.register(
            "multipart_completions",
            "Multipart uploads completed: encoded as their parts arrived, or left for the packer",
            metrics.multipart_completions.clone(),
        );
        registry.register("packed_objects", "Objects the packer stored again as chunks", metrics.packed_objects.clone());
        registry.register(
            "chunk_cache",
            "Decoded chunk lookups (GETs and bases): hit (kept), shared (decoded for another read at the time) or miss",
            metrics.chunk_cache.clone(),
        );
        registry.register("read_decoded_bytes", "Raw bytes of the chunks GETs decoded, bases not counted", metrics.read_decoded_bytes.clone());
        registry.register("upstream_reads", "Ranged reads from the upstream", metrics.upstream_reads.clone());
        registry.register("upstream_read_bytes", "Bytes read from the upstream", metrics.upstream_read_bytes.clone());
        registry.register("upstream_retries", "Upstream reads retried", metrics.upstream_retries.clone());
        registry.register("upstream_errors", "Upstream reads that failed every attempt", metrics.upstream_errors.clone());
        registry.register("frames_decoded", "Frames decoded", metrics.frames_decoded.clone());
        registry.register("body_waits", "Request bodies that waited for the in-flight byte budget", metrics.body_waits.clone());
        registry.register("body_idle_timeouts", "Request bodies refused after sending nothing for the idle timeout", metrics.body_idle_timeouts.clone());
        registry.register("header_timeouts", "Connections closed for not sending request headers in time", metrics.header_timeouts.clone());
        registry.register("response_timeouts", "Connections closed for taking no byte of an answer in time", metrics.response_timeouts.clone());
        registry.register("response_waits", "Pieces of answers that waited for the in-flight byte budget", metrics.response_waits.clone());
        registry.register("rebase_raw_bytes", "Raw bytes re-encoded by re-basing", metrics.rebase_raw_bytes.clone());
        registry.register("rebase_chunks", "Chunks re-basing switched to new frames", metrics.rebase_chunks.clone());
        registry.register("rebase_bytes_before", "Frame bytes of the chunks re-basing switched, before", metrics.rebase_bytes_before.clone());
        registry.register("rebase_bytes_after", "Frame bytes of the chunks re-basing switched, after", metrics.rebase_bytes_after.clone());
        registry.register("rebase_families", "Families of tensors the last re-basing pass found", metrics.rebase_families.clone());
        registry.register(
            "rebase_families_settled",
            "Families of tensors the last re-basing pass found nothing left to gain in",
            metrics.rebase_families_settled.clone(),
        );
        registry.register("packer_queue", "Objects waiting for the background packer", metrics.packer_queue.clone());
        registry.register("logical_bytes", "Bytes clients stored, per tenant", metrics.logical_bytes.clone());
        registry.register("physical_bytes", "Upstream bytes attributed to each tenant", metrics.physical_bytes.clone());
        Metrics { registry, ..metrics }
    }
}

impl Metrics {
    /// Sets the gauges from the packer's queue length and the usage the index reported.
    pub fn set_usage(&self, packer_queue: usize, usage: Vec<Usage>) {
        self.packer_queue.set(packer_queue as i64);
        // A tenant with nothing stored any more has no series left, rather than its last value.
        self.logical_bytes.clear();
        self.physical_bytes.clear();
        let mut tenants: std::collections::BTreeMap<String, (u64, u64)> = std::collections::BTreeMap::new();
        for row in usage {
            let totals = tenants.entry(row.tenant).or_default();
            totals.0 += row.logical_bytes;
            totals.1 += row.physical_bytes;
        }
        for (tenant, (logical, physical)) in tenants {
            let labels = TenantLabels { tenant };
            self.logical_bytes.get_or_create(&labels).set(logical as i64);
            self.physical_bytes.get_or_create(&labels).set(physical as i64);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// Records one S3 request.
    pub fn observe_request(&self, method: &str, status: u16, started: Instant) {
        self.requests.get_or_create(&RequestLabels { method: method.to_owned(), status }).inc();
        self.request_seconds
            .get_or_create(&MethodLabels { method: method.to_owned() })
            .observe(started.elapsed().as_secs_f64());
    }
}
