//! A bucket's settings (Block Public Access, ownership controls, CORS rules, versioning
//! suspended): one record per bucket upstream, read from there whenever a request needs them,
//! so that every gateway sharing the upstream answers alike. A record belongs to the bucket
//! whose marker has its `created_ms` (docs/format.md, rule 13a). A change rewrites the record
//! on condition that it is still the one read; a change that lost a race is made again on the
//! winner's record.

use anyhow::Context;
use bytes::Bytes;
use tensorgate_index::{BucketMarker, BucketRecord, BucketSettings, Envelope};

use crate::engine::catalog::read_record;
use crate::engine::shared::KeptChanging;
use crate::engine::Store;
use crate::upstream::Condition;

/// Changes that lose this many races in a row give up with [`KeptChanging`] (a 503 the client
/// retries).
const ATTEMPTS: usize = 8;

/// The bucket's settings are bound to: its marker's `created_ms` upstream (another gateway may
/// have created the bucket again since this index learnt of it), or the index's for a bucket
/// only implied by its manifests.
pub async fn bucket_created_ms(store: &Store, tenant: &str, bucket: &str, record: &BucketRecord) -> anyhow::Result<i64> {
    let marker = read_record::<BucketMarker>(store, &store.bucket_key(tenant, bucket)).await?;
    Ok(marker.map_or(record.created_ms, |marker| marker.created_ms))
}

/// The settings of bucket `bucket` of `tenant` created at `created_ms`.
pub async fn read(store: &Store, tenant: &str, bucket: &str, created_ms: i64) -> anyhow::Result<BucketSettings> {
    let stored = read_stored(store, tenant, bucket).await?;
    Ok(match stored {
        Some((settings, _)) if settings.belongs_to(tenant, bucket, created_ms) => settings,
        _ => BucketSettings::new(tenant, bucket, created_ms),
    })
}

/// Applies `edit` to the bucket's settings and stores the result; a change that leaves them as
/// they were writes nothing.
pub async fn change(store: &Store, tenant: &str, bucket: &str, created_ms: i64, edit: impl Fn(&mut BucketSettings)) -> anyhow::Result<()> {
    let key = store.bucket_settings_key(tenant, bucket);
    for _ in 0..ATTEMPTS {
        let (current, condition) = match read_stored(store, tenant, bucket).await? {
            None => (BucketSettings::new(tenant, bucket, created_ms), Condition::Absent),
            Some((settings, tag)) if settings.belongs_to(tenant, bucket, created_ms) => (settings, Condition::Matches(tag)),
            // A newer bucket of the name wrote these: this request's bucket is gone.
            Some((settings, _)) if settings.created_ms > created_ms => return Err(KeptChanging.into()),
            // Left by an earlier bucket of the name: replaced.
            Some((_, tag)) => (BucketSettings::new(tenant, bucket, created_ms), Condition::Matches(tag)),
        };
        let mut changed = current.clone();
        edit(&mut changed);
        if changed == current {
            return Ok(());
        }
        if store.upstream.put_if(&key, Bytes::from(changed.seal()?), condition).await?.is_some() {
            return Ok(());
        }
    }
    Err(KeptChanging).with_context(|| format!("bucket settings {key}"))
}

/// Removes the settings of the bucket created at `created_ms`, once deleted; a record a newer
/// bucket of the name wrote meanwhile stays.
pub async fn forget(store: &Store, tenant: &str, bucket: &str, created_ms: i64) -> anyhow::Result<()> {
    let key = store.bucket_settings_key(tenant, bucket);
    let Some(tagged) = store.upstream.read_tagged(&key).await? else { return Ok(()) };
    let stored = BucketSettings::open(&tagged.bytes).with_context(|| format!("upstream record {key}"))?;
    if stored.created_ms <= created_ms {
        store.upstream.delete_if(&key, &tagged.tag).await?;
    }
    Ok(())
}

/// The record upstream, whichever bucket of the name it belongs to, with its tag.
async fn read_stored(store: &Store, tenant: &str, bucket: &str) -> anyhow::Result<Option<(BucketSettings, String)>> {
    let key = store.bucket_settings_key(tenant, bucket);
    let Some(tagged) = store.upstream.read_tagged(&key).await? else { return Ok(None) };
    let settings = BucketSettings::open(&tagged.bytes).with_context(|| format!("upstream record {key}"))?;
    Ok(Some((settings, tagged.tag)))
}
