//! Compaction: a pack whose live frames fell under `compact_live_ratio` of its bytes has
//! them copied (each checked by decoding) into a new pack; the index is switched to the copies
//! in one transaction, the manifests of the objects concerned are written again, and the old
//! pack goes to the trash, deleted after the grace period like any other.

use std::collections::HashSet;

use bytes::Bytes;
use tensorgate_index::{ChunkHash, Move, ObjectKey, Segment};

use crate::catalog;
use crate::reader;
use crate::store::{new_id, now_ms, Store};

/// What one compaction pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactReport {
    pub packs: usize,
    pub frames_moved: usize,
    /// Bytes of the packs compacted, less those of their replacements.
    pub bytes_freed: u64,
}

/// Compacts every sparse pack. Run under the garbage-collection lease. Not with a shared
/// upstream: other gateways' indexes would still point at the old packs.
pub async fn compact(store: &Store) -> anyhow::Result<CompactReport> {
    let mut report = CompactReport::default();
    if store.config.compact_live_ratio <= 0.0 || store.config.shared_upstream {
        return Ok(report);
    }
    for (pack, record) in store.index.sparse_packs(store.config.compact_live_ratio)? {
        let moved = compact_pack(store, &pack).await?;
        report.packs += 1;
        report.frames_moved += moved.frames;
        report.bytes_freed += record.total_bytes.saturating_sub(moved.bytes);
    }
    if report.packs > 0 {
        tracing::info!(packs = report.packs, frames = report.frames_moved, bytes_freed = report.bytes_freed, "compacted");
    }
    Ok(report)
}

struct Moved {
    frames: usize,
    bytes: u64,
}

/// Copies the live frames of `pack` into a new pack and switches the index and manifests.
async fn compact_pack(store: &Store, pack: &str) -> anyhow::Result<Moved> {
    let prefix = pack.rfind("packs/").map_or("", |at| &pack[..at]);
    let target = format!("{prefix}packs/{}", new_id());
    let _in_flight = store.in_flight.begin(&target);
    let mut writer = store.upstream.writer(&target).await?;
    let mut moves = Vec::new();
    let mut written = 0u64;
    let copied: anyhow::Result<()> = async {
        for (hash, record) in store.index.live_chunks_in(pack)? {
            let range = record.offset..record.offset + u64::from(record.frame_len);
            let frame: Bytes = store.read_upstream(pack, range).await?;
            reader::decode(store, frame.clone())
                .await
                .map_err(|error| error.context(format!("a frame of {pack} does not verify; left in place for fsck")))?;
            writer.write(frame).await?;
            moves.push(Move { hash, from_offset: record.offset, to_offset: written });
            written += u64::from(record.frame_len);
        }
        Ok(())
    }
    .await;
    if let Err(error) = copied {
        writer.abort().await;
        return Err(error);
    }
    writer.finish().await?;
    let moved_hashes: HashSet<ChunkHash> = moves.iter().map(|step| step.hash).collect();
    let frames = {
        let _all_writes = store.lock_all_keys().await;
        let concerned = objects_using(store, &moved_hashes)?;
        store.index.mark_all_pending(&concerned)?;
        store.index.relocate(pack, &target, written, &moves, now_ms())?
    };
    catalog::recover(store).await?;
    Ok(Moved { frames, bytes: written })
}

/// Objects whose manifests name one of `moved`: as a chunk of theirs, or as a chunk's base.
fn objects_using(store: &Store, moved: &HashSet<ChunkHash>) -> anyhow::Result<Vec<ObjectKey>> {
    let mut concerned = Vec::new();
    for entry in store.index.all_objects() {
        let (key, record) = entry?;
        let mut uses = false;
        for segment in &record.segments {
            if let Segment::Chunk { hash, .. } = segment {
                let base = store.index.chunk(hash)?.and_then(|chunk| chunk.base);
                uses |= moved.contains(hash) || base.is_some_and(|base| moved.contains(&base));
            }
        }
        if uses {
            concerned.push(key);
        }
    }
    Ok(concerned)
}
