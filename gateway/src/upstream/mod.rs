//! Upstreams: where tensorgate keeps bytes. One trait, two backends: a local directory (the
//! embedded default) and any S3-compatible endpoint; every call goes through a guard that
//! marks upstream errors and stops calling a down upstream.

mod guard;
mod local;
mod routing;
mod s3;

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

pub use guard::{GuardedUpstream, UpstreamFailure};
pub use local::LocalUpstream;
pub use routing::RoutingUpstream;
pub use s3::{S3Upstream, S3UpstreamConfig, PART_SIZE};

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// Last modification, milliseconds since the Unix epoch.
    pub modified_ms: i64,
    /// Changes whenever the object is written again (the ETag on S3).
    pub tag: String,
}

/// A small object read whole, with the tag a conditional write compares against.
#[derive(Debug, Clone)]
pub struct Tagged {
    pub bytes: Bytes,
    pub tag: String,
}

/// A read found no object at its key: the upstream answered, so this does not count towards
/// taking it to be down.
#[derive(Debug, thiserror::Error)]
#[error("no object at {0}")]
pub struct Missing(pub String);

/// When a conditional write may replace what is at its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Only if nothing is there.
    Absent,
    /// Only if what is there still has this tag.
    Matches(String),
}

/// Upstream keys are made by the gateway (`blobs/…`, `packs/…`, `manifests/…`), never by
/// clients.
#[async_trait]
pub trait Upstream: Send + Sync + 'static {
    /// Starts writing a new object; it becomes visible only when the writer finishes.
    async fn writer(&self, key: &str) -> anyhow::Result<Box<dyn BlobWriter>>;
    /// Reads a byte range of an object. Returns exactly `range.end - range.start` bytes or fails.
    async fn read(&self, key: &str, range: Range<u64>) -> anyhow::Result<Bytes>;
    /// Reads a small object whole; `None` when there is no object at `key`.
    async fn read_tagged(&self, key: &str) -> anyhow::Result<Option<Tagged>>;
    /// Writes a small object whole if `condition` holds: its new tag, or `None` when the
    /// condition did not hold.
    async fn put_if(&self, key: &str, bytes: Bytes, condition: Condition) -> anyhow::Result<Option<String>>;
    /// Deletes an object; deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> anyhow::Result<()>;
    /// Deletes an object only if it still has tag `tag`; false when it is gone or has changed.
    async fn delete_if(&self, key: &str, tag: &str) -> anyhow::Result<bool>;
    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<Listed>>;
    /// The objects of [`Upstream::list`] whose key sorts after `after`.
    async fn list_after(&self, prefix: &str, after: &str) -> anyhow::Result<Vec<Listed>> {
        Ok(self.list(prefix).await?.into_iter().filter(|listed| listed.key.as_str() > after).collect())
    }
    /// Describes the upstream for logs.
    fn describe(&self) -> String;
}

/// Writes a small object whole, replacing what is there; a failed write is tried again (three
/// attempts, after 50 then 100 ms; the guard also retries starting each one): writing the same
/// bytes twice is harmless.
pub async fn put(upstream: &dyn Upstream, key: &str, bytes: Bytes) -> anyhow::Result<()> {
    let mut attempt = 1;
    loop {
        let error = match put_once(upstream, key, bytes.clone()).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        let circuit_open = matches!(error.downcast_ref::<UpstreamFailure>(), Some(UpstreamFailure::CircuitOpen));
        if attempt == guard::ATTEMPTS || circuit_open {
            return Err(error);
        }
        tokio::time::sleep(std::time::Duration::from_millis(25 << attempt)).await;
        attempt += 1;
    }
}

async fn put_once(upstream: &dyn Upstream, key: &str, bytes: Bytes) -> anyhow::Result<()> {
    let mut writer = upstream.writer(key).await?;
    if let Err(error) = writer.write(bytes).await {
        writer.abort().await;
        return Err(error);
    }
    writer.finish().await?;
    Ok(())
}

/// An object being written upstream, in order, piece by piece.
#[async_trait]
pub trait BlobWriter: Send + Sync {
    async fn write(&mut self, bytes: Bytes) -> anyhow::Result<()>;
    /// Makes the object visible; returns its size.
    async fn finish(self: Box<Self>) -> anyhow::Result<u64>;
    /// Gives up: nothing becomes visible.
    async fn abort(self: Box<Self>);
}
