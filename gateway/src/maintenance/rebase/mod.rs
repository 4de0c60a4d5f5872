//! Re-basing (issue 16): savings that do not depend on upload order. A tensor is stored as a
//! delta against the nearest tensor stored before it, so a fine-tune uploaded before its base
//! (or beside it, by a parallel sync) is stored on its own or against a far relative, and the
//! model's family keeps paying for it. Garbage collection, under its lease, looks at the stored
//! tensors of one shape in one dedup scope, whatever their dtype (the base candidates of
//! ingest), splits them into families by fingerprint (the layers of one model share a shape but
//! not a family), takes as each family's root the member of the widest dtype nearest all others
//! (a narrower copy of it is then nearly free), and, chunk by chunk, stores the root's chunk on
//! its own and each other member's as a delta against it (converted across dtypes), or against
//! a member nearer the root that is a delta of it, where that is smaller still (checkpoints of
//! one run against each other), where that makes the group at least 5% smaller: as TStore
//! clusters tensors and re-centres the clusters (arXiv 2604.17104). Each new frame is checked by
//! decoding before anything names it; all go into one new pack, switched in one index
//! transaction (`Index::rebase`), and the manifests of the objects concerned are written again,
//! as compaction does. The packs the old frames were in are compacted at once, so that the
//! savings reach the upstream.
//!
//! Every frame a pass writes is the root's chunk on its own, a delta against the root's chunk,
//! or a delta against another member of the group (meant to end the pass as a delta of the
//! root's chunk); whatever the pass ends with, `chains.rs` drops any frame whose chain of bases
//! would loop or grow longer than `MAX_WRITE_DEPTH` against the index as it is, but
//! for one race: a write that took a delta of a chunk before the pass looked can end up to two
//! deltas deeper (still far within the readers' `MAX_BASE_DEPTH`). With a shared upstream it
//! runs on the lease holder, and publishes each switch for the other gateways (`publish.rs`).
//! What it found nothing to gain in is remembered in the index (`rebase-settled`), by a digest
//! of the chunks and their frames, until they change: a restart does not weigh it all again.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use tensorgate_codec::{decode_frame, encode_chunk_as, BaseChunk, Cast, ContentHash, Dtype, FrameFormat, FrameHeader, Sketch};
use tensorgate_index::{pack_key, pack_prefix, ChunkHash, ChunkRecord, IndexError, Rebased, Refusal};

use crate::engine::{catalog, on_cores, reader, Store};
use crate::ids::{new_id, now_ms};
use crate::maintenance::compact::{compact_these, objects_using};
use crate::maintenance::families::{tensor_families, Family};

/// A group of chunks is rewritten only when its frames shrink by at least this share.
const MIN_SAVING: f64 = 0.05;

/// A pack that re-basing took frames from is compacted when its live bytes are under this share
/// of its size: whenever it holds dead bytes (left as they are, the old frames would cost more
/// than re-basing saves).
const COMPACT_AFTER: f64 = 1.0;

/// Digests of settled families and groups kept at most (32 bytes each, in the index); past it
/// they are all forgotten, and weighed again.
const MAX_SETTLED: usize = 1 << 20;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RebaseReport {
    /// Families of tensors found, those found settled (before or by this pass: nothing left to
    /// gain), and those looked at (not settled before this pass).
    pub total_families: usize,
    pub settled_families: usize,
    pub families: usize,
    /// Chunks switched to new frames.
    pub chunks: usize,
    /// Frame bytes of those chunks before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Whether the budget ran out before every family was weighed.
    pub unfinished: bool,
}

/// One chunk stored again: its group (the root chunk's id), its record when planned, its new
/// frame and that frame's base. A spare frame is no smaller than the chunk's frame now: it is
/// written only when moving the chunk to the root lets a chain stay short (`fit_chains`). A
/// frame against a member is a delta against another member of the group (a hub, its base),
/// which must end the pass as a delta of the root: it is taken instead of the chunk's frame
/// against the root where it fits.
struct Planned {
    group: ChunkHash,
    hash: ChunkHash,
    record: ChunkRecord,
    frame: Vec<u8>,
    base: Option<ChunkHash>,
    spare: bool,
    against_member: bool,
}

impl Planned {
    /// Bytes the new frame costs beyond the chunk's frame now (none when it is smaller).
    fn extra_bytes(&self) -> u64 {
        (self.frame.len() as u64).saturating_sub(u64::from(self.record.frame_len))
    }
}

mod chains;
mod publish;

/// Re-bases the families of tensors, re-encoding at most `rebase_bytes_per_run` raw bytes (the
/// group that crosses it is the last). The index keeps the digests of the families and groups
/// found with nothing to gain, which are passed over until their frames change.
pub async fn rebase(store: &Store) -> anyhow::Result<RebaseReport> {
    let mut report = RebaseReport::default();
    // The packs frames left, compacted at the end (those of a switch a crash left unpublished too).
    let mut left: HashSet<String> = match store.config.shared_upstream {
        true => publish::publish_unpublished(store).await?,
        false => HashSet::new(),
    };
    if store.config.rebase_bytes_per_run == 0 {
        compact_these(store, &left, COMPACT_AFTER).await?;
        return Ok(report);
    }
    store.index.forget_settled_past(MAX_SETTLED)?;
    let mut pass = Pass { budget: store.config.rebase_bytes_per_run, ..Pass::default() };
    let families = tensor_families(store)?;
    report.total_families = families.len();
    for family in families {
        let digest = digest_of(family.members.iter().flat_map(|member| &member.chunks));
        if store.index.rebase_settled(&digest)? {
            report.settled_families += 1;
            continue;
        }
        report.families += 1;
        let before = pass.planned.len();
        let outcome = plan_family(store, &family, &mut pass).await?;
        if outcome == Outcome::OutOfBudget {
            report.unfinished = true;
            break;
        }
        if outcome == Outcome::Whole && pass.planned.len() == before {
            report.settled_families += 1;
            store.index.settle_rebase(&digest)?;
        }
    }
    // New frames go where their chunks' packs are (per-tenant upstreams keep packs under a
    // prefix); every group is under one prefix (`plan_family`), so each switch is whole groups.
    let pass_budget_left = pass.budget;
    let mut by_prefix: HashMap<String, Vec<Planned>> = HashMap::new();
    for step in pass.planned {
        by_prefix.entry(pack_prefix(&step.record.pack).to_owned()).or_default().push(step);
    }
    for (prefix, steps) in by_prefix {
        let sources: HashSet<String> = steps.iter().map(|step| step.record.pack.clone()).collect();
        // A group that chains of deltas leave not worth it waits until its frames change.
        let planned_groups: HashSet<ChunkHash> = steps.iter().map(|step| step.group).collect();
        let steps = chains::fit_chains(store, steps)?;
        let kept_groups: HashSet<ChunkHash> = steps.iter().map(|step| step.group).collect();
        for digest in planned_groups.difference(&kept_groups).filter_map(|root| pass.digests.get(root)) {
            store.index.settle_rebase(digest)?;
        }
        let switched = switch(store, &prefix, steps).await?;
        if switched.0 > 0 {
            left.extend(sources);
        }
        report.chunks += switched.0;
        report.bytes_before += switched.1;
        report.bytes_after += switched.2;
    }
    compact_these(store, &left, COMPACT_AFTER).await?;
    store.metrics.rebase_raw_bytes.inc_by(store.config.rebase_bytes_per_run - pass_budget_left);
    store.metrics.rebase_chunks.inc_by(report.chunks as u64);
    store.metrics.rebase_bytes_before.inc_by(report.bytes_before);
    store.metrics.rebase_bytes_after.inc_by(report.bytes_after);
    store.metrics.rebase_families.set(report.total_families as i64);
    store.metrics.rebase_families_settled.set(report.settled_families as i64);
    if report.chunks > 0 {
        tracing::info!(chunks = report.chunks, bytes_before = report.bytes_before, bytes_after = report.bytes_after, "re-based");
    }
    Ok(report)
}

/// What a pass has planned so far.
#[derive(Default)]
struct Pass {
    /// Raw bytes it may still re-encode.
    budget: u64,
    planned: Vec<Planned>,
    /// Chunks that are a group's root in this pass, and chunks stored again in it: a chunk is
    /// one or the other, once.
    roots: HashSet<ChunkHash>,
    taken: HashSet<ChunkHash>,
    /// The digest of each planned group, by its root chunk.
    digests: HashMap<ChunkHash, [u8; 32]>,
}

/// How planning a family ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Every group was weighed.
    Whole,
    /// A group was passed over (it met another family's chunks, or could not be read): the
    /// family is not settled.
    Partly,
    /// The budget ran out.
    OutOfBudget,
}

/// A digest of chunks and where their frames are (pack, offset, base): it changes when any of
/// them is stored again.
fn digest_of<'a>(chunks: impl Iterator<Item = &'a (ChunkHash, ChunkRecord)>) -> [u8; 32] {
    let mut bytes = Vec::new();
    for (hash, record) in chunks {
        bytes.extend_from_slice(hash);
        bytes.extend_from_slice(record.pack.as_bytes());
        bytes.extend_from_slice(&record.offset.to_le_bytes());
        bytes.extend_from_slice(record.base.as_ref().map_or(&[0u8; 32], |base| base));
    }
    ContentHash::of(&bytes).0
}

/// Plans the new frames of one family into the pass: for each chunk index, the root's chunk and
/// the other members' chunks (each once) make a group, weighed unless the index holds it
/// settled.
async fn plan_family(store: &Store, family: &Family, pass: &mut Pass) -> anyhow::Result<Outcome> {
    let root = family.root();
    let family = &family.members;
    let root_dtype = family[root].dtype;
    let elements = |dtype: Dtype, record: &ChunkRecord| dtype.elements_in(record.raw_len as usize);
    let mut outcome = Outcome::Whole;
    for (index, root_chunk) in family[root].chunks.iter().enumerate() {
        let (root_hash, root_record) = root_chunk;
        let mut seen = HashSet::from([*root_hash]);
        let members: Vec<GroupMember> = family
            .iter()
            .filter(|member| member.dtype == root_dtype || Cast::sources_for(member.dtype).contains(&root_dtype))
            .filter_map(|member| Some((member.dtype, &member.sketch, member.chunks.get(index)?)))
            .filter(|(dtype, _, (hash, record))| elements(*dtype, record) == elements(root_dtype, root_record) && seen.insert(*hash))
            .collect();
        // Nothing to gain: the root on its own, and at most one member, a delta of it already.
        if root_record.base.is_none() && members.len() < 2 && members.iter().all(|(_, _, (_, record))| record.base == Some(*root_hash)) {
            continue;
        }
        let group_digest = digest_of(std::iter::once(root_chunk).chain(members.iter().map(|(_, _, chunk)| *chunk)));
        if store.index.rebase_settled(&group_digest)? {
            continue;
        }
        let clashes = pass.taken.contains(root_hash) || members.iter().any(|(_, _, (hash, _))| pass.taken.contains(hash) || pass.roots.contains(hash));
        let one_prefix = members.iter().all(|(_, _, (_, record))| pack_prefix(&record.pack) == pack_prefix(&root_record.pack));
        if clashes || !one_prefix {
            outcome = Outcome::Partly;
            continue;
        }
        if pass.budget == 0 {
            return Ok(Outcome::OutOfBudget);
        }
        let root_member = (root_dtype, &family[root].sketch, root_chunk);
        let group = match weigh_group(store, root_member, &members, &mut pass.budget).await {
            Ok(Some(group)) => group,
            Ok(None) => {
                store.index.settle_rebase(&group_digest)?;
                continue;
            }
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), chunk = %ContentHash(*root_hash), "a group could not be re-based; passed over");
                outcome = Outcome::Partly;
                continue;
            }
        };
        pass.roots.insert(*root_hash);
        pass.digests.insert(*root_hash, group_digest);
        pass.taken.extend(group.iter().filter(|step| !step.spare).map(|step| step.hash));
        pass.planned.extend(group);
    }
    Ok(outcome)
}

/// A member of a group: its dtype, its tensor's fingerprint, and its chunk at the group's place.
type GroupMember<'a> = (Dtype, &'a Sketch, &'a (ChunkHash, ChunkRecord));

/// The new frames of one group, if they make it at least [`MIN_SAVING`] smaller: the root's
/// chunk on its own (if it is a delta now), and each member's chunk either against the root's
/// where that is smaller than its frame now, or against a member nearer the root that stays a
/// delta of it, where that is smaller still (a checkpoint against the one before it: one delta
/// deeper). The other members' frames against the root come along as spares.
/// Each chunk encoded is taken from `budget`.
async fn weigh_group(
    store: &Store,
    (root_dtype, root_sketch, (root_hash, root_record)): GroupMember<'_>,
    members: &[GroupMember<'_>],
    budget: &mut u64,
) -> anyhow::Result<Option<Vec<Planned>>> {
    let format = store.config.frame_format();
    let root_bytes = reader::load_chunk(store, root_hash).await?;
    let raw_len = u64::from(root_record.raw_len);
    let mut group = Vec::new();
    if root_record.base.is_some() {
        *budget = budget.saturating_sub(raw_len);
        let frame = encode_checked(root_bytes.clone(), root_dtype, None, format).await?;
        group.push(Planned { group: *root_hash, hash: *root_hash, record: root_record.clone(), frame, base: None, spare: false, against_member: false });
    }
    // Each member against the root (unless it is a delta of it already), then nearest first.
    let mut weighed = Vec::with_capacity(members.len());
    for (dtype, sketch, (hash, record)) in members {
        let bytes = reader::load_chunk(store, hash).await?;
        let at_root = match record.base == Some(*root_hash) {
            true => None,
            false => {
                *budget = budget.saturating_sub(raw_len);
                Some(encode_checked(bytes.clone(), *dtype, Some((*root_hash, root_bytes.clone(), root_dtype)), format).await?)
            }
        };
        weighed.push((*dtype, *sketch, *hash, record, bytes, at_root));
    }
    weighed.sort_by_key(|(_, _, _, record, _, at_root)| at_root.as_ref().map_or(record.frame_len as usize, Vec::len));
    // Members that are or may become deltas of the root (their frame against it at most 2%
    // larger than theirs now), which others may take deltas against: such a delta comes beside
    // the member's frame against the root, and `chains::fit_chains` takes it if it fits.
    let mut hubs: Vec<Hub> = Vec::new();
    let mut upgraded = HashSet::new();
    for (dtype, sketch, hash, record, bytes, at_root) in weighed {
        let now = record.frame_len as usize;
        let best = at_root.as_ref().map_or(now, |frame| frame.len().min(now));
        // Only a hub nearer than the root is tried.
        let distance = |(hub_dtype, hub_sketch): (Dtype, &Sketch)| hub_sketch.distance_across(hub_dtype, sketch, dtype);
        let nearest = hubs.iter().min_by_key(|hub| distance((hub.dtype, hub.sketch)));
        let nearer = nearest.filter(|hub| distance((hub.dtype, hub.sketch)) < distance((root_dtype, root_sketch)));
        let mut against_hub = false;
        if let Some(hub) = nearer {
            *budget = budget.saturating_sub(raw_len);
            let frame = encode_checked(bytes.clone(), dtype, Some((hub.hash, hub.bytes.clone(), hub.dtype)), format).await?;
            let base = FrameHeader::read(&frame)?.base.map(|base| base.0);
            against_hub = base == Some(hub.hash) && ((frame.len() as u64 + hub.moving) as f64) < (1.0 - MIN_SAVING) * best as f64;
            if against_hub {
                upgraded.insert(hash);
                group.push(Planned { group: *root_hash, hash, record: record.clone(), frame, base, spare: false, against_member: true });
            }
        }
        let Some(frame) = at_root else {
            if !against_hub {
                hubs.push(Hub { dtype, sketch, hash, bytes, moving: 0 });
            }
            continue;
        };
        let base = FrameHeader::read(&frame)?.base.map(|base| base.0);
        let spare = frame.len() >= now;
        let step = Planned { group: *root_hash, hash, record: record.clone(), frame, base, spare, against_member: false };
        if base == Some(*root_hash) && step.frame.len() <= now + now / 50 && !against_hub {
            hubs.push(Hub { dtype, sketch, hash, bytes, moving: step.extra_bytes() });
        }
        group.push(step);
    }
    // Weighed as if every delta of a member were taken.
    let counted: Vec<&Planned> = group.iter().filter(|step| !step.spare && (step.against_member || !upgraded.contains(&step.hash))).collect();
    Ok(worth_it(&counted).then_some(group))
}

/// A member of a group that others may take deltas against: its dtype, fingerprint, id and
/// bytes, and what moving it to the root costs (its frame against the root less its frame now).
struct Hub<'a> {
    dtype: Dtype,
    sketch: &'a Sketch,
    hash: ChunkHash,
    bytes: Bytes,
    moving: u64,
}

/// Whether a group's new frames take at least one member as a delta and shrink the group by at
/// least [`MIN_SAVING`].
fn worth_it(group: &[&Planned]) -> bool {
    let before: u64 = group.iter().map(|step| u64::from(step.record.frame_len)).sum();
    let after: u64 = group.iter().map(|step| step.frame.len() as u64).sum();
    group.iter().any(|step| step.base.is_some()) && (after as f64) < (1.0 - MIN_SAVING) * before as f64
}

/// Encodes `raw` (against `base`, a chunk id, its bytes and its dtype, when given) and decodes
/// the frame back, on the cores: a frame that does not give `raw` back is an error, and nothing
/// is written.
async fn encode_checked(raw: Bytes, dtype: Dtype, base: Option<(ChunkHash, Bytes, Dtype)>, format: FrameFormat) -> anyhow::Result<Vec<u8>> {
    on_cores(move || {
        let base = base.as_ref().map(|(hash, bytes, base_dtype)| (BaseChunk { hash: ContentHash(*hash), bytes }, *base_dtype));
        let frame = encode_chunk_as(&raw, dtype, base, format)?;
        let decoded = decode_frame(&frame, base.map(|(chunk, _)| chunk))?;
        anyhow::ensure!(decoded == raw, "a re-based frame does not decode to its chunk");
        Ok(frame)
    })
    .await?
}

/// Writes the planned frames (fitted by `chains::fit_chains`) into a new pack and switches the
/// index to them: with every key locked, the objects
/// using a switched chunk are marked pending, one transaction switches the chunks, and recovery
/// writes their manifests again. Returns the chunks switched and their frame bytes before and
/// after (nothing when a chunk changed since it was planned: the new pack goes to the trash).
async fn switch(store: &Store, prefix: &str, planned: Vec<Planned>) -> anyhow::Result<(usize, u64, u64)> {
    if planned.is_empty() {
        return Ok((0, 0, 0));
    }
    let before: u64 = planned.iter().map(|step| u64::from(step.record.frame_len)).sum();
    let target = pack_key(prefix, &new_id());
    let in_flight = store.in_flight.begin(&target);
    let mut writer = store.upstream.writer(&target).await?;
    let mut steps = Vec::with_capacity(planned.len());
    let mut written = 0u64;
    for step in planned {
        let frame_len = step.frame.len() as u32;
        if let Err(error) = writer.write(Bytes::from(step.frame)).await {
            writer.abort().await;
            return Err(error);
        }
        steps.push(Rebased { hash: step.hash, planned_from: step.record, offset: written, frame_len, base: step.base });
        written += u64::from(frame_len);
    }
    writer.finish().await?;
    let records = store.config.shared_upstream.then(|| publish::records_of(&target, written, &steps));
    if let Some(records) = &records {
        store.index.save_unpublished(&target, records)?;
    }
    let switched = {
        let _all_writes = store.locks.lock_all_keys().await;
        let moved: HashSet<ChunkHash> = steps.iter().map(|step| step.hash).collect();
        store.index.mark_all_pending(&objects_using(store, &moved)?)?;
        match store.index.rebase(&target, written, &steps, now_ms()) {
            Ok(()) => {
                store.index.count_rebase(steps.len() as u64, before.saturating_sub(written))?;
                (steps.len(), before, written)
            }
            Err(IndexError::Refused(Refusal::VersionChanged | Refusal::ChainOfBases)) => {
                tracing::info!("chunks changed while re-basing was planned; it runs again later");
                store.index.trash_key(&target, now_ms())?;
                (0, 0, 0)
            }
            Err(error) => return Err(error.into()),
        }
    };
    if let Some(records) = records {
        if switched.0 > 0 {
            publish::publish(store, &records).await?;
        }
        store.index.forget_unpublished(&target)?;
    }
    drop(in_flight);
    catalog::recover(store).await?;
    Ok(switched)
}
