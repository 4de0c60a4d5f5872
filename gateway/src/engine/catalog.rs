//! The upstream copy of the index. Every object has a manifest upstream (its record and where
//! its chunks are) and every bucket a marker, written before the index commits and removed
//! before the index forgets: the upstream never lacks what the index acknowledged. The index
//! can therefore be rebuilt from the upstream alone, and a gateway sharing the upstream with
//! others reads the manifests they wrote.

use bytes::Bytes;
use tensorgate_index::{
    part_key, parts_folder, upload_key, BucketDeletion, BucketMarker, Envelope, Expect, IndexError,
    ChunkLocation, Manifest, NewChunk, NewPack, ObjectKey, ObjectRecord, PartMarker, PartRecord, PartRecordV3, UploadMarker, UploadRecord,
    Refusal, UPLOADS,
};

use crate::engine::{read_record, Store};
use crate::engine::shared;
use crate::ids::now_ms;
use crate::upstream::{self, Condition};

/// Makes `record` the object at `key`: publishes its manifest, then commits it to the index.
/// Nothing happens unless the object there meets `expect` (the packer's version, a client's
/// condition).
pub async fn commit(
    store: &Store,
    key: &ObjectKey,
    record: &ObjectRecord,
    new_chunks: &[NewChunk],
    new_pack: Option<&NewPack>,
    expect: Expect<'_>,
) -> anyhow::Result<()> {
    let _bucket = store.locks.share_bucket(&key.tenant, &key.bucket).await;
    let _guard = store.locks.lock_key(key).await;
    store.check_in_step()?;
    if store.index.bucket(&key.tenant, &key.bucket)?.is_none() {
        return Err(IndexError::Refused(Refusal::NoSuchBucket).into());
    }
    if store.config.shared_upstream {
        // Each manifest protects the copies it names (the collector spares them), so the one
        // published stays as it is whichever copy the index keeps.
        let manifest = manifest_of(key, record, store.index.locate(record, new_chunks)?);
        // A client's condition holds of the manifest upstream, checked there; the index may be
        // behind it. The packer's version is the index's own too.
        let index_expect = if matches!(expect, Expect::Version(_)) { expect } else { Expect::Any };
        let index_step = || store.index.commit_object(key, record, new_chunks, new_pack, index_expect, now_ms());
        return shared::publish_then(store, key, &manifest, expect, index_step).await;
    }
    check_in_index(store, key, expect)?;
    store.index.mark_pending(key)?;
    let outcome = match publish(store, key, record, new_chunks).await {
        Ok(published) => store.index.commit_object(key, record, new_chunks, new_pack, expect, now_ms()).map(|()| published).map_err(Into::into),
        Err(error) => Err(error),
    };
    match outcome {
        Ok(published) => {
            confirm(store, key, record, &published).await;
            Ok(())
        }
        Err(error) => settle(store, key, Err(error)).await,
    }
}

/// Ends a multipart upload with `record` (made of the parts `chosen`, by number) as the object
/// at `key`: manifest, then index; queued for the packer if `pack`. Nothing happens unless the
/// object there meets `expect` (the client's conditions).
pub async fn complete_upload(
    store: &Store,
    upload_id: &str,
    key: &ObjectKey,
    record: &ObjectRecord,
    chosen: &[(u32, &PartRecord)],
    pack: bool,
    expect: Expect<'_>,
) -> anyhow::Result<()> {
    let _bucket = store.locks.share_bucket(&key.tenant, &key.bucket).await;
    let _guard = store.locks.lock_key(key).await;
    if store.config.shared_upstream {
        let manifest = manifest_of(key, record, store.index.locate(record, &[])?);
        let index_step = || store.index.complete_upload(upload_id, key, record, chosen, pack, now_ms());
        return shared::publish_then(store, key, &manifest, expect, index_step).await;
    }
    check_in_index(store, key, expect)?;
    store.index.mark_pending(key)?;
    let outcome = match publish(store, key, record, &[]).await {
        Ok(_) => store.index.complete_upload(upload_id, key, record, chosen, pack, now_ms()).map_err(Into::into),
        Err(error) => Err(error),
    };
    settle(store, key, outcome).await
}

/// Fails unless the object the index holds at `key` meets `expect`: without a shared upstream
/// the index is the truth, and the key's lock (held by the caller) keeps it so until the commit.
fn check_in_index(store: &Store, key: &ObjectKey, expect: Expect<'_>) -> anyhow::Result<()> {
    let current = store.index.object(key)?;
    match expect.holds(current.as_ref()) {
        true => Ok(()),
        false => Err(expect.unmet(current.as_ref()).into()),
    }
}

/// After a commit: the index may have resolved a chunk to another copy than the published
/// manifest names (a concurrent write stored the same chunk first; this write's copy is
/// unreferenced, and its pack goes to the trash once nothing in it is used). The manifest is then written again with the locations the index committed;
/// if that fails, the key stays pending and [`recover`] writes it before any trash is deleted.
async fn confirm(store: &Store, key: &ObjectKey, record: &ObjectRecord, published: &[ChunkLocation]) {
    let rewritten = match store.index.locate(record, &[]) {
        Ok(committed) if same_locations(&committed, published) => Ok(()),
        Ok(_) => publish(store, key, record, &[]).await.map(drop),
        Err(error) => Err(error.into()),
    };
    let cleared = rewritten.and_then(|()| Ok(store.index.clear_pending(key)?));
    if let Err(error) = cleared {
        tracing::warn!(bucket = %key.bucket, key = %key.key, error = format!("{error:#}"), "manifest left pending for recovery");
    }
}

/// Whether two chunk tables name the same locations, in any order.
pub fn same_locations(a: &[ChunkLocation], b: &[ChunkLocation]) -> bool {
    let sorted = |table: &[ChunkLocation]| {
        let mut table = table.to_vec();
        table.sort_by_key(|location| location.hash);
        table
    };
    a.len() == b.len() && sorted(a) == sorted(b)
}

/// Deletes the object at `key`: its manifest, then its index record. False if there was none.
pub async fn delete(store: &Store, key: &ObjectKey) -> anyhow::Result<bool> {
    let _guard = store.locks.lock_key(key).await;
    if store.config.shared_upstream {
        return shared::delete(store, key).await;
    }
    store.index.mark_pending(key)?;
    let outcome = match store.upstream.delete(&store.manifest_key(key)).await {
        Ok(()) => store.index.delete_object(key, now_ms()).map_err(Into::into),
        Err(error) => Err(error),
    };
    settle(store, key, outcome).await
}

/// Ends a pending manifest change. A failed one has the upstream manifest put back to what the
/// index holds; if even that fails, the key stays pending for [`recover`].
async fn settle<T>(store: &Store, key: &ObjectKey, outcome: anyhow::Result<T>) -> anyhow::Result<T> {
    if outcome.is_err() {
        if let Err(error) = align(store, key).await {
            tracing::error!(bucket = %key.bucket, key = %key.key, error = format!("{error:#}"), "manifest left pending for recovery");
            return outcome;
        }
    }
    store.index.clear_pending(key)?;
    outcome
}

/// Finishes manifest changes a crash interrupted: each pending key's manifest is written
/// again from the index (or removed if the index has no object there). With a shared upstream
/// the index takes what the upstream holds instead: another gateway may have written since.
pub async fn recover(store: &Store) -> anyhow::Result<usize> {
    let pending = store.index.pending()?;
    for key in &pending {
        let _guard = store.locks.lock_key(key).await;
        if store.config.shared_upstream {
            shared::reconcile(store, key).await?;
            continue;
        }
        align(store, key).await?;
        store.index.clear_pending(key)?;
    }
    Ok(pending.len())
}

/// Creates a bucket: its marker (by a conditional write, so that of two gateways creating it
/// one wins), then its index record. False if it already existed, here or upstream.
/// `location` is the LocationConstraint the client gave, if any.
pub async fn create_bucket(store: &Store, tenant: &str, bucket: &str, location: Option<String>) -> anyhow::Result<bool> {
    if store.index.bucket(tenant, bucket)?.is_some() {
        return Ok(false);
    }
    let marker = BucketMarker { tenant: tenant.to_owned(), bucket: bucket.to_owned(), created_ms: now_ms(), location };
    let marker_key = store.bucket_key(tenant, bucket);
    if store.upstream.put_if(&marker_key, Bytes::from(marker.seal()?), Condition::Absent).await?.is_none() {
        adopt_bucket(store, tenant, bucket).await?;
        return Ok(false);
    }
    Ok(store.index.create_bucket(tenant, bucket, &marker.record())?)
}

/// Deletes an empty bucket from the index, then its marker. Commits into the bucket are held
/// off meanwhile, and those that come after find it gone.
pub async fn delete_bucket(store: &Store, tenant: &str, bucket: &str) -> anyhow::Result<BucketDeletion> {
    let owned = store.locks.own_bucket(tenant, bucket).await;
    let uploads = list_uploads(store, tenant, bucket).await?;
    let deletion = store.index.delete_bucket(tenant, bucket, now_ms())?;
    store.kept_settings.drop_bucket(tenant, bucket);
    // Commits that come after find the bucket gone in the index: no need to hold them off
    // while the upstream answers.
    drop(owned);
    if deletion == BucketDeletion::Deleted {
        let marker_key = store.bucket_key(tenant, bucket);
        let created_ms = read_record::<BucketMarker>(store, &marker_key).await?.map(|marker| marker.created_ms);
        store.upstream.delete(&marker_key).await?;
        // The uploads in progress ended with the bucket; other gateways learn it from their markers.
        for (upload_id, _) in uploads {
            forget_upload(store, tenant, &upload_id).await?;
        }
        // Last: settings left behind bind no later bucket of the name (docs/format.md, rule 13a).
        if let Some(created_ms) = created_ms {
            crate::engine::bucket_settings::forget(store, tenant, bucket, created_ms).await?;
        }
    }
    Ok(deletion)
}

/// Brings in from the upstream a bucket another gateway created; false if there is none.
pub async fn adopt_bucket(store: &Store, tenant: &str, bucket: &str) -> anyhow::Result<bool> {
    let Some(marker) = read_record::<BucketMarker>(store, &store.bucket_key(tenant, bucket)).await? else {
        return Ok(false);
    };
    anyhow::ensure!(marker.tenant == tenant && marker.bucket == bucket, "bucket marker names another bucket");
    store.index.create_bucket(tenant, bucket, &marker.record())?;
    Ok(true)
}

/// Starts a multipart upload; with a shared upstream its marker goes upstream first, so that
/// every gateway can take its parts.
pub async fn create_upload(store: &Store, upload_id: &str, upload: &UploadRecord) -> anyhow::Result<()> {
    let _bucket = store.locks.share_bucket(&upload.tenant, &upload.bucket).await;
    if store.index.bucket(&upload.tenant, &upload.bucket)?.is_none() {
        return Err(IndexError::Refused(Refusal::NoSuchBucket).into());
    }
    if store.config.shared_upstream {
        let marker = UploadMarker { upload_id: upload_id.to_owned(), upload: upload.clone() };
        upstream::put(&*store.upstream, &upload_key(&store.config.upstream_prefix(&upload.tenant), upload_id), Bytes::from(marker.seal()?)).await?;
    }
    Ok(store.index.create_upload(upload_id, upload)?)
}

/// An upload in progress of `tenant`: from the index; with a shared upstream from its marker,
/// which another gateway may have written (the upload is then brought into the index) or
/// removed by completing or aborting it (the upload then ends here too).
pub async fn find_upload(store: &Store, tenant: &str, upload_id: &str) -> anyhow::Result<Option<UploadRecord>> {
    let is_id = upload_id.len() == 32 && upload_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !is_id {
        return Ok(None);
    }
    let local = store.index.upload(upload_id)?;
    if !store.config.shared_upstream {
        return Ok(local);
    }
    let marker_key = upload_key(&store.config.upstream_prefix(tenant), upload_id);
    let Some(marker) = read_record::<UploadMarker>(store, &marker_key).await? else {
        if local.is_some() {
            store.index.abort_upload(upload_id, now_ms())?;
        }
        return Ok(None);
    };
    anyhow::ensure!(marker.upload_id == upload_id, "upload marker names another upload");
    if local.is_none() {
        store.index.create_upload(upload_id, &marker.upload)?;
    }
    Ok(Some(marker.upload))
}

/// The uploads in progress in a bucket, sorted by key then id: with a shared upstream from the
/// upload markers (any gateway may have started them), else from the index.
pub async fn list_uploads(store: &Store, tenant: &str, bucket: &str) -> anyhow::Result<Vec<(String, UploadRecord)>> {
    if !store.config.shared_upstream {
        return Ok(store.index.list_uploads(tenant, bucket)?);
    }
    let mut uploads = Vec::new();
    for listed in store.upstream.list(&format!("{}{UPLOADS}", store.config.upstream_prefix(tenant))).await? {
        let Some(marker) = read_record::<UploadMarker>(store, &listed.key).await? else { continue };
        if marker.upload.tenant == tenant && marker.upload.bucket == bucket {
            uploads.push((marker.upload_id, marker.upload));
        }
    }
    uploads.sort_by(|a, b| (&a.1.key, &a.0).cmp(&(&b.1.key, &b.0)));
    Ok(uploads)
}

/// Records a stored part, with the chunks an encoded one wrote (`new_chunks`, in `new_pack`);
/// with a shared upstream also as a part marker, so that the gateway completing the upload
/// finds it. Later parts waiting for this upload's part 1 look again.
pub async fn record_part(
    store: &Store,
    tenant: &str,
    upload_id: &str,
    number: u32,
    part: &PartRecord,
    new_chunks: &[NewChunk],
    new_pack: Option<&NewPack>,
) -> anyhow::Result<()> {
    store.index.put_part(upload_id, number, part, new_chunks, new_pack, now_ms())?;
    store.first_parts.part_recorded(upload_id, number);
    if store.config.shared_upstream {
        // Parts are stored as they came there (`ingest::part_mode`).
        let stored = PartRecordV3::of(part).ok_or_else(|| anyhow::anyhow!("an encoded part cannot be marked on a shared upstream"))?;
        let marker = PartMarker { upload_id: upload_id.to_owned(), number, part: stored };
        let key = part_key(&store.config.upstream_prefix(tenant), upload_id, number);
        upstream::put(&*store.upstream, &key, Bytes::from(marker.seal()?)).await?;
    }
    Ok(())
}

/// The parts of an upload by number: with a shared upstream from the part markers (parts may
/// have reached any gateway), else from the index.
pub async fn parts(store: &Store, tenant: &str, upload_id: &str) -> anyhow::Result<Vec<(u32, PartRecord)>> {
    if !store.config.shared_upstream {
        return Ok(store.index.parts(upload_id)?);
    }
    let mut parts = Vec::new();
    for listed in store.upstream.list(&parts_folder(&store.config.upstream_prefix(tenant), upload_id)).await? {
        let Some(marker) = read_record::<PartMarker>(store, &listed.key).await? else { continue };
        anyhow::ensure!(marker.upload_id == upload_id, "part marker names another upload");
        parts.push((marker.number, marker.part.into()));
    }
    Ok(parts)
}

/// With a shared upstream, removes an ended upload's markers (its marker first, so no gateway
/// takes new parts for it).
pub async fn forget_upload(store: &Store, tenant: &str, upload_id: &str) -> anyhow::Result<()> {
    if !store.config.shared_upstream {
        return Ok(());
    }
    let prefix = store.config.upstream_prefix(tenant);
    store.upstream.delete(&upload_key(&prefix, upload_id)).await?;
    for listed in store.upstream.list(&parts_folder(&prefix, upload_id)).await? {
        store.upstream.delete(&listed.key).await?;
    }
    Ok(())
}

/// The object's manifest as the upstream holds it, if any.
pub async fn fetch(store: &Store, key: &ObjectKey) -> anyhow::Result<Option<Manifest>> {
    let Some(manifest) = read_record::<Manifest>(store, &store.manifest_key(key)).await? else {
        return Ok(None);
    };
    anyhow::ensure!(
        manifest.tenant == key.tenant && manifest.bucket == key.bucket && manifest.key == key.key,
        "manifest at the key of {}/{} names another object",
        key.bucket,
        key.key
    );
    Ok(Some(manifest))
}

/// Brings the index in line with the object's upstream manifest, which another gateway may
/// have written, replaced or removed. Returns the current record, if the object exists.
/// A write of this gateway that commits between the read and the adoption wins: the read is
/// then older than the index.
pub async fn refresh(store: &Store, key: &ObjectKey) -> anyhow::Result<Option<ObjectRecord>> {
    let before = store.index.object(key)?.map(|record| record.version);
    let manifest = fetch(store, key).await?;
    let _bucket = store.locks.share_bucket(&key.tenant, &key.bucket).await;
    let _guard = store.locks.lock_key(key).await;
    let local = store.index.object(key)?;
    if local.as_ref().map(|record| &record.version) != before.as_ref() {
        return Ok(local);
    }
    match (manifest, local) {
        (Some(manifest), Some(local)) if manifest.record.version == local.version => Ok(Some(local)),
        (Some(manifest), _) => {
            shared::adopt(store, &manifest)?;
            Ok(Some(manifest.record))
        }
        (None, Some(_)) => {
            store.index.delete_object(key, now_ms())?;
            Ok(None)
        }
        (None, None) => Ok(None),
    }
}

/// Writes the manifest of `record` as the object at `key`; returns the chunk table written.
/// A chunk the index already holds is named where the index has it (a commit keeps that copy;
/// see `Index::locate`).
pub async fn publish(store: &Store, key: &ObjectKey, record: &ObjectRecord, new_chunks: &[NewChunk]) -> anyhow::Result<Vec<ChunkLocation>> {
    let manifest = manifest_of(key, record, store.index.locate(record, new_chunks)?);
    upstream::put(&*store.upstream, &store.manifest_key(key), Bytes::from(manifest.seal()?)).await?;
    Ok(manifest.chunks)
}

/// Makes the upstream manifest of `key` what the index holds: its record, or none.
pub async fn align(store: &Store, key: &ObjectKey) -> anyhow::Result<()> {
    match store.index.object(key)? {
        Some(record) => publish(store, key, &record, &[]).await.map(drop),
        None => store.upstream.delete(&store.manifest_key(key)).await,
    }
}

/// The manifest of `record` as the object at `key`, with the chunk table `chunks`.
fn manifest_of(key: &ObjectKey, record: &ObjectRecord, chunks: Vec<ChunkLocation>) -> Manifest {
    Manifest { tenant: key.tenant.clone(), bucket: key.bucket.clone(), key: key.key.clone(), record: record.clone(), chunks }
}
