//! The PUT path. Bytes stream through once: they are hashed (MD5 for the ETag, plus the
//! checksums the client announced) and cut into chunks: a model (safetensors, GGUF, PyTorch
//! checkpoint, ONNX) per tensor, any other object where its content says. A chunk already stored is only referenced (and held
//! from the sweep until the write commits); a new one is encoded on all cores (a tensor's as a
//! delta against a chunk of the base tensor, chosen at the tensor's first new chunk, when that
//! is smaller) and appended as a frame to a new pack object. Multipart parts of a model are
//! encoded the same way as they arrive (`parts`); other parts, and objects under
//! `min_model_bytes`, are written upstream as they came.

mod bases;
mod first_parts;
mod frames;
mod model;
mod opaque;
mod parts;
mod walked;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum as _, Md5};
use tensorgate_codec::{Sketch, DEFAULT_CHUNK_SIZE};
use tensorgate_index::{blob_key, ChecksumAlgorithm, ChunkHash, NewChunk, NewPack, Segment, TensorSketch};

use crate::engine::{ChunkGuard, Store, WriteGuard};
use crate::ids::new_id;
use crate::upstream::BlobWriter;
use crate::upstream::UpstreamFailure;
use model::ModelState;
pub use model::{model_tensors, named_base, ModelTensors, BASE_HINT};
pub use first_parts::{FirstPart, FirstParts};
pub use parts::{part_mode, placed_as_guessed, register_completed, PartPlacement};
pub(crate) use bases::MAX_WRITE_DEPTH;

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
    /// MD5 of the body (its ETag); `None` for the packer's ingest (`IngestMode::ChunkedOnly`),
    /// which keeps the object's ETag (it was 13% of the packer's CPU).
    pub md5: Option<[u8; 16]>,
    pub checksums: s3s::dto::Checksum,
    pub segments: Vec<Segment>,
    pub new_chunks: Vec<NewChunk>,
    pub new_pack: Option<NewPack>,
    /// Tensors stored whole, to register as base candidates once committed.
    pub tensors: Vec<StoredTensor>,
    /// Of a part: the fingerprints of the tensors whose first chunk it holds whole, to register
    /// the tensors once the upload completes.
    pub sketches: Vec<TensorSketch>,
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

    /// Whether the object was cut into chunks (a model, or an opaque object), rather than
    /// stored as it came.
    pub fn is_chunked(&self) -> bool {
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

/// What to do with the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum IngestMode {
    /// Store a model as tensor chunks, anything else as content-defined chunks, and
    /// objects under `min_model_bytes` as they came (a client's PUT).
    #[default]
    Sniff,
    /// Store as it came, even when empty (a multipart part that is not encoded).
    Plain,
    /// Only chunked objects are wanted (the packer): one that would be stored as it came ends
    /// the ingest with `None`.
    ChunkedOnly,
    /// Part 1 of the multipart upload `upload_id`: a model whose header it holds whole is
    /// encoded as far as the part goes, anything else stored as it came (see `parts`).
    FirstPart { upload_id: String },
    /// A later part, encoded as the bytes of the model where it was placed (see `parts`).
    LaterPart(Arc<PartPlacement>),
}

impl IngestMode {
    /// Whether the bytes are a part of a multipart upload, encoded as it arrives.
    pub fn is_part(&self) -> bool {
        matches!(self, IngestMode::FirstPart { .. } | IngestMode::LaterPart(_))
    }
}

/// Which `x-amz-checksum-*` to compute.
#[derive(Debug, Clone, Default)]
pub struct ChecksumSelection(pub Vec<ChecksumAlgorithm>);

impl ChecksumSelection {
    fn hasher(&self) -> ChecksumHasher {
        let wanted = |algorithm| self.0.contains(&algorithm);
        ChecksumHasher {
            crc32: wanted(ChecksumAlgorithm::Crc32).then(Default::default),
            crc32c: wanted(ChecksumAlgorithm::Crc32c).then(Default::default),
            sha1: wanted(ChecksumAlgorithm::Sha1).then(Default::default),
            sha256: wanted(ChecksumAlgorithm::Sha256).then(Default::default),
            crc64nvme: wanted(ChecksumAlgorithm::Crc64Nvme).then(Default::default),
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
    ingester.enter_placement()?;
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
    /// Collecting the first bytes until `tensorgate_codec::sniff` decides (a model header, a
    /// walked format, or not a model).
    Sniff(BytesMut),
    /// Stored as it came.
    Plain { key: String, writer: Box<dyn BlobWriter> },
    /// Cut where its content says; holds the bytes past the last cut.
    Opaque(BytesMut),
    /// Nothing to store (an empty body so far).
    Empty,
    Model(Box<ModelState>),
    /// The packer asked for chunked objects only and this is not one.
    Declined,
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
    md5: Option<Md5>,
    hasher: ChecksumHasher,
    size: u64,
    state: State,
    force_plain: bool,
    segments: Vec<Segment>,
    pack: Option<(String, Box<dyn BlobWriter>, u64)>,
    new_chunks: Vec<NewChunk>,
    seen: HashSet<ChunkHash>,
    tensors: Vec<StoredTensor>,
    sketches: Vec<TensorSketch>,
    /// New chunks waiting to be encoded as a batch.
    pending: Vec<frames::PendingChunk>,
    /// Bytes the format sniffer asked for before it looks again.
    sniff_wanted: usize,
}

impl Ingester {
    fn new(store: Arc<Store>, tenant: &str, options: IngestOptions) -> Ingester {
        Ingester {
            scope: store.config.dedup_scope_of(tenant),
            upstream_prefix: store.config.upstream_prefix(tenant),
            in_flight: Vec::new(),
            held_chunks: Vec::new(),
            store,
            md5: (options.mode != IngestMode::ChunkedOnly).then(Md5::new),
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
            sketches: Vec::new(),
            pending: Vec::new(),
            sniff_wanted: 0,
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
            if let Some(md5) = &mut self.md5 {
                md5.update(&bytes);
            }
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
            State::Opaque(_) => self.feed_opaque(bytes, false).await,
            State::Empty | State::Declined => Ok(()),
        }
    }

    /// The body is not a model: it is cut where its content says unless it is a part or too
    /// small to be worth it (`too_small`), when it is written as it came.
    async fn become_plain(&mut self, too_small: bool) -> anyhow::Result<()> {
        let State::Sniff(buffer) = &mut self.state else { return Ok(()) };
        let buffered = buffer.split().freeze();
        if buffered.is_empty() && self.size == 0 && !self.force_plain {
            self.state = State::Empty;
            return Ok(());
        }
        let as_it_came = self.force_plain || too_small || matches!(self.options.mode, IngestMode::FirstPart { .. });
        match self.options.mode {
            IngestMode::ChunkedOnly if as_it_came => {
                self.state = State::Declined;
                return Ok(());
            }
            _ if !as_it_came => return self.become_opaque(buffered).await,
            _ => {}
        }
        let key = blob_key(&self.upstream_prefix, &new_id());
        self.in_flight.push(self.store.in_flight.begin(&key));
        let mut writer = self.store.upstream.writer(&key).await?;
        writer.write(buffered).await?;
        self.state = State::Plain { key, writer };
        Ok(())
    }

    async fn finish(mut self) -> anyhow::Result<Option<Ingested>> {
        if matches!(self.state, State::Sniff(_)) {
            self.sniff(true).await?;
        }
        if let State::Model(_) = &self.state {
            self.finish_walk().await?;
            self.seal_chunk().await?;
        }
        if let State::Opaque(_) = &self.state {
            self.feed_opaque(Bytes::new(), true).await?;
        }
        self.encode_pending().await?;
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
        let md5 = self.md5.take().map(Md5::finalize);
        let hasher = std::mem::take(&mut self.hasher);
        Ok(Some(Ingested {
            size: self.size,
            md5,
            checksums: hasher.finalize(),
            segments: self.segments,
            new_chunks: self.new_chunks,
            new_pack,
            tensors: self.tensors,
            sketches: self.sketches,
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
