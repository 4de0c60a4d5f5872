//! Buckets: created, listed and deleted (a deletion ends the uploads in progress in it).

use crate::encoding::encode;
use crate::{decode, keys, BucketRecord, Index, IndexError, Result, Refusal};

/// Outcome of deleting a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketDeletion {
    Deleted,
    NotEmpty,
    Missing,
}

impl Index {
    /// Creates a bucket; false if it already existed.
    pub fn create_bucket(&self, tenant: &str, bucket: &str, record: &BucketRecord) -> Result<bool> {
        let record = encode(record)?;
        let previous = self
            .buckets
            .compare_and_swap(keys::bucket(tenant, bucket), None as Option<&[u8]>, Some(record))?;
        Ok(previous.is_ok())
    }

    /// Gives an existing bucket the record `record` (its marker upstream, when another gateway
    /// created the bucket again, or the bucket was first known from a manifest); false if the
    /// bucket is absent or has that record already.
    pub fn refresh_bucket(&self, tenant: &str, bucket: &str, record: &BucketRecord) -> Result<bool> {
        let key = keys::bucket(tenant, bucket);
        let Some(current) = self.buckets.get(&key)? else { return Ok(false) };
        let record = encode(record)?;
        if current.as_ref() == record.as_slice() {
            return Ok(false);
        }
        Ok(self.buckets.compare_and_swap(key, Some(current), Some(record))?.is_ok())
    }

    pub fn bucket(&self, tenant: &str, bucket: &str) -> Result<Option<BucketRecord>> {
        self.buckets.get(keys::bucket(tenant, bucket))?.map(|v| decode(&v)).transpose()
    }

    /// The tenant's buckets, sorted by name.
    pub fn list_buckets(&self, tenant: &str) -> Result<Vec<(String, BucketRecord)>> {
        let prefix = keys::tenant_prefix(tenant);
        self.buckets
            .scan_prefix(&prefix)
            .map(|entry| {
                let (key, value) = entry?;
                let name = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                Ok((name, decode(&value)?))
            })
            .collect()
    }

    /// Every bucket of every tenant, as (tenant, bucket).
    pub fn all_buckets(&self) -> Result<Vec<(String, String)>> {
        self.buckets
            .iter()
            .keys()
            .map(|key| keys::tenant_and_bucket(&key?))
            .collect()
    }

    /// Deletes a bucket that holds no object. As in S3, multipart uploads in progress do not
    /// keep it: they end with it (their parts go to the trash). The caller holds off writes
    /// into the bucket meanwhile (the gateway's bucket lock); a commit that comes after finds
    /// the bucket gone (see [`Index::commit_object`]).
    pub fn delete_bucket(&self, tenant: &str, bucket: &str, now_ms: i64) -> Result<BucketDeletion> {
        let bucket_key = keys::bucket(tenant, bucket);
        if !self.buckets.contains_key(&bucket_key)? {
            return Ok(BucketDeletion::Missing);
        }
        if self.objects.scan_prefix(keys::object_prefix(tenant, bucket)).next().is_some() {
            return Ok(BucketDeletion::NotEmpty);
        }
        for (upload_id, _) in self.list_uploads(tenant, bucket)? {
            match self.abort_upload(&upload_id, now_ms) {
                Ok(()) | Err(IndexError::Refused(Refusal::NoSuchUpload)) => {}
                Err(error) => return Err(error),
            }
        }
        if self.buckets.remove(&bucket_key)?.is_none() {
            return Ok(BucketDeletion::Missing);
        }
        self.flush()?;
        Ok(BucketDeletion::Deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_records::record;
    use crate::{Expect, ObjectKey, Segment};

    #[test]
    fn a_commit_into_a_deleted_bucket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        index.create_bucket("t", "b", &BucketRecord::new(0)).unwrap();
        assert_eq!(index.delete_bucket("t", "b", 0).unwrap(), BucketDeletion::Deleted);
        let key = ObjectKey::new("t", "b", "k");
        let result = index.commit_object(&key, &record(vec![Segment::Inline(vec![1])]), &[], None, Expect::Any, 0);
        assert!(matches!(result, Err(IndexError::Refused(Refusal::NoSuchBucket))));
        index.create_bucket("t", "b", &BucketRecord::new(1)).unwrap();
        assert!(index.list_objects("t", "b", "", None).next().is_none(), "nothing comes back with the bucket");
    }

    #[test]
    fn a_bucket_takes_the_record_of_its_marker() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let created_again = BucketRecord { created_ms: 7, location: Some("eu-west-1".into()) };
        assert!(!index.refresh_bucket("t", "b", &created_again).unwrap(), "an absent bucket is not made");
        index.create_bucket("t", "b", &BucketRecord::new(1)).unwrap();
        assert!(index.refresh_bucket("t", "b", &created_again).unwrap());
        assert_eq!(index.bucket("t", "b").unwrap(), Some(created_again.clone()));
        assert!(!index.refresh_bucket("t", "b", &created_again).unwrap(), "the same record is no change");
    }
}
