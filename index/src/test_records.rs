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
        part_checksums: Vec::new(),
    }
}

/// A standalone chunk of `frame_len` bytes at the start of `pack`.
pub(crate) fn chunk(pack: &str, frame_len: u32) -> ChunkRecord {
    ChunkRecord { pack: pack.into(), offset: 0, frame_len, raw_len: frame_len, base: None, refs: 0, dead_since_ms: None }
}

/// Commits `t/b/k` (creating bucket `t/b`) as two standalone chunks in `packs/old`: `first`
/// (10 bytes at 0) and `second` (30 bytes at 10), a pack of 40 bytes.
pub(crate) fn object_of_two_chunks(index: &crate::Index, first: crate::ChunkHash, second: crate::ChunkHash) {
    index.create_bucket("t", "b", &crate::BucketRecord::new(0)).unwrap();
    let mut second_record = chunk("packs/old", 30);
    second_record.offset = 10;
    let new_chunks = [crate::NewChunk { hash: first, record: chunk("packs/old", 10) }, crate::NewChunk { hash: second, record: second_record }];
    let both = record(vec![Segment::Chunk { hash: first, len: 10 }, Segment::Chunk { hash: second, len: 30 }]);
    let pack = crate::NewPack { key: "packs/old".into(), total_bytes: 40 };
    index.commit_object(&crate::ObjectKey::new("t", "b", "k"), &both, &new_chunks, Some(&pack), crate::Expect::Any, 0).unwrap();
}

/// A fresh index in a temporary directory (kept alive by the returned guard).
pub(crate) fn fresh_index() -> (tempfile::TempDir, crate::Index) {
    let dir = tempfile::tempdir().unwrap();
    let index = crate::Index::open(dir.path()).unwrap();
    (dir, index)
}
