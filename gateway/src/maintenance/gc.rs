//! Garbage collection: sweeps chunks dead for longer than the grace period, then, under a lease
//! that one gateway holds at a time, deletes the trashed upstream objects nothing references,
//! trashes orphans, compacts sparse packs and re-bases families of tensors.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tensorgate_index::{pack_id, upload_key, upload_of_part, vetoed_pack, BLOBS, LEASE, MANIFESTS, Manifest, PACKS, PartMarker, UPLOADS, UPLOAD_PARTS, VETOES};

use crate::engine::catalog;
use crate::engine::journal;
use crate::engine::{read_record, GcMemory, Store};
use crate::ids::{ms_of_secs, now_ms};
use crate::maintenance::{compact, rebase, rewrite};
use crate::maintenance::condemned::{self, Verdict};
use crate::upstream::Condition;

/// Runs garbage collection every `gc_interval_secs` until the process ends.
pub async fn run_gc(store: Arc<Store>) {
    let interval = Duration::from_secs(store.config.gc_interval_secs.max(1));
    loop {
        tokio::time::sleep(interval).await;
        if let Err(error) = collect_garbage(&store).await {
            tracing::warn!(error = format!("{error:#}"), "garbage collection failed; retrying later");
        }
    }
}

/// What one garbage collection removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    pub chunks: usize,
    pub upstream_objects: usize,
    /// Upstream objects nothing references (left by a crash or an abandoned upload), sent to
    /// the trash by this run and deleted by a later one.
    pub orphans: usize,
    /// False when another gateway held the lease: only the local index was swept.
    pub leased: bool,
    /// Sparse packs rewritten by compaction.
    pub packs_compacted: usize,
    /// What re-basing did: chunks stored again against a better base, families settled, and
    /// whether it stopped at its budget with families still to weigh.
    pub rebase: rebase::RebaseReport,
}

/// Finishes interrupted manifest changes and collects chunks dead for longer than the grace
/// period; then, holding the lease, deletes upstream objects in the trash for longer than it
/// that nothing references (no index entry, no write in flight, and with a shared upstream no
/// manifest of any gateway), sends unreferenced upstream objects to the trash, compacts sparse
/// packs and re-bases families of tensors (`rebase`).
pub async fn collect_garbage(store: &Store) -> anyhow::Result<GcReport> {
    let now = now_ms();
    let cutoff = now.saturating_sub(ms_of_secs(store.config.gc_grace_secs));
    catalog::recover(store).await?;
    // Sled work over every dead chunk: off the async workers' hands.
    let mut report = GcReport { chunks: tokio::task::block_in_place(|| sweep(store, cutoff, now))?, ..GcReport::default() };
    if !acquire_lease(store, now).await? {
        tracing::debug!("another gateway holds the garbage-collection lease");
        return Ok(report);
    }
    report.leased = true;
    let mut memory = store.gc_memory.lock().await;
    let referenced = referenced_keys(store, &mut memory).await?;
    for key in store.index.trash_before(cutoff)? {
        let announced = store.config.shared_upstream && pack_id(&key).is_some();
        // Read once: a write on another thread may let go of the key meanwhile.
        let held_by_write = store.in_flight.contains(&key);
        if referenced.contains(&key) || held_by_write {
            // Spared: a later deletion announces it afresh, and waits for fresh acknowledgements.
            if announced && !held_by_write {
                if memory.withdrawn.insert(key.clone()) {
                    condemned::withdraw(store, &key).await?;
                }
                // Named only by manifests that name frames since moved: they are forwarded. A pack
                // only an upstream record references (a manifest, part marker or veto) stays in
                // the trash until nothing does, rather than waiting for an orphan scan.
                let forwarded = rewrite::forward(store, &key, &memory.referrers_of(&key)).await?;
                if forwarded || memory.upstream_only.contains(&key) {
                    continue;
                }
            }
        } else {
            memory.withdrawn.remove(&key);
            if announced {
                match condemned::verdict(store, &key, now).await? {
                    // Vetoed since the listing: it stays in the trash, spared while the veto stands.
                    Verdict::Wait | Verdict::Vetoed => continue,
                    Verdict::Delete => {
                        store.upstream.delete(&key).await?;
                        condemned::forget(store, &key).await?;
                        report.upstream_objects += 1;
                    }
                }
            } else {
                store.upstream.delete(&key).await?;
                report.upstream_objects += 1;
            }
        }
        // A key out of the trash that only an upstream record names (a blob; such a pack stays
        // in the trash, above) or only a write in flight holds: freed later, it is the next
        // orphan listing's, as if spared by it.
        let held_elsewhere = memory.upstream_only.contains(&key) || (held_by_write && !referenced.contains(&key));
        if held_elsewhere {
            store.index.spare_from_orphan_scan(&key)?;
        }
        store.index.forget_trash(&key)?;
    }
    if store.config.shared_upstream {
        journal::prune(store, now).await?;
    }
    let scan_due = memory.last_orphan_scan_ms.is_none_or(|last| now.saturating_sub(last) >= ms_of_secs(store.config.orphan_scan_secs));
    if scan_due {
        let listing = trash_orphans(store, &referenced, &memory.upstream_only, now, false).await?;
        report.orphans = listing.orphans.len();
        store.index.set_last_orphan_scan(now, &listing.spared)?;
        memory.last_orphan_scan_ms = Some(now);
    }
    report.packs_compacted = compact::compact(store).await?.packs;
    report.rebase = rebase::rebase(store).await?;
    if report.chunks + report.upstream_objects + report.orphans > 0 {
        tracing::info!(chunks = report.chunks, upstream_objects = report.upstream_objects, orphans = report.orphans, "garbage collected");
    }
    Ok(report)
}

/// Collects the chunks dead since `cutoff` or before that no write in progress holds. With no
/// grace (`cutoff == now`) it goes round again, for the bases that collected deltas freed.
fn sweep(store: &Store, cutoff: i64, now: i64) -> anyhow::Result<usize> {
    let mut collected = 0;
    loop {
        let mut swept = 0;
        for hash in store.index.dead_chunks(cutoff)? {
            if let Some(outcome) = store.held_chunks.unless_held(&hash, || store.index.sweep_chunk(&hash, now)) {
                swept += usize::from(outcome?);
            }
        }
        collected += swept;
        if swept == 0 || cutoff < now {
            break;
        }
    }
    store.index.flush()?;
    Ok(collected)
}

/// Takes (or renews) the lease that lets one gateway at a time delete upstream objects: a
/// small upstream object naming its holder and expiry, replaced only by conditional writes.
async fn acquire_lease(store: &Store, now: i64) -> anyhow::Result<bool> {
    let expires = now.saturating_add(ms_of_secs(store.config.gc_lease_secs));
    let lease = bytes::Bytes::from(format!("{} {expires}", store.instance));
    let condition = match store.upstream.read_tagged(LEASE).await? {
        None => Condition::Absent,
        Some(current) => {
            let (holder, expiry) = lease_terms(&current.bytes);
            if holder != store.instance && expiry >= now {
                return Ok(false);
            }
            Condition::Matches(current.tag)
        }
    };
    Ok(store.upstream.put_if(LEASE, lease, condition).await?.is_some())
}

/// Whether this gateway may judge and collect orphans now. With `take`, the lease is taken (or
/// renewed) as garbage collection takes it. Without, only the last holder judges (or anyone when
/// there never was one): what no manifest names may be in the last holder's trash, which no
/// other gateway sees, expired lease or not.
pub async fn may_collect(store: &Store, now: i64, take: bool) -> anyhow::Result<bool> {
    if take {
        return acquire_lease(store, now).await;
    }
    let Some(current) = store.upstream.read_tagged(LEASE).await? else { return Ok(true) };
    Ok(lease_terms(&current.bytes).0 == store.instance)
}

/// The holder and expiry a lease names (an unreadable one is expired).
fn lease_terms(lease: &[u8]) -> (String, i64) {
    let text = String::from_utf8_lossy(lease);
    let (holder, expiry) = text.split_once(' ').unwrap_or_default();
    (holder.to_owned(), expiry.parse().unwrap_or(i64::MIN))
}

/// Upstream keys in use: those of the index, and with a shared upstream those of every
/// manifest and part marker upstream (the parts of other gateways' uploads in progress) and the
/// packs other gateways vetoed the deletion of.
pub(crate) async fn referenced_keys(store: &Store, memory: &mut GcMemory) -> anyhow::Result<HashSet<String>> {
    let mut referenced = store.index.referenced_upstream_keys()?;
    if store.config.shared_upstream {
        let mut listed_now = HashMap::new();
        let mut upstream = HashSet::new();
        for prefix in store.config.upstream_prefixes() {
            // Uploads, then their part markers, then manifests: an upload that ends meanwhile
            // is seen live with its parts, or its object's manifest is listed.
            let live_uploads: HashSet<String> = store.upstream.list(&format!("{prefix}{UPLOADS}")).await?.into_iter().map(|listed| listed.key).collect();
            // The markers of an ended upload (left by a failed clean-up, or by a part that raced
            // the end) reference nothing: its parts are then collected as orphans.
            let parts = store.upstream.list(&format!("{prefix}{UPLOAD_PARTS}")).await?.into_iter().filter(|listed| {
                upload_of_part(&listed.key).is_some_and(|(prefix, upload_id)| live_uploads.contains(&upload_key(prefix, upload_id)))
            });
            let parts: Vec<_> = parts.map(|listed| (listed, Referrer::PartMarker)).collect();
            let manifests = store.upstream.list(&format!("{prefix}{MANIFESTS}")).await?.into_iter().map(|listed| (listed, Referrer::Manifest));
            for (listed, referrer) in parts.into_iter().chain(manifests) {
                let keys = match memory.take_references(&listed) {
                    Some(keys) => keys,
                    None => match referrer.references(store, &listed.key).await? {
                        Some(keys) => keys,
                        None => continue,
                    },
                };
                upstream.extend(keys.iter().cloned());
                listed_now.insert(listed.key, (listed.tag, keys));
            }
            let vetoes = store.upstream.list(&format!("{prefix}{VETOES}")).await?;
            upstream.extend(vetoes.iter().filter_map(|listed| vetoed_pack(&listed.key)).map(|(pack, _)| pack));
        }
        memory.record_references = listed_now;
        memory.upstream_only = upstream.difference(&referenced).cloned().collect();
        referenced.extend(upstream);
    }
    Ok(referenced)
}

/// The kinds of upstream record that reference packs and blobs.
#[derive(Clone, Copy)]
enum Referrer {
    Manifest,
    PartMarker,
}

impl Referrer {
    /// The upstream keys the record at `key` references; `None` if it is gone since listed.
    async fn references(self, store: &Store, key: &str) -> anyhow::Result<Option<Vec<String>>> {
        Ok(match self {
            Referrer::Manifest => read_record::<Manifest>(store, key).await?.map(|manifest| manifest_references(&manifest)),
            Referrer::PartMarker => read_record::<PartMarker>(store, key).await?.map(|marker| vec![marker.part.blob]),
        })
    }
}

/// The upstream keys a manifest names: the packs of its chunks and its blobs.
fn manifest_references(manifest: &Manifest) -> Vec<String> {
    let mut keys: Vec<String> = manifest.upstream_needs().into_iter().map(|(key, _)| key.to_owned()).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// An upstream object nothing references, past its grace period.
pub(crate) struct Orphan {
    pub key: String,
    /// When its grace period ended, milliseconds since the Unix epoch.
    pub of_age_ms: i64,
}

/// What one listing for orphans found.
pub(crate) struct OrphanListing {
    /// The objects nothing referenced.
    pub orphans: Vec<Orphan>,
    /// The keys of age, outside the trash, that only an upstream record (a manifest, part marker
    /// or veto: `upstream_only`) or a write in flight held, not this index: one freed after the
    /// listing is the next one's orphan, not a missed one.
    pub spared: Vec<String>,
}

/// Finds the packs older than the grace period, and the blobs older than `orphan_blob_secs`,
/// that nothing references and that are not in the trash yet; sends them there unless
/// `dry_run`. Returns them, and the keys it spared only for an upstream record or a write.
pub(crate) async fn trash_orphans(store: &Store, referenced: &HashSet<String>, upstream_only: &HashSet<String>, now: i64, dry_run: bool) -> anyhow::Result<OrphanListing> {
    let mut listing = OrphanListing { orphans: Vec::new(), spared: Vec::new() };
    for prefix in store.config.upstream_prefixes() {
        let folders = [(PACKS, store.config.gc_grace_secs), (BLOBS, store.config.orphan_blob_secs)];
        for (folder, age_secs) in folders {
            let age_ms = ms_of_secs(age_secs);
            let old_enough = now.saturating_sub(age_ms);
            for listed in store.upstream.list(&format!("{prefix}{folder}")).await? {
                if listed.modified_ms > old_enough {
                    continue;
                }
                let named_here = referenced.contains(&listed.key) && !upstream_only.contains(&listed.key);
                if named_here || store.index.in_trash(&listed.key)? {
                    continue;
                }
                if referenced.contains(&listed.key) || store.in_flight.contains(&listed.key) {
                    listing.spared.push(listed.key);
                    continue;
                }
                if !dry_run {
                    store.index.trash_key(&listed.key, now)?;
                }
                listing.orphans.push(Orphan { key: listed.key, of_age_ms: listed.modified_ms.saturating_add(age_ms) });
            }
        }
    }
    Ok(listing)
}
