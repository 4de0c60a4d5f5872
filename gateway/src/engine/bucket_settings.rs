//! A bucket's settings (Block Public Access, ownership controls, CORS rules, versioning
//! suspended): one record per bucket upstream, read from there whenever a request needs them,
//! so that every gateway sharing the upstream answers alike. A change rewrites the record on
//! condition that it is still the one read; a change that lost a race is made again on the
//! winner's record.

use anyhow::Context;
use bytes::Bytes;
use tensorgate_index::{BucketSettings, Envelope};

use crate::engine::Store;
use crate::upstream::Condition;

/// Changes that lose this many races in a row give up (the client may try again).
const ATTEMPTS: usize = 8;

/// The settings of bucket `bucket` of `tenant` created at `created_ms`.
pub async fn read(store: &Store, tenant: &str, bucket: &str, created_ms: i64) -> anyhow::Result<BucketSettings> {
    Ok(read_tagged(store, tenant, bucket, created_ms).await?.0)
}

/// Applies `edit` to the bucket's settings and stores the result.
pub async fn change(store: &Store, tenant: &str, bucket: &str, created_ms: i64, edit: impl Fn(&mut BucketSettings)) -> anyhow::Result<()> {
    let key = store.bucket_settings_key(tenant, bucket);
    for _ in 0..ATTEMPTS {
        let (mut settings, tag) = read_tagged(store, tenant, bucket, created_ms).await?;
        edit(&mut settings);
        let condition = tag.map_or(Condition::Absent, Condition::Matches);
        if store.upstream.put_if(&key, Bytes::from(settings.seal()?), condition).await?.is_some() {
            return Ok(());
        }
    }
    anyhow::bail!("bucket settings {key}: {ATTEMPTS} changes in a row lost a race with another")
}

/// Removes the settings of a deleted bucket.
pub async fn forget(store: &Store, tenant: &str, bucket: &str) -> anyhow::Result<()> {
    store.upstream.delete(&store.bucket_settings_key(tenant, bucket)).await
}

/// The settings and the tag of the record they came from; a record left by an earlier bucket
/// of the same name gives the new bucket's defaults, with its tag, so a change replaces it.
async fn read_tagged(store: &Store, tenant: &str, bucket: &str, created_ms: i64) -> anyhow::Result<(BucketSettings, Option<String>)> {
    let key = store.bucket_settings_key(tenant, bucket);
    let Some(tagged) = store.upstream.read_tagged(&key).await? else {
        return Ok((BucketSettings::new(tenant, bucket, created_ms), None));
    };
    let stored = BucketSettings::open(&tagged.bytes).with_context(|| format!("upstream record {key}"))?;
    let settings = if stored.belongs_to(tenant, bucket, created_ms) { stored } else { BucketSettings::new(tenant, bucket, created_ms) };
    Ok((settings, Some(tagged.tag)))
}
