//! The packer: re-encodes objects stored as they arrived (multipart uploads, writes the
//! gateway could not encode on arrival) into chunks and packs, and swaps their manifest if
//! nobody changed the object meanwhile.

use std::sync::Arc;
use std::time::Duration;

use tensorgate_index::{Expect, IndexError, ObjectKey, PackJob, Refusal};
use tracing::Instrument;

use crate::engine::Store;
use crate::engine::catalog;
use crate::engine::ingest::{self, BodyFrom, IngestMode, IngestOptions};
use crate::engine::reader;
use crate::engine::shared::MaybePublished;
use crate::ids::new_id;

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
    // A job stays queued until packed: whoever calls next waits for the job under way to end.
    let _packing = store.packing.lock().await;
    let Some(job) = store.index.next_pack_job()? else { return Ok(false) };
    // Its commit would be refused: no re-encoding until the gateway is in step again.
    store.check_in_step()?;
    let span = tracing::info_span!("pack", tenant = %job.tenant, bucket = %job.bucket, key = %job.key);
    pack_object(store, &job).instrument(span).await?;
    store.index.finish_pack_job(&job)?;
    Ok(true)
}

/// Re-encodes one object version as chunks and swaps its manifest if it is still current.
async fn pack_object(store: &Arc<Store>, job: &PackJob) -> anyhow::Result<()> {
    let key = ObjectKey::new(&job.tenant, &job.bucket, &job.key);
    let Some(record) = store.index.object(&key)?.filter(|r| r.version == job.version) else {
        return Ok(());
    };
    let body = reader::stream(store.clone(), reader::plan(&record, 0..record.size), reader::Reader::Gateway);
    // A multipart upload names its base at its creation; it is kept as the object's metadata.
    let base_hint = record.attributes.metadata.get(ingest::BASE_HINT).and_then(|hint| ingest::named_base(store, &job.tenant, hint));
    let options = IngestOptions { size_hint: Some(record.size), mode: IngestMode::ChunkedOnly, body_from: BodyFrom::Store, base_hint, ..Default::default() };
    let Some(ingested) = ingest::ingest(store, &job.tenant, Box::pin(body), options).await? else {
        tracing::info!("too small to chunk; kept as it came");
        return Ok(());
    };
    if ingested.size != record.size || !ingested.is_chunked() {
        ingested.discard(store).await;
        return Ok(());
    }
    // A new version, so that gateways holding the as-uploaded manifest read the new one.
    let mut packed = record.clone();
    packed.version = new_id();
    packed.segments = ingested.segments.clone();
    let committed = catalog::commit(store, &key, &packed, &ingested.new_chunks, ingested.new_pack.as_ref(), Expect::Version(&job.version)).await;
    match committed {
        Ok(()) => {
            store.metrics.packed_objects.inc();
            store.register_tensors(&job.tenant, &ingested.tensors)?;
            tracing::info!(size = record.size, "packed");
            Ok(())
        }
        // The object changed under the packer: nothing to do. What a manifest that may have
        // landed names stays (an orphan is collected later); anything else is discarded.
        Err(error) if matches!(error.downcast_ref::<IndexError>(), Some(IndexError::Refused(Refusal::VersionChanged))) => {
            if error.downcast_ref::<MaybePublished>().is_none() {
                ingested.discard(store).await;
            }
            Ok(())
        }
        Err(error) if error.downcast_ref::<MaybePublished>().is_some() => Err(error),
        Err(error) => {
            ingested.discard(store).await;
            Err(error)
        }
    }
}
