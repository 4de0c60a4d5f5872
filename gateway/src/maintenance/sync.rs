//! Catching up with a shared upstream, so that listings show what other gateways wrote:
//! buckets from their markers, uploads from theirs, and objects from the change journal (see
//! `journal`), or from a listing of every manifest when the journal cannot say. Reads never
//! wait for this: they check the manifest themselves. First of all, the condemned packs are
//! handled (`condemned`), so that no failure further on keeps this gateway from vetoing a pack
//! it reads.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tensorgate_index::{upload_key, BucketDeletion, BucketMarker, IndexError, Manifest, ObjectKey, BUCKETS, MANIFESTS, UPLOADS};

use crate::engine::Store;
use crate::engine::catalog::refresh;
use crate::engine::read_record;
use crate::engine::journal;
use crate::engine::shared;
use crate::ids::now_ms;
use crate::maintenance::condemned;

/// What one [`sync`] changed in the index.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    pub buckets: usize,
    /// Empty buckets another gateway deleted.
    pub buckets_removed: usize,
    /// Uploads another gateway completed or aborted (their parts stored here go to the trash,
    /// from which nothing a manifest uses is ever deleted).
    pub uploads_ended: usize,
    pub objects_adopted: usize,
    pub objects_removed: usize,
    /// Condemned packs this gateway still reads, whose deletion it vetoed.
    pub packs_vetoed: usize,
    /// Chunks pointed at the frames compaction or re-basing put elsewhere (`follow`).
    pub frames_followed: usize,
    /// Whether every manifest was listed (else only the journal was read).
    pub listed_everything: bool,
    /// Manifests that could not be read or adopted (logged; tried again at the next full sync).
    pub manifests_skipped: usize,
}

/// What a gateway remembers between syncs; the default lists everything at the first sync.
#[derive(Debug, Default)]
pub struct SyncState {
    /// The listing tag of every bucket marker and manifest seen: only changed ones are read.
    tags: HashMap<String, String>,
    journal: journal::Cursor,
}

/// Catches the index up with the shared upstream.
pub async fn sync(store: &Store, state: &mut SyncState) -> anyhow::Result<SyncReport> {
    let condemnations = condemned::veto(store).await?;
    let mut report = SyncReport { packs_vetoed: condemnations.vetoed, frames_followed: condemnations.followed, ..SyncReport::default() };
    sync_buckets(store, &mut state.tags, &mut report).await?;
    sync_uploads(store, &mut report).await?;
    match journal::changes(store, &state.journal).await? {
        Some(changes) => {
            for key in &changes.objects {
                skip_unreadable(refresh_counted(store, key, &mut report).await, &store.manifest_key(key))?;
            }
            journal::caught_up(&mut state.journal, changes);
        }
        None => {
            let started = now_ms();
            let entries = journal::entries(store).await?;
            sync_every_manifest(store, &mut state.tags, &mut report).await?;
            journal::listed_everything(&mut state.journal, entries, started);
            report.listed_everything = true;
        }
    }
    Ok(report)
}

/// Buckets other gateways created (new or changed markers) or deleted (markers gone).
async fn sync_buckets(store: &Store, tags: &mut HashMap<String, String>, report: &mut SyncReport) -> anyhow::Result<()> {
    let mut listed_buckets = HashSet::new();
    for prefix in store.config.upstream_prefixes() {
        for listed in store.upstream.list(&format!("{prefix}{BUCKETS}")).await? {
            listed_buckets.insert(listed.key.clone());
            if tags.get(&listed.key) == Some(&listed.tag) {
                continue;
            }
            let Some(marker) = skip_unreadable(read_record::<BucketMarker>(store, &listed.key).await, &listed.key)?.flatten() else { continue };
            // A bucket known already takes its marker's record: another gateway may have deleted
            // and created it again since (another creation time, another location).
            let record = marker.record();
            if store.index.create_bucket(&marker.tenant, &marker.bucket, &record)? || store.index.refresh_bucket(&marker.tenant, &marker.bucket, &record)? {
                report.buckets += 1;
            }
            tags.insert(listed.key, listed.tag);
        }
    }
    for (tenant, bucket) in store.index.all_buckets()? {
        let marker = store.bucket_key(&tenant, &bucket);
        if !listed_buckets.contains(&marker) && store.upstream.read_tagged(&marker).await?.is_none() {
            let _owned = store.locks.own_bucket(&tenant, &bucket).await;
            if store.index.delete_bucket(&tenant, &bucket, now_ms())? == BucketDeletion::Deleted {
                report.buckets_removed += 1;
            }
        }
    }
    Ok(())
}

/// Uploads another gateway completed or aborted: their markers are gone.
async fn sync_uploads(store: &Store, report: &mut SyncReport) -> anyhow::Result<()> {
    let mut live_uploads = HashSet::new();
    for prefix in store.config.upstream_prefixes() {
        live_uploads.extend(store.upstream.list(&format!("{prefix}{UPLOADS}")).await?.into_iter().map(|listed| listed.key));
    }
    for upload_id in store.index.all_upload_ids()? {
        let Some(upload) = store.index.upload(&upload_id)? else { continue };
        let marker = upload_key(&store.config.upstream_prefix(&upload.tenant), &upload_id);
        if !live_uploads.contains(&marker) && store.upstream.read_tagged(&marker).await?.is_none() {
            store.index.abort_upload(&upload_id, now_ms())?;
            report.uploads_ended += 1;
        }
    }
    Ok(())
}

/// Every manifest that changed since it was last seen (by its listing tag) is adopted, and
/// every object whose manifest is gone is checked and dropped.
async fn sync_every_manifest(store: &Store, tags: &mut HashMap<String, String>, report: &mut SyncReport) -> anyhow::Result<()> {
    let mut listed_manifests = HashSet::new();
    for prefix in store.config.upstream_prefixes() {
        for listed in store.upstream.list(&format!("{prefix}{MANIFESTS}")).await? {
            listed_manifests.insert(listed.key.clone());
            if tags.get(&listed.key) == Some(&listed.tag) {
                continue;
            }
            // One unreadable manifest must not keep the others from being caught up with.
            let adopted = match read_record::<Manifest>(store, &listed.key).await {
                Ok(Some(manifest)) => shared::adopt_listed(store, &manifest).await,
                Ok(None) => Ok(false),
                Err(error) => Err(error),
            };
            match adopted {
                Ok(adopted) => report.objects_adopted += usize::from(adopted),
                Err(error) => {
                    tracing::warn!(manifest = %listed.key, error = format!("{error:#}"), "manifest not adopted; retried at the next full sync");
                    report.manifests_skipped += 1;
                    continue;
                }
            }
            tags.insert(listed.key, listed.tag);
        }
    }
    tags.retain(|key, _| !key.contains(MANIFESTS) || listed_manifests.contains(key));
    let mut unlisted = Vec::new();
    for entry in store.index.all_objects() {
        let (key, _) = entry?;
        if !listed_manifests.contains(&store.manifest_key(&key)) {
            unlisted.push(key);
        }
    }
    for key in unlisted {
        refresh_counted(store, &key, report).await?;
    }
    Ok(())
}

/// Brings one object in line with its manifest upstream, counting what changed.
/// One record that does not decode must not stall every sync: it is logged and skipped (and
/// read again at the next full sync); any other failure, such as the upstream's, ends the sync.
fn skip_unreadable<T>(outcome: anyhow::Result<T>, key: &str) -> anyhow::Result<Option<T>> {
    match outcome {
        Ok(value) => Ok(Some(value)),
        Err(error) if matches!(error.downcast_ref(), Some(IndexError::Envelope(_) | IndexError::Decode(_) | IndexError::TrailingBytes(_))) => {
            tracing::warn!(record = %key, error = format!("{error:#}"), "unreadable record skipped; read again at the next full sync");
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

async fn refresh_counted(store: &Store, key: &ObjectKey, report: &mut SyncReport) -> anyhow::Result<()> {
    let before = store.index.object(key)?.map(|record| record.version);
    match refresh(store, key).await? {
        None if before.is_some() => report.objects_removed += 1,
        Some(record) if before.as_ref() != Some(&record.version) => report.objects_adopted += 1,
        _ => {}
    }
    Ok(())
}

/// With a shared upstream, catches the index up with the other gateways' writes every
/// `shared_sync_secs`, so that listings show them.
pub async fn run_sync(store: Arc<Store>) {
    let interval = Duration::from_secs(store.config.shared_sync_secs.max(1));
    let mut state = SyncState::default();
    loop {
        match sync(&store, &mut state).await {
            Ok(report) if report != SyncReport { listed_everything: report.listed_everything, ..Default::default() } => {
                tracing::info!(?report, "caught up with the shared upstream")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(error = format!("{error:#}"), "sync with the shared upstream failed; retrying later"),
        }
        tokio::time::sleep(interval).await;
    }
}
