//! Compaction: a pack whose live frames fell under `compact_live_ratio` of its bytes has
//! them copied (each checked by decoding) into a new pack; the index is switched to the copies
//! in one transaction, the manifests of the objects concerned are written again, and the old
//! pack goes to the trash, deleted after the grace period like any other.
//!
//! With a shared upstream (run by the lease holder) the copies are also published
//! (`moved/<pack id>`), every manifest upstream naming the old pack is written again with the
//! copies, each only if it is still the version read (If-Match), and the other gateways point
//! their indexes at the copies when the old pack is condemned (see `condemned`); a manifest or
//! a gateway still needing the old pack keeps it alive.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use tensorgate_index::{moves_key, pack_key, pack_prefix, ChunkHash, ChunkRecord, Envelope, MAX_BASE_DEPTH, Move, ObjectKey, PackMoves, Segment};

use crate::engine::catalog;
use crate::engine::reader;
use crate::engine::{Store, WriteGuard};
use crate::ids::{new_id, now_ms};
use crate::maintenance::rewrite::rewrite_manifests;
use crate::upstream;

/// What one compaction pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactReport {
    pub packs: usize,
    pub frames_moved: usize,
    /// Bytes of the packs compacted, less those of their replacements.
    pub bytes_freed: u64,
}

/// Compacts every sparse pack. Run under the garbage-collection lease.
pub async fn compact(store: &Store) -> anyhow::Result<CompactReport> {
    if store.config.compact_live_ratio <= 0.0 {
        return Ok(CompactReport::default());
    }
    compact_packs(store, store.index.sparse_packs(store.config.compact_live_ratio)?).await
}

/// Compacts those of `packs` whose live bytes are under `ratio` of their size: re-basing leaves
/// the packs it took frames from so, and its savings reach the upstream only once they are
/// compacted. Run under the garbage-collection lease.
pub(crate) async fn compact_these(store: &Store, packs: &HashSet<String>, ratio: f64) -> anyhow::Result<CompactReport> {
    let sparse = store.index.sparse_packs(ratio)?.into_iter().filter(|(pack, _)| packs.contains(pack)).collect();
    compact_packs(store, sparse).await
}

async fn compact_packs(store: &Store, sparse: Vec<(String, tensorgate_index::PackRecord)>) -> anyhow::Result<CompactReport> {
    let mut report = CompactReport::default();
    if sparse.is_empty() {
        return Ok(report);
    }
    let names: HashSet<&str> = sparse.iter().map(|(pack, _)| pack.as_str()).collect();
    let mut live = store.index.live_chunks_in(&names)?;
    let mut copies = Vec::new();
    let mut failure = None;
    for (pack, record) in &sparse {
        match copy_pack(store, pack, live.remove(pack).unwrap_or_default()).await {
            Ok(copy) => {
                report.bytes_freed += record.total_bytes.saturating_sub(copy.bytes);
                copies.push(copy);
            }
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    report.packs = copies.len();
    report.frames_moved = switch_to_copies(store, &copies).await?;
    if report.packs > 0 {
        tracing::info!(packs = report.packs, frames = report.frames_moved, bytes_freed = report.bytes_freed, "compacted");
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(report),
    }
}

/// A pack's live frames, copied to a new pack not yet used by the index.
struct PackCopy {
    from: String,
    to: String,
    moves: Vec<Move>,
    bytes: u64,
    /// Keeps garbage collection off the new pack until the index uses it.
    _in_flight: WriteGuard,
}

/// Copies the live frames of `pack`, each verified by decoding, into a new pack.
async fn copy_pack(store: &Store, pack: &str, chunks: Vec<(ChunkHash, ChunkRecord)>) -> anyhow::Result<PackCopy> {
    let target = pack_key(pack_prefix(pack), &new_id());
    let in_flight = store.in_flight.begin(&target);
    let mut writer = store.upstream.writer(&target).await?;
    let mut moves = Vec::new();
    let mut written = 0u64;
    let copied: anyhow::Result<()> = async {
        for (hash, record) in chunks {
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
    Ok(PackCopy { from: pack.to_owned(), to: target, moves, bytes: written, _in_flight: in_flight })
}

/// Points the index at the copies and rewrites the manifests concerned. With every key lock
/// held (no write is between choosing its chunks and committing), the objects using a moved
/// chunk are marked pending and each pack is switched in one transaction; the manifests are
/// then written again by recovery. Returns how many chunks moved.
async fn switch_to_copies(store: &Store, copies: &[PackCopy]) -> anyhow::Result<usize> {
    if copies.is_empty() {
        return Ok(0);
    }
    let mut frames = 0;
    {
        let _all_writes = store.locks.lock_all_keys().await;
        let moved: HashSet<ChunkHash> = copies.iter().flat_map(|copy| copy.moves.iter().map(|step| step.hash)).collect();
        store.index.mark_all_pending(&objects_using(store, &moved)?)?;
        for copy in copies {
            frames += store.index.relocate(&copy.from, &copy.to, copy.bytes, &copy.moves, now_ms())?;
        }
    }
    if store.config.shared_upstream {
        publish_moves(store, copies).await?;
    }
    catalog::recover(store).await?;
    Ok(frames)
}

/// With a shared upstream: records where the frames went, for the other gateways, then writes
/// every manifest naming a compacted pack again with the copies, unless it changed since it
/// was read (its writer's next version names what that writer chose).
async fn publish_moves(store: &Store, copies: &[PackCopy]) -> anyhow::Result<()> {
    let mut forwarding: HashMap<(&str, u64), (&str, u64)> = HashMap::new();
    for copy in copies {
        let record = PackMoves { from: copy.from.clone(), to: copy.to.clone(), to_total: copy.bytes, moves: copy.moves.clone() };
        let key = moves_key(&copy.from).ok_or_else(|| anyhow::anyhow!("{} is not a pack key", copy.from))?;
        upstream::put(&*store.upstream, &key, Bytes::from(record.seal()?)).await?;
        for step in &copy.moves {
            forwarding.insert((copy.from.as_str(), step.from_offset), (copy.to.as_str(), step.to_offset));
        }
    }
    rewrite_manifests(store, |manifest| {
        let mut moved = false;
        for location in &mut manifest.chunks {
            if let Some(&(pack, offset)) = forwarding.get(&(location.pack.as_str(), location.offset)) {
                location.pack = pack.to_owned();
                location.offset = offset;
                moved = true;
            }
        }
        Ok(moved)
    })
    .await
}

/// Objects whose manifests name one of `moved`: as a chunk of theirs, or anywhere on a chunk's
/// chain of bases (a manifest's table locates every chunk its chains reach).
pub(crate) fn objects_using(store: &Store, moved: &HashSet<ChunkHash>) -> anyhow::Result<Vec<ObjectKey>> {
    // Whether each chunk's chain reaches a moved chunk, remembered across objects.
    let mut reaches: HashMap<ChunkHash, bool> = HashMap::new();
    let mut concerned = Vec::new();
    for entry in store.index.all_objects() {
        let (key, record) = entry?;
        let mut uses = false;
        for hash in record.segments.iter().filter_map(Segment::chunk_hash) {
            uses |= chain_reaches(store, hash, moved, &mut reaches)?;
        }
        if uses {
            concerned.push(key);
        }
    }
    Ok(concerned)
}

/// Whether `hash` or one of its bases (at most `MAX_BASE_DEPTH` deep) is in `moved`.
fn chain_reaches(store: &Store, hash: ChunkHash, moved: &HashSet<ChunkHash>, known: &mut HashMap<ChunkHash, bool>) -> anyhow::Result<bool> {
    let mut chain = Vec::new();
    let mut next = Some(hash);
    let mut found = false;
    while let Some(hash) = next.take() {
        if let Some(&reaches) = known.get(&hash) {
            found = reaches;
            break;
        }
        chain.push(hash);
        if moved.contains(&hash) {
            found = true;
            break;
        }
        if chain.len() <= MAX_BASE_DEPTH {
            next = store.index.chunk(&hash)?.and_then(|chunk| chunk.base);
        }
    }
    for hash in chain {
        known.insert(hash, found);
    }
    Ok(found)
}
