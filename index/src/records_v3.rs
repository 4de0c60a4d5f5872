//! Format version 3 of the part record, which version 4 extended (docs/format.md, section 9):
//! version 4 appended `encoded` to `PartRecord` in the index (a part encoded as it arrived).
//! The upstream part marker keeps this layout: with a shared upstream parts are stored as they
//! came, so a marker never holds an encoded part, and gateways of version 3 read every marker.

use serde::{Deserialize, Serialize};

use crate::decode;
use crate::encoding::encode;
use crate::migration::Migration;
use crate::records::{Checksums, PartRecord};

/// A part stored as it came, in the layout of version 3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecordV3 {
    pub blob: String,
    pub size: u64,
    pub etag: String,
    pub last_modified_ms: i64,
    pub checksums: Checksums,
}

impl From<PartRecordV3> for PartRecord {
    fn from(old: PartRecordV3) -> PartRecord {
        let PartRecordV3 { blob, size, etag, last_modified_ms, checksums } = old;
        PartRecord { blob, size, etag, last_modified_ms, checksums, encoded: None }
    }
}

impl PartRecordV3 {
    /// The version-3 layout of a part, unless it was encoded as it arrived.
    pub fn of(part: &PartRecord) -> Option<PartRecordV3> {
        part.encoded.is_none().then(|| PartRecordV3 {
            blob: part.blob.clone(),
            size: part.size,
            etag: part.etag.clone(),
            last_modified_ms: part.last_modified_ms,
            checksums: part.checksums.clone(),
        })
    }
}

/// The move of an index written by version 3 (or moved to it by the earlier steps).
pub(crate) const MIGRATION: Migration = Migration {
    trees: &[("parts", crate::PARTS_TREE, |bytes| encode(&PartRecord::from(decode::<PartRecordV3>(bytes)?)))],
    migrated: "records-version-4",
    dropped: "records-version-3-dropped",
    old_version: 3,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_records::fresh_index;
    use crate::IndexError;

    #[test]
    fn an_index_of_version_3_parts_is_migrated_once() {
        let (_dir, index) = fresh_index();
        let old = PartRecordV3 { blob: "blobs/p".into(), size: 5, etag: "e".into(), last_modified_ms: 2, checksums: Checksums::default() };
        index.meta.remove(MIGRATION.migrated).unwrap();
        index.meta.remove(MIGRATION.dropped).unwrap();
        index.db.open_tree("parts").unwrap().insert(crate::keys::part("u", 1), encode(&old).unwrap()).unwrap();
        index.migrate_records().unwrap();
        assert_eq!(index.parts("u").unwrap(), vec![(1, PartRecord::from(old.clone()))]);
        let left: Vec<_> = index.db.open_tree("parts").unwrap().iter().map(Result::unwrap).collect();
        assert_eq!((left.len(), &left[0].0[..]), (1, crate::migration::MOVED), "the old tree keeps its marker only");
        assert!(decode::<PartRecordV3>(&left[0].1).is_err(), "a gateway of version 3 fails on the marker");
        index.db.open_tree("parts").unwrap().insert(crate::keys::part("u", 2), encode(&old).unwrap()).unwrap();
        assert!(matches!(index.migrate_records(), Err(IndexError::Migration(_))), "parts written after the move are not dropped");
    }

    #[test]
    fn only_parts_stored_as_they_came_have_a_version_3_layout() {
        let old = PartRecordV3 { blob: "blobs/p".into(), size: 5, etag: "e".into(), last_modified_ms: 2, checksums: Checksums::default() };
        let mut part = PartRecord::from(old.clone());
        assert_eq!(PartRecordV3::of(&part), Some(old));
        part.encoded = Some(crate::EncodedPart { offset: 0, layout_id: String::new(), segments: vec![], sketches: vec![] });
        assert_eq!(PartRecordV3::of(&part), None);
    }
}
