//! tensorgate-index: the sled index of objects, chunks, packs, uploads and background work.
//!
//! Every change to one object (its manifest, the reference counts of its chunks, the blobs and
//! packs it frees) is a single sled transaction, so a crash leaves the old state or the new.
//! Nothing here talks to the upstream: freed upstream keys go to the trash tree, which the
//! gateway empties after a grace period.
//!
//! One module per concept, each an `impl Index` block over the trees opened here: `buckets`,
//! `objects` (commits and adoption), `uploads`, `references` (counts, trash, sweep),
//! `pack_queue`, `compaction`, `rebasing`, `reports` (fsck's check, usage, savings), `scrub` and
//! `candidates` (bases for deltas). `records` and `keys` say how trees store things;
//! `manifest` is what the upstream holds, and `upstream_layout` where.

mod bucket_settings;
mod buckets;
mod candidates;
mod compaction;
mod encoding;
mod keys;
mod manifest;
mod migration;
mod objects;
mod pack_queue;
mod rebasing;
mod records;
mod records_v1;
mod records_v2;
mod records_v3;
mod references;
mod reports;
mod scrub;
mod uploads;
mod upstream_layout;

use std::path::Path;

pub use bucket_settings::{BucketSettings, CorsRule, PublicAccessBlock, BUCKET_OWNER_ENFORCED};
pub use buckets::BucketDeletion;
pub use compaction::Move;
pub use encoding::decode;
pub use keys::ObjectKey;
pub use manifest::{BucketMarker, ChunkLocation, Envelope, Manifest, PackMoves, PackRebased, PartMarker, RebasedFrame, UploadMarker};
pub use upstream_layout::*;
pub use objects::{Expect, NewChunk, NewPack};
pub use rebasing::Rebased;
pub use records::*;
pub use records_v3::PartRecordV3;
pub use reports::{IndexReport, Savings, Usage, MAX_BASE_DEPTH};

/// Errors of the index: faults (storage, records that do not decode, a chunk missing) and the
/// refusals of changes ([`Refusal`]).
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("record does not decode: {0}")]
    Decode(#[source] postcard::Error),
    #[error("record is followed by {0} bytes it does not hold")]
    TrailingBytes(usize),
    #[error("record does not encode: {0}")]
    Encode(#[source] postcard::Error),
    #[error("chunk {0} is referenced but not stored")]
    MissingChunk(String),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("chunk {0} is named twice in one re-basing")]
    DuplicateStep(String),
    #[error("index key {0:?} is malformed")]
    MalformedKey(String),
    #[error("the index's {0:?} value is malformed")]
    MalformedValue(&'static str),
    #[error("upstream record does not decode: {0}")]
    Envelope(&'static str),
    #[error("the index cannot move to the current record format: {0}")]
    Migration(String),
}

/// A change the index refused because of what it found, not a fault: the caller answers it
/// (an S3 error for a client, giving up for the packer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the object changed while this write was prepared")]
    VersionChanged,
    #[error("the object there does not meet the write's condition")]
    PreconditionFailed,
    #[error("the write's condition names an object that is not there")]
    NoSuchKey,
    #[error("no such multipart upload")]
    NoSuchUpload,
    #[error("the bucket does not exist")]
    NoSuchBucket,
    #[error("a new base's chain of bases would loop or pass the readers' depth")]
    ChainOfBases,
    #[error("a part was uploaded again while its upload was being completed")]
    PartChanged,
}

pub type Result<T> = std::result::Result<T, IndexError>;

/// The trees of the records that format versions changed, named by the version of their layout.
const BUCKETS_TREE: &str = "buckets.2";
const OBJECTS_TREE: &str = "objects.3";
const UPLOADS_TREE: &str = "uploads.3";
const PARTS_TREE: &str = "parts.4";

/// sled's page cache: its default of 1 GiB would dominate the gateway's memory.
const CACHE_BYTES: u64 = 64 << 20;

/// The open index.
pub struct Index {
    db: sled::Db,
    buckets: sled::Tree,
    objects: sled::Tree,
    chunks: sled::Tree,
    packs: sled::Tree,
    trash: sled::Tree,
    queue: sled::Tree,
    uploads: sled::Tree,
    parts: sled::Tree,
    tensors: sled::Tree,
    candidates: sled::Tree,
    meta: sled::Tree,
    pending: sled::Tree,
    rebase_settled: sled::Tree,
}

impl Index {
    /// Opens (or creates) the index in `path`.
    pub fn open(path: &Path) -> Result<Index> {
        let db = sled::Config::new().path(path).cache_capacity(CACHE_BYTES).open()?;
        let index = Index {
            buckets: db.open_tree(BUCKETS_TREE)?,
            objects: db.open_tree(OBJECTS_TREE)?,
            chunks: db.open_tree("chunks")?,
            packs: db.open_tree("packs")?,
            trash: db.open_tree("trash")?,
            queue: db.open_tree("queue")?,
            uploads: db.open_tree(UPLOADS_TREE)?,
            parts: db.open_tree(PARTS_TREE)?,
            tensors: db.open_tree("tensors")?,
            candidates: db.open_tree("candidates")?,
            meta: db.open_tree("meta")?,
            pending: db.open_tree("pending")?,
            rebase_settled: db.open_tree("rebase-settled")?,
            db,
        };
        index.migrate_signatures()?;
        index.migrate_records()?;
        Ok(index)
    }

    /// Flushes every tree to disk; called before a write is acknowledged.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Whether the index answers a read (for readiness probes; reads one key).
    pub fn answers(&self) -> Result<()> {
        self.meta.get("instance")?;
        Ok(())
    }

    /// The id of the gateway that owns this index, made on first use: it names the gateway in
    /// the garbage-collection lease, so a restarted gateway (or an admin command on its data
    /// directory) is the same holder.
    pub fn instance_id(&self, fresh: impl FnOnce() -> String) -> Result<String> {
        let id = match self.meta.get("instance")? {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                let fresh = fresh();
                // The data directory belongs to one process (sled locks it), so nothing races this.
                self.meta.insert("instance", fresh.as_bytes())?;
                fresh
            }
        };
        self.flush()?;
        Ok(id)
    }

    /// Notes, durably, that the upstream manifest of `key` is about to change: until
    /// [`Index::clear_pending`], a crash may have left it out of step with the index.
    pub fn mark_pending(&self, key: &ObjectKey) -> Result<()> {
        self.pending.insert(key.encode(), &[])?;
        self.flush()
    }

    /// [`Index::mark_pending`] for many keys, made durable at once.
    pub fn mark_all_pending(&self, keys: &[ObjectKey]) -> Result<()> {
        for key in keys {
            self.pending.insert(key.encode(), &[])?;
        }
        self.flush()
    }

    pub fn clear_pending(&self, key: &ObjectKey) -> Result<()> {
        self.pending.remove(key.encode())?;
        Ok(())
    }

    /// Objects whose manifest change was interrupted.
    pub fn pending(&self) -> Result<Vec<ObjectKey>> {
        self.pending.iter().keys().map(|key| keys::object_key(&key?)).collect()
    }

    /// True when the index holds no bucket and no object (a fresh data directory).
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty() && self.objects.is_empty()
    }
}

/// A chunk id in hex, for messages, as the codec writes content hashes.
fn hex(hash: &ChunkHash) -> String {
    tensorgate_codec::ContentHash(*hash).to_hex()
}

#[cfg(test)]
mod test_records;
