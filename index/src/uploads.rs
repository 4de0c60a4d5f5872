//! Multipart uploads: created, their parts recorded, completed into an object (queued for the
//! packer unless its parts were encoded as they arrived) or aborted, each in one transaction.
//! An encoded part holds a reference on each of its chunks until the upload ends; at its
//! completion the object takes references of its own, and the parts' are released.

use std::collections::HashMap;

use sled::transaction::TransactionalTree;
use sled::Transactional;

use crate::encoding::{abort, encode, flatten, tx_decode, tx_encode, TxResult};
use crate::objects::NewPack;
use crate::references::{acquire_chunk, release_segments, store_pack};
use crate::{decode, keys, ChunkHash, ChunkRecord, Index, IndexError, NewChunk, ObjectKey, ObjectRecord, PackJob, PackRecord, PartRecord, Result, Segment, UploadRecord, Refusal};

impl Index {
    pub fn create_upload(&self, upload_id: &str, record: &UploadRecord) -> Result<()> {
        self.uploads.insert(upload_id, encode(record)?)?;
        self.flush()
    }

    pub fn upload(&self, upload_id: &str) -> Result<Option<UploadRecord>> {
        self.uploads.get(upload_id)?.map(|v| decode(&v)).transpose()
    }

    /// The ids of every upload in progress.
    pub fn all_upload_ids(&self) -> Result<Vec<String>> {
        self.uploads.iter().keys().map(|id| Ok(String::from_utf8_lossy(&id?).into_owned())).collect()
    }

    /// Uploads in progress in a bucket, with their ids, sorted by key then id.
    pub fn list_uploads(&self, tenant: &str, bucket: &str) -> Result<Vec<(String, UploadRecord)>> {
        let mut uploads = Vec::new();
        for entry in self.uploads.iter() {
            let (id, value) = entry?;
            let upload: UploadRecord = decode(&value)?;
            if upload.tenant == tenant && upload.bucket == bucket {
                uploads.push((String::from_utf8_lossy(&id).into_owned(), upload));
            }
        }
        uploads.sort_by(|a, b| (&a.1.key, &a.0).cmp(&(&b.1.key, &b.0)));
        Ok(uploads)
    }

    /// Records a part, taking references on the chunks of an encoded one (inserting
    /// `new_chunks`, written in `new_pack`); a part uploaded again under the same number
    /// releases the old one's blob or chunks.
    pub fn put_part(&self, upload_id: &str, number: u32, part: &PartRecord, new_chunks: &[NewChunk], new_pack: Option<&NewPack>, now_ms: i64) -> Result<()> {
        let part_key = keys::part(upload_id, number);
        let new_chunks: HashMap<ChunkHash, &ChunkRecord> = new_chunks.iter().map(|c| (c.hash, &c.record)).collect();
        let segments = part.segments();
        let trees = (&self.uploads, &self.parts, &self.chunks, &self.packs, &self.trash);
        let result = trees.transaction(|(uploads, parts, chunks, packs, trash)| {
            if uploads.get(upload_id)?.is_none() {
                return abort(IndexError::Refused(Refusal::NoSuchUpload));
            }
            if let Some(pack) = new_pack {
                packs.insert(pack.key.as_bytes(), tx_encode(&PackRecord { total_bytes: pack.total_bytes, live_bytes: 0 })?)?;
            }
            for hash in segments.iter().filter_map(Segment::chunk_hash) {
                acquire_chunk(chunks, packs, &new_chunks, &hash)?;
            }
            if let Some(pack) = new_pack {
                let stored: PackRecord = tx_decode(&packs.get(pack.key.as_bytes())?.unwrap_or_default())?;
                store_pack(packs, trash, &pack.key, &stored, now_ms)?;
            }
            if let Some(old) = parts.insert(part_key.as_slice(), tx_encode(part)?)? {
                release_part(chunks, trash, &tx_decode(&old)?, &[], now_ms)?;
            }
            Ok(())
        });
        flatten(result)?;
        self.flush()
    }

    /// Part `number` of an upload, if recorded.
    pub fn part(&self, upload_id: &str, number: u32) -> Result<Option<PartRecord>> {
        self.parts.get(keys::part(upload_id, number))?.map(|value| decode(&value)).transpose()
    }

    /// The parts of an upload, by part number.
    pub fn parts(&self, upload_id: &str) -> Result<Vec<(u32, PartRecord)>> {
        self.parts
            .scan_prefix(keys::parts_prefix(upload_id))
            .map(|entry| {
                let (key, value) = entry?;
                Ok((keys::part_number(&key)?, decode(&value)?))
            })
            .collect()
    }

    /// Ends an upload: commits `record` (the segments of `chosen`, the parts by number as the
    /// caller read them), drops the upload, releases what its parts held (blobs the record does
    /// not use go to the trash), and queues the object for the packer if `pack`, in one
    /// transaction. Refused if an encoded part of `chosen` was uploaded again meanwhile.
    pub fn complete_upload(
        &self,
        upload_id: &str,
        key: &ObjectKey,
        record: &ObjectRecord,
        chosen: &[(u32, &PartRecord)],
        pack: bool,
        now_ms: i64,
    ) -> Result<()> {
        let object_key = key.encode();
        let part_keys = self.part_keys(upload_id)?;
        // An encoded part's chunks are the record's: it must still be the part recorded. (With
        // a shared upstream, parts come from their markers and are stored as they came.)
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = chosen
            .iter()
            .filter(|(_, part)| part.encoded.is_some())
            .map(|(number, part)| Ok((keys::part(upload_id, *number), encode(*part)?)))
            .collect::<Result<_>>()?;
        let job = PackJob {
            tenant: key.tenant.clone(),
            bucket: key.bucket.clone(),
            key: key.key.clone(),
            version: record.version.clone(),
        };
        let bucket_key = keys::bucket(&key.tenant, &key.bucket);
        let no_new_chunks = HashMap::new();
        let trees = (&self.objects, &self.chunks, &self.packs, &self.trash, &self.queue, &self.uploads, &self.parts, &self.buckets);
        let result = trees.transaction(|(objects, chunks, packs, trash, queue, uploads, parts, buckets)| {
            if uploads.remove(upload_id)?.is_none() {
                return abort(IndexError::Refused(Refusal::NoSuchUpload));
            }
            if buckets.get(bucket_key.as_slice())?.is_none() {
                return abort(IndexError::Refused(Refusal::NoSuchBucket));
            }
            for (part_key, value) in &encoded {
                if parts.get(part_key.as_slice())?.as_deref() != Some(value.as_slice()) {
                    return abort(IndexError::Refused(Refusal::PartChanged));
                }
            }
            // The object's references first, so that no chunk the parts hand on dies meanwhile.
            for hash in record.segments.iter().filter_map(Segment::chunk_hash) {
                acquire_chunk(chunks, packs, &no_new_chunks, &hash)?;
            }
            for part_key in &part_keys {
                if let Some(part) = parts.remove(part_key.as_ref())? {
                    release_part(chunks, trash, &tx_decode(&part)?, &record.segments, now_ms)?;
                }
            }
            if let Some(previous) = objects.get(object_key.as_slice())? {
                let previous: ObjectRecord = tx_decode(&previous)?;
                release_segments(chunks, trash, &previous.segments, &record.segments, now_ms)?;
            }
            objects.insert(object_key.as_slice(), tx_encode(record)?)?;
            if pack {
                queue.insert(record.version.as_bytes(), tx_encode(&job)?)?;
            }
            Ok(())
        });
        flatten(result)?;
        self.release_parts_left(upload_id, now_ms)?;
        self.flush()
    }

    /// Drops an upload and releases its parts.
    pub fn abort_upload(&self, upload_id: &str, now_ms: i64) -> Result<()> {
        let part_keys = self.part_keys(upload_id)?;
        let result = (&self.uploads, &self.parts, &self.chunks, &self.trash).transaction(|(uploads, parts, chunks, trash)| {
            if uploads.remove(upload_id)?.is_none() {
                return abort(IndexError::Refused(Refusal::NoSuchUpload));
            }
            for part_key in &part_keys {
                if let Some(part) = parts.remove(part_key.as_ref())? {
                    release_part(chunks, trash, &tx_decode(&part)?, &[], now_ms)?;
                }
            }
            Ok(())
        });
        flatten(result)?;
        self.release_parts_left(upload_id, now_ms)?;
        self.flush()
    }

    /// The keys of an upload's parts.
    fn part_keys(&self, upload_id: &str) -> Result<Vec<sled::IVec>> {
        Ok(self.parts.scan_prefix(keys::parts_prefix(upload_id)).keys().collect::<std::result::Result<_, _>>()?)
    }

    /// Releases the parts of an ended upload that were recorded after its end read them (a
    /// part is refused once its upload is gone, so these are the last).
    fn release_parts_left(&self, upload_id: &str, now_ms: i64) -> Result<()> {
        for part_key in self.part_keys(upload_id)? {
            let result = (&self.parts, &self.chunks, &self.trash).transaction(|(parts, chunks, trash)| {
                if let Some(part) = parts.remove(part_key.as_ref())? {
                    release_part(chunks, trash, &tx_decode(&part)?, &[], now_ms)?;
                }
                Ok(())
            });
            flatten(result)?;
        }
        Ok(())
    }
}

/// Releases what a part holds: the references of its chunks, and its blob unless `kept` (the
/// completed object's segments) uses it.
fn release_part(chunks: &TransactionalTree, trash: &TransactionalTree, part: &PartRecord, kept: &[Segment], now_ms: i64) -> TxResult<()> {
    release_segments(chunks, trash, &part.segments(), kept, now_ms)
}

#[cfg(test)]
mod tests {
    use crate::test_records::{chunk, fresh_index, record};
    use crate::{Attributes, Checksums, EncodedPart, IndexError, NewChunk, NewPack, ObjectKey, PartRecord, Refusal, Segment, UploadRecord};

    fn part(blob: &str) -> PartRecord {
        PartRecord { blob: blob.into(), size: 3, etag: "e".into(), last_modified_ms: 0, checksums: Checksums::default(), encoded: None }
    }

    fn upload(index: &crate::Index, id: &str) {
        let record = UploadRecord { tenant: "t".into(), bucket: "b".into(), key: "k".into(), initiated_ms: 0, attributes: Attributes::default(), checksum: None };
        index.create_upload(id, &record).unwrap();
    }

    #[test]
    fn completion_keeps_the_chosen_parts_trashes_the_rest_and_queues_the_packer() {
        let (_dir, index) = fresh_index();
        index.create_bucket("t", "b", &crate::BucketRecord::new(0)).unwrap();
        upload(&index, "u1");
        index.put_part("u1", 1, &part("blobs/p1"), &[], None, 0).unwrap();
        index.put_part("u1", 2, &part("blobs/p2-old"), &[], None, 0).unwrap();
        index.put_part("u1", 2, &part("blobs/p2"), &[], None, 1).unwrap();
        index.put_part("u1", 3, &part("blobs/p3"), &[], None, 1).unwrap();
        assert_eq!(index.trash_before(1).unwrap(), vec!["blobs/p2-old".to_owned()], "a part sent again frees the old blob");
        let parts: Vec<u32> = index.parts("u1").unwrap().into_iter().map(|(number, _)| number).collect();
        assert_eq!(parts, vec![1, 2, 3]);
        let object = record(vec![Segment::Blob { key: "blobs/p1".into(), offset: 0, len: 3 }, Segment::Blob { key: "blobs/p2".into(), offset: 0, len: 3 }]);
        let key = ObjectKey::new("t", "b", "k");
        index.complete_upload("u1", &key, &object, &[], true, 2).unwrap();
        let mut trash = index.trash_before(2).unwrap();
        trash.sort();
        assert_eq!(trash, vec!["blobs/p2-old".to_owned(), "blobs/p3".to_owned()]);
        assert_eq!(index.object(&key).unwrap(), Some(object));
        assert_eq!(index.next_pack_job().unwrap().map(|job| job.version), Some("v1".to_owned()));
        assert!(index.upload("u1").unwrap().is_none() && index.parts("u1").unwrap().is_empty());
        assert!(matches!(index.complete_upload("u1", &key, &record(vec![]), &[], true, 3), Err(IndexError::Refused(Refusal::NoSuchUpload))));
        assert!(index.check().unwrap().problems.is_empty());
    }

    #[test]
    fn an_aborted_upload_frees_every_part_and_refuses_more() {
        let (_dir, index) = fresh_index();
        upload(&index, "u2");
        index.put_part("u2", 1, &part("blobs/a"), &[], None, 0).unwrap();
        index.abort_upload("u2", 1).unwrap();
        assert_eq!(index.trash_before(1).unwrap(), vec!["blobs/a".to_owned()]);
        assert!(matches!(index.put_part("u2", 2, &part("blobs/b"), &[], None, 2), Err(IndexError::Refused(Refusal::NoSuchUpload))));
        assert!(matches!(index.abort_upload("u2", 2), Err(IndexError::Refused(Refusal::NoSuchUpload))));
    }

    fn encoded(chunks: &[[u8; 32]]) -> PartRecord {
        let segments = chunks.iter().map(|hash| Segment::Chunk { hash: *hash, len: 10 }).collect();
        PartRecord { blob: String::new(), encoded: Some(EncodedPart { offset: 0, layout_id: String::new(), segments, sketches: vec![] }), ..part("") }
    }

    #[test]
    fn encoded_parts_hold_their_chunks_until_the_object_takes_them() {
        let (_dir, index) = fresh_index();
        index.create_bucket("t", "b", &crate::BucketRecord::new(0)).unwrap();
        upload(&index, "u3");
        let (kept, replaced, unused) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let new = |hash: [u8; 32], pack: &str| NewChunk { hash, record: chunk(pack, 10) };
        let pack = |key: &str| NewPack { key: key.into(), total_bytes: 10 };
        index.put_part("u3", 1, &encoded(&[kept]), &[new(kept, "packs/1")], Some(&pack("packs/1")), 0).unwrap();
        index.put_part("u3", 2, &encoded(&[replaced]), &[new(replaced, "packs/2")], Some(&pack("packs/2")), 0).unwrap();
        index.put_part("u3", 2, &encoded(&[kept]), &[], None, 1).unwrap();
        index.put_part("u3", 3, &encoded(&[unused]), &[new(unused, "packs/3")], Some(&pack("packs/3")), 1).unwrap();
        assert!(index.check().unwrap().problems.is_empty(), "{:?}", index.check().unwrap().problems);
        assert_eq!(index.chunk(&kept).unwrap().unwrap().refs, 2, "held by parts 1 and 2");
        assert_eq!(index.chunk(&replaced).unwrap().unwrap().refs, 0, "released when part 2 was sent again");
        let object = record(vec![Segment::Chunk { hash: kept, len: 10 }, Segment::Chunk { hash: kept, len: 10 }]);
        let key = ObjectKey::new("t", "b", "k");
        let (first, second) = (encoded(&[kept]), encoded(&[kept]));
        let mut stale = encoded(&[kept]);
        stale.etag = "sent before".into();
        assert!(
            matches!(index.complete_upload("u3", &key, &object, &[(1, &first), (2, &stale)], false, 2), Err(IndexError::Refused(Refusal::PartChanged))),
            "part 2 was sent again after the completion read it"
        );
        index.complete_upload("u3", &key, &object, &[(1, &first), (2, &second)], false, 2).unwrap();
        assert_eq!(index.chunk(&kept).unwrap().unwrap().refs, 2, "now the object's");
        assert_eq!(index.chunk(&unused).unwrap().unwrap().refs, 0, "part 3 was not chosen");
        assert!(index.next_pack_job().unwrap().is_none(), "nothing for the packer");
        assert!(index.check().unwrap().problems.is_empty());
        upload(&index, "u4");
        index.put_part("u4", 1, &encoded(&[kept]), &[], None, 3).unwrap();
        index.abort_upload("u4", 4).unwrap();
        assert_eq!(index.chunk(&kept).unwrap().unwrap().refs, 2, "an aborted upload lets go of its parts' chunks");
        assert!(index.check().unwrap().problems.is_empty());
    }
}
