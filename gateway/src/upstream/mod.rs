//! Upstreams: where tensorgate keeps bytes. One trait, two backends: a local directory (the
//! embedded default) and any S3-compatible endpoint.

mod local;
mod routing;
mod s3;

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

pub use local::LocalUpstream;
pub use routing::RoutingUpstream;
pub use s3::{S3Upstream, S3UpstreamConfig};

/// Upstream keys are made by the gateway (`blobs/…`, `packs/…`, `parts/…`), never by clients.
#[async_trait]
pub trait Upstream: Send + Sync + 'static {
    /// Starts writing a new object; it becomes visible only when the writer finishes.
    async fn writer(&self, key: &str) -> anyhow::Result<Box<dyn BlobWriter>>;
    /// Reads a byte range of an object. Returns exactly `range.end - range.start` bytes or fails.
    async fn read(&self, key: &str, range: Range<u64>) -> anyhow::Result<Bytes>;
    /// Deletes an object; deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> anyhow::Result<()>;
    /// Describes the upstream for logs.
    fn describe(&self) -> String;
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
