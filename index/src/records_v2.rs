//! Format version 2 of the records that version 3 extended (docs/format.md, section 9): their
//! layouts, their conversion to the current records, and the move of an index written with
//! them. Version 3 added `part_checksums` at the end of `ObjectRecord` (so inside `Manifest`)
//! and `checksum` at the end of `UploadRecord` (so inside `UploadMarker`).
//!
//! Writers keep using the oldest version a record fits (`records_v1`, then this one), so that
//! gateways of version 2 read every record that does not use the new fields.

use serde::{Deserialize, Serialize};

use crate::encoding::encode;
use crate::manifest::{ChunkLocation, Manifest, UploadMarker};
use crate::migration::Migration;
use crate::records::{Attributes, Checksums, ObjectRecord, Segment, UploadRecord};
use crate::decode;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecordV2 {
    pub version: String,
    pub size: u64,
    pub etag: String,
    pub last_modified_ms: i64,
    pub attributes: Attributes,
    pub checksums: Checksums,
    pub part_sizes: Vec<u64>,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecordV2 {
    pub tenant: String,
    pub bucket: String,
    pub key: String,
    pub initiated_ms: i64,
    pub attributes: Attributes,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestV2 {
    pub tenant: String,
    pub bucket: String,
    pub key: String,
    pub record: ObjectRecordV2,
    pub chunks: Vec<ChunkLocation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadMarkerV2 {
    pub upload_id: String,
    pub upload: UploadRecordV2,
}

impl From<ObjectRecordV2> for ObjectRecord {
    fn from(old: ObjectRecordV2) -> ObjectRecord {
        let ObjectRecordV2 { version, size, etag, last_modified_ms, attributes, checksums, part_sizes, segments } = old;
        ObjectRecord { version, size, etag, last_modified_ms, attributes, checksums, part_sizes, segments, part_checksums: Vec::new() }
    }
}

impl From<UploadRecordV2> for UploadRecord {
    fn from(old: UploadRecordV2) -> UploadRecord {
        let UploadRecordV2 { tenant, bucket, key, initiated_ms, attributes } = old;
        UploadRecord { tenant, bucket, key, initiated_ms, attributes, checksum: None }
    }
}

impl From<ManifestV2> for Manifest {
    fn from(old: ManifestV2) -> Manifest {
        let ManifestV2 { tenant, bucket, key, record, chunks } = old;
        Manifest { tenant, bucket, key, record: record.into(), chunks }
    }
}

impl From<UploadMarkerV2> for UploadMarker {
    fn from(old: UploadMarkerV2) -> UploadMarker {
        UploadMarker { upload_id: old.upload_id, upload: old.upload.into() }
    }
}

/// The version-2 layout of an object record, unless it holds per-part checksums.
fn object_record_v2(record: &ObjectRecord) -> Option<ObjectRecordV2> {
    record.part_checksums.is_empty().then(|| ObjectRecordV2 {
        version: record.version.clone(),
        size: record.size,
        etag: record.etag.clone(),
        last_modified_ms: record.last_modified_ms,
        attributes: record.attributes.clone(),
        checksums: record.checksums.clone(),
        part_sizes: record.part_sizes.clone(),
        segments: record.segments.clone(),
    })
}

/// The version-2 form of a manifest, unless its record holds a version-3 field.
pub fn manifest_v2(manifest: &Manifest) -> Option<ManifestV2> {
    Some(ManifestV2 {
        tenant: manifest.tenant.clone(),
        bucket: manifest.bucket.clone(),
        key: manifest.key.clone(),
        record: object_record_v2(&manifest.record)?,
        chunks: manifest.chunks.clone(),
    })
}

/// The version-2 form of an upload marker, unless its upload names a checksum.
pub fn upload_marker_v2(marker: &UploadMarker) -> Option<UploadMarkerV2> {
    let upload = &marker.upload;
    upload.checksum.is_none().then(|| UploadMarkerV2 {
        upload_id: marker.upload_id.clone(),
        upload: UploadRecordV2 {
            tenant: upload.tenant.clone(),
            bucket: upload.bucket.clone(),
            key: upload.key.clone(),
            initiated_ms: upload.initiated_ms,
            attributes: upload.attributes.clone(),
        },
    })
}

/// The move of an index written by version 2 (or moved to it by `records_v1::MIGRATION`).
pub(crate) const MIGRATION: Migration = Migration {
    trees: &[
        ("objects.2", crate::OBJECTS_TREE, |bytes| encode(&ObjectRecord::from(decode::<ObjectRecordV2>(bytes)?))),
        ("uploads.2", crate::UPLOADS_TREE, |bytes| encode(&UploadRecord::from(decode::<UploadRecordV2>(bytes)?))),
    ],
    migrated: "records-version-3",
    dropped: "records-version-2-dropped",
    old_version: 2,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_records::{fresh_index, record};
    use crate::{ChecksumAlgorithm, Envelope, IndexError, ObjectKey, UploadChecksum};

    fn manifest(part_checksums: Vec<Checksums>) -> Manifest {
        let mut record = record(vec![Segment::Inline(vec![1, 2, 3])]);
        record.attributes.expires = Some("Wed, 02 Dec 2026 00:00:00 GMT".into());
        record.part_checksums = part_checksums;
        Manifest { tenant: "t".into(), bucket: "b".into(), key: "k".into(), record, chunks: vec![] }
    }

    fn upload(checksum: Option<UploadChecksum>) -> UploadMarker {
        let upload = UploadRecord { tenant: "t".into(), bucket: "b".into(), key: "k".into(), initiated_ms: 4, attributes: Attributes::default(), checksum };
        UploadMarker { upload_id: "u".into(), upload }
    }

    #[test]
    fn only_records_with_version_3_fields_are_version_3() {
        let dated = manifest(vec![]).seal().unwrap();
        assert_eq!(dated[4], 2);
        assert_eq!(Manifest::open(&dated).unwrap(), manifest(vec![]));
        let parts = vec![Checksums { crc32: Some("AAAAAA==".into()), ..Checksums::default() }, Checksums::default()];
        let checked = manifest(parts.clone()).seal().unwrap();
        assert_eq!(checked[4], 3);
        assert_eq!(Manifest::open(&checked).unwrap(), manifest(parts));
        assert_eq!(upload(None).seal().unwrap()[4], 1);
        let crc = Some(UploadChecksum { algorithm: ChecksumAlgorithm::Crc64Nvme, full_object: true });
        let sealed = upload(crc).seal().unwrap();
        assert_eq!(sealed[4], 3);
        assert_eq!(UploadMarker::open(&sealed).unwrap(), upload(crc));
    }

    #[test]
    fn an_index_of_version_2_records_is_migrated_once() {
        let (_dir, index) = fresh_index();
        let key = ObjectKey::new("t", "b", "k");
        let old_object = manifest_v2(&manifest(vec![])).unwrap().record;
        let old_upload = upload_marker_v2(&upload(None)).unwrap().upload;
        // The index as version 2 left it: records in the version-2 trees, not marked migrated.
        index.meta.remove(MIGRATION.migrated).unwrap();
        index.meta.remove(MIGRATION.dropped).unwrap();
        index.db.open_tree("objects.2").unwrap().insert(key.encode(), encode(&old_object).unwrap()).unwrap();
        index.db.open_tree("uploads.2").unwrap().insert("u", encode(&old_upload).unwrap()).unwrap();
        index.migrate_records().unwrap();
        assert_eq!(decode::<ObjectRecord>(&index.objects.get(key.encode()).unwrap().unwrap()).unwrap(), ObjectRecord::from(old_object.clone()));
        assert_eq!(decode::<UploadRecord>(&index.uploads.get("u").unwrap().unwrap()).unwrap(), UploadRecord::from(old_upload));
        let left: Vec<_> = index.db.open_tree("objects.2").unwrap().iter().map(Result::unwrap).collect();
        assert_eq!(left.len(), 1, "the old trees are dropped, their marker left");
        assert_eq!(&left[0].0[..], crate::migration::MOVED);
        assert!(decode::<ObjectRecordV2>(&left[0].1).is_err(), "a gateway of version 2 fails on the marker");
        index.migrate_records().unwrap();
        // A gateway of version 2 opening the migrated index writes into the old trees again.
        index.db.open_tree("objects.2").unwrap().insert(key.encode(), encode(&old_object).unwrap()).unwrap();
        assert!(matches!(index.migrate_records(), Err(IndexError::Migration(_))), "its writes are not dropped");
    }
}
