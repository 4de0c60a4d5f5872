//! Choosing the base a tensor's chunks are stored as deltas against: by the configured
//! strategy, the newest stored tensor of the same name, dtype and shape, or the stored tensor
//! of that shape whose bit-level fingerprint is nearest, confirmed by trial encodes of a sample
//! of the first chunk. A tensor of another float precision counts (issue 18), and a float
//! tensor counts for GGUF blocks quantized from it (issue 17): its chunks are converted to the
//! new tensor's dtype before the delta (`tensorgate_codec::Cast`).
//!
//! A new chunk is taken against the same elements of the base tensor, wherever the base's
//! chunks are cut: when they lie in one base chunk but are not all of it (the base was cut
//! elsewhere, as the pieces of a multipart part are), the frame names that window of it.

use bytes::Bytes;
use tensorgate_codec::{encode_chunk_as, BaseChunk, BaseWindow, Cast, ContentHash, Dtype, FrameHeader, Region, RegionKind, Sketch};
use tensorgate_index::{BaseCandidate, ChunkHash, Index, MAX_BASE_DEPTH};

use super::model::ModelState;
use super::{Ingester, State};
use crate::config::BaseSelection;
use crate::engine::{on_cores, reader, Store};
use super::StoredTensor;

/// Tensors smaller than this are neither fingerprinted, registered as base candidates nor
/// delta-coded: their 512-byte sketch would outweigh them, and a header of 100,000 tiny
/// tensors would cost a sketch and an index entry each. The smallest tensors of real models
/// (a layer norm of 384 bf16 values: 768 bytes) stay above it.
pub(super) const MIN_BASE_TENSOR_BYTES: u64 = 512;

/// Base candidates tried on a sample of the first chunk, nearest fingerprints first.
const TRIALS: usize = 3;

/// Bytes of the first chunk a trial encodes.
const TRIAL_BYTES: usize = 256 << 10;

/// The deepest a delta this gateway writes sits above a standalone chunk. Two lets a delta be
/// taken against the nearest tensor even when that one is a delta itself: a base uploaded after
/// one of its fine-tunes is stored as a delta of it, and the fine-tunes that come later are
/// nearest to the base, not to that first fine-tune (issue 16: re-rooting every delta at a
/// standalone chunk made them cost 36% of raw instead of 8-9%). Reads decode one more base.
/// With a shared upstream it is one: another gateway may hold a base through a chain of its
/// own, and the chains a reader follows must stay short whoever wrote them.
pub(crate) const MAX_WRITE_DEPTH: usize = 2;

/// The stored tensor chosen as the base of the tensor being filled: its dtype and its chunks,
/// each with the index of its first element.
pub(super) struct ChosenBase {
    pub(super) dtype: Dtype,
    chunks: Vec<(ChunkHash, u64)>,
}

impl ChosenBase {
    /// The base tensor of `dtype` stored as `chunks`; `None` when the index lacks one of them
    /// (it was collected since the tensor was remembered).
    pub(super) fn of(index: &Index, dtype: Dtype, chunks: &[ChunkHash]) -> anyhow::Result<Option<ChosenBase>> {
        // Elements are counted from the bytes before each chunk: a piece may end inside an
        // element or a block, and the next one then starts inside it too.
        let elements_before = |bytes: u64| dtype.elements_in(bytes as usize) as u64;
        let mut bytes = 0u64;
        let mut located = Vec::with_capacity(chunks.len() + 1);
        for hash in chunks {
            let Some(record) = index.chunk(hash)? else { return Ok(None) };
            located.push((*hash, elements_before(bytes)));
            bytes += u64::from(record.raw_len);
        }
        located.push(([0; 32], elements_before(bytes)));
        Ok(Some(ChosenBase { dtype, chunks: located }))
    }

    /// Where the base's chunks start strictly inside elements `first..end` of the tensor.
    pub(super) fn cuts_within(&self, first: u64, end: u64) -> Vec<u64> {
        let inside = |start: &u64| first < *start && *start < end;
        self.chunks.iter().map(|(_, start)| *start).filter(inside).collect()
    }

    /// The base chunk holding elements `first..end` of the tensor, its length in bytes, and
    /// the window of its bytes they are; `None` when they span two base chunks or run past the
    /// base. A window of GGUF blocks must be the whole chunk (a piece need not end on a block).
    pub(super) fn window_for(&self, first: u64, end: u64) -> Option<(ChunkHash, usize, BaseWindow)> {
        let after = self.chunks.partition_point(|(_, start)| *start <= first);
        let (hash, start) = *self.chunks.get(after.checked_sub(1)?)?;
        let (_, next) = *self.chunks.get(after)?;
        if end > next || end <= first {
            return None;
        }
        let bytes = |elements: u64| self.dtype.bytes_of(elements as usize);
        let chunk_len = bytes(next - start);
        let window = BaseWindow { start: u32::try_from(bytes(first - start)).ok()?, len: u32::try_from(bytes(end - first)).ok()? };
        let whole = window.start == 0 && window.len as usize == chunk_len;
        (whole || !self.dtype.is_blocks()).then_some((hash, chunk_len, window))
    }
}

/// A chunk to take a delta against: its id, its bytes and its dtype, and the window of its
/// bytes the delta is against (which may be all of them).
pub(super) struct BaseBytes {
    pub(super) hash: ContentHash,
    pub(super) bytes: Bytes,
    pub(super) dtype: Dtype,
    pub(super) window: BaseWindow,
}

impl BaseBytes {
    /// The base as the encoder takes it.
    pub(super) fn chunk(&self) -> (BaseChunk<'_>, Dtype) {
        (BaseChunk { hash: self.hash, bytes: &self.bytes }, self.dtype)
    }
}

impl Ingester {
    /// The chunks of the newest stored tensor with the same name, dtype and shape as the
    /// region's tensor: the base candidates for its chunks.
    pub(super) fn base_for_region(&self, model: &ModelState) -> anyhow::Result<Option<ChosenBase>> {
        let Some(Region { kind: RegionKind::Tensor(index), .. }) = model.regions.get(model.region) else {
            return Ok(None);
        };
        if self.store.config.base_selection != BaseSelection::Name {
            return Ok(None);
        }
        let tensor = &model.layout.tensors[*index];
        self.newest_of_name(&(tensor.name.clone(), tensor.signature()), tensor.dtype)
    }

    /// The newest stored tensor with the name and signature `tensor_key`.
    fn newest_of_name(&self, tensor_key: &(String, String), dtype: Dtype) -> anyhow::Result<Option<ChosenBase>> {
        match self.store.index.tensor_chunks(&self.scope, &tensor_key.0, &tensor_key.1)? {
            Some(chunks) => ChosenBase::of(&self.store.index, dtype, &chunks),
            None => Ok(None),
        }
    }

    /// Chooses the base tensor of the tensor being filled, once: the one the client named, or
    /// the nearest by fingerprint (tried on the chunk `raw`, elements `first..` of the tensor;
    /// for a part without the tensor's first chunk, the newest of its name), else the one found
    /// by name.
    pub(super) async fn choose_base(&mut self, tensor_key: &(String, String), raw: &Bytes, dtype: Dtype, first: u64) -> anyhow::Result<()> {
        let State::Model(model) = &mut self.state else { return Ok(()) };
        if model.base_chosen {
            return Ok(());
        }
        model.base_chosen = true;
        let sketch = model.sketch.clone();
        let hinted = self.options.base_hint.as_ref().and_then(|hint| hint.get(tensor_key).cloned());
        let chosen = match (hinted, self.store.config.base_selection, sketch) {
            (Some(chunks), _, _) => ChosenBase::of(&self.store.index, dtype, &chunks)?,
            (None, BaseSelection::Fingerprint, Some(sketch)) => self.choose_by_fingerprint(raw, dtype, &tensor_key.1, &sketch, first).await?,
            // A part that does not hold the tensor's first chunk whole has no fingerprint of it.
            (None, BaseSelection::Fingerprint, None) if self.options.mode.is_part() => self.newest_of_name(tensor_key, dtype)?,
            _ => None,
        };
        if let (State::Model(model), Some(chosen)) = (&mut self.state, chosen) {
            model.base = Some(chosen);
        }
        Ok(())
    }

    /// The stored tensor of the same shape, in the same dtype or one it converts from, to take
    /// deltas against: the candidates with the nearest fingerprints are tried on a sample of
    /// the chunk `raw` (elements `first..` of the tensor), and the one giving the smallest
    /// delta wins, if any delta beats encoding on its own.
    pub(super) async fn choose_by_fingerprint(
        &mut self,
        raw: &Bytes,
        dtype: Dtype,
        tensor_signature: &str,
        sketch: &Sketch,
        first: u64,
    ) -> anyhow::Result<Option<ChosenBase>> {
        let shape = tensor_signature.split_once(':').map_or("", |(_, shape)| shape);
        let mut ranked: Vec<(u32, Dtype, BaseCandidate)> = Vec::new();
        let format = self.store.config.frame_format();
        // One search at a time: each reads every stored tensor of the shape from the index,
        // and parts encoded side by side would multiply what that holds.
        let searching = self.store.candidate_search.lock().await;
        let other_dtypes = if format.converts_to(dtype) { Cast::sources_for(dtype) } else { Vec::new() };
        for candidate_dtype in std::iter::once(dtype).chain(other_dtypes) {
            let signature = format!("{}:{shape}", candidate_dtype.name());
            for candidate in self.store.index.candidates(&self.scope, &signature)? {
                let Some(theirs) = Sketch::from_bytes(&candidate.sketch) else { continue };
                let distance = theirs.distance_across(candidate_dtype, sketch, dtype);
                ranked.push((distance, candidate_dtype, candidate));
            }
        }
        ranked.sort_by_key(|(distance, _, _)| *distance);
        ranked.truncate(TRIALS);
        drop(searching);
        let elements = dtype.elements_in(raw.len().min(TRIAL_BYTES));
        let sample = raw.slice(..dtype.bytes_of(elements));
        let mut best: Option<(usize, ChosenBase)> = None;
        for (_, candidate_dtype, candidate) in ranked.into_iter().take(TRIALS) {
            let Some(chosen) = ChosenBase::of(&self.store.index, candidate_dtype, &candidate.chunks)? else { continue };
            let Some(base) = self.base_in(&chosen, first, first + elements as u64).await? else { continue };
            let sample = sample.clone();
            let trial = on_cores(move || {
                // Only measured, never stored: the window's bytes stand for the base.
                let bytes = base.window.of(&base.bytes).unwrap_or_default();
                let frame = encode_chunk_as(&sample, dtype, Some((BaseChunk { hash: base.hash, bytes }, base.dtype)), format)?;
                Ok::<_, tensorgate_codec::CodecError>((frame.len(), FrameHeader::read(&frame)?.base.is_some()))
            })
            .await??;
            if let (size, true) = trial {
                if best.as_ref().is_none_or(|(smallest, _)| size < *smallest) {
                    best = Some((size, chosen));
                }
            }
        }
        Ok(best.map(|(_, chosen)| chosen))
    }

    /// Whether the index holds the chunk; if it does, it stays held from the sweep until this
    /// write is committed or dropped.
    pub(super) fn hold_if_stored(&mut self, hash: ChunkHash) -> anyhow::Result<bool> {
        let guard = self.store.held_chunks.hold(hash);
        let stored = self.store.index.chunk(&hash)?.is_some();
        if stored {
            self.held_chunks.push(guard);
        }
        Ok(stored)
    }

    /// The bytes of `base` to take elements `first..end` of a new chunk against, if they lie in
    /// one of its chunks and that chunk can be read (see [`Ingester::base_bytes`]).
    pub(super) async fn base_in(&mut self, base: &ChosenBase, first: u64, end: u64) -> anyhow::Result<Option<BaseBytes>> {
        let Some((hash, len, window)) = base.window_for(first, end) else { return Ok(None) };
        let found = self.base_bytes(hash, len).await?;
        Ok(found.map(|(hash, bytes)| BaseBytes { hash, bytes, dtype: base.dtype, window }))
    }

    /// The chunk to take a delta against, if the candidate (or one of its bases) is stored
    /// and has the `len` bytes the candidate has; it is held from the sweep. The
    /// candidate itself when the new delta stays within [`MAX_WRITE_DEPTH`] of a standalone
    /// chunk, else the nearest of its bases that keeps it there. (A base of that base may be of
    /// another dtype or cut elsewhere: then its length differs and none is taken, or, for two
    /// dtypes of one width such as BF16 and F16, it is taken as the candidate's dtype though
    /// it is not: the frame still
    /// decodes, as it names no dtype, but its delta is poor, and the encoder keeps the chunk on
    /// its own when that is smaller.)
    async fn base_bytes(&mut self, candidate: ChunkHash, len: usize) -> anyhow::Result<Option<(ContentHash, Bytes)>> {
        // The candidate's chain of bases, down to its standalone root (with a shared upstream
        // a chunk adopted from another gateway may be a longer chain than this gateway writes).
        let mut chain = vec![candidate];
        for _ in 0..MAX_BASE_DEPTH {
            let Some(record) = self.store.index.chunk(chain.last().unwrap_or(&candidate))? else { return Ok(None) };
            match record.base {
                Some(next) => chain.push(next),
                None => break,
            }
        }
        // chain[i] is chain.len() - 1 - i deltas above the root.
        let depth = if self.store.config.shared_upstream { 1 } else { MAX_WRITE_DEPTH };
        let base_hash = chain[chain.len().saturating_sub(depth)];
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
