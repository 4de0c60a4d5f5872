//! Manifest changes with a shared upstream. There the manifest upstream is the truth and each
//! gateway's index a cache that may be behind, so every change of a manifest is conditional on
//! what the writer saw there (`If-Match: <tag>`, or `If-None-Match: *` when there was none):
//! a gateway never replaces or removes a version it has not seen. When its condition fails it
//! looks again; a write or delete a client asked for then goes ahead over the newer version
//! (the two were concurrent, and S3 keeps the last), while recovery, clean-up and the packer
//! adopt the newer version instead. The caller holds the key's lock throughout.

use bytes::Bytes;
use tensorgate_index::{Envelope, Expect, IndexError, Manifest, ObjectKey};

use crate::engine::Store;
use crate::engine::journal;
use crate::ids::now_ms;
use crate::upstream::Condition;

/// How many times a write or delete looks again after other gateways changed the manifest
/// under it before it gives up ([`KeptChanging`]).
const CONFLICT_ATTEMPTS: usize = 5;

/// What a writer saw at an object's manifest key.
#[derive(Debug, Clone)]
pub enum Seen {
    Absent,
    Present { tag: String, manifest: Box<Manifest> },
}

impl Seen {
    /// The version of the object upstream, if there is one.
    pub fn version(&self) -> Option<&str> {
        match self {
            Seen::Absent => None,
            Seen::Present { manifest, .. } => Some(&manifest.record.version),
        }
    }

    /// The condition under which a change replaces exactly what was seen.
    fn condition(&self) -> Condition {
        match self {
            Seen::Absent => Condition::Absent,
            Seen::Present { tag, .. } => Condition::Matches(tag.clone()),
        }
    }
}

/// The manifest of `key` upstream now, with its tag.
pub async fn observe(store: &Store, key: &ObjectKey) -> anyhow::Result<Seen> {
    let Some(tagged) = store.upstream.read_tagged(&store.manifest_key(key)).await? else {
        return Ok(Seen::Absent);
    };
    let manifest = Manifest::open(&tagged.bytes)?;
    anyhow::ensure!(
        manifest.tenant == key.tenant && manifest.bucket == key.bucket && manifest.key == key.key,
        "manifest at the key of {}/{} names another object",
        key.bucket,
        key.key
    );
    Ok(Seen::Present { tag: tagged.tag, manifest: Box::new(manifest) })
}

/// Fails unless the object upstream meets `expect` (the packer's version, a client's condition).
fn check_expected(seen: &Seen, expect: Expect<'_>) -> anyhow::Result<()> {
    let current = match seen {
        Seen::Absent => None,
        Seen::Present { manifest, .. } => Some(&manifest.record),
    };
    match expect.holds(current) {
        true => Ok(()),
        false => Err(expect.unmet(current).into()),
    }
}

/// A manifest write whose outcome is unknown: it may have landed, and another gateway may
/// already read it, so what it names must stay upstream (unreferenced, it is collected as an
/// orphan later); the key stays pending until the index takes what the upstream holds.
#[derive(Debug, thiserror::Error)]
#[error("the manifest write may have landed")]
pub struct MaybePublished;

/// Other gateways changed the record (an object's manifest, a bucket's settings) under a write
/// or delete each time it looked again: a retryable 503 for the client.
#[derive(Debug, thiserror::Error)]
#[error("the upstream record kept changing under the request")]
pub struct KeptChanging;

/// Publishes `manifest` over what the upstream holds, conditionally, then runs `index_step`
/// (the index commit). Nothing is written unless the object upstream meets `expect` (the
/// packer's version, a client's condition). A write whose condition failed looks again and, for
/// a client's write, goes over the newer version. Any error once a write was tried is
/// [`MaybePublished`] (with its cause underneath).
pub async fn publish_then(
    store: &Store,
    key: &ObjectKey,
    manifest: &Manifest,
    expect: Expect<'_>,
    index_step: impl FnOnce() -> Result<(), IndexError>,
) -> anyhow::Result<()> {
    let mut seen = observe(store, key).await?;
    check_expected(&seen, expect)?;
    store.index.mark_pending(key)?;
    let bytes = Bytes::from(manifest.seal()?);
    for _ in 0..CONFLICT_ATTEMPTS {
        let failure = match store.upstream.put_if(&store.manifest_key(key), bytes.clone(), seen.condition()).await {
            Ok(Some(_)) => return finish(store, key, index_step).await,
            Ok(None) => None,
            Err(error) => Some(error),
        };
        // The condition failed, or the answer was lost: a first attempt of the SDK's retries,
        // or this request, may have landed; then the manifest there is this write's version.
        let observed = observe(store, key).await;
        if let Ok(Seen::Present { manifest: there, .. }) = &observed {
            if there.record.version == manifest.record.version {
                return finish(store, key, index_step).await;
            }
        }
        match (observed, failure) {
            (Ok(now), None) => seen = now,
            (_, Some(error)) | (Err(error), None) => {
                reconcile_or_leave_pending(store, key).await;
                return Err(error.context(MaybePublished));
            }
        }
        // A first attempt may have landed and been replaced since: what it names stays.
        if let Err(error) = check_expected(&seen, expect) {
            return settle(store, key, Err(error.context(MaybePublished))).await;
        }
    }
    settle(store, key, Err(anyhow::Error::from(KeptChanging).context(MaybePublished))).await
}

/// The index step of a write whose manifest landed, then its journal entry. If the index step
/// fails, the key stays pending and recovery makes the index take the manifest upstream; if
/// the entry cannot be written, recovery writes it.
async fn finish(store: &Store, key: &ObjectKey, index_step: impl FnOnce() -> Result<(), IndexError>) -> anyhow::Result<()> {
    index_step().map_err(|error| anyhow::Error::from(error).context(MaybePublished))?;
    let journaled = journal::append(store, key).await.and_then(|()| Ok(store.index.clear_pending(key)?));
    if let Err(error) = journaled {
        tracing::warn!(bucket = %key.bucket, key = %key.key, error = format!("{error:#}"), "committed, but left pending for recovery");
    }
    Ok(())
}

/// Removes the object at `key`: its manifest (whatever version is there by then), then its
/// index record. False if there was none upstream.
pub async fn delete(store: &Store, key: &ObjectKey) -> anyhow::Result<bool> {
    let mut seen = observe(store, key).await?;
    let existed = seen.version().is_some();
    store.index.mark_pending(key)?;
    for _ in 0..CONFLICT_ATTEMPTS {
        let Seen::Present { tag, .. } = &seen else {
            return settle(store, key, Ok(existed)).await;
        };
        match store.upstream.delete_if(&store.manifest_key(key), tag).await {
            Ok(true) => return settle(store, key, Ok(existed)).await,
            Ok(false) => {}
            Err(error) => return settle(store, key, Err(error)).await,
        }
        seen = match observe(store, key).await {
            Ok(seen) => seen,
            Err(error) => return settle(store, key, Err(error)).await,
        };
    }
    settle(store, key, Err(KeptChanging.into())).await
}

/// Ends a pending change: the index takes what the upstream holds now (see [`reconcile`]). If
/// the upstream cannot say, the key stays pending for recovery.
pub async fn settle<T>(store: &Store, key: &ObjectKey, outcome: anyhow::Result<T>) -> anyhow::Result<T> {
    reconcile_or_leave_pending(store, key).await;
    outcome
}

async fn reconcile_or_leave_pending(store: &Store, key: &ObjectKey) {
    if let Err(error) = reconcile(store, key).await {
        tracing::error!(bucket = %key.bucket, key = %key.key, error = format!("{error:#}"), "manifest left pending for recovery");
    }
}

/// Brings a key's index record in line with its manifest upstream, whoever wrote it (another
/// gateway, or this one before a crash or a lost answer), journals the change (the other
/// gateways may not know of it) and clears its pending mark. No manifest changes: a gateway
/// never puts back what it last knew over what is there.
pub async fn reconcile(store: &Store, key: &ObjectKey) -> anyhow::Result<()> {
    match observe(store, key).await? {
        Seen::Absent => {
            store.index.delete_object(key, now_ms())?;
        }
        Seen::Present { manifest, .. } => {
            let local = store.index.object(key)?;
            if local.map(|record| record.version).as_deref() != Some(manifest.record.version.as_str()) {
                adopt(store, &manifest)?;
            }
        }
    }
    journal::append(store, key).await?;
    store.index.clear_pending(key)?;
    Ok(())
}

/// Writes the manifest of `key` again with the chunk copies the index holds, if the upstream
/// is still at the index's version (and only then); false if it was not.
pub async fn relocate(store: &Store, key: &ObjectKey) -> anyhow::Result<bool> {
    let (Some(record), Seen::Present { tag, manifest }) = (store.index.object(key)?, observe(store, key).await?) else {
        return Ok(false);
    };
    if record.version != manifest.record.version {
        return Ok(false);
    }
    let relocated = Manifest { chunks: store.index.locate(&record, &[])?, ..*manifest };
    Ok(store.upstream.put_if(&store.manifest_key(key), Bytes::from(relocated.seal()?), Condition::Matches(tag)).await?.is_some())
}

/// Makes an upstream manifest the object it names in the index, reading its chunks where it
/// says they are when the index lacks them.
pub fn adopt(store: &Store, manifest: &Manifest) -> Result<(), IndexError> {
    store.index.adopt(manifest, now_ms(), |_, named| named.cloned())
}

/// Re-reads a manifest found changed by a listing and adopts it, under the key's lock.
pub async fn adopt_listed(store: &Store, listed: &Manifest) -> anyhow::Result<bool> {
    let key = ObjectKey::new(&listed.tenant, &listed.bucket, &listed.key);
    let _bucket = store.locks.share_bucket(&key.tenant, &key.bucket).await;
    let _guard = store.locks.lock_key(&key).await;
    let local = store.index.object(&key)?.map(|record| record.version);
    if local.as_deref() == Some(listed.record.version.as_str()) {
        return Ok(false);
    }
    let before = local;
    match observe(store, &key).await? {
        Seen::Present { manifest, .. } if Some(&manifest.record.version) != before.as_ref() => {
            adopt(store, &manifest)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}
