//! Re-basing (issue 16): chunks stored again as new frames (on their own, or as deltas against
//! another stored chunk) in a new pack, switched in one transaction. A chunk's bytes and id do
//! not change, only where its frame is and what it is a delta of; the reference counts of its
//! old and new bases move with it.

use std::collections::HashMap;

use sled::transaction::{ConflictableTransactionError, Transactional};

use crate::encoding::{encode, flatten, tx_decode, tx_encode};
use crate::references::{release_chunk, store_pack};
use crate::{decode, BaseCandidate, ChunkHash, ChunkRecord, Index, IndexError, PackRebased, PackRecord, Refusal, Result, MAX_BASE_DEPTH};

/// The `meta` key of re-basing's totals: chunks switched and frame bytes saved, a postcard
/// `(u64, u64)`.
const REBASE_TOTALS: &str = "rebase-totals";

/// The `meta` key prefix of switches not yet published, followed by the new pack's key; a
/// postcard `Vec<PackRebased>`.
const UNPUBLISHED: &str = "rebase-unpublished/";

/// A chunk's new frame, and where its frame must still be for the switch to happen.
#[derive(Debug, Clone)]
pub struct Rebased {
    pub hash: ChunkHash,
    /// The chunk's record when its new frame was planned: its pack, offset, frame length and
    /// base must be unchanged (its reference count may have moved).
    pub planned_from: ChunkRecord,
    /// Offset and length of the new frame in the new pack.
    pub offset: u64,
    pub frame_len: u32,
    /// The new frame's base, if it is a delta.
    pub base: Option<ChunkHash>,
}

impl Index {
    /// Whether re-basing found nothing to gain in the chunks and frames `digest` names.
    pub fn rebase_settled(&self, digest: &[u8; 32]) -> Result<bool> {
        Ok(self.rebase_settled.contains_key(digest)?)
    }

    /// Records that re-basing found nothing to gain in what `digest` names. Not flushed: a digest
    /// a crash loses is only weighed again.
    pub fn settle_rebase(&self, digest: &[u8; 32]) -> Result<()> {
        self.rebase_settled.insert(digest, &[])?;
        Ok(())
    }

    /// Forgets every settled digest (they are weighed again) when there are more than `max`:
    /// digests of frames since changed never match again, and would otherwise pile up. Counting
    /// reads the whole tree.
    pub fn forget_settled_past(&self, max: usize) -> Result<()> {
        if self.rebase_settled.iter().keys().nth(max).is_some() {
            self.rebase_settled.clear()?;
        }
        Ok(())
    }

    /// Adds one switch to what re-basing has done in this index: chunks switched and frame bytes
    /// saved. One writer at a time (garbage collection, under its lock); not part of the
    /// switch's transaction: a crash between the two loses one switch from the totals, never a
    /// chunk.
    pub fn count_rebase(&self, chunks: u64, bytes_saved: u64) -> Result<()> {
        let (old_chunks, old_saved) = self.rebase_totals()?;
        self.meta.insert(REBASE_TOTALS, encode(&(old_chunks.saturating_add(chunks), old_saved.saturating_add(bytes_saved)))?)?;
        Ok(())
    }

    /// Keeps, until [`Index::forget_unpublished`], what a switch to pack `to` is to publish with a
    /// shared upstream (its records, by old pack), so that a crash between the switch and its
    /// publication leaves it to be published later. Flushed.
    pub fn save_unpublished(&self, to: &str, records: &[PackRebased]) -> Result<()> {
        self.meta.insert(format!("{UNPUBLISHED}{to}"), encode(&records)?)?;
        self.flush()
    }

    /// Every switch saved and not yet forgotten: its new pack and its records.
    pub fn unpublished(&self) -> Result<Vec<(String, Vec<PackRebased>)>> {
        let mut found = Vec::new();
        for entry in self.meta.scan_prefix(UNPUBLISHED) {
            let (key, value) = entry?;
            let to = String::from_utf8_lossy(&key[UNPUBLISHED.len()..]).into_owned();
            found.push((to, decode(&value)?));
        }
        Ok(found)
    }

    /// Forgets a switch saved by [`Index::save_unpublished`]: published, or never made.
    pub fn forget_unpublished(&self, to: &str) -> Result<()> {
        self.meta.remove(format!("{UNPUBLISHED}{to}"))?;
        Ok(())
    }

    /// What re-basing has done in this index: chunks switched and frame bytes saved.
    pub fn rebase_totals(&self) -> Result<(u64, u64)> {
        match self.meta.get(REBASE_TOTALS)? {
            Some(value) => decode(&value),
            None => Ok((0, 0)),
        }
    }

    /// Every family of base candidates: the stored tensors of one dtype and shape (the
    /// signature) within one dedup scope, as (scope, signature, candidates).
    pub fn candidate_families(&self) -> Result<Vec<(String, String, Vec<BaseCandidate>)>> {
        let mut families: Vec<(String, String, Vec<BaseCandidate>)> = Vec::new();
        for entry in self.candidates.iter() {
            let (key, value) = entry?;
            // `scope 00 signature 00` then a 32-byte id.
            let malformed = || IndexError::MalformedKey(String::from_utf8_lossy(&key).into_owned());
            let scope_end = key.iter().position(|byte| *byte == 0).ok_or_else(malformed)?;
            let signature_end = key.len().checked_sub(33).filter(|end| *end > scope_end && key[*end] == 0).ok_or_else(malformed)?;
            let scope = String::from_utf8_lossy(&key[..scope_end]);
            let signature = String::from_utf8_lossy(&key[scope_end + 1..signature_end]);
            let candidate: BaseCandidate = decode(&value)?;
            match families.last_mut() {
                Some((last_scope, last_signature, members)) if *last_scope == scope && *last_signature == signature => members.push(candidate),
                _ => families.push((scope.into_owned(), signature.into_owned(), vec![candidate])),
            }
        }
        Ok(families)
    }

    /// Points the chunks of `steps` at their new frames in pack `to` (of `to_total` bytes), all
    /// in one transaction or none: if any chunk is dead or its frame is not where it was
    /// planned, or a new base is not a live chunk, or a chain of bases would loop or be deeper
    /// than `MAX_BASE_DEPTH`, nothing changes and the refusal says so.
    /// Old bases lose a reference (dying when it was their last), new ones gain one; a pack left
    /// with no live bytes goes to the trash. A chunk named twice is an error.
    pub fn rebase(&self, to: &str, to_total: u64, steps: &[Rebased], now_ms: i64) -> Result<()> {
        let mut named = std::collections::HashSet::new();
        if let Some(twice) = steps.iter().find(|step| !named.insert(step.hash)) {
            return Err(IndexError::DuplicateStep(crate::hex(&twice.hash)));
        }
        let result = (&self.chunks, &self.packs, &self.trash).transaction(|(chunks, packs, trash)| {
            let changed = || ConflictableTransactionError::Abort(IndexError::Refused(Refusal::VersionChanged));
            let mut live: HashMap<String, i64> = HashMap::new();
            let mut released = Vec::new();
            for step in steps {
                let value = chunks.get(step.hash)?.ok_or_else(changed)?;
                let mut record: ChunkRecord = tx_decode(&value)?;
                let planned = &step.planned_from;
                let moved = (&record.pack, record.offset, record.frame_len, record.base) != (&planned.pack, planned.offset, planned.frame_len, planned.base);
                if moved || record.refs == 0 {
                    return Err(changed());
                }
                *live.entry(record.pack.clone()).or_default() -= i64::from(record.frame_len);
                *live.entry(to.to_owned()).or_default() += i64::from(step.frame_len);
                let old_base = record.base;
                record.pack = to.to_owned();
                record.offset = step.offset;
                record.frame_len = step.frame_len;
                record.base = step.base;
                chunks.insert(&step.hash, tx_encode(&record)?)?;
                released.extend(old_base);
            }
            // New bases take their references before old ones are released, so that a base
            // is refused only if it was dead before the switch. The transaction reads its own
            // writes: a base named by several steps, or stepped itself, is counted right.
            for new in steps.iter().filter_map(|step| step.base) {
                let value = chunks.get(new)?.ok_or_else(changed)?;
                let mut base: ChunkRecord = tx_decode(&value)?;
                if base.refs == 0 {
                    return Err(changed());
                }
                base.refs += 1;
                chunks.insert(&new, tx_encode(&base)?)?;
            }
            // Against the index as it is, the switch included (a transaction reads its own
            // writes): no chain of bases may loop or pass what readers decode.
            for step in steps.iter().filter(|step| step.base.is_some()) {
                let mut next = step.base;
                for _ in 0..MAX_BASE_DEPTH {
                    let Some(current) = next else { break };
                    if current == step.hash {
                        return Err(ConflictableTransactionError::Abort(IndexError::Refused(Refusal::ChainOfBases)));
                    }
                    let value = chunks.get(current)?.ok_or_else(changed)?;
                    next = tx_decode::<ChunkRecord>(&value)?.base;
                }
                if next.is_some() {
                    return Err(ConflictableTransactionError::Abort(IndexError::Refused(Refusal::ChainOfBases)));
                }
            }
            for old in released {
                release_chunk(chunks, &old, now_ms)?;
            }
            for (pack, change) in live {
                let mut record: PackRecord = match packs.get(pack.as_bytes())? {
                    Some(value) => tx_decode(&value)?,
                    None if pack == to => PackRecord { total_bytes: to_total, live_bytes: 0 },
                    None => return Err(changed()),
                };
                record.live_bytes = record.live_bytes.saturating_add_signed(change);
                store_pack(packs, trash, &pack, &record, now_ms)?;
            }
            Ok(())
        });
        flatten(result)?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_records::{fresh_index, object_of_two_chunks, record};
    use crate::{Expect, ObjectKey, Segment};

    #[test]
    fn rebase_totals_add_up() {
        let (_dir, index) = fresh_index();
        assert_eq!(index.rebase_totals().unwrap(), (0, 0));
        index.count_rebase(3, 1000).unwrap();
        index.count_rebase(2, 24).unwrap();
        assert_eq!(index.rebase_totals().unwrap(), (5, 1024));
    }

    #[test]
    fn unpublished_switches_are_kept_until_forgotten() {
        let (_dir, index) = fresh_index();
        let frame = crate::RebasedFrame { hash: [1; 32], from_offset: 3, to: "packs/n".into(), to_total: 9, to_offset: 0, frame_len: 9, base: None };
        let records = vec![PackRebased { from: "packs/p".into(), frames: vec![frame] }];
        index.save_unpublished("packs/n", &records).unwrap();
        assert_eq!(index.unpublished().unwrap(), vec![("packs/n".to_owned(), records)]);
        index.forget_unpublished("packs/n").unwrap();
        assert!(index.unpublished().unwrap().is_empty());
    }

    #[test]
    fn settled_digests_are_kept_until_there_are_too_many() {
        let (_dir, index) = fresh_index();
        for digest in [[1u8; 32], [2u8; 32]] {
            assert!(!index.rebase_settled(&digest).unwrap());
            index.settle_rebase(&digest).unwrap();
            assert!(index.rebase_settled(&digest).unwrap());
        }
        index.forget_settled_past(2).unwrap();
        assert!(index.rebase_settled(&[1u8; 32]).unwrap(), "two are not more than two");
        index.forget_settled_past(1).unwrap();
        assert!(!index.rebase_settled(&[1u8; 32]).unwrap() && !index.rebase_settled(&[2u8; 32]).unwrap());
    }

    #[test]
    fn families_group_candidates_by_scope_and_signature() {
        let (_dir, index) = fresh_index();
        for (scope, signature, id) in [("t", "BF16:4x4", 1u8), ("t", "BF16:4x4", 2), ("t", "F32:4x4", 3), ("u", "BF16:4x4", 4)] {
            index.add_candidate(scope, signature, &BaseCandidate { sketch: vec![id], chunks: vec![[id; 32]] }).unwrap();
        }
        let families = index.candidate_families().unwrap();
        let shape: Vec<_> = families.iter().map(|(scope, signature, members)| (scope.as_str(), signature.as_str(), members.len())).collect();
        assert_eq!(shape, [("t", "BF16:4x4", 2), ("t", "F32:4x4", 1), ("u", "BF16:4x4", 1)]);
    }

    #[test]
    fn a_switch_moves_references_and_is_all_or_nothing() {
        let (_dir, index) = fresh_index();
        let (root, tuned) = ([1u8; 32], [2u8; 32]);
        object_of_two_chunks(&index, root, tuned);
        let planned_from = index.chunk(&tuned).unwrap().unwrap();
        let step = Rebased { hash: tuned, planned_from: planned_from.clone(), offset: 0, frame_len: 5, base: Some(root) };

        let root_record = index.chunk(&root).unwrap().unwrap();
        let root_alone = Rebased { hash: root, planned_from: root_record.clone(), offset: 5, frame_len: 8, base: None };
        let stale = Rebased { planned_from: ChunkRecord { offset: 99, ..root_record.clone() }, ..root_alone.clone() };
        let refused = index.rebase("packs/new", 13, &[step.clone(), stale], 1);
        assert!(matches!(refused, Err(IndexError::Refused(Refusal::VersionChanged))), "{refused:?}");
        assert_eq!(index.chunk(&tuned).unwrap().unwrap(), planned_from, "nothing changed");
        let twice = index.rebase("packs/new", 13, &[step.clone(), step.clone()], 1);
        assert!(matches!(twice, Err(IndexError::DuplicateStep(_))), "{twice:?}");

        // A reference count that moved since the plan does not stop the switch.
        let mut counted = planned_from.clone();
        counted.refs += 3;
        let step = Rebased { planned_from: counted, ..step };
        index.rebase("packs/new", 13, &[step, root_alone], 2).unwrap();
        let moved = index.chunk(&tuned).unwrap().unwrap();
        assert_eq!((moved.pack.as_str(), moved.frame_len, moved.base), ("packs/new", 5, Some(root)));
        assert_eq!(index.chunk(&root).unwrap().unwrap().refs, 2, "the object and the delta");
        assert!(index.check().unwrap().problems.is_empty(), "{:?}", index.check().unwrap().problems);
        assert_eq!(index.pack_bytes().unwrap(), 13, "the old pack, emptied, went to the trash");
        assert!(index.trash_before(3).unwrap().contains(&"packs/old".to_owned()));

        // A base that died is not taken.
        index.commit_object(&ObjectKey::new("t", "b", "k"), &record(vec![Segment::Chunk { hash: tuned, len: 30 }]), &[], None, Expect::Any, 3).unwrap();
        assert_eq!(index.chunk(&root).unwrap().unwrap().refs, 1, "only the delta now");
        let alone = Rebased { hash: tuned, planned_from: index.chunk(&tuned).unwrap().unwrap(), offset: 0, frame_len: 30, base: None };
        index.rebase("packs/third", 30, &[alone], 4).unwrap();
        assert_eq!(index.chunk(&root).unwrap().unwrap().refs, 0, "the root died with its last delta");
        let back = Rebased { hash: tuned, planned_from: index.chunk(&tuned).unwrap().unwrap(), offset: 0, frame_len: 5, base: Some(root) };
        assert!(matches!(index.rebase("packs/fourth", 5, &[back], 5), Err(IndexError::Refused(Refusal::VersionChanged))));
    }

    #[test]
    fn a_switch_that_would_loop_bases_is_refused_whole() {
        let (_dir, index) = fresh_index();
        let (root, tuned) = ([1u8; 32], [2u8; 32]);
        object_of_two_chunks(&index, root, tuned);
        let tuned_on_root = Rebased { hash: tuned, planned_from: index.chunk(&tuned).unwrap().unwrap(), offset: 0, frame_len: 5, base: Some(root) };
        index.rebase("packs/new", 5, &[tuned_on_root], 1).unwrap();
        // The root as a delta of its own delta: refused.
        let root_on_tuned = Rebased { hash: root, planned_from: index.chunk(&root).unwrap().unwrap(), offset: 0, frame_len: 7, base: Some(tuned) };
        let refused = index.rebase("packs/loop", 7, std::slice::from_ref(&root_on_tuned), 2);
        assert!(matches!(refused, Err(IndexError::Refused(Refusal::ChainOfBases))), "{refused:?}");
        // Both turned around in one switch is no loop.
        let tuned_alone = Rebased { hash: tuned, planned_from: index.chunk(&tuned).unwrap().unwrap(), offset: 7, frame_len: 30, base: None };
        index.rebase("packs/swap", 37, &[root_on_tuned, tuned_alone], 3).unwrap();
        assert_eq!(index.chunk(&root).unwrap().unwrap().base, Some(tuned));
        assert_eq!(index.chunk(&tuned).unwrap().unwrap().base, None);
        assert!(index.check().unwrap().problems.is_empty(), "{:?}", index.check().unwrap().problems);
    }
}
