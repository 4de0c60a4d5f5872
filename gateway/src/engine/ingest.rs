//! The PUT path. Bytes stream through once: they are hashed (MD5 for the ETag, plus the
//! checksums the client announced) and either written upstream as they came, or, for a
//! safetensors file, cut into chunks per tensor. A chunk already stored is only referenced (and
//! held from the sweep until the write commits); a new one is encoded on all cores (as a delta
//! against a chunk of the base tensor, chosen at the tensor's first new chunk, when that is
//! smaller) and appended as a frame to a new pack object.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum as _, Md5};
use tensorgate_codec::{
    encode_chunk, encode_parallel, parse_header, read_header_len, BaseChunk, ChunkJob, ContentHash, Dtype, FrameHeader,
    Layout, Region, RegionKind, Sketch, DEFAULT_CHUNK_SIZE,
};
use tensorgate_index::{blob_key, pack_key, BaseCandidate, ChunkHash, ChunkRecord, MAX_BASE_DEPTH, NewChunk, NewPack, ObjectRecord, Segment};

use crate::config::BaseSelection;
use crate::engine::reader;
use crate::engine::{on_cores, ChunkGuard, Store, WriteGuard};
use crate::ids::new_id;
use crate::metrics::ChunkLabels;
use crate::upstream::BlobWriter;
use crate::upstream::UpstreamFailure;

/// Chunks encoded together: one per core keeps every core busy, up to 8 (concurrent writes
/// keep more cores busy), which bounds what one write holds.
fn batch_chunks() -> usize {
    rayon::current_num_threads().clamp(2, 8)
}

/// The most one write holds in memory at once, whatever its length: an encoding batch, the
/// chunk being filled and its frames, and an upstream part being uploaded. The in-flight byte
/// budget charges a body this, or its announced length when smaller.
pub fn body_buffer_bytes() -> u64 {
    (batch_chunks() as u64 + 2) * DEFAULT_CHUNK_SIZE as u64 + crate::upstream::PART_SIZE as u64
}

/// What a finished ingest produced, ready to commit.
pub struct Ingested {
    pub size: u64,
    pub md5: [u8; 16],
    pub checksums: s3s::dto::Checksum,
    pub segments: Vec<Segment>,
    pub new_chunks: Vec<NewChunk>,
    pub new_pack: Option<NewPack>,
    /// Tensors stored whole, to register as base candidates once committed.
    pub tensors: Vec<StoredTensor>,
    /// Upstream keys written (a blob or a pack), to delete if the write is not committed.
    pub written: Vec<String>,
    /// Keeps garbage collection off the written keys until this write is committed or dropped.
    pub in_flight: Vec<WriteGuard>,
    /// Keeps the sweep off the stored chunks this write references (dedup hits, delta bases).
    pub held_chunks: Vec<ChunkGuard>,
}

impl Ingested {
    /// Deletes what this ingest wrote upstream; for writes that are not committed.
    pub async fn discard(self, store: &Store) {
        for key in self.written {
            if let Err(error) = store.upstream.delete(&key).await {
                tracing::warn!(%key, %error, "could not delete an uncommitted upstream object");
            }
        }
    }

    pub fn is_model(&self) -> bool {
        self.segments.iter().any(|s| matches!(s, Segment::Chunk { .. }))
    }
}

/// A tensor an ingest stored whole.
pub struct StoredTensor {
    pub name: String,
    /// Its dtype and shape: a base must match exactly.
    pub signature: String,
    pub chunks: Vec<ChunkHash>,
    pub sketch: Sketch,
}

/// Tensors smaller than this are neither fingerprinted, registered as base candidates nor
/// delta-coded: their 512-byte sketch would outweigh them, and a header of 100,000 tiny
/// tensors would cost a sketch and an index entry each. The smallest tensors of real models
/// (a layer norm of 384 bf16 values: 768 bytes) stay above it.
const MIN_BASE_TENSOR_BYTES: u64 = 512;

/// Base candidates tried on a sample of the first chunk, nearest fingerprints first.
const TRIALS: usize = 3;
/// Bytes of the first chunk a trial encodes.
const TRIAL_BYTES: usize = 256 << 10;

/// How to ingest.
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    /// The size the client announced, if any.
    pub size_hint: Option<u64>,
    pub mode: IngestMode,
    /// Checksums to compute besides MD5.
    pub checksums: ChecksumSelection,
    /// Tensors of a model the client named as the base (`x-amz-meta-tensorgate-base`):
    /// tried first, by name, dtype and shape.
    pub base_hint: Option<Arc<ModelTensors>>,
    /// Where the bytes come from, which decides whose fault a failed read is.
    pub body_from: BodyFrom,
}

/// Where the bytes of an ingest come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyFrom {
    /// A client's request: a failed read is the client's fault (a silent body is cut off by
    /// the transport; see `admission::IdleBody`).
    #[default]
    Client,
    /// Objects already stored, read back from the upstream (copies, the packer).
    Store,
}

/// The chunks of each tensor of a stored model, by name and signature.
pub type ModelTensors = HashMap<(String, String), Vec<ChunkHash>>;

/// The tensors of a stored model, from its manifest: the header's regions in order, each cut
/// into chunks as ingest cuts them. `None` for an object that was not stored as a model.
pub fn model_tensors(record: &ObjectRecord) -> Option<ModelTensors> {
    let Some(Segment::Inline(header)) = record.segments.first() else { return None };
    let header_len = usize::try_from(read_header_len(header).ok()?).ok()?;
    let layout = parse_header(header.get(8..8 + header_len)?, None).ok()?;
    let mut chunks = record.segments[1..].iter().map(|segment| match segment {
        Segment::Chunk { hash, .. } => Some(*hash),
        _ => None,
    });
    let mut tensors = HashMap::new();
    for region in layout.regions() {
        let count = (region.end - region.start).div_ceil(DEFAULT_CHUNK_SIZE as u64) as usize;
        let hashes: Vec<ChunkHash> = chunks.by_ref().take(count).collect::<Option<_>>()?;
        if let RegionKind::Tensor(index) = region.kind {
            let tensor = &layout.tensors[index];
            tensors.insert((tensor.name.clone(), signature(tensor)), hashes);
        }
    }
    Some(tensors)
}

/// What to do with the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IngestMode {
    /// Store a safetensors file as chunks, anything else as it came (a client's PUT).
    #[default]
    Sniff,
    /// Store as it came, even when empty (a multipart part).
    Plain,
    /// Only models are wanted (the packer): anything else ends the ingest with `None`.
    ModelsOnly,
}

/// Which `x-amz-checksum-*` to compute.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChecksumSelection {
    pub crc32: bool,
    pub crc32c: bool,
    pub sha1: bool,
    pub sha256: bool,
    pub crc64nvme: bool,
}

impl ChecksumSelection {
    fn hasher(self) -> ChecksumHasher {
        ChecksumHasher {
            crc32: self.crc32.then(Default::default),
            crc32c: self.crc32c.then(Default::default),
            sha1: self.sha1.then(Default::default),
            sha256: self.sha256.then(Default::default),
            crc64nvme: self.crc64nvme.then(Default::default),
        }
    }
}

/// Reads `body` to the end and stores it. On error, nothing written stays upstream.
pub async fn ingest<S, E>(store: &Arc<Store>, tenant: &str, body: S, options: IngestOptions) -> anyhow::Result<Option<Ingested>>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut ingester = Ingester::new(store.clone(), tenant, options);
    let result = ingester.consume(body).await;
    match result {
        Ok(()) => ingester.finish().await,
        Err(error) => {
            ingester.abandon().await;
            Err(error)
        }
    }
}

enum State {
    /// Collecting the 8-byte prefix and the JSON header.
    Sniff(BytesMut),
    /// Stored as it came.
    Plain { key: String, writer: Box<dyn BlobWriter> },
    /// Nothing to store (an empty body so far).
    Empty,
    Model(Box<ModelState>),
    /// The packer asked for models only and this is not one.
    Declined,
}

struct ModelState {
    layout: Layout,
    regions: Vec<Region>,
    /// Index into `regions` of the region being filled; past the end means trailing bytes.
    region: usize,
    /// Data-section offset of the next byte.
    position: u64,
    /// Data-section offset where the chunk being filled starts.
    chunk_start: u64,
    current: BytesMut,
    pending: Vec<PendingChunk>,
    /// Chunks of the tensor being filled, and the base tensor's chunks chosen for it.
    tensor_chunks: Vec<ChunkHash>,
    base_chunks: Option<Vec<ChunkHash>>,
    /// Fingerprint of the tensor being filled, taken from its first chunk.
    sketch: Option<Sketch>,
    /// Whether the base of the tensor being filled has been chosen (at its first new chunk).
    base_chosen: bool,
}

struct PendingChunk {
    raw: Bytes,
    dtype: Dtype,
    hash: ChunkHash,
    base: Option<(ContentHash, Bytes)>,
}

struct Ingester {
    store: Arc<Store>,
    /// The upstream keys this write is making, guarded from garbage collection.
    in_flight: Vec<WriteGuard>,
    /// Stored chunks this write will reference, held from the sweep.
    held_chunks: Vec<ChunkGuard>,
    /// Where chunks deduplicate and bases are found (see `Config::dedup_scope_of`).
    scope: String,
    /// Prefix of the upstream keys this write makes (see `Config::upstream_prefix`).
    upstream_prefix: String,
    options: IngestOptions,
    md5: Md5,
    hasher: ChecksumHasher,
    size: u64,
    state: State,
    force_plain: bool,
    segments: Vec<Segment>,
    pack: Option<(String, Box<dyn BlobWriter>, u64)>,
    new_chunks: Vec<NewChunk>,
    seen: HashSet<ChunkHash>,
    tensors: Vec<StoredTensor>,
}

impl Ingester {
    fn new(store: Arc<Store>, tenant: &str, options: IngestOptions) -> Ingester {
        Ingester {
            scope: store.config.dedup_scope_of(tenant),
            upstream_prefix: store.config.upstream_prefix(tenant),
            in_flight: Vec::new(),
            held_chunks: Vec::new(),
            store,
            md5: Md5::new(),
            hasher: options.checksums.hasher(),
            force_plain: options.mode == IngestMode::Plain,
            options,
            size: 0,
            state: State::Sniff(BytesMut::new()),
            segments: Vec::new(),
            pack: None,
            new_chunks: Vec::new(),
            seen: HashSet::new(),
            tensors: Vec::new(),
        }
    }

    async fn consume<S, E>(&mut self, mut body: S) -> anyhow::Result<()>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let from = self.options.body_from;
        while let Some(piece) = body.next().await {
            let bytes = match (piece, from) {
                (Ok(bytes), _) => bytes,
                (Err(error), BodyFrom::Client) => return Err(BodyError::Broken(error.to_string()).into()),
                (Err(error), BodyFrom::Store) => {
                    return Err(anyhow::anyhow!("reading a stored object: {error}").context(UpstreamFailure::Failed))
                }
            };
            self.md5.update(&bytes);
            self.hasher.update(&bytes);
            self.size += bytes.len() as u64;
            self.push(bytes).await?;
            if matches!(self.state, State::Declined) {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn push(&mut self, bytes: Bytes) -> anyhow::Result<()> {
        match &mut self.state {
            State::Sniff(buffer) => {
                buffer.extend_from_slice(&bytes);
                self.sniff(false).await
            }
            State::Plain { writer, .. } => writer.write(bytes).await,
            State::Model(_) => self.feed_model(bytes).await,
            State::Empty | State::Declined => Ok(()),
        }
    }

    /// Decides between model and plain once enough bytes are in (or the body has ended).
    async fn sniff(&mut self, ended: bool) -> anyhow::Result<()> {
        let State::Sniff(buffer) = &mut self.state else { return Ok(()) };
        let size_hint = self.options.size_hint;
        let too_small = self.force_plain || size_hint.is_some_and(|size| size < self.store.config.min_model_bytes);
        let header_len = match read_header_len(buffer) {
            Ok(len) if !too_small && size_hint.is_none_or(|size| size >= 8 + len) && (2..=self.store.config.max_header_bytes).contains(&len) => len,
            Err(_) if !ended && buffer.len() < 8 && !too_small => return Ok(()),
            _ => return self.become_plain().await,
        };
        if buffer.len() > 8 && buffer[8] != b'{' {
            return self.become_plain().await;
        }
        let header_end = 8 + header_len as usize;
        if buffer.len() < header_end {
            return if ended { self.become_plain().await } else { Ok(()) };
        }
        let data_len = size_hint.map(|size| size - header_end as u64);
        let Ok(layout) = parse_header(&buffer[8..header_end], data_len) else {
            return self.become_plain().await;
        };
        let buffered = buffer.split().freeze();
        self.segments.push(Segment::Inline(buffered[..header_end].to_vec()));
        let regions = layout.regions();
        let mut model = ModelState {
            layout,
            regions,
            region: 0,
            position: 0,
            chunk_start: 0,
            current: BytesMut::new(),
            pending: Vec::new(),
            tensor_chunks: Vec::new(),
            base_chunks: None,
            sketch: None,
            base_chosen: false,
        };
        model.base_chunks = self.base_for_region(&model)?;
        self.state = State::Model(Box::new(model));
        self.feed_model(buffered.slice(header_end..)).await
    }

    async fn become_plain(&mut self) -> anyhow::Result<()> {
        let State::Sniff(buffer) = &mut self.state else { return Ok(()) };
        let buffered = buffer.split().freeze();
        if self.options.mode == IngestMode::ModelsOnly {
            self.state = State::Declined;
            return Ok(());
        }
        if buffered.is_empty() && self.size == 0 && !self.force_plain {
            self.state = State::Empty;
            return Ok(());
        }
        let key = blob_key(&self.upstream_prefix, &new_id());
        self.in_flight.push(self.store.in_flight.begin(&key));
        let mut writer = self.store.upstream.writer(&key).await?;
        writer.write(buffered).await?;
        self.state = State::Plain { key, writer };
        Ok(())
    }

    /// The chunks of the newest stored tensor with the same name, dtype and shape as the
    /// region's tensor: the base candidates for its chunks.
    fn base_for_region(&self, model: &ModelState) -> anyhow::Result<Option<Vec<ChunkHash>>> {
        let Some(Region { kind: RegionKind::Tensor(index), .. }) = model.regions.get(model.region) else {
            return Ok(None);
        };
        if self.store.config.base_selection != BaseSelection::Name {
            return Ok(None);
        }
        let tensor = &model.layout.tensors[*index];
        Ok(self.store.index.tensor_chunks(&self.scope, &tensor.name, &signature(tensor))?)
    }

    async fn feed_model(&mut self, mut bytes: Bytes) -> anyhow::Result<()> {
        while !bytes.is_empty() {
            let State::Model(model) = &mut self.state else { return Ok(()) };
            let chunk_end = model.chunk_end();
            let take = ((chunk_end - model.position) as usize).min(bytes.len());
            model.current.extend_from_slice(&bytes.split_to(take));
            model.position += take as u64;
            if model.position == chunk_end {
                self.seal_chunk().await?;
            }
        }
        Ok(())
    }

    /// Turns the filled chunk into a segment, queues it for encoding unless already stored,
    /// and moves on to the next chunk (and region).
    async fn seal_chunk(&mut self) -> anyhow::Result<()> {
        let State::Model(model) = &mut self.state else { return Ok(()) };
        if model.current.is_empty() {
            return Ok(());
        }
        let raw = model.current.split().freeze();
        let hash = ContentHash::scoped(&self.scope, &raw).0;
        let chunk_index = model.tensor_chunks.len();
        let (dtype, region_end, tensor_signature) = match model.regions.get(model.region) {
            Some(Region { kind: RegionKind::Tensor(index), end, .. }) => {
                let tensor = &model.layout.tensors[*index];
                let worth_a_base = tensor.len() >= MIN_BASE_TENSOR_BYTES;
                (tensor.dtype, Some(*end), worth_a_base.then(|| (tensor.name.clone(), signature(tensor))))
            }
            Some(Region { end, .. }) => (Dtype::U8, Some(*end), None),
            None => (Dtype::U8, None, None),
        };
        if chunk_index == 0 && tensor_signature.is_some() {
            model.sketch = Some(Sketch::of(&raw, dtype));
            model.base_chosen = false;
        }
        model.tensor_chunks.push(hash);
        model.chunk_start = model.position;
        let region_done = region_end == Some(model.position);
        self.segments.push(Segment::Chunk { hash, len: raw.len() as u32 });
        let known = self.seen.contains(&hash) || self.hold_if_stored(hash)?;
        if known {
            self.store.metrics.chunks.get_or_create(&ChunkLabels { outcome: "deduplicated" }).inc();
        } else {
            self.seen.insert(hash);
            // The base is chosen at the tensor's first new chunk: a tensor stored already
            // reads no base.
            if let Some(tensor_key) = tensor_signature {
                self.choose_base(&tensor_key, &raw, dtype, chunk_index).await?;
            }
            let State::Model(model) = &mut self.state else { return Ok(()) };
            let base_hash = model.base_chunks.as_ref().and_then(|chunks| chunks.get(chunk_index)).copied();
            let base = match base_hash.filter(|b| *b != hash) {
                Some(base_hash) => self.base_bytes(base_hash, raw.len()).await?,
                None => None,
            };
            let State::Model(model) = &mut self.state else { return Ok(()) };
            model.pending.push(PendingChunk { raw, dtype, hash, base });
            if model.pending.len() >= batch_chunks() {
                self.encode_pending().await?;
            }
        }
        if region_done {
            self.finish_region()?;
        }
        Ok(())
    }

    /// Chooses the base tensor of the tensor being filled, once: the one the client named, or
    /// the nearest by fingerprint (tried on chunk `chunk_index`), else the one found by name.
    async fn choose_base(&mut self, tensor_key: &(String, String), raw: &Bytes, dtype: Dtype, chunk_index: usize) -> anyhow::Result<()> {
        let State::Model(model) = &mut self.state else { return Ok(()) };
        if model.base_chosen {
            return Ok(());
        }
        model.base_chosen = true;
        let sketch = model.sketch.clone();
        let hinted = self.options.base_hint.as_ref().and_then(|hint| hint.get(tensor_key).cloned());
        let chosen = match (hinted, self.store.config.base_selection, sketch) {
            (Some(chunks), _, _) => Some(chunks),
            (None, BaseSelection::Fingerprint, Some(sketch)) => {
                self.choose_by_fingerprint(raw, dtype, &tensor_key.1, &sketch, chunk_index).await?
            }
            _ => None,
        };
        if let (State::Model(model), Some(chosen)) = (&mut self.state, chosen) {
            model.base_chunks = Some(chosen);
        }
        Ok(())
    }

    /// The stored tensor of the same dtype and shape to take deltas against: the candidates with
    /// the nearest fingerprints are tried on a sample of chunk `chunk_index`, and the one
    /// giving the smallest delta wins, if any delta beats encoding on its own.
    async fn choose_by_fingerprint(
        &mut self,
        raw: &Bytes,
        dtype: Dtype,
        tensor_signature: &str,
        sketch: &Sketch,
        chunk_index: usize,
    ) -> anyhow::Result<Option<Vec<ChunkHash>>> {
        let mut ranked: Vec<(u32, BaseCandidate)> = self
            .store
            .index
            .candidates(&self.scope, tensor_signature)?
            .into_iter()
            .filter_map(|candidate| Some((Sketch::from_bytes(&candidate.sketch)?.distance(sketch), candidate)))
            .collect();
        ranked.sort_by_key(|(distance, _)| *distance);
        let sample = raw.slice(..raw.len().min(TRIAL_BYTES));
        let mut best: Option<(usize, Vec<ChunkHash>)> = None;
        for (_, candidate) in ranked.into_iter().take(TRIALS) {
            let Some(same_place) = candidate.chunks.get(chunk_index) else { continue };
            let Some((hash, base)) = self.base_bytes(*same_place, raw.len()).await? else { continue };
            let sample = sample.clone();
            let trial = on_cores(move || {
                let base = BaseChunk { hash, bytes: &base[..sample.len()] };
                let frame = encode_chunk(&sample, dtype, Some(base))?;
                Ok::<_, tensorgate_codec::CodecError>((frame.len(), FrameHeader::read(&frame)?.base.is_some()))
            })
            .await??;
            if let (size, true) = trial {
                if best.as_ref().is_none_or(|(smallest, _)| size < *smallest) {
                    best = Some((size, candidate.chunks));
                }
            }
        }
        Ok(best.map(|(_, chunks)| chunks))
    }

    /// Whether the index holds the chunk; if it does, it stays held from the sweep until this
    /// write is committed or dropped.
    fn hold_if_stored(&mut self, hash: ChunkHash) -> anyhow::Result<bool> {
        let guard = self.store.held_chunks.hold(hash);
        let stored = self.store.index.chunk(&hash)?.is_some();
        if stored {
            self.held_chunks.push(guard);
        }
        Ok(stored)
    }

    /// The standalone chunk to take a delta against, if the candidate (or its own base) is
    /// stored and has the same length; it is held from the sweep.
    async fn base_bytes(&mut self, candidate: ChunkHash, len: usize) -> anyhow::Result<Option<(ContentHash, Bytes)>> {
        // The delta is taken against the standalone chunk at the root of the candidate's bases
        // (with a shared upstream a chunk adopted from another gateway may be a delta of a
        // delta), so that what this gateway writes decodes in one step here.
        let mut base_hash = candidate;
        for _ in 0..MAX_BASE_DEPTH {
            match self.store.index.chunk(&base_hash)? {
                Some(record) => match record.base {
                    Some(next) => base_hash = next,
                    None => break,
                },
                None => return Ok(None),
            }
        }
        if !self.hold_if_stored(base_hash)? {
            return Ok(None);
        }
        match reader::load_base_tries(&self.store, &base_hash, 1).await {
            Ok(bytes) if bytes.len() == len => Ok(Some((ContentHash(base_hash), bytes))),
            Ok(_) => Ok(None),
            Err(error) => {
                tracing::warn!(%error, "base chunk unreadable; encoding standalone");
                Ok(None)
            }
        }
    }

    /// Records a finished tensor and picks the base candidates of the next region.
    fn finish_region(&mut self) -> anyhow::Result<()> {
        let State::Model(model) = &mut self.state else { return Ok(()) };
        let chunks = std::mem::take(&mut model.tensor_chunks);
        let sketch = model.sketch.take();
        if let (Some(Region { kind: RegionKind::Tensor(index), .. }), Some(sketch)) = (model.regions.get(model.region), sketch) {
            let tensor = &model.layout.tensors[*index];
            self.tensors.push(StoredTensor { name: tensor.name.clone(), signature: signature(tensor), chunks, sketch });
        }
        model.region += 1;
        let State::Model(model) = &self.state else { return Ok(()) };
        let base_chunks = self.base_for_region(model)?;
        if let State::Model(model) = &mut self.state {
            model.base_chunks = base_chunks;
        }
        Ok(())
    }

    /// Encodes the queued chunks on all cores and appends their frames to the pack.
    async fn encode_pending(&mut self) -> anyhow::Result<()> {
        let State::Model(model) = &mut self.state else { return Ok(()) };
        let pending = std::mem::take(&mut model.pending);
        if pending.is_empty() {
            return Ok(());
        }
        let (pending, frames) = on_cores(move || {
            let jobs: Vec<ChunkJob<'_>> = pending
                .iter()
                .map(|chunk| ChunkJob {
                    raw: &chunk.raw,
                    dtype: chunk.dtype,
                    base: chunk.base.as_ref().map(|(hash, bytes)| BaseChunk { hash: *hash, bytes }),
                })
                .collect();
            let frames = encode_parallel(&jobs);
            drop(jobs);
            (pending, frames)
        })
        .await?;
        if self.pack.is_none() {
            let key = pack_key(&self.upstream_prefix, &new_id());
            self.in_flight.push(self.store.in_flight.begin(&key));
            let writer = self.store.upstream.writer(&key).await?;
            self.pack = Some((key, writer, 0));
        }
        let Some((pack_key, writer, offset)) = &mut self.pack else { return Ok(()) };
        for (chunk, frame) in pending.iter().zip(frames) {
            let frame = frame.context("encoding a chunk")?;
            let header = FrameHeader::read(&frame)?;
            let outcome = if header.base.is_some() { "delta" } else { "standalone" };
            self.store.metrics.chunks.get_or_create(&ChunkLabels { outcome }).inc();
            self.new_chunks.push(NewChunk {
                hash: chunk.hash,
                record: ChunkRecord {
                    pack: pack_key.clone(),
                    offset: *offset,
                    frame_len: frame.len() as u32,
                    raw_len: chunk.raw.len() as u32,
                    base: header.base.map(|b| b.0),
                    refs: 0,
                    dead_since_ms: None,
                },
            });
            *offset += frame.len() as u64;
            writer.write(Bytes::from(frame)).await?;
        }
        Ok(())
    }

    async fn finish(mut self) -> anyhow::Result<Option<Ingested>> {
        if matches!(self.state, State::Sniff(_)) {
            self.sniff(true).await?;
        }
        if let State::Model(_) = &self.state {
            self.seal_chunk().await?;
            self.encode_pending().await?;
        }
        let mut written = Vec::new();
        let state = std::mem::replace(&mut self.state, State::Empty);
        match state {
            State::Declined => {
                self.abandon().await;
                return Ok(None);
            }
            State::Plain { key, writer } => {
                writer.finish().await?;
                self.segments.push(Segment::Blob { key: key.clone(), offset: 0, len: self.size });
                written.push(key);
            }
            _ => {}
        }
        let mut new_pack = None;
        if let Some((key, writer, total)) = self.pack.take() {
            writer.finish().await?;
            written.push(key.clone());
            new_pack = Some(NewPack { key, total_bytes: total });
        }
        self.store.metrics.bytes_in.inc_by(self.size);
        let md5 = std::mem::replace(&mut self.md5, Md5::new()).finalize();
        let hasher = std::mem::take(&mut self.hasher);
        Ok(Some(Ingested {
            size: self.size,
            md5,
            checksums: hasher.finalize(),
            segments: self.segments,
            new_chunks: self.new_chunks,
            new_pack,
            tensors: self.tensors,
            written,
            in_flight: std::mem::take(&mut self.in_flight),
            held_chunks: std::mem::take(&mut self.held_chunks),
        }))
    }

    /// Drops whatever was being written upstream.
    async fn abandon(&mut self) {
        if let State::Plain { writer, .. } = std::mem::replace(&mut self.state, State::Empty) {
            writer.abort().await;
        }
        if let Some((_, writer, _)) = self.pack.take() {
            writer.abort().await;
        }
    }
}

impl ModelState {
    /// Data-section offset where the chunk being filled ends.
    fn chunk_end(&self) -> u64 {
        let limit = self.chunk_start + DEFAULT_CHUNK_SIZE as u64;
        match self.regions.get(self.region) {
            Some(region) => limit.min(region.end),
            None => limit,
        }
    }
}

/// The dtype and shape of a tensor as one string: base candidates must match it exactly.
fn signature(tensor: &tensorgate_codec::TensorInfo) -> String {
    format!("{}{:?}", tensor.dtype.name(), tensor.shape)
}

/// Why a request body could not be taken: the client's fault.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyError {
    #[error("no byte of the request body arrived for {0} seconds")]
    Idle(u64),
    #[error("the request body could not be read: {0}")]
    Broken(String),
    #[error("the request body holds {got} bytes where {announced} were announced")]
    WrongLength { announced: u64, got: u64 },
}
