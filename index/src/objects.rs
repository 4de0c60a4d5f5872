//! Objects: read, listed, committed (with the reference counts of their chunks, in one
//! transaction), adopted from an upstream manifest, and deleted.

use std::collections::{HashMap, HashSet};

use sled::Transactional;

use crate::encoding::{abort, flatten, tx_decode, tx_encode};
use crate::references::{acquire_chunk, release_segments};
use crate::{decode, hex, keys, ChunkHash, ChunkLocation, ChunkRecord, Index, IndexError, Manifest, ObjectKey, ObjectRecord, PackRecord, Result, Segment, Refusal};

/// A chunk written to a pack by the write being committed, not yet in the index.
#[derive(Debug, Clone)]
pub struct NewChunk {
    pub hash: ChunkHash,
    pub record: ChunkRecord,
}

/// A pack written by the write being committed.
#[derive(Debug, Clone)]
pub struct NewPack {
    pub key: String,
    pub total_bytes: u64,
}

/// What a commit requires of the object's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect<'a> {
    /// Any state: a client's write replaces whatever is there.
    Any,
    /// The object must still be at this version (the packer's swap).
    Version(&'a str),
    /// No object may be there (a client's `If-None-Match: *`).
    Absent,
    /// An object must be there, with this ETag if one is given (a client's `If-Match`).
    ETag(Option<&'a str>),
}

impl Expect<'_> {
    /// Whether `current`, the object there now (if any), meets the expectation.
    pub fn holds(&self, current: Option<&ObjectRecord>) -> bool {
        match (self, current) {
            (Expect::Any, _) => true,
            (Expect::Version(version), current) => current.is_some_and(|record| record.version == *version),
            (Expect::Absent, current) => current.is_none(),
            (Expect::ETag(etag), current) => current.is_some_and(|record| etag.is_none_or(|etag| record.etag == etag)),
        }
    }

    /// The error of a commit whose expectation does not hold of `current`: S3 answers an
    /// `If-Match` on a key with no object NoSuchKey.
    pub fn unmet(&self, current: Option<&ObjectRecord>) -> IndexError {
        match (self, current) {
            (Expect::Version(_), _) => IndexError::Refused(Refusal::VersionChanged),
            (Expect::ETag(_), None) => IndexError::Refused(Refusal::NoSuchKey),
            _ => IndexError::Refused(Refusal::PreconditionFailed),
        }
    }
}

impl Index {
    pub fn object(&self, key: &ObjectKey) -> Result<Option<ObjectRecord>> {
        self.objects.get(key.encode())?.map(|v| decode(&v)).transpose()
    }

    /// Objects of a bucket whose key starts with `prefix`, in key order, from just after
    /// `start_after` when given.
    pub fn list_objects<'a>(
        &'a self,
        tenant: &str,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
    ) -> impl Iterator<Item = Result<(String, ObjectRecord)>> + 'a {
        let bucket_prefix = keys::object_prefix(tenant, bucket);
        let mut scan_prefix = bucket_prefix.clone();
        scan_prefix.extend_from_slice(prefix.as_bytes());
        let mut start = scan_prefix.clone();
        if let Some(after) = start_after {
            let mut after_key = bucket_prefix.clone();
            after_key.extend_from_slice(after.as_bytes());
            after_key.push(0);
            start = start.max(after_key);
        }
        self.objects
            .range(start..)
            .take_while(move |entry| entry.as_ref().map_or(true, |(key, _)| key.starts_with(&scan_prefix)))
            .map(move |entry| {
                let (key, value) = entry?;
                let name = String::from_utf8_lossy(&key[bucket_prefix.len()..]).into_owned();
                Ok((name, decode(&value)?))
            })
    }

    pub fn chunk(&self, hash: &ChunkHash) -> Result<Option<ChunkRecord>> {
        self.chunks.get(hash)?.map(|v| decode(&v)).transpose()
    }

    /// Makes `record` the object at `key`: takes references on its chunks (inserting the new
    /// ones), releases the previous version's, and sends freed blobs to the trash, at once.
    pub fn commit_object(
        &self,
        key: &ObjectKey,
        record: &ObjectRecord,
        new_chunks: &[NewChunk],
        new_pack: Option<&NewPack>,
        expect: Expect<'_>,
        now_ms: i64,
    ) -> Result<()> {
        let new_chunks: HashMap<ChunkHash, &ChunkRecord> = new_chunks.iter().map(|c| (c.hash, &c.record)).collect();
        let object_key = key.encode();
        let bucket_key = keys::bucket(&key.tenant, &key.bucket);
        let trees = (&self.objects, &self.chunks, &self.packs, &self.trash, &self.buckets);
        let result = trees.transaction(|(objects, chunks, packs, trash, buckets)| {
            // Read in the transaction, so that a bucket deleted meanwhile refuses the write.
            if buckets.get(bucket_key.as_slice())?.is_none() {
                return abort(IndexError::Refused(Refusal::NoSuchBucket));
            }
            let previous: Option<ObjectRecord> = objects.get(object_key.as_slice())?.map(|v| tx_decode(&v)).transpose()?;
            if !expect.holds(previous.as_ref()) {
                return abort(expect.unmet(previous.as_ref()));
            }
            if let Some(pack) = new_pack {
                let record = PackRecord { total_bytes: pack.total_bytes, live_bytes: 0 };
                packs.insert(pack.key.as_bytes(), tx_encode(&record)?)?;
            }
            for segment in &record.segments {
                if let Segment::Chunk { hash, .. } = segment {
                    acquire_chunk(chunks, packs, &new_chunks, hash)?;
                }
            }
            if let Some(pack) = new_pack {
                let stored: PackRecord = tx_decode(&packs.get(pack.key.as_bytes())?.unwrap_or_default())?;
                if stored.live_bytes == 0 {
                    packs.remove(pack.key.as_bytes())?;
                    trash.insert(pack.key.as_bytes(), &now_ms.to_be_bytes())?;
                }
            }
            if let Some(previous) = &previous {
                release_segments(chunks, trash, &previous.segments, &record.segments, now_ms)?;
            }
            objects.insert(object_key.as_slice(), tx_encode(record)?)?;
            Ok(())
        });
        flatten(result)?;
        self.flush()
    }

    /// Where every chunk `record` uses is stored (its own chunks and their bases): the chunk
    /// table of its manifest. The index's copy comes first (a commit keeps it), then the copy
    /// in `new_chunks`, which the commit would insert.
    pub fn locate(&self, record: &ObjectRecord, new_chunks: &[NewChunk]) -> Result<Vec<ChunkLocation>> {
        let new_chunks: HashMap<&ChunkHash, &ChunkRecord> = new_chunks.iter().map(|new| (&new.hash, &new.record)).collect();
        let mut locations: Vec<ChunkLocation> = Vec::new();
        let mut seen = HashSet::new();
        let mut pending: Vec<ChunkHash> = record.segments.iter().filter_map(Segment::chunk_hash).collect();
        while let Some(hash) = pending.pop() {
            if !seen.insert(hash) {
                continue;
            }
            let chunk = match self.chunk(&hash)? {
                Some(stored) => stored,
                None => (*new_chunks.get(&hash).ok_or_else(|| IndexError::MissingChunk(hex(&hash)))?).clone(),
            };
            pending.extend(chunk.base);
            locations.push(ChunkLocation::new(hash, &chunk));
        }
        Ok(locations)
    }

    /// Makes a manifest read from the upstream the object it names, adding its bucket (if
    /// missing) and the chunks and packs it uses that the index does not hold yet. Where a
    /// chunk the index lacks is stored is up to `resolve`, given the chunk and the manifest's
    /// location for it: that location, another copy, or none (the chunk is then reported
    /// missing and nothing changes).
    pub fn adopt(
        &self,
        manifest: &Manifest,
        now_ms: i64,
        resolve: impl Fn(&ChunkHash, Option<&ChunkLocation>) -> Option<ChunkLocation>,
    ) -> Result<()> {
        let table: HashMap<ChunkHash, &ChunkLocation> = manifest.chunks.iter().map(|location| (location.hash, location)).collect();
        let mut new_chunks = Vec::new();
        let mut wanted: Vec<ChunkHash> = manifest.record.segments.iter().filter_map(Segment::chunk_hash).collect();
        let mut seen = HashSet::new();
        // The chunks the object reads, and the bases of those taken from outside the index.
        while let Some(hash) = wanted.pop() {
            if !seen.insert(hash) || self.chunk(&hash)?.is_some() {
                continue;
            }
            let location = resolve(&hash, table.get(&hash).copied()).ok_or_else(|| IndexError::MissingChunk(hex(&hash)))?;
            wanted.extend(location.base);
            new_chunks.push(NewChunk { hash, record: location.record() });
        }
        self.create_bucket(&manifest.tenant, &manifest.bucket, &crate::BucketRecord::new(manifest.record.last_modified_ms))?;
        for new in &new_chunks {
            self.ensure_pack(&new.record.pack, new.record.offset + u64::from(new.record.frame_len))?;
        }
        let key = ObjectKey::new(&manifest.tenant, &manifest.bucket, &manifest.key);
        self.commit_object(&key, &manifest.record, &new_chunks, None, Expect::Any, now_ms)
    }

    /// Every object with its full name, in key order.
    pub fn all_objects(&self) -> impl Iterator<Item = Result<(ObjectKey, ObjectRecord)>> + '_ {
        self.objects.iter().map(|entry| {
            let (key, value) = entry?;
            Ok((keys::object_key(&key)?, decode(&value)?))
        })
    }

    /// Removes the object at `key`; false if there was none.
    pub fn delete_object(&self, key: &ObjectKey, now_ms: i64) -> Result<bool> {
        let object_key = key.encode();
        let result = (&self.objects, &self.chunks, &self.trash).transaction(|(objects, chunks, trash)| {
            let Some(previous) = objects.remove(object_key.as_slice())? else {
                return Ok(false);
            };
            let previous: ObjectRecord = tx_decode(&previous)?;
            release_segments(chunks, trash, &previous.segments, &[], now_ms)?;
            Ok(true)
        });
        let deleted = flatten(result)?;
        self.flush()?;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_records::record;

    #[test]
    fn a_commit_naming_an_unknown_chunk_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        index.create_bucket("t", "b", &crate::BucketRecord::new(0)).unwrap();
        let key = ObjectKey::new("t", "b", "k");
        let result = index.commit_object(&key, &record(vec![Segment::Chunk { hash: [9; 32], len: 1 }]), &[], None, Expect::Any, 0);
        assert!(matches!(result, Err(IndexError::MissingChunk(_))));
        assert!(index.object(&key).unwrap().is_none());
    }

    #[test]
    fn adopt_takes_a_chunk_only_where_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let hash = [4u8; 32];
        let location = ChunkLocation { hash, pack: "packs/gone".into(), offset: 0, frame_len: 8, raw_len: 8, base: None };
        let manifest = Manifest {
            tenant: "t".into(),
            bucket: "b".into(),
            key: "k".into(),
            record: record(vec![Segment::Chunk { hash, len: 8 }]),
            chunks: vec![location],
        };
        assert!(matches!(index.adopt(&manifest, 0, |_, _| None), Err(IndexError::MissingChunk(_))));
        assert!(index.is_empty(), "a refused adoption changes nothing");
        index.adopt(&manifest, 0, |_, own| own.cloned()).unwrap();
        assert_eq!(index.chunk(&hash).unwrap().unwrap().refs, 1);
    }
}
