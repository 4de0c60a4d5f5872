//! New chunks: queued, encoded a batch at a time on all cores (tensor codec or opaque), and
//! appended as frames to the write's pack, which is opened at the first one.

use anyhow::Context;
use bytes::Bytes;
use rayon::prelude::*;
use tensorgate_codec::frame::Codec;
use tensorgate_codec::{decode_frame, encode_chunk_as, encode_chunk_in_window, encode_opaque, BaseChunk, Dtype, FrameHeader};
use tensorgate_index::{pack_key, ChunkHash, ChunkRecord, NewChunk};

use super::bases::BaseBytes;
use super::{batch_chunks, Ingester};
use crate::engine::on_cores;
use crate::ids::new_id;
use crate::metrics::ChunkLabels;

/// A new chunk waiting to be encoded with others on the cores.
pub(super) struct PendingChunk {
    pub(super) raw: Bytes,
    pub(super) hash: ChunkHash,
    pub(super) encoding: Encoding,
}

/// How a pending chunk is encoded.
pub(super) enum Encoding {
    /// Tensor bytes (or the bytes between tensors, as U8), with the base chunk to try a delta
    /// against.
    Tensor { dtype: Dtype, base: Option<BaseBytes> },
    /// Bytes of no known layout (see `opaque`).
    Opaque,
}

/// The frame, once decoded back to `raw` when it uses a conversion, levels or a window of its
/// base (issues 18 and 15: newer transforms, whose decoding is checked before anything names
/// them); `base` is the whole base chunk, as a reader hands it to the decoder. A frame that does not
/// decode is replaced by the chunk as plain zstd or stored bytes, which always does. Stored runs
/// (version 5) are no new transform: the encoder keeps their record only when it reads back as
/// the runs its planes were laid out by.
fn verified(frame: Vec<u8>, raw: &[u8], base: Option<BaseChunk<'_>>) -> tensorgate_codec::Result<Vec<u8>> {
    let header = FrameHeader::read(&frame)?;
    if header.conversion.is_none() && header.window.is_none() && header.codec != Codec::Levels {
        return Ok(frame);
    }
    match decode_frame(&frame, base) {
        Ok(decoded) if decoded == raw => Ok(frame),
        outcome => {
            tracing::error!(error = ?outcome.err(), conversion = ?header.conversion, "a frame did not decode back to its chunk; stored as plain bytes");
            encode_opaque(raw)
        }
    }
}

impl Ingester {
    /// Queues a new chunk, encoding the queue once it holds a batch.
    pub(super) async fn queue_chunk(&mut self, chunk: PendingChunk) -> anyhow::Result<()> {
        self.pending.push(chunk);
        if self.pending.len() >= batch_chunks() {
            self.encode_pending().await?;
        }
        Ok(())
    }

    /// Encodes the queued chunks on all cores and appends their frames to the pack.
    pub(super) async fn encode_pending(&mut self) -> anyhow::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return Ok(());
        }
        let format = self.store.config.frame_format();
        let (pending, frames) = on_cores(move || {
            let frames: Vec<_> = pending
                .par_iter()
                .map(|chunk| match &chunk.encoding {
                    Encoding::Tensor { dtype, base: Some(base) } => encode_chunk_in_window(&chunk.raw, *dtype, base.chunk(), base.window, format)
                        .and_then(|frame| verified(frame, &chunk.raw, Some(base.chunk().0))),
                    Encoding::Tensor { dtype, base: None } => encode_chunk_as(&chunk.raw, *dtype, None, format),
                    Encoding::Opaque => encode_opaque(&chunk.raw),
                })
                .collect();
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
            let outcome = match (&chunk.encoding, header.base, header.conversion) {
                (Encoding::Opaque, _, _) => "opaque",
                (Encoding::Tensor { .. }, Some(_), Some(_)) => "other_precision",
                (Encoding::Tensor { .. }, Some(_), None) => "delta",
                (Encoding::Tensor { .. }, None, _) => "standalone",
            };
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
}
