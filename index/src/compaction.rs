//! Compaction's side of the index: packs worth compacting, the live chunks in them, and the
//! move of those chunks to their copies in a new pack.

use std::collections::{HashMap, HashSet};

use sled::Transactional;

use crate::encoding::{flatten, tx_decode, tx_encode};
use crate::references::store_pack;
use crate::{decode, ChunkHash, ChunkRecord, Index, PackRecord, Result};

/// A frame copied from one pack to another by compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Move {
    pub hash: ChunkHash,
    pub from_offset: u64,
    pub to_offset: u64,
}

impl Index {
    /// Packs whose live bytes are under `ratio` of their size (and above zero): worth
    /// compacting.
    pub fn sparse_packs(&self, ratio: f64) -> Result<Vec<(String, PackRecord)>> {
        let mut sparse = Vec::new();
        for entry in self.packs.iter() {
            let (key, value) = entry?;
            let pack: PackRecord = decode(&value)?;
            if pack.live_bytes > 0 && (pack.live_bytes as f64) < ratio * pack.total_bytes as f64 {
                sparse.push((String::from_utf8_lossy(&key).into_owned(), pack));
            }
        }
        Ok(sparse)
    }

    /// The referenced chunks stored in each of `packs`, by offset, in one scan of the chunks.
    pub fn live_chunks_in(&self, packs: &HashSet<&str>) -> Result<HashMap<String, Vec<(ChunkHash, ChunkRecord)>>> {
        let mut found: HashMap<String, Vec<(ChunkHash, ChunkRecord)>> = HashMap::new();
        for entry in self.all_chunks() {
            let (hash, record) = entry?;
            if record.refs > 0 && packs.contains(record.pack.as_str()) {
                found.entry(record.pack.clone()).or_default().push((hash, record));
            }
        }
        for chunks in found.values_mut() {
            chunks.sort_by_key(|(_, record)| record.offset);
        }
        Ok(found)
    }

    /// Points the chunks that compaction copied from pack `from` to the new pack `to` (of
    /// `to_total` bytes) at their copies, in one transaction. A chunk that changed meanwhile
    /// (collected, or moved) keeps its record. Each pack left with no live bytes goes to the
    /// trash. Returns how many chunks moved.
    pub fn relocate(&self, from: &str, to: &str, to_total: u64, moves: &[Move], now_ms: i64) -> Result<usize> {
        let result = (&self.chunks, &self.packs, &self.trash).transaction(|(chunks, packs, trash)| {
            let mut source: PackRecord = match packs.get(from.as_bytes())? {
                Some(value) => tx_decode(&value)?,
                None => PackRecord { total_bytes: 0, live_bytes: 0 },
            };
            let mut target = PackRecord { total_bytes: to_total, live_bytes: 0 };
            let mut moved = 0;
            for step in moves {
                let Some(value) = chunks.get(step.hash)? else { continue };
                let mut record: ChunkRecord = tx_decode(&value)?;
                if record.pack != from || record.offset != step.from_offset {
                    continue;
                }
                record.pack = to.to_owned();
                record.offset = step.to_offset;
                source.live_bytes = source.live_bytes.saturating_sub(u64::from(record.frame_len));
                target.live_bytes += u64::from(record.frame_len);
                chunks.insert(&step.hash, tx_encode(&record)?)?;
                moved += 1;
            }
            for (key, pack) in [(from, &source), (to, &target)] {
                store_pack(packs, trash, key, pack, now_ms)?;
            }
            Ok(moved)
        });
        let moved = flatten(result)?;
        self.flush()?;
        Ok(moved)
    }

    /// Upstream bytes held by live packs.
    pub fn pack_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for entry in self.packs.iter() {
            let (_, value) = entry?;
            total += decode::<PackRecord>(&value)?.total_bytes;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_records::{fresh_index, object_of_two_chunks, record};
    use crate::{Expect, ObjectKey, Segment};

    #[test]
    fn relocation_moves_only_unchanged_chunks_and_trashes_the_emptied_pack() {
        let (_dir, index) = fresh_index();
        let (kept, dropped) = ([1u8; 32], [2u8; 32]);
        object_of_two_chunks(&index, kept, dropped);
        let key = ObjectKey::new("t", "b", "k");
        index.commit_object(&key, &record(vec![Segment::Chunk { hash: kept, len: 10 }]), &[], None, Expect::Any, 1).unwrap();
        assert!(index.sweep_chunk(&dropped, 2).unwrap());
        let sparse = index.sparse_packs(0.5).unwrap();
        assert_eq!(sparse.len(), 1, "10 live bytes of 40");
        let live = index.live_chunks_in(&HashSet::from(["packs/old"])).unwrap();
        assert_eq!(live["packs/old"].len(), 1);
        let moves = [Move { hash: kept, from_offset: 0, to_offset: 0 }, Move { hash: [3; 32], from_offset: 5, to_offset: 10 }];
        assert_eq!(index.relocate("packs/old", "packs/new", 10, &moves, 3).unwrap(), 1, "an unknown chunk is not moved");
        assert_eq!(index.chunk(&kept).unwrap().unwrap().pack, "packs/new");
        assert!(index.trash_before(3).unwrap().contains(&"packs/old".to_owned()));
        assert_eq!(index.pack_bytes().unwrap(), 10);
        assert!(index.check().unwrap().problems.is_empty());
        let stale = [Move { hash: kept, from_offset: 0, to_offset: 0 }];
        assert_eq!(index.relocate("packs/old", "packs/other", 10, &stale, 4).unwrap(), 0, "a chunk moved meanwhile keeps its record");
        assert_eq!(index.chunk(&kept).unwrap().unwrap().pack, "packs/new");
    }
}
