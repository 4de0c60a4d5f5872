//! A bucket's settings (Block Public Access, ownership controls, CORS rules, versioning
//! suspended): one record per bucket upstream, read from there whenever a request needs them,
//! so that every gateway sharing the upstream answers alike. A record belongs to the bucket
//! whose marker has its `created_ms` (docs/format.md, rule 13a). A change rewrites the record
//! on condition that it is still the one read; a change that lost a race is made again on the
//! winner's record. Requests that need them often (CORS) read them through [`read_kept`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tensorgate_index::{BucketMarker, BucketRecord, BucketSettings, Envelope};

use crate::engine::shared::KeptChanging;
use crate::engine::{read_record, read_tagged_record, Store};
use crate::upstream::Condition;

/// How long [`read_kept`] keeps a bucket's settings: a change through another gateway of a
/// shared upstream is seen within this (S3 too takes a moment to apply a new configuration).
pub const KEPT_FOR: Duration = Duration::from_secs(5);

/// A tenant and one of its buckets.
type BucketName = (String, String);

/// Settings read lately (see [`Kept`]).
#[derive(Default)]
pub struct KeptSettings(Mutex<Kept>);

/// Settings read lately, by bucket, with when each was read, and how many times settings were
/// dropped (a read that began before a drop is not kept).
#[derive(Default)]
struct Kept {
    read: HashMap<BucketName, (Instant, Arc<BucketSettings>)>,
    drops: u64,
}

impl KeptSettings {
    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The settings kept for `name`, or the drop count to give [`KeptSettings::put`].
    fn get(&self, name: &BucketName) -> Result<Arc<BucketSettings>, u64> {
        let kept = self.lock();
        kept.read.get(name).filter(|(read, _)| read.elapsed() < KEPT_FOR).map(|(_, settings)| settings.clone()).ok_or(kept.drops)
    }

    /// Keeps settings read after [`KeptSettings::get`] gave `drops`, unless some were dropped since.
    fn put(&self, name: BucketName, settings: Arc<BucketSettings>, drops: u64) {
        let mut kept = self.lock();
        if kept.drops != drops {
            return;
        }
        // Once 64 buckets are kept, those read over KEPT_FOR ago go: the map stays small.
        if kept.read.len() >= 64 {
            kept.read.retain(|_, (read, _)| read.elapsed() < KEPT_FOR);
        }
        kept.read.insert(name, (Instant::now(), settings));
    }

    /// Forgets a bucket's settings: they changed, or the bucket is gone.
    pub fn drop_bucket(&self, tenant: &str, bucket: &str) {
        let mut kept = self.lock();
        kept.read.remove(&(tenant.to_owned(), bucket.to_owned()));
        kept.drops += 1;
    }
}

/// The settings of a bucket the index holds, as read within [`KEPT_FOR`] (changes through this
/// gateway are seen at once); `None` when the index has no such bucket.
pub async fn read_kept(store: &Store, tenant: &str, bucket: &str) -> anyhow::Result<Option<Arc<BucketSettings>>> {
    let name = (tenant.to_owned(), bucket.to_owned());
    let drops = match store.kept_settings.get(&name) {
        Ok(settings) => return Ok(Some(settings)),
        Err(drops) => drops,
    };
    let Some(record) = store.index.bucket(tenant, bucket)? else { return Ok(None) };
    let created_ms = bucket_created_ms(store, tenant, bucket, &record).await?;
    let settings = Arc::new(read(store, tenant, bucket, created_ms).await?);
    store.kept_settings.put(name, settings.clone(), drops);
    Ok(Some(settings))
}

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
            store.kept_settings.drop_bucket(tenant, bucket);
            return Ok(());
        }
    }
    Err(KeptChanging).with_context(|| format!("bucket settings {key}"))
}

/// Removes the settings of the bucket created at `created_ms`, once deleted; a record a newer
/// bucket of the name wrote meanwhile stays.
pub async fn forget(store: &Store, tenant: &str, bucket: &str, created_ms: i64) -> anyhow::Result<()> {
    let Some((stored, tag)) = read_stored(store, tenant, bucket).await? else { return Ok(()) };
    if stored.created_ms <= created_ms {
        store.upstream.delete_if(&store.bucket_settings_key(tenant, bucket), &tag).await?;
    }
    Ok(())
}

/// The record upstream, whichever bucket of the name it belongs to, with its tag.
async fn read_stored(store: &Store, tenant: &str, bucket: &str) -> anyhow::Result<Option<(BucketSettings, String)>> {
    read_tagged_record(store, &store.bucket_settings_key(tenant, bucket)).await
}
