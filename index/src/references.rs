//! Reference counts and the trash: chunks are counted by the objects and deltas that use them;
//! a chunk with none is dead, swept after a grace period, and a pack with no live bytes or a
//! blob nothing uses goes to the trash, whose upstream keys the gateway deletes later.

use std::collections::{HashMap, HashSet};

use sled::transaction::TransactionalTree;
use sled::Transactional;

use crate::encoding::{abort, encode, flatten, tx_decode, tx_encode, TxResult};
use crate::{decode, hex, ChunkHash, ChunkRecord, Index, IndexError, ObjectRecord, PackRecord, PartRecord, Result, Segment};

/// The `meta` key of the last orphan listing's time.
const ORPHAN_SCAN: &str = "orphan-scan";

/// The prefix of the `meta` keys (`orphan-spared/<upstream key>`, empty values) of the upstream
/// keys that an upstream record alone, not this index, kept from being orphans at the last
/// orphan listing or since.
const ORPHAN_SPARED: &str = "orphan-spared/";

/// The `meta` key that records upstream key `key` as spared (see [`ORPHAN_SPARED`]).
fn spared_key(key: &str) -> Vec<u8> {
    format!("{ORPHAN_SPARED}{key}").into_bytes()
}

impl Index {
    /// Sends every recorded pack that no chunk uses to the trash (after `index rebuild`, the
    /// packs no adopted manifest needed). Returns how many.
    pub fn trash_unused_packs(&self, now_ms: i64) -> Result<usize> {
        let mut trashed = 0;
        for entry in self.packs.iter() {
            let (key, value) = entry?;
            if decode::<PackRecord>(&value)?.live_bytes == 0 {
                self.packs.remove(&key)?;
                self.trash.insert(&key, &now_ms.to_be_bytes())?;
                trashed += 1;
            }
        }
        self.flush()?;
        Ok(trashed)
    }

    /// Whether chunks the index holds (live, or dead and not swept yet) are stored in pack `key`.
    pub fn pack_in_use(&self, key: &str) -> Result<bool> {
        match self.packs.get(key.as_bytes())? {
            Some(value) => Ok(decode::<PackRecord>(&value)?.live_bytes > 0),
            None => Ok(false),
        }
    }

    /// Records a pack the index did not know of, at least `total_bytes` long; a known pack
    /// grows to `total_bytes` if it was recorded shorter.
    pub fn ensure_pack(&self, key: &str, total_bytes: u64) -> Result<()> {
        loop {
            let old = self.packs.get(key.as_bytes())?;
            let mut pack = match &old {
                Some(value) if decode::<PackRecord>(value)?.total_bytes >= total_bytes => return Ok(()),
                Some(value) => decode::<PackRecord>(value)?,
                None => PackRecord { total_bytes: 0, live_bytes: 0 },
            };
            pack.total_bytes = total_bytes;
            if self.packs.compare_and_swap(key.as_bytes(), old, Some(encode(&pack)?))?.is_ok() {
                return Ok(());
            }
        }
    }

    /// Upstream keys freed before `cutoff_ms`, which nothing references any more.
    pub fn trash_before(&self, cutoff_ms: i64) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        for entry in self.trash.iter() {
            let (key, value) = entry?;
            if read_ms(&value) <= cutoff_ms {
                keys.push(String::from_utf8_lossy(&key).into_owned());
            }
        }
        Ok(keys)
    }

    /// Sends an upstream key nothing references to the trash, unless it is there already.
    pub fn trash_key(&self, key: &str, now_ms: i64) -> Result<()> {
        self.trash.compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(&now_ms.to_be_bytes()[..]))?.ok();
        Ok(())
    }

    pub fn in_trash(&self, key: &str) -> Result<bool> {
        Ok(self.trash.contains_key(key.as_bytes())?)
    }

    /// When the upstream was last listed for orphans and every one of age sent to the trash
    /// (milliseconds since the Unix epoch); `None` before the first such listing, and
    /// [`IndexError::MalformedValue`] for a value that is no time.
    pub fn last_orphan_scan_ms(&self) -> Result<Option<i64>> {
        let Some(value) = self.meta.get(ORPHAN_SCAN)? else { return Ok(None) };
        let time = value.as_ref().try_into().map_err(|_| IndexError::MalformedValue(ORPHAN_SCAN))?;
        Ok(Some(i64::from_be_bytes(time)))
    }

    /// Records a listing for orphans at `at_ms`, once every one of age then is in the trash,
    /// with the keys of age it spared only because an upstream record named them or a write in
    /// flight held them (`spared`), in
    /// place of those recorded before: in one batch, of the keys that changed.
    pub fn set_last_orphan_scan(&self, at_ms: i64, spared: &[String]) -> Result<()> {
        let spared: HashSet<Vec<u8>> = spared.iter().map(|key| spared_key(key)).collect();
        let mut batch = sled::Batch::default();
        let mut recorded = HashSet::new();
        for entry in self.meta.scan_prefix(ORPHAN_SPARED) {
            let key = entry?.0.to_vec();
            if !spared.contains(&key) {
                batch.remove(&key[..]);
            }
            recorded.insert(key);
        }
        for key in spared.difference(&recorded) {
            batch.insert(&key[..], &[]);
        }
        batch.insert(ORPHAN_SCAN, &at_ms.to_be_bytes()[..]);
        self.meta.apply_batch(batch)?;
        Ok(())
    }

    /// Records that an upstream record or a write in flight alone keeps `key` from being an
    /// orphan, after the last listing (the garbage collector takes such a key out of the trash).
    pub fn spare_from_orphan_scan(&self, key: &str) -> Result<()> {
        self.meta.insert(spared_key(key), &[])?;
        Ok(())
    }

    /// Whether an upstream record or a write in flight alone kept `key` from being an orphan at
    /// the last listing, or since: freed after, it is the next listing's to send to the trash.
    pub fn spared_from_orphan_scan(&self, key: &str) -> Result<bool> {
        Ok(self.meta.contains_key(spared_key(key))?)
    }

    /// Every upstream key the index uses: live packs, the blobs of objects, and the part blobs
    /// of uploads in progress.
    pub fn referenced_upstream_keys(&self) -> Result<HashSet<String>> {
        let mut keys = HashSet::new();
        for entry in self.packs.iter() {
            keys.insert(String::from_utf8_lossy(&entry?.0).into_owned());
        }
        for entry in self.objects.iter() {
            let record: ObjectRecord = decode(&entry?.1)?;
            keys.extend(record.segments.into_iter().filter_map(|segment| match segment {
                Segment::Blob { key, .. } => Some(key),
                _ => None,
            }));
        }
        for entry in self.parts.iter() {
            let part = decode::<PartRecord>(&entry?.1)?;
            if !part.blob.is_empty() {
                keys.insert(part.blob);
            }
        }
        Ok(keys)
    }

    /// Forgets a trash entry once its upstream key is deleted.
    pub fn forget_trash(&self, key: &str) -> Result<()> {
        self.trash.remove(key)?;
        Ok(())
    }

    /// Chunks without references, dead since `cutoff_ms` or before: what a sweep may collect.
    pub fn dead_chunks(&self, cutoff_ms: i64) -> Result<Vec<ChunkHash>> {
        let mut dead = Vec::new();
        for entry in self.all_chunks() {
            let (hash, record) = entry?;
            if record.refs == 0 && record.dead_since_ms.is_some_and(|t| t <= cutoff_ms) {
                dead.push(hash);
            }
        }
        Ok(dead)
    }

    /// Collects one dead chunk, if it still has no reference: removes it, takes its bytes off
    /// its pack's live count (trashing the pack when none are left) and releases its base, in
    /// one transaction. False if the chunk was gone or referenced again.
    pub fn sweep_chunk(&self, hash: &ChunkHash, now_ms: i64) -> Result<bool> {
        let result = (&self.chunks, &self.packs, &self.trash).transaction(|(chunks, packs, trash)| {
            let Some(value) = chunks.get(hash)? else { return Ok(false) };
            let record: ChunkRecord = tx_decode(&value)?;
            if record.refs != 0 {
                return Ok(false);
            }
            chunks.remove(&hash[..])?;
            if let Some(pack_value) = packs.get(record.pack.as_bytes())? {
                let mut pack: PackRecord = tx_decode(&pack_value)?;
                pack.live_bytes = pack.live_bytes.saturating_sub(u64::from(record.frame_len));
                store_pack(packs, trash, &record.pack, &pack, now_ms)?;
            }
            if let Some(base) = record.base {
                release_chunk(chunks, &base, now_ms)?;
            }
            Ok(true)
        });
        flatten(result)
    }
}

fn read_ms(bytes: &[u8]) -> i64 {
    let mut word = [0u8; 8];
    let len = bytes.len().min(8);
    word[..len].copy_from_slice(&bytes[..len]);
    i64::from_be_bytes(word)
}

/// Takes one reference on a chunk, inserting it from `new_chunks` (and referencing its base)
/// if the index does not hold it yet.
pub(crate) fn acquire_chunk(
    chunks: &TransactionalTree,
    packs: &TransactionalTree,
    new_chunks: &HashMap<ChunkHash, &ChunkRecord>,
    hash: &ChunkHash,
) -> TxResult<()> {
    if let Some(value) = chunks.get(hash)? {
        let mut record: ChunkRecord = tx_decode(&value)?;
        record.refs += 1;
        record.dead_since_ms = None;
        chunks.insert(hash, tx_encode(&record)?)?;
        return Ok(());
    }
    let Some(new) = new_chunks.get(hash) else {
        return abort(IndexError::MissingChunk(hex(hash)));
    };
    let mut record = (*new).clone();
    record.refs = 1;
    record.dead_since_ms = None;
    chunks.insert(hash, tx_encode(&record)?)?;
    let pack_value = packs.get(record.pack.as_bytes())?;
    let Some(pack_value) = pack_value else {
        return abort(IndexError::MissingChunk(hex(hash)));
    };
    let mut pack: PackRecord = tx_decode(&pack_value)?;
    pack.live_bytes += u64::from(record.frame_len);
    packs.insert(record.pack.as_bytes(), tx_encode(&pack)?)?;
    if let Some(base) = record.base {
        acquire_chunk(chunks, packs, new_chunks, &base)?;
    }
    Ok(())
}

/// Writes a pack's record back, or sends the pack to the trash when no live byte is left.
pub(crate) fn store_pack(packs: &TransactionalTree, trash: &TransactionalTree, key: &str, pack: &PackRecord, now_ms: i64) -> TxResult<()> {
    if pack.live_bytes == 0 {
        packs.remove(key.as_bytes())?;
        trash.insert(key.as_bytes(), &now_ms.to_be_bytes())?;
    } else {
        packs.insert(key.as_bytes(), tx_encode(pack)?)?;
    }
    Ok(())
}

/// Drops one reference on a chunk, marking it dead when none is left.
pub(crate) fn release_chunk(chunks: &TransactionalTree, hash: &ChunkHash, now_ms: i64) -> TxResult<()> {
    let Some(value) = chunks.get(hash)? else { return Ok(()) };
    let mut record: ChunkRecord = tx_decode(&value)?;
    record.refs = record.refs.saturating_sub(1);
    if record.refs == 0 {
        record.dead_since_ms = Some(now_ms);
    }
    chunks.insert(hash, tx_encode(&record)?)?;
    Ok(())
}

/// Releases what `old` holds: chunk references, and blobs that `new` does not reuse.
pub(crate) fn release_segments(
    chunks: &TransactionalTree,
    trash: &TransactionalTree,
    old: &[Segment],
    new: &[Segment],
    now_ms: i64,
) -> TxResult<()> {
    for segment in old {
        match segment {
            Segment::Chunk { hash, .. } => release_chunk(chunks, hash, now_ms)?,
            Segment::Blob { key, .. } => {
                let reused = new.iter().any(|s| matches!(s, Segment::Blob { key: k, .. } if k == key));
                if !reused {
                    trash.insert(key.as_bytes(), &now_ms.to_be_bytes())?;
                }
            }
            Segment::Inline(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_records::{chunk, record};
    use crate::{Expect, NewChunk, NewPack, ObjectKey, Refusal};

    #[test]
    fn references_follow_commits_and_deletes_and_sweeps_free_packs() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        index.create_bucket("t", "b", &crate::BucketRecord::new(0)).unwrap();
        let key = ObjectKey::new("t", "b", "k");
        let shared = [1u8; 32];
        let only_first = [2u8; 32];
        let new_chunks = vec![NewChunk { hash: shared, record: chunk("packs/1", 10) }, NewChunk { hash: only_first, record: chunk("packs/1", 5) }];
        let pack = NewPack { key: "packs/1".into(), total_bytes: 15 };
        let first = record(vec![Segment::Chunk { hash: shared, len: 10 }, Segment::Chunk { hash: only_first, len: 5 }]);
        index.commit_object(&key, &first, &new_chunks, Some(&pack), Expect::Any, 0).unwrap();
        let second = record(vec![Segment::Chunk { hash: shared, len: 10 }, Segment::Blob { key: "blobs/x".into(), offset: 0, len: 3 }]);
        index.commit_object(&key, &second, &[], None, Expect::Any, 0).unwrap();
        assert_eq!(index.chunk(&shared).unwrap().unwrap().refs, 1);
        assert_eq!(index.chunk(&only_first).unwrap().unwrap().refs, 0);
        assert!(index.check().unwrap().problems.is_empty());
        assert!(matches!(
            index.commit_object(&key, &first, &[], None, Expect::Version("stale"), 0),
            Err(IndexError::Refused(Refusal::VersionChanged))
        ));
        assert!(index.delete_object(&key, 5).unwrap());
        let dead = index.dead_chunks(10).unwrap();
        assert_eq!(dead.len(), 2);
        for hash in &dead {
            assert!(index.sweep_chunk(hash, 10).unwrap());
        }
        assert_eq!(index.pack_bytes().unwrap(), 0);
        let trash = index.trash_before(10).unwrap();
        assert!(trash.contains(&"packs/1".to_owned()) && trash.contains(&"blobs/x".to_owned()), "{trash:?}");
        assert!(index.check().unwrap().problems.is_empty());
    }

    #[test]
    fn the_last_orphan_listing_is_a_time_or_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        assert_eq!(index.last_orphan_scan_ms().unwrap(), None);
        index.set_last_orphan_scan(1_700_000_000_123, &[]).unwrap();
        assert_eq!(index.last_orphan_scan_ms().unwrap(), Some(1_700_000_000_123));
        index.meta.insert(ORPHAN_SCAN, &b"seven bytes"[..7]).unwrap();
        assert!(matches!(index.last_orphan_scan_ms(), Err(IndexError::MalformedValue(ORPHAN_SCAN))));
        index.set_last_orphan_scan(5, &[]).unwrap();
        assert_eq!(index.last_orphan_scan_ms().unwrap(), Some(5));
    }

    #[test]
    fn a_listing_keeps_only_its_own_spared_keys() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        index.set_last_orphan_scan(10, &["packs/a".to_owned(), "blobs/b".to_owned()]).unwrap();
        assert!(index.spared_from_orphan_scan("packs/a").unwrap() && index.spared_from_orphan_scan("blobs/b").unwrap());
        assert!(!index.spared_from_orphan_scan("packs/c").unwrap());
        index.spare_from_orphan_scan("blobs/d").unwrap();
        assert!(index.spared_from_orphan_scan("blobs/d").unwrap());
        index.set_last_orphan_scan(20, &["packs/c".to_owned(), "packs/a".to_owned()]).unwrap();
        assert_eq!(index.last_orphan_scan_ms().unwrap(), Some(20));
        assert!(index.spared_from_orphan_scan("packs/c").unwrap() && index.spared_from_orphan_scan("packs/a").unwrap());
        assert!(!index.spared_from_orphan_scan("blobs/b").unwrap() && !index.spared_from_orphan_scan("blobs/d").unwrap(), "the keys before are replaced");
        assert_eq!(index.meta.scan_prefix(ORPHAN_SPARED).count(), 2);
    }
}
