//! Objects that are not models: cut where their content says (`tensorgate_codec::next_cut`),
//! so that the same bytes under another key, or in an edited copy, cost nothing again; a chunk
//! already stored is referenced, a new one zstd-coded (or stored, when that does not pay) into
//! the write's pack.

use bytes::{Bytes, BytesMut};
use tensorgate_codec::{next_cut, ContentHash};
use tensorgate_index::Segment;

use super::frames::{Encoding, PendingChunk};
use super::{Ingester, State};
use crate::metrics::ChunkLabels;

impl Ingester {
    /// Takes more bytes of an opaque object, storing every chunk whose end is decided.
    pub(super) async fn feed_opaque(&mut self, bytes: Bytes, ended: bool) -> anyhow::Result<()> {
        let State::Opaque(buffer) = &mut self.state else { return Ok(()) };
        buffer.extend_from_slice(&bytes);
        loop {
            let State::Opaque(buffer) = &mut self.state else { return Ok(()) };
            let Some(cut) = next_cut(buffer, ended) else { return Ok(()) };
            let chunk = buffer.split_to(cut).freeze();
            self.store_opaque_chunk(chunk).await?;
        }
    }

    /// Starts storing an opaque object with the bytes buffered so far.
    pub(super) async fn become_opaque(&mut self, buffered: Bytes) -> anyhow::Result<()> {
        self.state = State::Opaque(BytesMut::new());
        self.feed_opaque(buffered, false).await
    }

    async fn store_opaque_chunk(&mut self, raw: Bytes) -> anyhow::Result<()> {
        let hash = ContentHash::scoped(&self.scope, &raw).0;
        self.segments.push(Segment::Chunk { hash, len: raw.len() as u32 });
        if self.seen.contains(&hash) || self.hold_if_stored(hash)? {
            self.store.metrics.chunks.get_or_create(&ChunkLabels { outcome: "deduplicated" }).inc();
            return Ok(());
        }
        self.seen.insert(hash);
        self.queue_chunk(PendingChunk { raw, hash, encoding: Encoding::Opaque }).await
    }
}
