//! Models on the PUT path. A body that `tensorgate_codec::formats` recognises (a safetensors or
//! GGUF header, or a PyTorch checkpoint or ONNX model walked as it streams: see `walked`) is cut
//! into regions (tensors, and the bytes between them), each region into chunks as the codec
//! plans them (`tensorgate_codec::chunk_end`); a chunk already stored is referenced, a new one
//! encoded on the cores into the write's pack.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tensorgate_codec::formats::Walker;
use tensorgate_codec::{chunk_end, chunk_size, sniff, stored_layout, ContentHash, Dtype, Layout, Region, RegionKind, Sketch, Sniffed};
use tensorgate_index::{ChunkHash, ObjectKey, ObjectRecord, Segment, TensorSketch};

use super::bases::{ChosenBase, MIN_BASE_TENSOR_BYTES};
use super::frames::{Encoding, PendingChunk};
use super::first_parts::FirstPart;
use super::{walked, IngestMode, Ingester, State, StoredTensor};
use crate::engine::Store;
use crate::metrics::ChunkLabels;

/// The chunks of each tensor of a stored model, by name and signature.
pub type ModelTensors = HashMap<(String, String), Vec<ChunkHash>>;

/// User metadata naming the base model of an upload (`x-amz-meta-tensorgate-base: bucket/key`).
pub const BASE_HINT: &str = "tensorgate-base";

/// The tensors of the model a base hint names (`bucket/key`, in `tenant`'s own buckets): a
/// client's PUT gives it with the body, a multipart upload at its creation (the packer reads
/// it from the object's metadata). A hint that names nothing usable is ignored.
pub fn named_base(store: &Store, tenant: &str, hint: &str) -> Option<Arc<ModelTensors>> {
    let (bucket, key) = hint.split_once('/')?;
    let record = match store.index.object(&ObjectKey::new(tenant, bucket, key)) {
        Ok(record) => record?,
        Err(error) => {
            // A hint only saves bytes: a write goes on without it.
            tracing::warn!(error = %error, "the named base could not be read; stored without it");
            return None;
        }
    };
    model_tensors(&record).map(Arc::new)
}

/// The tensors of a stored model, from its manifest: the header's regions in order, each the
/// chunks whose lengths add up to it (however it was cut). `None` for an object stored without
/// a header (not a model, or a walked checkpoint or ONNX model, which cannot be named as a base).
pub fn model_tensors(record: &ObjectRecord) -> Option<ModelTensors> {
    let Some(Segment::Inline(header)) = record.segments.first() else { return None };
    let layout = stored_layout(header)?;
    let mut chunks = record.segments[1..].iter();
    let mut tensors = HashMap::new();
    for region in layout.regions() {
        let mut hashes = Vec::new();
        let mut covered = 0u64;
        while covered < region.end - region.start {
            let Some(Segment::Chunk { hash, len }) = chunks.next() else { return None };
            hashes.push(*hash);
            covered += u64::from(*len);
        }
        if covered != region.end - region.start {
            return None;
        }
        if let RegionKind::Tensor(index) = region.kind {
            let tensor = &layout.tensors[index];
            tensors.insert((tensor.name.clone(), tensor.signature()), hashes);
        }
    }
    Some(tensors)
}

pub(super) struct ModelState {
    pub(super) layout: Layout,
    pub(super) regions: Vec<Region>,
    /// Index into `regions` of the region being filled; past the end means trailing bytes.
    pub(super) region: usize,
    /// Data-section offset of the next byte.
    pub(super) position: u64,
    /// Data-section offset where the chunk being filled starts.
    pub(super) chunk_start: u64,
    /// The chunk being filled, in a buffer of the store's (see `buffers`).
    pub(super) current: Vec<u8>,
    /// Chunks of the tensor being filled, and the base tensor chosen for it.
    pub(super) tensor_chunks: Vec<ChunkHash>,
    pub(super) base: Option<ChosenBase>,
    /// Fingerprint of the tensor being filled, taken from its first chunk.
    pub(super) sketch: Option<Sketch>,
    /// Whether the base of the tensor being filled has been chosen (at its first new chunk).
    pub(super) base_chosen: bool,
    /// For a format walked as it streams (see `walked`): the walker, and the bytes it has not
    /// settled yet, which wait before being cut.
    pub(super) walker: Option<Walker>,
    pub(super) held: BytesMut,
}

impl ModelState {
    /// Data-section offset where the chunk being filled ends: never before the bytes it holds
    /// already, though a walked tensor's size, which chooses its chunks' size, may turn out other
    /// than its start said (a file that lies). Chunks are cut on a grid from the region's start,
    /// so a part that starts inside a chunk holds the rest of it as a piece of its own.
    pub(super) fn chunk_end(&self) -> u64 {
        let (region_start, region_end, dtype, len) = match self.regions.get(self.region) {
            Some(Region { kind: RegionKind::Tensor(index), start, end }) => {
                // A walked tensor's region is open until it ends, but the walker may know its end.
                let tensor = &self.layout.tensors[*index];
                let len = if *end != walked::OPEN { Some(end - start) } else { (tensor.end != walked::OPEN).then(|| tensor.end - tensor.start) };
                (*start, *end, tensor.dtype, len)
            }
            Some(region) => (region.start, region.end, Dtype::U8, None),
            None => (self.regions.last().map_or(0, |region| region.end), u64::MAX, Dtype::U8, None),
        };
        let size = chunk_size(dtype, len) as u64;
        let grid_start = region_start + self.chunk_start.saturating_sub(region_start) / size * size;
        chunk_end(grid_start, region_end, dtype, len).max(self.position)
    }
}

impl Ingester {
    /// Decides between model and not once enough bytes are in (or the body has ended): see
    /// `tensorgate_codec::formats`, where formats are recognised.
    pub(super) async fn sniff(&mut self, ended: bool) -> anyhow::Result<()> {
        let State::Sniff(buffer) = &mut self.state else { return Ok(()) };
        // A part's size says nothing of the model's, nor whether it is worth encoding.
        let first_part = matches!(self.options.mode, IngestMode::FirstPart { .. });
        let size_hint = self.options.size_hint.filter(|_| !first_part);
        let too_small = size_hint.is_some_and(|size| size < self.store.config.min_model_bytes);
        if self.force_plain || too_small {
            return self.become_plain(too_small).await;
        }
        if !ended && buffer.len() < self.sniff_wanted {
            return Ok(());
        }
        let (mut layout, walker) = match sniff(buffer, ended, size_hint, self.store.config.max_header_bytes) {
            Sniffed::NeedMore(wanted) => {
                self.sniff_wanted = wanted;
                return Ok(());
            }
            Sniffed::NotAModel => {
                self.tell_later_parts(FirstPart::Other);
                return self.become_plain(false).await;
            }
            // Later parts know a layout from a header only, not from a walk.
            Sniffed::Walk(_) if first_part => {
                self.tell_later_parts(FirstPart::Other);
                return self.become_plain(false).await;
            }
            Sniffed::Model(layout) => (layout, None),
            Sniffed::Walk(walker) => (Layout { data_start: 0, tensors: Vec::new(), metadata: None }, Some(walker)),
        };
        let header_end = layout.data_start as usize;
        let buffered = buffer.split().freeze();
        if header_end > 0 {
            self.segments.push(Segment::Inline(buffered[..header_end].to_vec()));
        }
        if let Some(size) = self.options.size_hint.filter(|_| first_part) {
            self.tell_later_parts(FirstPart::Model { header: Arc::new(buffered[..header_end].to_vec()), size });
        }
        let mut regions = layout.regions();
        if let Some(walker) = &walker {
            walked::apply(&mut regions, &mut layout.tensors, vec![walker.start()]);
        }
        let mut model = ModelState {
            layout,
            regions,
            region: 0,
            position: 0,
            chunk_start: 0,
            current: Vec::new(),
            tensor_chunks: Vec::new(),
            base: None,
            sketch: None,
            base_chosen: false,
            walker,
            held: BytesMut::new(),
        };
        model.base = self.base_for_region(&model)?;
        self.state = State::Model(Box::new(model));
        self.feed_model(buffered.slice(header_end..)).await
    }

    /// Part 1 of an upload tells its later parts what it holds as soon as it knows.
    fn tell_later_parts(&self, first: FirstPart) {
        if let IngestMode::FirstPart { upload_id } = &self.options.mode {
            self.store.first_parts.sniffed(upload_id, first);
        }
    }

    pub(super) async fn feed_model(&mut self, bytes: Bytes) -> anyhow::Result<()> {
        let State::Model(model) = &mut self.state else { return Ok(()) };
        let settled = model.settle(bytes);
        self.cut_model(settled).await
    }

    /// Cuts bytes whose regions are known into chunks. A walked region may be closed where the
    /// cut bytes end, with its last chunk sealed already (it ended on a chunk boundary) or none
    /// at all (it is empty): such regions are ended before each cut and after the last.
    pub(super) async fn cut_model(&mut self, mut bytes: Bytes) -> anyhow::Result<()> {
        loop {
            self.end_closed_regions().await?;
            if bytes.is_empty() {
                return Ok(());
            }
            let State::Model(model) = &mut self.state else { return Ok(()) };
            let chunk_end = model.chunk_end();
            let wanted = (chunk_end - model.position) as usize;
            if model.current.capacity() == 0 {
                // Room for the whole chunk at once: no buffer grows, and one handed round has
                // its pages in already.
                model.current = self.store.buffers.take(wanted);
                model.current.clear();
            }
            let take = wanted.min(bytes.len());
            model.current.extend_from_slice(&bytes.split_to(take));
            model.position += take as u64;
            if model.position == chunk_end {
                self.seal_chunk().await?;
            }
        }
    }

    /// Turns the filled chunk into a segment, queues it for encoding unless already stored,
    /// and moves on to the next chunk (and region).
    pub(super) async fn seal_chunk(&mut self) -> anyhow::Result<()> {
        let State::Model(model) = &mut self.state else { return Ok(()) };
        if model.current.is_empty() {
            return Ok(());
        }
        let raw = self.store.buffers.hold(std::mem::take(&mut model.current));
        let hash = ContentHash::scoped(&self.scope, &raw).0;
        let chunk_index = model.tensor_chunks.len();
        let (dtype, region_start, region_end, tensor_signature) = match model.regions.get(model.region) {
            Some(Region { kind: RegionKind::Tensor(index), start, end }) => {
                let tensor = &model.layout.tensors[*index];
                let worth_a_base = tensor.end != walked::OPEN && tensor.len() >= MIN_BASE_TENSOR_BYTES;
                (tensor.dtype, *start, Some(*end), worth_a_base.then(|| (tensor.name.clone(), tensor.signature())))
            }
            Some(Region { start, end, .. }) => (Dtype::U8, *start, Some(*end), None),
            None => (Dtype::U8, model.chunk_start, None, None),
        };
        // The tensor's elements this chunk holds: its base holds the same ones.
        let first = dtype.elements_in((model.chunk_start - region_start) as usize) as u64;
        let end = first + dtype.elements_in(raw.len()) as u64;
        if chunk_index == 0 {
            // A fingerprint is taken of a whole first chunk only (a part may end inside it,
            // or start after it).
            let whole_first = model.chunk_start == region_start && model.position == model.chunk_end();
            model.sketch = tensor_signature.as_ref().filter(|_| whole_first).map(|_| Sketch::of(&raw, dtype));
            model.base_chosen = false;
            if let (Some(sketch), Some((name, signature))) = (&model.sketch, &tensor_signature) {
                if self.options.mode.is_part() {
                    self.sketches.push(TensorSketch { name: name.clone(), signature: signature.clone(), sketch: sketch.to_bytes() });
                }
            }
        }
        model.chunk_start = model.position;
        let region_done = region_end == Some(model.position);
        let known = self.seen.contains(&hash) || self.hold_if_stored(hash)?;
        if known {
            self.cut(hash, raw.len());
            self.store.metrics.chunks.get_or_create(&ChunkLabels { outcome: "deduplicated" }).inc();
        } else {
            // The base is chosen at the tensor's first new chunk: a tensor stored already
            // reads no base.
            if let Some(tensor_key) = tensor_signature {
                self.choose_base(&tensor_key, &raw, dtype, first).await?;
            }
            // Where the base's chunks are cut inside this one (a base uploaded in parts of
            // another size), the chunk is cut too, so that each piece has one base chunk.
            let State::Model(model) = &self.state else { return Ok(()) };
            let cuts = match &model.base {
                Some(base) if !dtype.is_blocks() => base.cuts_within(first, end),
                _ => Vec::new(),
            };
            if cuts.is_empty() {
                self.cut(hash, raw.len());
                self.store_new_chunk(raw, hash, dtype, first, end).await?;
            } else {
                let mut piece_first = first;
                for piece_end in cuts.into_iter().chain([end]) {
                    let bytes_end = if piece_end == end { raw.len() } else { dtype.bytes_of((piece_end - first) as usize) };
                    let piece = raw.slice(dtype.bytes_of((piece_first - first) as usize)..bytes_end);
                    let piece_hash = ContentHash::scoped(&self.scope, &piece).0;
                    self.cut(piece_hash, piece.len());
                    if self.seen.contains(&piece_hash) || self.hold_if_stored(piece_hash)? {
                        self.store.metrics.chunks.get_or_create(&ChunkLabels { outcome: "deduplicated" }).inc();
                    } else {
                        self.store_new_chunk(piece, piece_hash, dtype, piece_first, piece_end).await?;
                    }
                    piece_first = piece_end;
                }
            }
        }
        if region_done {
            self.finish_region()?;
        }
        Ok(())
    }

    /// Appends a chunk of the region being filled to the object's segments.
    fn cut(&mut self, hash: ChunkHash, len: usize) {
        if let State::Model(model) = &mut self.state {
            model.tensor_chunks.push(hash);
        }
        self.segments.push(Segment::Chunk { hash, len: len as u32 });
    }

    /// Queues a chunk the index does not hold (elements `first..end` of its tensor) for
    /// encoding, against the same elements of the tensor's base, if any.
    async fn store_new_chunk(&mut self, raw: Bytes, hash: ChunkHash, dtype: Dtype, first: u64, end: u64) -> anyhow::Result<()> {
        self.seen.insert(hash);
        let State::Model(model) = &mut self.state else { return Ok(()) };
        let base = match model.base.take() {
            Some(chosen) => {
                let found = self.base_in(&chosen, first, end).await;
                if let State::Model(model) = &mut self.state {
                    model.base = Some(chosen);
                }
                found?.filter(|base| base.hash.0 != hash)
            }
            None => None,
        };
        self.queue_chunk(PendingChunk { raw, hash, encoding: Encoding::Tensor { dtype, base } }).await
    }

    /// Records a finished tensor and picks the base candidates of the next region.
    pub(super) fn finish_region(&mut self) -> anyhow::Result<()> {
        let State::Model(model) = &mut self.state else { return Ok(()) };
        let chunks = std::mem::take(&mut model.tensor_chunks);
        let sketch = model.sketch.take();
        // A part holds some of a tensor's chunks only: its sketch waits for the upload's end.
        let whole_tensor = !self.options.mode.is_part();
        if let (Some(Region { kind: RegionKind::Tensor(index), .. }), Some(sketch), true) = (model.regions.get(model.region), sketch, whole_tensor) {
            let tensor = &model.layout.tensors[*index];
            self.tensors.push(StoredTensor { name: tensor.name.clone(), signature: tensor.signature(), chunks, sketch });
        }
        model.region += 1;
        let State::Model(model) = &self.state else { return Ok(()) };
        let base = self.base_for_region(model)?;
        if let State::Model(model) = &mut self.state {
            model.base = base;
        }
        Ok(())
    }
}
