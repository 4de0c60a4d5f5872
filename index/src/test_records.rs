//! Records for the unit tests of the index modules.

use crate::{Attributes, ChunkRecord, Checksums, ObjectRecord, Segment};

/// An object version made of `segments`.
pub(crate) fn record(segments: Vec<Segment>) -> ObjectRecord {
    ObjectRecord {
        version: "v1".into(),
        size: segments.iter().map(Segment::len).sum(),
        etag: "etag".into(),
        last_modified_ms: 1,
        attributes: Attributes::default(),
        checksums: Checksums::default(),
        part_sizes: Vec::new(),
        segments,
    }
}

/// A standalone chunk of `frame_len` bytes at the start of `pack`.
pub(crate) fn chunk(pack: &str, frame_len: u32) -> ChunkRecord {
    ChunkRecord { pack: pack.into(), offset: 0, frame_len, raw_len: frame_len, base: None, refs: 0, dead_since_ms: None }
}

/// A fresh index in a temporary directory (kept alive by the returned guard).
pub(crate) fn fresh_index() -> (tempfile::TempDir, crate::Index) {
    let dir = tempfile::tempdir().unwrap();
    let index = crate::Index::open(dir.path()).unwrap();
    (dir, index)
}
