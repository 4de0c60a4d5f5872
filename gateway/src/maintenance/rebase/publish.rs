//! Re-basing with a shared upstream. The other gateways' indexes still read the re-based chunks
//! in their old frames, and manifests upstream name them there, so after each switch the lease
//! holder records, per old pack, where each chunk's new frame is and what it is a delta of
//! (`rebased/<pack id>`, followed by the other gateways when the pack is condemned: see
//! `condemned`), then writes every manifest naming an old frame again with the chunk's new
//! frame and its chain of bases as this index holds them.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use tensorgate_index::{rebased_key, ChunkHash, Envelope, PackRebased, Rebased, RebasedFrame};

use crate::engine::{catalog, Store};
use crate::maintenance::rewrite::{locate_chains, rewrite_manifests};
use crate::upstream;

/// Publishes the switch of `steps` to their new frames in pack `to` (of `to_total` bytes). The
/// records come first: a manifest names a new frame only once a record leads to it.
pub(super) async fn publish_rebased(store: &Store, to: &str, to_total: u64, steps: &[Rebased]) -> anyhow::Result<()> {
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
    for (pack, frames) in by_pack {
        let key = rebased_key(pack).ok_or_else(|| anyhow::anyhow!("{pack} is not a pack key"))?;
        // A pack whose compaction failed may give frames to a second pass: its record keeps both.
        let mut record = catalog::read_record::<PackRebased>(store, &key).await?.unwrap_or(PackRebased { from: pack.to_owned(), frames: Vec::new() });
        record.frames.extend(frames);
        upstream::put(&*store.upstream, &key, Bytes::from(record.seal()?)).await?;
    }
    let old_frames: HashMap<(&str, u64), ChunkHash> = steps.iter().map(|step| ((step.planned_from.pack.as_str(), step.planned_from.offset), step.hash)).collect();
    rewrite_manifests(store, |manifest| {
        let named: Vec<ChunkHash> = manifest
            .chunks
            .iter()
            .filter(|location| old_frames.get(&(location.pack.as_str(), location.offset)) == Some(&location.hash))
            .map(|location| location.hash)
            .collect();
        // A chunk since gone from this index leaves the manifest to the next pass (`forward`).
        Ok(!named.is_empty() && locate_chains(store, manifest, named)?)
    })
    .await?;
    Ok(())
}
