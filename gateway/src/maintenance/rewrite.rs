//! Rewriting manifests upstream after frames moved (compaction, re-basing), with a shared
//! upstream: a manifest is written back only if it is still the version read (If-Match). One
//! whose condition fails is left to its writer, whose version names what that writer chose,
//! and keeps the old pack referenced; when the collector then finds the pack in its trash,
//! still referenced, it forwards the manifests naming it ([`forward`]) and tries again.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use tensorgate_index::{ChunkHash, ChunkLocation, Envelope, Manifest, MANIFESTS};

use crate::engine::Store;
use crate::maintenance::follow::read_forwarding;
use crate::upstream::Condition;

/// Applies `change` to every manifest upstream; those it changed (it returns true) are written
/// back if unchanged since read.
pub(crate) async fn rewrite_manifests(store: &Store, mut change: impl FnMut(&mut Manifest) -> anyhow::Result<bool>) -> anyhow::Result<()> {
    for prefix in store.config.upstream_prefixes() {
        for listed in store.upstream.list(&format!("{prefix}{MANIFESTS}")).await? {
            let Some(tagged) = store.upstream.read_tagged(&listed.key).await? else { continue };
            let mut manifest = Manifest::open(&tagged.bytes)?;
            if change(&mut manifest)? {
                store.upstream.put_if(&listed.key, Bytes::from(manifest.seal()?), Condition::Matches(tagged.tag)).await?;
            }
        }
    }
    Ok(())
}

/// Replaces the table entries of `hashes`, and of every chunk on their chains of bases, with
/// where this index stores them now (adding those the table lacks). The entries replaced are
/// closed under this index's bases, whose chains end without a loop, so every chain of the
/// table still ends. False (the manifest half changed, not to be written) if one of them is
/// not a live chunk of this index.
pub(crate) fn locate_chains(store: &Store, manifest: &mut Manifest, mut hashes: Vec<ChunkHash>) -> anyhow::Result<bool> {
    let at: HashMap<ChunkHash, usize> = manifest.chunks.iter().enumerate().map(|(position, location)| (location.hash, position)).collect();
    let mut seen = HashSet::new();
    while let Some(hash) = hashes.pop() {
        if !seen.insert(hash) {
            continue;
        }
        let Some(record) = store.index.chunk(&hash)?.filter(|record| record.refs > 0) else { return Ok(false) };
        hashes.extend(record.base);
        let location = ChunkLocation::new(hash, &record);
        match at.get(&hash) {
            Some(&position) => manifest.chunks[position] = location,
            None => manifest.chunks.push(location),
        }
    }
    Ok(true)
}

/// With a shared upstream, writes again the manifests `referrers` that keep `pack` (in the
/// collector's trash) referenced by frames that left it, as compaction's and re-basing's
/// records say: each such chunk and its chain located as this index holds them. True if every
/// one of them names the pack no more. A record or manifest that does not read is logged and
/// leaves the pack referenced: it must not stop the collection.
pub(crate) async fn forward(store: &Store, pack: &str, referrers: &[String]) -> anyhow::Result<bool> {
    match forward_all(store, pack, referrers).await {
        Ok(forwarded) => Ok(forwarded),
        Err(error) => {
            tracing::warn!(%pack, error = format!("{error:#}"), "the manifests naming a spared pack were not forwarded");
            Ok(false)
        }
    }
}

async fn forward_all(store: &Store, pack: &str, referrers: &[String]) -> anyhow::Result<bool> {
    // The frames that left the pack, by old offset and chunk id.
    let left = read_forwarding(store, pack).await?;
    if left.is_empty() || referrers.is_empty() {
        return Ok(false);
    }
    for key in referrers {
        if !key.contains(MANIFESTS) {
            return Ok(false);
        }
        let Some(tagged) = store.upstream.read_tagged(key).await? else { continue };
        let mut manifest = Manifest::open(&tagged.bytes)?;
        let named: Vec<(u64, ChunkHash)> = manifest.chunks.iter().filter(|location| location.pack == pack).map(|location| (location.offset, location.hash)).collect();
        if named.is_empty() {
            continue;
        }
        if !named.iter().all(|frame| left.contains_key(frame)) || !locate_chains(store, &mut manifest, named.iter().map(|(_, hash)| *hash).collect())? {
            return Ok(false);
        }
        if manifest.chunks.iter().any(|location| location.pack == pack) {
            return Ok(false);
        }
        if store.upstream.put_if(key, Bytes::from(manifest.seal()?), Condition::Matches(tagged.tag)).await?.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}
