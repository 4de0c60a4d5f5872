//! Re-basing (issue 16): savings that do not depend on upload order. A tensor is stored as a
//! delta against the nearest tensor stored before it, so a fine-tune uploaded before its base
//! (or beside it, by a parallel sync) is stored on its own or against a far relative, and the
//! model's family keeps paying for it. Garbage collection, under its lease, looks at the stored
//! tensors of one dtype and shape in one dedup scope (the base candidates of ingest), splits them
//! into families by fingerprint (the layers of one model share a shape but not a family), takes
//! as each family's root the member nearest all others, and, chunk by chunk, stores the root's
//! chunk on its own and each other member's as a delta against it, where that makes the group at
//! least 5% smaller (as TStore clusters tensors and re-centres the clusters, arXiv 2604.17104). Each new frame is checked by decoding before anything names
//! it; all go into one new pack, switched in one index transaction (`Index::rebase`), and the
//! manifests of the objects concerned are written again, as compaction does. The old frames
//! become dead bytes that compaction reclaims.
//!
//! Every frame a pass writes is the root's chunk on its own or a delta against a root chunk that
//! ends the pass on its own, so no pass makes a cycle of bases; a member with deltas of deltas
//! above it is left alone, so that no chain grows past `MAX_WRITE_DEPTH`. With a shared upstream
//! it does not run (other gateways hold their own bases; issue 16 leaves it for later).

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use tensorgate_codec::{decode_frame, encode_chunk_as, BaseChunk, ContentHash, Dtype, FrameHeader, Sketch};
use tensorgate_index::{pack_id, pack_key, BaseCandidate, ChunkHash, ChunkRecord, IndexError, Rebased, Refusal};

use crate::engine::{catalog, on_cores, reader, Store};
use crate::ids::{new_id, now_ms};
use crate::maintenance::compact::objects_using;

/// The longest chain of deltas a pass leaves behind it (the writers' own limit, see
/// `engine::ingest::bases`).
const MAX_DEPTH: usize = 2;

/// A group of chunks is rewritten only when its frames shrink by at least this share.
const MIN_SAVING: f64 = 0.05;

/// Fingerprints nearer than this are of one family: about 15 of the 16 sampled bits differ
/// between unrelated tensors (a distance near 3,800), a few low bits between a model and its
/// fine-tunes.
const FAMILY_DISTANCE: u32 = (tensorgate_codec::sketch::SAMPLES * 9) as u32;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RebaseReport {
    /// Families looked at (not settled since the last pass).
    pub families: usize,
    /// Chunks stored again.
    pub chunks: usize,
    /// Frame bytes of those chunks before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// One chunk stored again: its record when planned, its new frame and that frame's base.
struct Planned {
    hash: ChunkHash,
    record: ChunkRecord,
    frame: Vec<u8>,
    base: Option<ChunkHash>,
}

/// Re-bases the families that changed since they last settled, re-encoding at most
/// `rebase_bytes_per_run` raw bytes; `settled` remembers the families that had nothing to gain,
/// by a digest of their members' chunks and frames.
pub async fn rebase(store: &Store, settled: &mut HashSet<[u8; 32]>) -> anyhow::Result<RebaseReport> {
    let mut report = RebaseReport::default();
    if store.config.shared_upstream || store.config.rebase_bytes_per_run == 0 {
        return Ok(report);
    }
    let mut budget = store.config.rebase_bytes_per_run;
    let mut planned: Vec<Planned> = Vec::new();
    let mut roots: HashSet<ChunkHash> = HashSet::new();
    'signatures: for (_, signature, members) in store.index.candidate_families()? {
        let Some(dtype) = signature.split_once(':').and_then(|(name, _)| Dtype::ALL.into_iter().find(|dtype| dtype.name() == name)) else {
            continue;
        };
        for family in families(live_members(store, members)?) {
            let digest = family_digest(&family);
            if settled.contains(&digest) {
                continue;
            }
            report.families += 1;
            let before = planned.len();
            let finished = plan_family(store, dtype, &family, &mut planned, &mut roots, &mut budget).await?;
            if !finished {
                break 'signatures;
            }
            if planned.len() == before {
                settled.insert(digest);
            }
        }
    }
    if planned.is_empty() {
        return Ok(report);
    }
    report.chunks = planned.len();
    report.bytes_before = planned.iter().map(|step| u64::from(step.record.frame_len)).sum();
    report.bytes_after = planned.iter().map(|step| step.frame.len() as u64).sum();
    // New frames go where their chunks' packs are (per-tenant upstreams keep packs under a
    // prefix); every group is under one prefix (`plan_family`), so each switch is whole groups.
    let mut by_prefix: HashMap<String, Vec<Planned>> = HashMap::new();
    for step in planned {
        by_prefix.entry(prefix_of(&step.record).to_owned()).or_default().push(step);
    }
    for (prefix, steps) in by_prefix {
        switch(store, &prefix, steps).await?;
    }
    tracing::info!(chunks = report.chunks, bytes_before = report.bytes_before, bytes_after = report.bytes_after, "re-based");
    Ok(report)
}

/// The upstream prefix of a chunk's pack.
fn prefix_of(record: &ChunkRecord) -> &str {
    pack_id(&record.pack).map_or("", |(prefix, _)| prefix)
}

/// A family member: its chunks' ids and records, and its fingerprint.
struct Member {
    chunks: Vec<(ChunkHash, ChunkRecord)>,
    sketch: Sketch,
}

/// The members whose chunks are all live in the index.
fn live_members(store: &Store, candidates: Vec<BaseCandidate>) -> anyhow::Result<Vec<Member>> {
    let mut members = Vec::new();
    'candidates: for candidate in candidates {
        let Some(sketch) = Sketch::from_bytes(&candidate.sketch) else { continue };
        let mut chunks = Vec::with_capacity(candidate.chunks.len());
        for hash in candidate.chunks {
            match store.index.chunk(&hash)? {
                Some(record) if record.refs > 0 => chunks.push((hash, record)),
                _ => continue 'candidates,
            }
        }
        members.push(Member { chunks, sketch });
    }
    Ok(members)
}

/// The families of two members or more among tensors of one dtype and shape: each member joins
/// the first family whose first member is within [`FAMILY_DISTANCE`] of it, or starts one.
fn families(members: Vec<Member>) -> Vec<Vec<Member>> {
    let mut families: Vec<Vec<Member>> = Vec::new();
    for member in members {
        match families.iter_mut().find(|family| family[0].sketch.distance(&member.sketch) < FAMILY_DISTANCE) {
            Some(family) => family.push(member),
            None => families.push(vec![member]),
        }
    }
    families.retain(|family| family.len() >= 2);
    families
}

/// What a family's frames are: its members' chunk ids and where each frame is.
fn family_digest(family: &[Member]) -> [u8; 32] {
    let mut bytes = Vec::new();
    for (hash, record) in family.iter().flat_map(|member| &member.chunks) {
        bytes.extend_from_slice(hash);
        bytes.extend_from_slice(record.pack.as_bytes());
        bytes.extend_from_slice(&record.offset.to_le_bytes());
    }
    ContentHash::of(&bytes).0
}

/// Plans the new frames of one family into `planned`; false when the budget ran out first (the
/// family's groups planned so far are kept; the next pass goes on from the same families).
async fn plan_family(
    store: &Store,
    dtype: Dtype,
    family: &[Member],
    planned: &mut Vec<Planned>,
    roots: &mut HashSet<ChunkHash>,
    budget: &mut u64,
) -> anyhow::Result<bool> {
    let root = (0..family.len())
        .min_by_key(|&candidate| family.iter().map(|other| u64::from(family[candidate].sketch.distance(&other.sketch))).sum::<u64>())
        .unwrap_or(0);
    let format = store.config.frame_format();
    let mut steps = Vec::new();
    let mut finished = true;
    for (index, (root_hash, root_record)) in family[root].chunks.iter().enumerate() {
        let members: Vec<&(ChunkHash, ChunkRecord)> = family
            .iter()
            .enumerate()
            .filter(|(at, _)| *at != root)
            .filter_map(|(_, member)| member.chunks.get(index))
            .filter(|(hash, record)| hash != root_hash && record.base != Some(*root_hash) && record.raw_len == root_record.raw_len)
            .collect();
        let root_is_delta = root_record.base.is_some();
        if members.is_empty() && !root_is_delta {
            continue;
        }
        // The budget is spent whole groups at a time: the group that crosses it is the last.
        if *budget == 0 {
            finished = false;
            break;
        }
        *budget = budget.saturating_sub(u64::from(root_record.raw_len) * (1 + members.len() as u64));
        let root_bytes = reader::load_chunk(store, root_hash).await?;
        let mut group = Vec::new();
        if root_is_delta {
            let frame = encode_checked(root_bytes.clone(), dtype, None, format).await?;
            group.push(Planned { hash: *root_hash, record: root_record.clone(), frame, base: None });
        }
        for (hash, record) in members {
            let bytes = reader::load_chunk(store, hash).await?;
            let frame = encode_checked(bytes, dtype, Some((*root_hash, root_bytes.clone())), format).await?;
            if frame.len() < record.frame_len as usize {
                let base = FrameHeader::read(&frame)?.base.map(|base| base.0);
                group.push(Planned { hash: *hash, record: record.clone(), frame, base });
            }
        }
        let before: u64 = group.iter().map(|step| u64::from(step.record.frame_len)).sum();
        let after: u64 = group.iter().map(|step| step.frame.len() as u64).sum();
        let one_prefix = group.iter().all(|step| prefix_of(&step.record) == prefix_of(root_record));
        if one_prefix && group.iter().any(|step| step.base.is_some()) && (after as f64) < (1.0 - MIN_SAVING) * before as f64 {
            steps.push((*root_hash, group));
        }
    }
    // A chunk is a root or a member in one pass, never both, and stored again once.
    let mut taken: HashSet<ChunkHash> = planned.iter().map(|step| step.hash).collect();
    for (root_hash, group) in steps {
        let clashes = taken.contains(&root_hash) || group.iter().any(|step| taken.contains(&step.hash) || roots.contains(&step.hash));
        if clashes {
            continue;
        }
        roots.insert(root_hash);
        taken.extend(group.iter().map(|step| step.hash));
        planned.extend(group);
    }
    Ok(finished)
}

/// Encodes `raw` (against `base`, a chunk id and its bytes, when given) and decodes the frame
/// back, on the cores: a frame that does not give `raw` back is an error, and nothing is written.
async fn encode_checked(raw: Bytes, dtype: Dtype, base: Option<(ChunkHash, Bytes)>, format: tensorgate_codec::FrameFormat) -> anyhow::Result<Vec<u8>> {
    on_cores(move || {
        let base = base.as_ref().map(|(hash, bytes)| (BaseChunk { hash: ContentHash(*hash), bytes }, dtype));
        let frame = encode_chunk_as(&raw, dtype, base, format)?;
        let decoded = decode_frame(&frame, base.map(|(chunk, _)| chunk))?;
        anyhow::ensure!(decoded == raw, "a re-based frame does not decode to its chunk");
        Ok(frame)
    })
    .await?
}

/// Writes the planned frames into a new pack and switches the index to them, with every key
/// locked: the members with deltas of deltas above them are dropped first, the objects using a
/// switched chunk are marked pending, and recovery writes their manifests again.
async fn switch(store: &Store, prefix: &str, planned: Vec<Planned>) -> anyhow::Result<()> {
    let target = pack_key(prefix, &new_id());
    let in_flight = store.in_flight.begin(&target);
    let mut writer = store.upstream.writer(&target).await?;
    let mut steps = Vec::with_capacity(planned.len());
    let mut written = 0u64;
    let mut result: anyhow::Result<()> = Ok(());
    for step in planned {
        let frame_len = step.frame.len() as u32;
        if let Err(error) = writer.write(Bytes::from(step.frame)).await {
            result = Err(error);
            break;
        }
        steps.push(Rebased { hash: step.hash, planned_from: step.record, offset: written, frame_len, base: step.base });
        written += u64::from(frame_len);
    }
    if let Err(error) = result {
        writer.abort().await;
        return Err(error);
    }
    writer.finish().await?;
    {
        let _all_writes = store.locks.lock_all_keys().await;
        let steps = without_deep_descendants(store, steps)?;
        let moved: HashSet<ChunkHash> = steps.iter().map(|step| step.hash).collect();
        store.index.mark_all_pending(&objects_using(store, &moved)?)?;
        match store.index.rebase(&target, written, &steps, now_ms()) {
            Ok(()) => {}
            Err(IndexError::Refused(Refusal::VersionChanged)) => {
                tracing::info!("chunks changed while re-basing was planned; it runs again later");
                store.index.trash_key(&target, now_ms())?;
            }
            Err(error) => return Err(error.into()),
        }
    }
    drop(in_flight);
    catalog::recover(store).await?;
    Ok(())
}

/// The steps without those whose chunk has a delta of a delta above it (it becomes a delta
/// itself, which would make that chain longer than [`MAX_DEPTH`]), from the chunks' bases now.
fn without_deep_descendants(store: &Store, steps: Vec<Rebased>) -> anyhow::Result<Vec<Rebased>> {
    let stepping: HashSet<ChunkHash> = steps.iter().filter(|step| step.base.is_some()).map(|step| step.hash).collect();
    let mut children: HashMap<ChunkHash, Vec<ChunkHash>> = HashMap::new();
    for entry in store.index.all_chunks() {
        let (hash, record) = entry?;
        if let Some(base) = record.base {
            children.entry(base).or_default().push(hash);
        }
    }
    let height = |hash: &ChunkHash| {
        let mut level = vec![*hash];
        let mut height = 0;
        while height <= MAX_DEPTH {
            level = level.iter().flat_map(|hash| children.get(hash).into_iter().flatten().copied()).collect();
            if level.is_empty() {
                break;
            }
            height += 1;
        }
        height
    };
    Ok(steps.into_iter().filter(|step| !stepping.contains(&step.hash) || height(&step.hash) < MAX_DEPTH).collect())
}
