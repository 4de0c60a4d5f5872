//! `tensorgate index rebuild`: fills an empty index from the upstream alone. Buckets come from
//! their markers, packs from the listing (with their sizes), objects from their manifests.
//!
//! A chunk location is taken only if its pack is listed and long enough. Two writes of one new
//! chunk at once each stored a copy and the index kept one; a manifest written before issue 12
//! may name the other copy, which the collector deletes. So every manifest is read once to learn
//! a usable copy of each chunk, adopting at once those whose every location is usable; the
//! others are adopted afterwards with the copies found anywhere. An adopted object whose
//! manifest names other copies than the index now holds is marked pending, so that recovery (at
//! the next start, before any collection deletes anything) writes its manifest again.

use std::collections::HashMap;

use tensorgate_index::{BucketMarker, ChunkHash, ChunkLocation, IndexError, Manifest, ObjectKey, PackJob, Segment, BUCKETS, MANIFESTS};

use crate::engine::Store;
use crate::engine::catalog::same_locations;
use crate::engine::read_record;
use crate::ids::now_ms;

/// What `index rebuild` found upstream.
#[derive(Debug, Default, Clone)]
pub struct RebuildReport {
    pub buckets: usize,
    pub packs: usize,
    pub objects: usize,
    /// Objects still stored as uploaded, queued again for the packer.
    pub queued: usize,
    /// Objects whose manifest names chunk copies other than the index now holds; recovery
    /// writes their manifests again.
    pub relocated: usize,
    /// Objects whose manifest needs a chunk no pack upstream holds: not adopted.
    pub unreadable: Vec<String>,
    /// Packs no object uses, sent to the trash (none when some object is unreadable: its
    /// surviving chunks may still be wanted).
    pub unused_packs: usize,
}

/// Fills an empty index from the upstream. `progress` hears (manifests done, manifests in all).
pub async fn rebuild(store: &Store, progress: &dyn Fn(u64, u64)) -> anyhow::Result<RebuildReport> {
    let mut report = RebuildReport::default();
    let mut listed_manifests = Vec::new();
    let mut packs = HashMap::new();
    for prefix in store.config.upstream_prefixes() {
        for listed in store.upstream.list(&format!("{prefix}{BUCKETS}")).await? {
            let Some(marker) = read_record::<BucketMarker>(store, &listed.key).await? else { continue };
            store.index.create_bucket(&marker.tenant, &marker.bucket, &marker.record())?;
            report.buckets += 1;
        }
        for listed in store.upstream.list(&format!("{prefix}packs/")).await? {
            store.index.ensure_pack(&listed.key, listed.size)?;
            packs.insert(listed.key, listed.size);
            report.packs += 1;
        }
        listed_manifests.extend(store.upstream.list(&format!("{prefix}{MANIFESTS}")).await?);
    }
    let usable = |location: &ChunkLocation| packs.get(&location.pack).is_some_and(|size| *size >= location.offset + u64::from(location.frame_len));
    let mut copies: HashMap<ChunkHash, ChunkLocation> = HashMap::new();
    let mut deferred = Vec::new();
    for (done, listed) in listed_manifests.iter().enumerate() {
        progress(done as u64, listed_manifests.len() as u64);
        let Some(manifest) = read_record::<Manifest>(store, &listed.key).await? else { continue };
        for location in manifest.chunks.iter().filter(|location| usable(location)) {
            copies.entry(location.hash).or_insert_with(|| location.clone());
        }
        if manifest.chunks.iter().all(usable) {
            adopt(store, &manifest, &mut report, &|_, own| own.cloned())?;
        } else {
            deferred.push(manifest);
        }
    }
    let resolve = |hash: &ChunkHash, own: Option<&ChunkLocation>| own.filter(|own| usable(own)).or_else(|| copies.get(hash)).cloned();
    for manifest in deferred {
        match adopt(store, &manifest, &mut report, &resolve) {
            Err(error) if matches!(error.downcast_ref::<IndexError>(), Some(IndexError::MissingChunk(_))) => {
                tracing::error!(bucket = %manifest.bucket, key = %manifest.key, error = format!("{error:#}"), "object not rebuilt: a chunk it needs is in no pack");
                report.unreadable.push(format!("{}/{}/{}", manifest.tenant, manifest.bucket, manifest.key));
            }
            outcome => outcome?,
        }
    }
    progress(listed_manifests.len() as u64, listed_manifests.len() as u64);
    if report.unreadable.is_empty() {
        report.unused_packs = store.index.trash_unused_packs(now_ms())?;
    }
    store.index.flush()?;
    Ok(report)
}

/// Adopts one manifest: marks it pending when it names other chunk copies than the index now
/// holds, and queues the object for the packer if it is still stored as uploaded.
fn adopt(
    store: &Store,
    manifest: &Manifest,
    report: &mut RebuildReport,
    resolve: &dyn Fn(&ChunkHash, Option<&ChunkLocation>) -> Option<ChunkLocation>,
) -> anyhow::Result<()> {
    store.index.adopt(manifest, now_ms(), resolve)?;
    report.objects += 1;
    let key = ObjectKey::new(&manifest.tenant, &manifest.bucket, &manifest.key);
    if !same_locations(&store.index.locate(&manifest.record, &[])?, &manifest.chunks) {
        store.index.mark_pending(&key)?;
        report.relocated += 1;
    }
    let as_uploaded =
        !manifest.record.part_sizes.is_empty() && manifest.record.segments.iter().any(|segment| matches!(segment, Segment::Blob { .. }));
    if as_uploaded {
        store.index.enqueue_pack(&PackJob { tenant: key.tenant, bucket: key.bucket, key: key.key, version: manifest.record.version.clone() })?;
        report.queued += 1;
    }
    Ok(())
}
