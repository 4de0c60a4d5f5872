//! With a shared upstream, a gateway whose index still reads chunks in a pack that the lease
//! holder emptied points them at where their frames went: copies made by compaction
//! (`moved/<pack id>`, the same frame) and new frames written by re-basing (`rebased/<pack id>`,
//! a frame of the same bytes, maybe against another base). It does so at every sync, so that
//! its writes stop naming the old pack soon after; a frame may have moved on since (compacted
//! or re-based again), so each chunk follows the records from pack to pack, and goes to the
//! last place on that way it may enter: a pack that exists and is not condemned (a gateway that
//! acknowledged a pack's condemnation while not using it must not start using it). A re-based
//! frame is taken only onto a live base whose chain in this index ends without a loop within
//! `MAX_WRITE_DEPTH`. Whatever is not followed keeps its pack vetoed (see `condemned`).

use std::collections::{HashMap, HashSet};

use tensorgate_index::{moves_key, pack_id, rebased_key, ChunkHash, ChunkRecord, IndexError, PackMoves, PackRebased, Rebased, MOVED, PACKS, REBASED};

use crate::engine::ingest::MAX_WRITE_DEPTH;
use crate::engine::{read_record, Store};
use crate::ids::now_ms;

/// How many records one chunk follows at most in one sync.
const MAX_HOPS: usize = 16;

/// A chunk's frame: its pack (and that pack's length), offset, length and base.
#[derive(Clone)]
struct Place {
    pack: String,
    pack_total: u64,
    offset: u64,
    frame_len: u32,
    base: Option<ChunkHash>,
}

/// Where the frames of one pack went, by old offset and chunk id: compaction's copies keep the
/// frame (`None`), re-basing's new frames say theirs.
pub(crate) type Forwarding = HashMap<(u64, ChunkHash), (String, u64, u64, Option<(u32, Option<ChunkHash>)>)>;

/// The records of the packs looked at in one sync, and which packs may be entered.
struct Follower<'a> {
    store: &'a Store,
    condemned: &'a HashSet<String>,
    records: HashMap<String, Forwarding>,
    enterable: HashMap<String, bool>,
}

/// Points the index's chunks in packs that have records upstream (under `prefix`) at where
/// the records lead; `condemned` are the packs condemned there. Records that left chunks here
/// unfollowed before are passed over until they change or their pack is condemned. Returns how
/// many chunks moved.
pub(crate) async fn follow_records(store: &Store, prefix: &str, condemned: &HashSet<String>) -> anyhow::Result<usize> {
    // Each pack with records that this index uses, with those records' keys and tags.
    let mut recorded: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut listed_keys = HashSet::new();
    let folders = [format!("{prefix}{MOVED}"), format!("{prefix}{REBASED}")];
    for folder in &folders {
        for listed in store.upstream.list(folder).await? {
            listed_keys.insert(listed.key.clone());
            let Some(id) = listed.key.strip_prefix(folder.as_str()) else { continue };
            let pack = format!("{prefix}{PACKS}{id}");
            if pack_id(&pack).is_some() && store.index.pack_in_use(&pack)? {
                recorded.entry(pack).or_default().push((listed.key, listed.tag));
            }
        }
    }
    {
        let mut unfollowed = store.unfollowed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Records gone upstream (their pack was deleted) are forgotten.
        unfollowed.retain(|key, _| listed_keys.contains(key) || !folders.iter().any(|folder| key.starts_with(folder.as_str())));
        let tried = |records: &Vec<(String, String)>| records.iter().all(|(key, tag)| unfollowed.get(key) == Some(tag));
        recorded.retain(|pack, records| condemned.contains(pack) || !tried(records));
    }
    if recorded.is_empty() {
        return Ok(0);
    }
    let packs: HashSet<&str> = recorded.keys().map(String::as_str).collect();
    let held = store.index.live_chunks_in(&packs)?;
    let mut follower = Follower { store, condemned, records: HashMap::new(), enterable: HashMap::new() };
    let mut steps = Vec::new();
    for (hash, record) in held.into_values().flatten() {
        if let Some(place) = follower.destination(hash, &record).await? {
            let step = Rebased { hash, planned_from: record, offset: place.offset, frame_len: place.frame_len, base: place.base };
            steps.push((place.pack, place.pack_total, step));
        }
    }
    let followed = switch(store, keep_fitting(store, steps)?)?;
    let mut unfollowed = store.unfollowed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for (pack, records) in recorded {
        let still_used = store.index.pack_in_use(&pack)?;
        for (key, tag) in records {
            match still_used {
                true => unfollowed.insert(key, tag),
                false => unfollowed.remove(&key),
            };
        }
    }
    Ok(followed)
}

/// The steps whose new bases fit, each checked with the others' new bases in place, until none
/// is dropped.
fn keep_fitting(store: &Store, mut steps: Vec<(String, u64, Rebased)>) -> anyhow::Result<Vec<(String, u64, Rebased)>> {
    loop {
        let planned: HashMap<ChunkHash, Option<ChunkHash>> = steps.iter().map(|(_, _, step)| (step.hash, step.base)).collect();
        let before = steps.len();
        let mut kept = Vec::with_capacity(before);
        for (pack, total, step) in steps {
            let fits = match step.base {
                Some(base) if step.base != step.planned_from.base => fits_on(store, step.hash, base, &planned)?,
                _ => true,
            };
            if fits {
                kept.push((pack, total, step));
            }
        }
        steps = kept;
        if steps.len() == before {
            return Ok(steps);
        }
    }
}

/// Switches the index to the new places, a transaction per target pack, or a chunk at a time
/// for a pack whose whole switch is refused (a chunk died or moved meanwhile, or a chain of bases
/// would loop: the index checks it in each transaction). Returns how many chunks moved.
fn switch(store: &Store, steps: Vec<(String, u64, Rebased)>) -> anyhow::Result<usize> {
    let mut by_target: HashMap<(String, u64), Vec<Rebased>> = HashMap::new();
    for (pack, total, step) in steps {
        by_target.entry((pack, total)).or_default().push(step);
    }
    let mut followed = 0;
    for ((to, to_total), steps) in by_target {
        match store.index.rebase(&to, to_total, &steps, now_ms()) {
            Ok(()) => followed += steps.len(),
            Err(IndexError::Refused(_)) => {
                for step in steps {
                    match store.index.rebase(&to, to_total, std::slice::from_ref(&step), now_ms()) {
                        Ok(()) => followed += 1,
                        // Its pack stays in use; the record is tried again when it changes or its pack is condemned.
                        Err(IndexError::Refused(refusal)) => tracing::debug!(%to, %refusal, "a moved frame not followed"),
                        Err(error) => return Err(error.into()),
                    }
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(followed)
}

impl Follower<'_> {
    /// The last place the records lead chunk `hash` (stored as `record`) that it may go to.
    async fn destination(&mut self, hash: ChunkHash, record: &ChunkRecord) -> anyhow::Result<Option<Place>> {
        let mut at = Place { pack: record.pack.clone(), pack_total: 0, offset: record.offset, frame_len: record.frame_len, base: record.base };
        let mut chosen = None;
        for _ in 0..MAX_HOPS {
            let Some((pack, pack_total, offset, frame)) = self.forwarding(&at.pack).await?.get(&(at.offset, hash)).cloned() else { break };
            let (frame_len, base) = frame.unwrap_or((at.frame_len, at.base));
            at = Place { pack, pack_total, offset, frame_len, base };
            let base_fits = match at.base {
                Some(base) if at.base != record.base => fits_on(self.store, hash, base, &HashMap::new())?,
                _ => true,
            };
            if base_fits && self.may_enter(&at.pack).await? {
                chosen = Some(at.clone());
            }
        }
        Ok(chosen)
    }

    /// The records of `pack` (read once a sync). Records that cannot be read lead nowhere: the
    /// pack's chunks stay, and its veto with them.
    async fn forwarding(&mut self, pack: &str) -> anyhow::Result<&Forwarding> {
        if !self.records.contains_key(pack) {
            let read = read_forwarding(self.store, pack).await.unwrap_or_else(|error| {
                tracing::warn!(%pack, error = format!("{error:#}"), "the records of a pack's moved frames do not read; not followed");
                Forwarding::new()
            });
            self.records.insert(pack.to_owned(), read);
        }
        Ok(&self.records[pack])
    }

    /// Whether `pack` may be entered: it is not condemned and it is upstream.
    async fn may_enter(&mut self, pack: &str) -> anyhow::Result<bool> {
        if let Some(&known) = self.enterable.get(pack) {
            return Ok(known);
        }
        let enterable = !self.condemned.contains(pack) && self.store.upstream.list(pack).await?.iter().any(|listed| listed.key == pack);
        self.enterable.insert(pack.to_owned(), enterable);
        Ok(enterable)
    }
}

/// Reads the records of where the frames of `pack` went (none for a key that is not a pack's).
pub(crate) async fn read_forwarding(store: &Store, pack: &str) -> anyhow::Result<Forwarding> {
    let mut forwarding = Forwarding::new();
    let (Some(moved), Some(rebased)) = (moves_key(pack), rebased_key(pack)) else { return Ok(forwarding) };
    if let Some(moves) = read_record::<PackMoves>(store, &moved).await? {
        anyhow::ensure!(moves.from == pack, "the moves record of {pack} names {}", moves.from);
        for step in moves.moves {
            forwarding.insert((step.from_offset, step.hash), (moves.to.clone(), moves.to_total, step.to_offset, None));
        }
    }
    if let Some(record) = read_record::<PackRebased>(store, &rebased).await? {
        anyhow::ensure!(record.from == pack, "the re-basing record of {pack} names {}", record.from);
        for frame in record.frames {
            forwarding.insert((frame.from_offset, frame.hash), (frame.to, frame.to_total, frame.to_offset, Some((frame.frame_len, frame.base))));
        }
    }
    Ok(forwarding)
}

/// Whether `hash` may become a delta of `base` in this index, with the bases `planned` in
/// place of those the index holds: `base` is live, and its chain of bases ends without meeting
/// `hash`, `hash` ending at most `MAX_WRITE_DEPTH` deltas deep.
fn fits_on(store: &Store, hash: ChunkHash, base: ChunkHash, planned: &HashMap<ChunkHash, Option<ChunkHash>>) -> anyhow::Result<bool> {
    let mut next = Some(base);
    let mut depth = 0;
    while let Some(current) = next {
        depth += 1;
        if current == hash || depth > MAX_WRITE_DEPTH {
            return Ok(false);
        }
        let Some(record) = store.index.chunk(&current)? else { return Ok(false) };
        if record.refs == 0 {
            return Ok(false);
        }
        next = planned.get(&current).copied().unwrap_or(record.base);
    }
    Ok(true)
}
