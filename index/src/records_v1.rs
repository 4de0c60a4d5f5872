//! Format version 1 of the records that version 2 extended (docs/format.md, section 9): their
//! layouts, their conversion to the current records, and the one-time migration of an index
//! written with them. Version 2 added `expires` at the end of `Attributes` (so inside
//! `ObjectRecord`, `UploadRecord`, `Manifest` and `UploadMarker`) and `location` at the end of
//! `BucketRecord` and `BucketMarker`.
//!
//! Writers keep using version 1 for a record that holds nothing version 1 cannot say, so that
//! gateways that only know version 1 read every record that does not use the new fields. A
//! version-1 record converts to its version-2 layout (`records_v2`), which converts on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::encoding::encode;
use crate::manifest::{BucketMarker, ChunkLocation, Manifest, UploadMarker};
use crate::migration::Migration;
use crate::records::{Attributes, BucketRecord, Checksums, Segment};
use crate::records_v2::{ManifestV2, ObjectRecordV2, UploadMarkerV2, UploadRecordV2};
use crate::decode;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributesV1 {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub content_language: Option<String>,
    pub cache_control: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecordV1 {
    pub version: String,
    pub size: u64,
    pub etag: String,
    pub last_modified_ms: i64,
    pub attributes: AttributesV1,
    pub checksums: Checksums,
    pub part_sizes: Vec<u64>,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecordV1 {
    pub tenant: String,
    pub bucket: String,
    pub key: String,
    pub initiated_ms: i64,
    pub attributes: AttributesV1,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRecordV1 {
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestV1 {
    pub tenant: String,
    pub bucket: String,
    pub key: String,
    pub record: ObjectRecordV1,
    pub chunks: Vec<ChunkLocation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketMarkerV1 {
    pub tenant: String,
    pub bucket: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadMarkerV1 {
    pub upload_id: String,
    pub upload: UploadRecordV1,
}

impl From<AttributesV1> for Attributes {
    fn from(old: AttributesV1) -> Attributes {
        let AttributesV1 { content_type, content_encoding, content_disposition, content_language, cache_control, metadata } = old;
        Attributes { content_type, content_encoding, content_disposition, content_language, cache_control, metadata, expires: None }
    }
}

impl From<ObjectRecordV1> for ObjectRecordV2 {
    fn from(old: ObjectRecordV1) -> ObjectRecordV2 {
        let ObjectRecordV1 { version, size, etag, last_modified_ms, attributes, checksums, part_sizes, segments } = old;
        ObjectRecordV2 { version, size, etag, last_modified_ms, attributes: attributes.into(), checksums, part_sizes, segments }
    }
}

impl From<UploadRecordV1> for UploadRecordV2 {
    fn from(old: UploadRecordV1) -> UploadRecordV2 {
        let UploadRecordV1 { tenant, bucket, key, initiated_ms, attributes } = old;
        UploadRecordV2 { tenant, bucket, key, initiated_ms, attributes: attributes.into() }
    }
}

impl From<BucketRecordV1> for BucketRecord {
    fn from(old: BucketRecordV1) -> BucketRecord {
        BucketRecord::new(old.created_ms)
    }
}

impl From<ManifestV1> for ManifestV2 {
    fn from(old: ManifestV1) -> ManifestV2 {
        let ManifestV1 { tenant, bucket, key, record, chunks } = old;
        ManifestV2 { tenant, bucket, key, record: record.into(), chunks }
    }
}

impl From<BucketMarkerV1> for BucketMarker {
    fn from(old: BucketMarkerV1) -> BucketMarker {
        BucketMarker { tenant: old.tenant, bucket: old.bucket, created_ms: old.created_ms, location: None }
    }
}

impl From<UploadMarkerV1> for UploadMarkerV2 {
    fn from(old: UploadMarkerV1) -> UploadMarkerV2 {
        UploadMarkerV2 { upload_id: old.upload_id, upload: old.upload.into() }
    }
}

/// The version-1 form of `attributes`, unless it holds an Expires header.
pub fn attributes_v1(attributes: &Attributes) -> Option<AttributesV1> {
    let Attributes { content_type, content_encoding, content_disposition, content_language, cache_control, metadata, expires } = attributes.clone();
    expires.is_none().then_some(AttributesV1 { content_type, content_encoding, content_disposition, content_language, cache_control, metadata })
}

/// The version-1 form of a manifest, unless its record holds a field of version 2 or later.
pub fn manifest_v1(manifest: &Manifest) -> Option<ManifestV1> {
    let record = &manifest.record;
    record.part_checksums.is_empty().then_some(())?;
    Some(ManifestV1 {
        tenant: manifest.tenant.clone(),
        bucket: manifest.bucket.clone(),
        key: manifest.key.clone(),
        record: ObjectRecordV1 {
            version: record.version.clone(),
            size: record.size,
            etag: record.etag.clone(),
            last_modified_ms: record.last_modified_ms,
            attributes: attributes_v1(&record.attributes)?,
            checksums: record.checksums.clone(),
            part_sizes: record.part_sizes.clone(),
            segments: record.segments.clone(),
        },
        chunks: manifest.chunks.clone(),
    })
}

/// The version-1 form of a bucket marker, unless it names a location.
pub fn bucket_marker_v1(marker: &BucketMarker) -> Option<BucketMarkerV1> {
    marker.location.is_none().then(|| BucketMarkerV1 { tenant: marker.tenant.clone(), bucket: marker.bucket.clone(), created_ms: marker.created_ms })
}

/// The version-1 form of an upload marker, unless its upload holds a field of version 2 or later.
pub fn upload_marker_v1(marker: &UploadMarker) -> Option<UploadMarkerV1> {
    let upload = &marker.upload;
    upload.checksum.is_none().then_some(())?;
    Some(UploadMarkerV1 {
        upload_id: marker.upload_id.clone(),
        upload: UploadRecordV1 {
            tenant: upload.tenant.clone(),
            bucket: upload.bucket.clone(),
            key: upload.key.clone(),
            initiated_ms: upload.initiated_ms,
            attributes: attributes_v1(&upload.attributes)?,
        },
    })
}

/// The move of an index written before version 2: its version-1 trees into the version-2
/// ones, which the move to version 3 then takes on (`records_v2::MIGRATION`).
pub(crate) const MIGRATION: Migration = Migration {
    trees: &[
        ("buckets", crate::BUCKETS_TREE, |bytes| encode(&BucketRecord::from(decode::<BucketRecordV1>(bytes)?))),
        ("objects", "objects.2", |bytes| encode(&ObjectRecordV2::from(decode::<ObjectRecordV1>(bytes)?))),
        ("uploads", "uploads.2", |bytes| encode(&UploadRecordV2::from(decode::<UploadRecordV1>(bytes)?))),
    ],
    migrated: "records-version-2",
    dropped: "records-version-1-dropped",
    old_version: 1,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_records::{fresh_index, record};
    use crate::{Envelope, IndexError, ObjectKey, ObjectRecord, UploadRecord};

    fn manifest(expires: Option<&str>) -> Manifest {
        let mut record = record(vec![Segment::Inline(vec![1, 2, 3])]);
        record.attributes.metadata.insert("m".into(), "v".into());
        record.attributes.expires = expires.map(str::to_owned);
        Manifest { tenant: "t".into(), bucket: "b".into(), key: "k".into(), record, chunks: vec![] }
    }

    #[test]
    fn records_without_new_fields_stay_version_1_and_others_are_version_2() {
        let plain = manifest(None).seal().unwrap();
        assert_eq!(plain[4], 1);
        assert_eq!(Manifest::open(&plain).unwrap(), manifest(None));
        let dated = manifest(Some("Wed, 02 Dec 2026 00:00:00 GMT")).seal().unwrap();
        assert_eq!(dated[4], 2);
        assert_eq!(Manifest::open(&dated).unwrap(), manifest(Some("Wed, 02 Dec 2026 00:00:00 GMT")));
        let located = BucketMarker { tenant: "t".into(), bucket: "b".into(), created_ms: 1, location: Some("eu-west-1".into()) };
        assert_eq!(located.seal().unwrap()[4], 2);
        assert_eq!(BucketMarker::open(&located.seal().unwrap()).unwrap(), located);
    }

    #[test]
    fn a_version_1_body_opens_into_the_current_record() {
        // The body as a gateway of version 1 wrote it, sealed by hand.
        let old = manifest_v1(&manifest(None)).unwrap();
        let body = encode(&old).unwrap();
        let mut sealed = b"TGMF".to_vec();
        sealed.extend_from_slice(&[1, 1, 0, 0]);
        sealed.extend_from_slice(&(body.len() as u64).to_le_bytes());
        sealed.extend_from_slice(blake3::hash(&body).as_bytes());
        sealed.extend_from_slice(&body);
        assert_eq!(Manifest::open(&sealed).unwrap(), manifest(None));
        sealed[4] = 4;
        assert!(Manifest::open(&sealed).is_err(), "an unknown version is refused");
    }

    #[test]
    fn an_index_of_version_1_records_is_migrated_once_and_again_after_a_crash() {
        let (_dir, index) = fresh_index();
        let key = ObjectKey::new("t", "b", "k");
        let old_object = manifest_v1(&manifest(None)).unwrap().record;
        let old_upload = UploadRecordV1 { tenant: "t".into(), bucket: "b".into(), key: "k".into(), initiated_ms: 4, attributes: old_object.attributes.clone() };
        // The index as version 1 left it: records in the old trees, not marked migrated.
        let write_v1 = || {
            for step in [&MIGRATION, &crate::records_v2::MIGRATION] {
                index.meta.remove(step.migrated).unwrap();
                index.meta.remove(step.dropped).unwrap();
            }
            index.db.open_tree("buckets").unwrap().insert(crate::keys::bucket("t", "b"), encode(&BucketRecordV1 { created_ms: 3 }).unwrap()).unwrap();
            index.db.open_tree("objects").unwrap().insert(key.encode(), encode(&old_object).unwrap()).unwrap();
            index.db.open_tree("uploads").unwrap().insert("u", encode(&old_upload).unwrap()).unwrap();
        };
        write_v1();
        // A half-done copy of a crashed migration is cleared first.
        index.objects.insert(b"stray", b"x").unwrap();
        index.migrate_records().unwrap();
        let check = || {
            assert_eq!(index.bucket("t", "b").unwrap(), Some(BucketRecord::new(3)));
            assert_eq!(decode::<ObjectRecord>(&index.objects.get(key.encode()).unwrap().unwrap()).unwrap(), ObjectRecord::from(ObjectRecordV2::from(old_object.clone())));
            assert_eq!(decode::<UploadRecord>(&index.uploads.get("u").unwrap().unwrap()).unwrap(), UploadRecord::from(UploadRecordV2::from(old_upload.clone())));
            assert_eq!(index.objects.len(), 1);
            let left: Vec<_> = index.db.open_tree("objects").unwrap().iter().map(Result::unwrap).collect();
            assert_eq!(left.len(), 1, "the old trees are dropped, their marker left");
            assert_eq!(&left[0].0[..], crate::migration::MOVED);
            assert!(decode::<ObjectRecordV1>(&left[0].1).is_err(), "a gateway of version 1 fails on the marker");
        };
        check();
        index.migrate_records().unwrap();
        check();
        // A crash between the mark and the drops: the old trees are dropped at the next open.
        index.meta.remove(MIGRATION.dropped).unwrap();
        index.db.open_tree("objects").unwrap().insert(key.encode(), encode(&old_object).unwrap()).unwrap();
        index.migrate_records().unwrap();
        check();
        // A gateway of version 1 opening the migrated index writes into the old trees again.
        index.db.open_tree("objects").unwrap().insert(key.encode(), encode(&old_object).unwrap()).unwrap();
        assert!(matches!(index.migrate_records(), Err(IndexError::Migration(_))), "its writes are not dropped");
    }
}
