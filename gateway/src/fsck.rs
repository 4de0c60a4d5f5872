//! `tensorgate fsck`: the index's own invariants (see `Index::check`), then that every pack and
//! blob the index uses is upstream and long enough; with `verify_frames`, every chunk is also
//! read and decoded, which checks each frame's checksum (a scrub).

use std::sync::Arc;

use crate::reader;
use crate::store::Store;

/// What fsck looked at and what is wrong.
#[derive(Debug, Default)]
pub struct FsckReport {
    pub objects: usize,
    pub chunks: usize,
    pub packs: usize,
    pub blobs: usize,
    pub frames_verified: usize,
    pub problems: Vec<String>,
}

pub async fn fsck(store: &Arc<Store>, verify_frames: bool) -> anyhow::Result<FsckReport> {
    let index = store.index.check()?;
    let mut report = FsckReport {
        objects: index.objects,
        chunks: index.chunks,
        packs: index.packs.len(),
        blobs: index.blobs.len(),
        problems: index.problems,
        ..FsckReport::default()
    };
    let upstream_objects = index.packs.iter().chain(index.blobs.iter());
    for (key, end) in upstream_objects.filter(|(_, end)| *end > 0) {
        if let Err(error) = store.read_upstream(key, end - 1..*end).await {
            report.problems.push(format!("upstream object {key} is missing or shorter than {end} bytes: {error:#}"));
        }
    }
    if verify_frames {
        for entry in store.index.all_chunks() {
            let (hash, record) = entry?;
            if record.refs == 0 {
                continue;
            }
            match reader::load_chunk(store, &hash).await {
                Ok(_) => report.frames_verified += 1,
                Err(error) => report.problems.push(format!("chunk in {} at {}: {error:#}", record.pack, record.offset)),
            }
        }
    }
    Ok(report)
}
