//! Multipart uploads: created, their parts recorded, completed into an object (queued for the
//! packer) or aborted, each in one transaction.

use sled::Transactional;

use crate::encoding::{abort, encode, flatten, tx_decode, tx_encode};
use crate::references::release_segments;
use crate::{decode, keys, Index, IndexError, ObjectKey, ObjectRecord, PackJob, PartRecord, Result, Segment, UploadRecord, Refusal};

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

    /// Records a part; a part uploaded again under the same number sends the old blob to the trash.
    pub fn put_part(&self, upload_id: &str, number: u32, part: &PartRecord, now_ms: i64) -> Result<()> {
        let part_key = keys::part(upload_id, number);
        let result = (&self.uploads, &self.parts, &self.trash).transaction(|(uploads, parts, trash)| {
            if uploads.get(upload_id)?.is_none() {
                return abort(IndexError::Refused(Refusal::NoSuchUpload));
            }
            if let Some(old) = parts.insert(part_key.as_slice(), tx_encode(part)?)? {
                let old: PartRecord = tx_decode(&old)?;
                trash.insert(old.blob.as_bytes(), &now_ms.to_be_bytes())?;
            }
            Ok(())
        });
        flatten(result)?;
        self.flush()
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

    /// Ends an upload: commits `record` (whose blob segments are the chosen parts), drops the
    /// upload, trashes parts not used, and queues the object for the packer, in one transaction.
    pub fn complete_upload(&self, upload_id: &str, key: &ObjectKey, record: &ObjectRecord, now_ms: i64) -> Result<()> {
        let object_key = key.encode();
        let parts_prefix = keys::parts_prefix(upload_id);
        let part_entries: Vec<(sled::IVec, sled::IVec)> =
            self.parts.scan_prefix(&parts_prefix).collect::<std::result::Result<_, _>>()?;
        let job = PackJob {
            tenant: key.tenant.clone(),
            bucket: key.bucket.clone(),
            key: key.key.clone(),
            version: record.version.clone(),
        };
        let used: Vec<&str> = record
            .segments
            .iter()
            .filter_map(|s| match s {
                Segment::Blob { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        let bucket_key = keys::bucket(&key.tenant, &key.bucket);
        let trees = (&self.objects, &self.chunks, &self.trash, &self.queue, &self.uploads, &self.parts, &self.buckets);
        let result = trees.transaction(|(objects, chunks, trash, queue, uploads, parts, buckets)| {
            if uploads.remove(upload_id)?.is_none() {
                return abort(IndexError::Refused(Refusal::NoSuchUpload));
            }
            if buckets.get(bucket_key.as_slice())?.is_none() {
                return abort(IndexError::Refused(Refusal::NoSuchBucket));
            }
            for (part_key, value) in &part_entries {
                parts.remove(part_key)?;
                let part: PartRecord = tx_decode(value)?;
                if !used.contains(&part.blob.as_str()) {
                    trash.insert(part.blob.as_bytes(), &now_ms.to_be_bytes())?;
                }
            }
            if let Some(previous) = objects.get(object_key.as_slice())? {
                let previous: ObjectRecord = tx_decode(&previous)?;
                release_segments(chunks, trash, &previous.segments, &record.segments, now_ms)?;
            }
            objects.insert(object_key.as_slice(), tx_encode(record)?)?;
            queue.insert(record.version.as_bytes(), tx_encode(&job)?)?;
            Ok(())
        });
        flatten(result)?;
        self.flush()
    }

    /// Drops an upload and sends its parts to the trash.
    pub fn abort_upload(&self, upload_id: &str, now_ms: i64) -> Result<()> {
        let parts_prefix = keys::parts_prefix(upload_id);
        let part_entries: Vec<(sled::IVec, sled::IVec)> =
            self.parts.scan_prefix(&parts_prefix).collect::<std::result::Result<_, _>>()?;
        let result = (&self.uploads, &self.parts, &self.trash).transaction(|(uploads, parts, trash)| {
            if uploads.remove(upload_id)?.is_none() {
                return abort(IndexError::Refused(Refusal::NoSuchUpload));
            }
            for (part_key, value) in &part_entries {
                parts.remove(part_key)?;
                let part: PartRecord = tx_decode(value)?;
                trash.insert(part.blob.as_bytes(), &now_ms.to_be_bytes())?;
            }
            Ok(())
        });
        flatten(result)?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use crate::test_records::{fresh_index, record};
    use crate::{Attributes, Checksums, IndexError, ObjectKey, PartRecord, Refusal, Segment, UploadRecord};

    fn part(blob: &str) -> PartRecord {
        PartRecord { blob: blob.into(), size: 3, etag: "e".into(), last_modified_ms: 0, checksums: Checksums::default() }
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
        index.put_part("u1", 1, &part("blobs/p1"), 0).unwrap();
        index.put_part("u1", 2, &part("blobs/p2-old"), 0).unwrap();
        index.put_part("u1", 2, &part("blobs/p2"), 1).unwrap();
        index.put_part("u1", 3, &part("blobs/p3"), 1).unwrap();
        assert_eq!(index.trash_before(1).unwrap(), vec!["blobs/p2-old".to_owned()], "a part sent again frees the old blob");
        let parts: Vec<u32> = index.parts("u1").unwrap().into_iter().map(|(number, _)| number).collect();
        assert_eq!(parts, vec![1, 2, 3]);
        let object = record(vec![Segment::Blob { key: "blobs/p1".into(), offset: 0, len: 3 }, Segment::Blob { key: "blobs/p2".into(), offset: 0, len: 3 }]);
        let key = ObjectKey::new("t", "b", "k");
        index.complete_upload("u1", &key, &object, 2).unwrap();
        let mut trash = index.trash_before(2).unwrap();
        trash.sort();
        assert_eq!(trash, vec!["blobs/p2-old".to_owned(), "blobs/p3".to_owned()]);
        assert_eq!(index.object(&key).unwrap(), Some(object));
        assert_eq!(index.next_pack_job().unwrap().map(|job| job.version), Some("v1".to_owned()));
        assert!(index.upload("u1").unwrap().is_none() && index.parts("u1").unwrap().is_empty());
        assert!(matches!(index.complete_upload("u1", &key, &record(vec![]), 3), Err(IndexError::Refused(Refusal::NoSuchUpload))));
        assert!(index.check().unwrap().problems.is_empty());
    }

    #[test]
    fn an_aborted_upload_frees_every_part_and_refuses_more() {
        let (_dir, index) = fresh_index();
        upload(&index, "u2");
        index.put_part("u2", 1, &part("blobs/a"), 0).unwrap();
        index.abort_upload("u2", 1).unwrap();
        assert_eq!(index.trash_before(1).unwrap(), vec!["blobs/a".to_owned()]);
        assert!(matches!(index.put_part("u2", 2, &part("blobs/b"), 2), Err(IndexError::Refused(Refusal::NoSuchUpload))));
        assert!(matches!(index.abort_upload("u2", 2), Err(IndexError::Refused(Refusal::NoSuchUpload))));
    }
}
