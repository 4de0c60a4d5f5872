//! What the index can tell about itself: its invariants (for fsck), storage per bucket, and
//! where the bytes went by technique.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::encoding::encode;
use crate::{decode, hex, keys, ChunkHash, ChunkRecord, Index, IndexError, ObjectKey, ObjectRecord, PackRecord, PartRecord, Result, Segment};

/// Storage used by one bucket of one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub tenant: String,
    pub bucket: String,
    pub objects: u64,
    /// Bytes clients stored.
    pub logical_bytes: u64,
    /// Upstream bytes attributed to them.
    pub physical_bytes: u64,
}

/// Where the bytes of a set of objects went, by technique. The parts add up:
/// `logical = physical + file_dedup + chunk_dedup + delta + compression + headers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Savings {
    pub objects: u64,
    pub logical_bytes: u64,
    /// Upstream bytes: the frames of the chunks used (bases included) and blobs as stored.
    pub physical_bytes: u64,
    /// Objects identical to one counted before: nothing stored for them.
    pub file_dedup: u64,
    /// Chunks already stored for another object or tensor (tensor chunks and the content-defined
    /// chunks of other objects alike).
    pub chunk_dedup: u64,
    /// Raw minus frame bytes of delta chunks, less the frames of bases used by no object.
    pub delta: i64,
    /// Raw minus frame bytes of chunks stored on their own.
    pub compression: i64,
    /// Model headers (safetensors, GGUF), kept in the index and the manifests.
    pub headers: u64,
    /// Bytes stored as they came (objects under `min_model_bytes`, or uploads not packed yet).
    pub stored_as_is: u64,
}

/// What [`Index::check`] found.
#[derive(Debug, Default)]
pub struct IndexReport {
    pub objects: usize,
    pub chunks: usize,
    /// Every pack the index records, with its size.
    pub packs: Vec<(String, u64)>,
    /// Every blob an object uses, with the end of the bytes it uses.
    pub blobs: Vec<(String, u64)>,
    pub problems: Vec<String>,
}

/// How many deltas deep a chunk's bases may go. A gateway writes deltas at most two deep (one
/// with a shared upstream), but with a shared upstream another gateway may hold a base through
/// a chain of its own, so a chain can be longer; a chain longer than this is refused by readers
/// and reported by fsck.
pub const MAX_BASE_DEPTH: usize = 8;

/// Whether the bases of `record` end in a standalone chunk within [`MAX_BASE_DEPTH`] deltas (a
/// missing base is reported by the reference check).
fn base_chain_ends(chunks: &HashMap<ChunkHash, ChunkRecord>, record: &ChunkRecord) -> bool {
    let mut base = record.base;
    for _ in 0..MAX_BASE_DEPTH {
        match base.and_then(|hash| chunks.get(&hash)) {
            Some(next) => base = next.base,
            None => return true,
        }
    }
    base.is_none()
}

impl Index {
    /// Checks the invariants between trees: every chunk an object, an encoded part or a delta
    /// uses is stored, reference counts equal the references, every chunk's pack is known, and every pack's
    /// live bytes equal the frames that reference it. Returns what is wrong, if anything.
    pub fn check(&self) -> Result<IndexReport> {
        let mut report = IndexReport::default();
        let mut references: HashMap<ChunkHash, u64> = HashMap::new();
        for entry in self.objects.iter() {
            let (key, value) = entry?;
            let record: ObjectRecord = decode(&value)?;
            report.objects += 1;
            for segment in &record.segments {
                match segment {
                    Segment::Chunk { hash, .. } => *references.entry(*hash).or_default() += 1,
                    Segment::Blob { key: blob, offset, len } if *len > 0 => report.blobs.push((blob.clone(), offset + len)),
                    Segment::Inline(_) | Segment::Blob { .. } => {}
                }
            }
            let object = keys::object_key(&key)?;
            if self.bucket(&object.tenant, &object.bucket)?.is_none() {
                report.problems.push(format!("object {:?} is in a bucket that does not exist", keys::display(&key)));
            }
            let total: u64 = record.segments.iter().map(Segment::len).sum();
            if total != record.size {
                report.problems.push(format!("object {:?}: segments hold {total} bytes, size says {}", keys::display(&key), record.size));
            }
        }
        for entry in self.parts.iter() {
            let part: PartRecord = decode(&entry?.1)?;
            for hash in part.segments().iter().filter_map(Segment::chunk_hash) {
                *references.entry(hash).or_default() += 1;
            }
        }
        let mut chunks: HashMap<ChunkHash, ChunkRecord> = HashMap::new();
        for entry in self.chunks.iter() {
            let (hash, value) = entry?;
            let record: ChunkRecord = decode(&value)?;
            let hash = keys::chunk_hash(&hash)?;
            if let Some(base) = record.base {
                *references.entry(base).or_default() += 1;
            }
            chunks.insert(hash, record);
        }
        report.chunks = chunks.len();
        for (hash, count) in &references {
            match chunks.get(hash) {
                None => report.problems.push(format!("chunk {} is referenced {count} times but not stored", hex(hash))),
                Some(record) if record.refs != *count => report.problems.push(format!(
                    "chunk {} counts {} references, {count} found",
                    hex(hash),
                    record.refs
                )),
                Some(_) => {}
            }
        }
        for (hash, record) in &chunks {
            if !base_chain_ends(&chunks, record) {
                report.problems.push(format!("chunk {} is a delta whose bases do not end in a standalone chunk within {MAX_BASE_DEPTH}", hex(hash)));
            }
        }
        let mut live: HashMap<&str, u64> = HashMap::new();
        for (hash, record) in &chunks {
            if !references.contains_key(hash) && record.refs != 0 {
                report.problems.push(format!("chunk {} counts {} references, none found", hex(hash), record.refs));
            }
            *live.entry(record.pack.as_str()).or_default() += u64::from(record.frame_len);
        }
        for entry in self.packs.iter() {
            let (key, value) = entry?;
            let pack: PackRecord = decode(&value)?;
            let name = String::from_utf8_lossy(&key).into_owned();
            let found = live.remove(name.as_str()).unwrap_or(0);
            if found != pack.live_bytes {
                report.problems.push(format!("pack {name} counts {} live bytes, its chunks hold {found}", pack.live_bytes));
            }
            report.packs.push((name, pack.total_bytes));
        }
        for (pack, bytes) in live {
            report.problems.push(format!("pack {pack} holds {bytes} bytes of chunks but is not recorded"));
        }
        Ok(report)
    }

    /// Logical and physical bytes per tenant and bucket. A chunk's upstream bytes (its frame,
    /// plus for a delta its share of the base) are split evenly among its references, so the
    /// physical bytes of all buckets add up to what the live frames take.
    pub fn usage(&self) -> Result<Vec<Usage>> {
        let mut chunks: HashMap<ChunkHash, ChunkRecord> = HashMap::new();
        for entry in self.all_chunks() {
            let (hash, record) = entry?;
            chunks.insert(hash, record);
        }
        let share = |hash: &ChunkHash| -> f64 {
            let Some(record) = chunks.get(hash) else { return 0.0 };
            let base = record
                .base
                .and_then(|base| chunks.get(&base))
                .map_or(0.0, |base| f64::from(base.frame_len) / base.refs.max(1) as f64);
            (f64::from(record.frame_len) + base) / record.refs.max(1) as f64
        };
        let mut usage: BTreeMap<(String, String), Usage> = BTreeMap::new();
        for entry in self.objects.iter() {
            let (key, value) = entry?;
            let record: ObjectRecord = decode(&value)?;
            let (tenant, bucket) = keys::tenant_and_bucket(&key)?;
            let physical: f64 = record
                .segments
                .iter()
                .map(|segment| match segment {
                    Segment::Chunk { hash, .. } => share(hash),
                    Segment::Blob { len, .. } => *len as f64,
                    Segment::Inline(_) => 0.0,
                })
                .sum();
            let row = usage
                .entry((tenant.clone(), bucket.clone()))
                .or_insert_with(|| Usage { tenant, bucket, ..Usage::default() });
            row.objects += 1;
            row.logical_bytes += record.size;
            row.physical_bytes += physical.round() as u64;
        }
        Ok(usage.into_values().collect())
    }

    /// Where the bytes of the objects `selected` went, by technique (see [`Savings`]).
    pub fn savings(&self, selected: impl Fn(&ObjectKey) -> bool) -> Result<Savings> {
        let mut savings = Savings::default();
        let mut files = HashSet::new();
        let mut stored = HashSet::new();
        for entry in self.all_objects() {
            let (key, record) = entry?;
            if !selected(&key) {
                continue;
            }
            savings.objects += 1;
            savings.logical_bytes += record.size;
            let uses_chunks = record.segments.iter().any(|segment| matches!(segment, Segment::Chunk { .. }));
            if uses_chunks && !files.insert(encode(&record.segments)?) {
                savings.file_dedup += record.size;
                continue;
            }
            for segment in &record.segments {
                match segment {
                    Segment::Inline(bytes) => savings.headers += bytes.len() as u64,
                    Segment::Blob { len, .. } => {
                        savings.stored_as_is += len;
                        savings.physical_bytes += len;
                    }
                    Segment::Chunk { hash, len } if !stored.insert(*hash) => savings.chunk_dedup += u64::from(*len),
                    Segment::Chunk { hash, .. } => {
                        let chunk = self.chunk(hash)?.ok_or_else(|| IndexError::MissingChunk(hex(hash)))?;
                        let saved = i64::from(chunk.raw_len) - i64::from(chunk.frame_len);
                        savings.physical_bytes += u64::from(chunk.frame_len);
                        match chunk.base {
                            Some(base) => {
                                savings.delta += saved;
                                if stored.insert(base) {
                                    let base = self.chunk(&base)?.ok_or_else(|| IndexError::MissingChunk(hex(&base)))?;
                                    savings.physical_bytes += u64::from(base.frame_len);
                                    savings.delta -= i64::from(base.frame_len);
                                }
                            }
                            None => savings.compression += saved,
                        }
                    }
                }
            }
        }
        Ok(savings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_records::{chunk, fresh_index, record};
    use crate::{Expect, NewChunk, NewPack};

    #[test]
    fn savings_add_up_to_the_logical_bytes_and_usage_to_the_live_frames() {
        let (_dir, index) = fresh_index();
        index.create_bucket("t", "b", &crate::BucketRecord::new(0)).unwrap();
        let (base, delta) = ([1u8; 32], [2u8; 32]);
        let mut base_record = chunk("packs/1", 60);
        base_record.raw_len = 100;
        let mut delta_record = chunk("packs/1", 20);
        delta_record.raw_len = 100;
        delta_record.offset = 60;
        delta_record.base = Some(base);
        let new_chunks = [NewChunk { hash: base, record: base_record }, NewChunk { hash: delta, record: delta_record }];
        let pack = NewPack { key: "packs/1".into(), total_bytes: 80 };
        let first = record(vec![Segment::Inline(vec![0; 8]), Segment::Chunk { hash: base, len: 100 }]);
        let second = record(vec![Segment::Inline(vec![0; 8]), Segment::Chunk { hash: delta, len: 100 }]);
        let plain = record(vec![Segment::Blob { key: "blobs/x".into(), offset: 0, len: 50 }]);
        index.commit_object(&ObjectKey::new("t", "b", "base"), &first, &new_chunks[..1], Some(&pack), Expect::Any, 0).unwrap();
        index.commit_object(&ObjectKey::new("t", "b", "tune"), &second, &new_chunks[1..], None, Expect::Any, 0).unwrap();
        index.commit_object(&ObjectKey::new("t", "b", "copy"), &first, &[], None, Expect::Any, 0).unwrap();
        index.commit_object(&ObjectKey::new("t", "b", "plain"), &plain, &[], None, Expect::Any, 0).unwrap();
        let savings = index.savings(|_| true).unwrap();
        let parts = savings.physical_bytes as i64 + savings.file_dedup as i64 + savings.chunk_dedup as i64 + savings.delta + savings.compression + savings.headers as i64;
        assert_eq!(parts, savings.logical_bytes as i64, "{savings:?}");
        assert_eq!((savings.file_dedup, savings.delta, savings.compression), (108, 80, 40));
        let usage = index.usage().unwrap();
        assert_eq!(usage.len(), 1);
        assert_eq!(usage[0].objects, 4);
        assert_eq!(usage[0].physical_bytes, 80 + 50, "live frames and blobs, each counted once");
    }

    #[test]
    fn the_check_reports_a_wrong_reference_count_and_an_unrecorded_pack() {
        let (_dir, index) = fresh_index();
        index.create_bucket("t", "b", &crate::BucketRecord::new(0)).unwrap();
        let mut orphan = chunk("packs/unknown", 7);
        orphan.refs = 2;
        index.chunks.insert([5u8; 32], encode(&orphan).unwrap()).unwrap();
        let problems = index.check().unwrap().problems;
        assert!(problems.iter().any(|p| p.contains("counts 2 references, none found")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("packs/unknown holds 7 bytes")), "{problems:?}");
    }
}
