//! Re-basing with a shared upstream. The other gateways' indexes still read the re-based chunks
//! in their old frames, and manifests upstream name them there, so each switch is published by
//! the lease holder: per old pack, where each chunk's new frame is and what it is a delta of
//! (`rebased/<pack id>`, which the other gateways follow at their next sync: see `follow`), then
//! every manifest naming an old frame is written again with the chunk's new frame and its chain
//! of bases as this index holds them. What a switch is to publish is saved in the index before
//! the switch and forgotten once published, so that a crash in between only delays it.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use tensorgate_index::{rebased_key, ChunkHash, Envelope, PackRebased, Rebased, RebasedFrame};

use crate::engine::{read_record, Store};
use crate::maintenance::rewrite::{locate_chains, rewrite_manifests};
use crate::upstream;

/// The records of a switch of `steps` to their new frames in pack `to` (of `to_total` bytes),
/// one per old pack.
pub(super) fn records_of(to: &str, to_total: u64, steps: &[Rebased]) -> Vec<PackRebased> {
    let mut by_pack: BTreeMap<&str, Vec<RebasedFrame>> = BTreeMap::new();
    for step in steps {
        let frame = RebasedFrame {
            hash: step.hash,
            from_offset: step.planned_from.offset,
            to: to.to_owned(),
            to_total,
            to_offset: step.offset,
            frame_len: step.frame_len,
            base: step.base,
        };
        by_pack.entry(step.planned_from.pack.as_str()).or_default().push(frame);
    }
    by_pack.into_iter().map(|(from, frames)| PackRebased { from: from.to_owned(), frames }).collect()
}

/// Publishes the switches a crash left unpublished: the frames of each that the index took
/// (those it did not were never switched), then forgets them. Returns the packs those frames
/// left, to be compacted.
pub(super) async fn publish_unpublished(store: &Store) -> anyhow::Result<HashSet<String>> {
    let mut left = HashSet::new();
    for (to, mut records) in store.index.unpublished()? {
        for record in &mut records {
            let mut switched = Vec::with_capacity(record.frames.len());
            for frame in std::mem::take(&mut record.frames) {
                let here = store.index.chunk(&frame.hash)?;
                if here.is_some_and(|chunk| chunk.pack == frame.to && chunk.offset == frame.to_offset) {
                    switched.push(frame);
                }
            }
            record.frames = switched;
        }
        records.retain(|record| !record.frames.is_empty());
        publish(store, &records).await?;
        store.index.forget_unpublished(&to)?;
        left.extend(records.into_iter().map(|record| record.from));
    }
    Ok(left)
}

/// Publishes one switch: its records first (a manifest names a new frame only once a record
/// leads to it), then the manifests naming its old frames.
pub(super) async fn publish(store: &Store, records: &[PackRebased]) -> anyhow::Result<()> {
    for record in records {
        let key = rebased_key(&record.from).ok_or_else(|| anyhow::anyhow!("{} is not a pack key", record.from))?;
        // A pack whose compaction failed may give frames to a second switch: its record keeps both.
        let mut merged = read_record::<PackRebased>(store, &key).await?.unwrap_or(PackRebased { from: record.from.clone(), frames: Vec::new() });
        merged.frames.extend(record.frames.iter().cloned());
        upstream::put(&*store.upstream, &key, Bytes::from(merged.seal()?)).await?;
    }
    if records.is_empty() {
        return Ok(());
    }
    let old_frames: HashMap<(&str, u64), ChunkHash> =
        records.iter().flat_map(|record| record.frames.iter().map(|frame| ((record.from.as_str(), frame.from_offset), frame.hash))).collect();
    rewrite_manifests(store, |manifest| {
        let named: Vec<ChunkHash> = manifest
            .chunks
            .iter()
            .filter(|location| old_frames.get(&(location.pack.as_str(), location.offset)) == Some(&location.hash))
            .map(|location| location.hash)
            .collect();
        // A chunk since gone from this index leaves the manifest to the collector (`forward`).
        Ok(!named.is_empty() && locate_chains(store, manifest, named)?)
    })
    .await
}
