//! `tensorgate fsck`: the index's own invariants (see `Index::check`); every pack and blob the
//! index uses is upstream and long enough; every object's manifest upstream is the one the
//! index holds; no upstream object older than its grace period is unreferenced and out of the
//! trash (unless the next orphan listing is to judge it: see `check_orphans`); every manifest
//! upstream (of every gateway, with a shared upstream) names packs and blobs that exist. With
//! `verify_frames`, every live frame is also scrubbed (read, decoded, checked). With `repair`,
//! missing or stale manifests are written again and orphans are sent to the trash; nothing is
//! deleted.

use std::collections::HashMap;
use std::sync::Arc;

use tensorgate_index::{BLOBS, Envelope, IndexError, MANIFESTS, Manifest, ObjectKey, PACKS};

use crate::engine::Store;
use crate::engine::catalog;
use crate::engine::shared;
use crate::ids::now_ms;
use crate::maintenance::gc::{self, trash_orphans};
use crate::maintenance::scrub::{self, ScrubOptions};

/// What fsck looked at, what is wrong, and what it repaired.
#[derive(Debug, Default)]
pub struct FsckReport {
    pub objects: usize,
    pub chunks: usize,
    pub packs: usize,
    pub blobs: usize,
    pub frames_verified: usize,
    pub problems: Vec<String>,
    pub repaired: Vec<String>,
    /// What was not checked, and why.
    pub notes: Vec<String>,
}

/// How far fsck goes.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsckOptions {
    pub verify_frames: bool,
    pub repair: bool,
}

pub async fn fsck(store: &Arc<Store>, options: FsckOptions, progress: &dyn Fn(u64, u64)) -> anyhow::Result<FsckReport> {
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
    check_manifests(store, options.repair, &mut report).await?;
    check_manifest_needs(store, options.repair, &mut report).await?;
    check_orphans(store, options.repair, &mut report).await?;
    if options.verify_frames {
        let scrubbed = scrub::scrub(store, ScrubOptions::default(), progress).await?;
        report.frames_verified = scrubbed.frames;
        report.problems.extend(scrubbed.problems);
    }
    Ok(report)
}

/// Every object's manifest upstream must be the version the index holds. With a shared
/// upstream another gateway may have replaced it since, which is no fault.
async fn check_manifests(store: &Store, repair: bool, report: &mut FsckReport) -> anyhow::Result<()> {
    for entry in store.index.all_objects() {
        let (key, record) = entry?;
        let upstream = catalog::fetch(store, &key).await;
        // A chunk missing from the index is reported by its own check; the table is then moot.
        let committed = match store.index.locate(&record, &[]) {
            Ok(committed) => committed,
            Err(IndexError::MissingChunk(_)) => continue,
            Err(error) => return Err(error.into()),
        };
        let problem = match &upstream {
            // Gateways sharing an upstream may each hold another copy of a chunk.
            Ok(Some(manifest))
                if manifest.record == record && (store.config.shared_upstream || catalog::same_locations(&manifest.chunks, &committed)) =>
            {
                continue
            }
            Ok(Some(manifest)) if manifest.record == record => "names chunk copies other than the index's",
            Ok(Some(_)) if store.config.shared_upstream => continue,
            Ok(Some(_)) => "differs from the index",
            Ok(None) => "is missing upstream",
            Err(_) => "does not decode",
        };
        let name = format!("{}/{}/{}", key.tenant, key.bucket, key.key);
        if repair && store.config.shared_upstream {
            // Another gateway may have deleted it: the index takes what the upstream holds.
            let _guard = store.locks.lock_key(&key).await;
            shared::reconcile(store, &key).await?;
            report.repaired.push(format!("index record of {name} brought in line with the upstream"));
        } else if repair {
            catalog::publish(store, &key, &record, &[]).await?;
            report.repaired.push(format!("manifest of {name} written again"));
        } else {
            report.problems.push(format!("manifest of {name} {problem}"));
        }
    }
    Ok(())
}

/// Every manifest upstream, whichever gateway wrote it, must name packs and blobs that exist
/// and are long enough: `index rebuild` reads nothing else. With `repair`, a manifest of an
/// object the index holds is written again from the index.
async fn check_manifest_needs(store: &Store, repair: bool, report: &mut FsckReport) -> anyhow::Result<()> {
    // The furthest byte each manifest needs of each upstream object: one problem per pair.
    let mut needs: std::collections::BTreeMap<(ObjectKey, String), u64> = std::collections::BTreeMap::new();
    let mut sizes = HashMap::new();
    for prefix in store.config.upstream_prefixes() {
        for listed in store.upstream.list(&format!("{prefix}{MANIFESTS}")).await? {
            let Some(tagged) = store.upstream.read_tagged(&listed.key).await? else { continue };
            let manifest = match Manifest::open(&tagged.bytes) {
                Ok(manifest) => manifest,
                Err(error) => {
                    report.problems.push(format!("manifest {}: {error}", listed.key));
                    continue;
                }
            };
            let object = ObjectKey::new(&manifest.tenant, &manifest.bucket, &manifest.key);
            for (key, end) in manifest.upstream_needs() {
                let furthest = needs.entry((object.clone(), key.to_owned())).or_default();
                *furthest = (*furthest).max(end);
            }
        }
        for folder in [PACKS, BLOBS] {
            sizes.extend(store.upstream.list(&format!("{prefix}{folder}")).await?.into_iter().map(|listed| (listed.key, listed.size)));
        }
    }
    let mut rewritten = std::collections::HashSet::new();
    for ((object, key), end) in needs {
        if sizes.get(&key).is_some_and(|size| *size >= end) {
            continue;
        }
        let name = format!("{}/{}/{}", object.tenant, object.bucket, object.key);
        if repair && store.index.object(&object)?.is_some() {
            if rewritten.insert(name.clone()) {
                let _guard = store.locks.lock_key(&object).await;
                let rewritten_here = match store.config.shared_upstream {
                    true => shared::relocate(store, &object).await?,
                    false => catalog::align(store, &object).await.map(|()| true)?,
                };
                if rewritten_here {
                    report.repaired.push(format!("manifest of {name} written again from the index"));
                } else {
                    report.problems.push(format!("the manifest of {name} needs {key} up to byte {end}, which the upstream lacks"));
                }
            }
        } else {
            report.problems.push(format!("the manifest of {name} needs {key} up to byte {end}, which the upstream lacks"));
        }
    }
    Ok(())
}

/// Upstream objects past their grace period that nothing references must be in the trash. The
/// next orphan listing's, noted rather than problems: one that came of age after the last
/// listing (whose time the index keeps), and one that a write in flight or, with a shared
/// upstream, an upstream record alone (a manifest, part marker or veto, not this index) held at
/// that listing or since. With
/// a shared upstream only the lease holder, or its last holder, judges: what no manifest names
/// may be in its trash or its index, which other gateways cannot see.
async fn check_orphans(store: &Store, repair: bool, report: &mut FsckReport) -> anyhow::Result<()> {
    if store.config.shared_upstream && !gc::may_collect(store, now_ms(), repair).await? {
        report.notes.push("orphans not judged: another gateway holds (or last held) the garbage-collection lease".to_owned());
        return Ok(());
    }
    let mut memory = store.gc_memory.lock().await;
    let referenced = gc::referenced_keys(store, &mut memory).await?;
    let now = now_ms();
    // A recorded time that is no time is itself a problem; every orphan is then judged, as
    // with no listing recorded, and a repair records this one.
    let last_scan_ms = match store.index.last_orphan_scan_ms() {
        Ok(scanned) => scanned,
        Err(error @ IndexError::MalformedValue(_)) if repair => {
            report.repaired.push(format!("{error}: recorded again"));
            None
        }
        Err(error @ IndexError::MalformedValue(_)) => {
            report.problems.push(format!("{error}: every orphan judged as if the upstream had never been listed"));
            None
        }
        Err(error) => return Err(error.into()),
    };
    let listing = trash_orphans(store, &referenced, &memory.upstream_only, now, !repair).await?;
    let (mut of_age_since, mut freed_since) = (0, 0);
    for orphan in listing.orphans {
        if repair {
            report.repaired.push(format!("orphan {} sent to the trash", orphan.key));
        } else if last_scan_ms.is_some_and(|scanned| orphan.of_age_ms > scanned) {
            of_age_since += 1;
        } else if last_scan_ms.is_some() && store.index.spared_from_orphan_scan(&orphan.key)? {
            freed_since += 1;
        } else {
            report.problems.push(format!("upstream object {} is referenced by nothing and not in the trash", orphan.key));
        }
    }
    if repair {
        store.index.set_last_orphan_scan(now, &listing.spared)?;
    }
    if let Some(scanned) = last_scan_ms {
        let minutes_ago = now.saturating_sub(scanned) / 60_000;
        let left = [(of_age_since, "of age after"), (freed_since, "that only upstream records or writes in flight held at or since")];
        for (count, which) in left.into_iter().filter(|&(count, _)| count > 0) {
            report.notes.push(format!(
                "orphans {which} the last orphan listing ({minutes_ago} minutes ago), left to the next: {count} unreferenced upstream objects"
            ));
        }
    }
    Ok(())
}
