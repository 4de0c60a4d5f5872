//! Background work: the packer, which re-encodes objects that arrived by multipart upload, and
//! garbage collection, which deletes freed chunks, packs and blobs after a grace period.

use std::sync::Arc;
use std::time::Duration;

use tensorgate_index::{Expect, IndexError, ObjectKey, PackJob};

use crate::ingest::{self, IngestMode, IngestOptions};
use crate::reader;
use crate::store::{now_ms, Store};

/// Runs the packer until the process ends, resuming the durable queue after a restart.
pub async fn run_packer(store: Arc<Store>) {
    loop {
        match pack_next(&store).await {
            Ok(true) => {}
            Ok(false) => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "packer failed; retrying later");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// Packs the oldest queued object; false when the queue is empty.
pub async fn pack_next(store: &Arc<Store>) -> anyhow::Result<bool> {
    let Some(job) = store.index.next_pack_job()? else { return Ok(false) };
    let span = tracing::info_span!("pack", tenant = %job.tenant, bucket = %job.bucket, key = %job.key);
    let _entered = span.enter();
    pack_object(store, &job).await?;
    store.index.finish_pack_job(&job)?;
    Ok(true)
}

/// Re-encodes one object version as chunks and swaps its manifest if it is still current.
async fn pack_object(store: &Arc<Store>, job: &PackJob) -> anyhow::Result<()> {
    let key = ObjectKey::new(&job.tenant, &job.bucket, &job.key);
    let Some(record) = store.index.object(&key)?.filter(|r| r.version == job.version) else {
        return Ok(());
    };
    let body = reader::stream(store.clone(), reader::plan(&record, 0..record.size));
    let options = IngestOptions { size_hint: Some(record.size), mode: IngestMode::ModelsOnly, ..Default::default() };
    let Some(ingested) = ingest::ingest(store, &job.tenant, Box::pin(body), options).await? else {
        tracing::info!("not a model; kept as it came");
        return Ok(());
    };
    if ingested.size != record.size || !ingested.is_model() {
        ingested.discard(store).await;
        return Ok(());
    }
    let mut packed = record.clone();
    packed.segments = ingested.segments.clone();
    let committed = store.index.commit_object(
        &key,
        &packed,
        &ingested.new_chunks,
        ingested.new_pack.as_ref(),
        Expect::Version(&job.version),
        now_ms(),
    );
    match committed {
        Ok(()) => {
            store.register_tensors(&job.tenant, &ingested.tensors)?;
            tracing::info!(size = record.size, "packed");
            Ok(())
        }
        Err(IndexError::VersionChanged) => {
            ingested.discard(store).await;
            Ok(())
        }
        Err(error) => {
            ingested.discard(store).await;
            Err(error.into())
        }
    }
}

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
}

/// Collects chunks dead for longer than the grace period, then deletes upstream objects in
/// the trash for longer than it.
pub async fn collect_garbage(store: &Store) -> anyhow::Result<GcReport> {
    let now = now_ms();
    let cutoff = now - (store.config.gc_grace_secs as i64) * 1000;
    let chunks = store.index.sweep_chunks(cutoff, now)?;
    let mut upstream_objects = 0;
    for key in store.index.trash_before(cutoff)? {
        store.upstream.delete(&key).await?;
        store.index.forget_trash(&key)?;
        upstream_objects += 1;
    }
    if chunks + upstream_objects > 0 {
        tracing::info!(chunks, upstream_objects, "garbage collected");
    }
    Ok(GcReport { chunks, upstream_objects })
}
