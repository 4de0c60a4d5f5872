//! tensorgate-index: the sled index of objects, chunks, packs, uploads and background work.
//!
//! Every change to one object (its manifest, the reference counts of its chunks, the blobs and
//! packs it frees) is a single sled transaction, so a crash leaves the old state or the new.
//! Nothing here talks to the upstream: freed upstream keys go to the trash tree, which the
//! gateway empties after a grace period.

mod keys;
mod manifest;
mod records;

use std::collections::HashMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

pub use keys::ObjectKey;
pub use manifest::{
    bucket_key, condemned_key, condemned_pack, heartbeat_key, manifest_key, moves_key, pack_id, part_key, parts_folder, upload_key, veto_key, vetoed_pack,
    vetoes_folder, BucketMarker, ChunkLocation, Envelope, Manifest, PackMoves, PartMarker, UploadMarker, BUCKETS, CONDEMNED, MANIFESTS,
    GATEWAYS, JOURNAL, MOVED, PACKS, UPLOADS, UPLOAD_PARTS, VETOES,
};
pub use records::*;

/// Errors of the index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("record does not decode: {0}")]
    Decode(#[from] postcard::Error),
    #[error("chunk {0} is referenced but not stored")]
    MissingChunk(String),
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
    #[error("upstream record does not decode: {0}")]
    Envelope(&'static str),
}

pub type Result<T> = std::result::Result<T, IndexError>;

/// sled's page cache: its default of 1 GiB would dominate the gateway's memory.
const CACHE_BYTES: u64 = 64 << 20;

/// Storage used by one bucket of one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub tenant: String,
    pub bucket: String,
    pub objects: u64,
    /// Bytes clients stored.
    pub logical_bytes: u64,
    /// Upstream bytes attributed to them.
    pub physical_bytes: u64,
}

/// Where the bytes of a set of objects went, by technique. The parts add up:
/// `logical = physical + file_dedup + tensor_dedup + delta + compression + headers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Savings {
    pub objects: u64,
    pub logical_bytes: u64,
    /// Upstream bytes: the frames of the chunks used (bases included) and blobs as stored.
    pub physical_bytes: u64,
    /// Objects identical to one counted before: nothing stored for them.
    pub file_dedup: u64,
    /// Chunks already stored for another object or tensor.
    pub tensor_dedup: u64,
    /// Raw minus frame bytes of delta chunks, less the frames of bases used by no object.
    pub delta: i64,
    /// Raw minus frame bytes of chunks stored on their own.
    pub compression: i64,
    /// safetensors headers, kept in the index and the manifests.
    pub headers: u64,
    /// Bytes stored as they came (objects that are not models, or not packed yet).
    pub stored_as_is: u64,
}

/// What [`Index::check`] found.
#[derive(Debug, Default)]
pub struct IndexReport {
    pub objects: usize,
    pub chunks: usize,
    /// Every pack the index records, with its size.
    pub packs: Vec<(String, u64)>,
    /// Every blob an object uses, with the end of the bytes it uses.
    pub blobs: Vec<(String, u64)>,
    pub problems: Vec<String>,
}

/// A chunk written to a pack by the write being committed, not yet in the index.
#[derive(Debug, Clone)]
pub struct NewChunk {
    pub hash: ChunkHash,
    pub record: ChunkRecord,
}

/// A pack written by the write being committed.
#[derive(Debug, Clone)]
pub struct NewPack {
    pub key: String,
    pub total_bytes: u64,
}

/// What a commit requires of the object's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect<'a> {
    /// Any state: a client's write replaces whatever is there.
    Any,
    /// The object must still be at this version (the packer's swap).
    Version(&'a str),
    /// No object may be there (a client's `If-None-Match: *`).
    Absent,
    /// An object must be there, with this ETag if one is given (a client's `If-Match`).
    ETag(Option<&'a str>),
}

impl Expect<'_> {
    /// Whether `current`, the object there now (if any), meets the expectation.
    pub fn holds(&self, current: Option<&ObjectRecord>) -> bool {
        match (self, current) {
            (Expect::Any, _) => true,
            (Expect::Version(version), current) => current.is_some_and(|record| record.version == *version),
            (Expect::Absent, current) => current.is_none(),
            (Expect::ETag(etag), current) => current.is_some_and(|record| etag.is_none_or(|etag| record.etag == etag)),
        }
    }

    /// The error of a commit whose expectation does not hold of `current`: S3 answers an
    /// `If-Match` on a key with no object NoSuchKey.
    pub fn unmet(&self, current: Option<&ObjectRecord>) -> IndexError {
        match (self, current) {
            (Expect::Version(_), _) => IndexError::VersionChanged,
            (Expect::ETag(_), None) => IndexError::NoSuchKey,
            _ => IndexError::PreconditionFailed,
        }
    }
}

/// A frame copied from one pack to another by compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Move {
    pub hash: ChunkHash,
    pub from_offset: u64,
    pub to_offset: u64,
}

/// Outcome of deleting a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketDeletion {
    Deleted,
    NotEmpty,
    Missing,
}

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
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<IndexError>>;

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Decodes a record as the index stores it (postcard); public for fuzzing and tools.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    Ok(postcard::from_bytes(bytes)?)
}

fn tx_decode<T: DeserializeOwned>(bytes: &[u8]) -> TxResult<T> {
    decode(bytes).map_err(ConflictableTransactionError::Abort)
}

fn abort<T>(error: IndexError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(error))
}

fn flatten<T>(result: std::result::Result<T, TransactionError<IndexError>>) -> Result<T> {
    result.map_err(|error| match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(error) => IndexError::Sled(error),
    })
}

/// How many deltas deep a chunk's bases may go. A gateway takes deltas only against the
/// standalone chunk at the root of a candidate's bases, but with a shared upstream another
/// gateway may hold that root as a delta, so a chain can be longer than one; a longer chain is
/// refused by readers and reported by fsck.
pub const MAX_BASE_DEPTH: usize = 8;

/// Whether the bases of `record` end in a standalone chunk within [`MAX_BASE_DEPTH`] deltas (a
/// missing base is reported by the reference check).
fn base_chain_ends(chunks: &HashMap<ChunkHash, ChunkRecord>, record: &ChunkRecord) -> bool {
    let mut base = record.base;
    for _ in 0..MAX_BASE_DEPTH {
        match base.and_then(|hash| chunks.get(&hash)) {
            Some(next) => base = next.base,
            None => return true,
        }
    }
    base.is_none()
}

impl Index {
    /// Opens (or creates) the index in `path`.
    pub fn open(path: &Path) -> Result<Index> {
        let db = sled::Config::new().path(path).cache_capacity(CACHE_BYTES).open()?;
        Ok(Index {
            buckets: db.open_tree("buckets")?,
            objects: db.open_tree("objects")?,
            chunks: db.open_tree("chunks")?,
            packs: db.open_tree("packs")?,
            trash: db.open_tree("trash")?,
            queue: db.open_tree("queue")?,
            uploads: db.open_tree("uploads")?,
            parts: db.open_tree("parts")?,
            tensors: db.open_tree("tensors")?,
            candidates: db.open_tree("candidates")?,
            meta: db.open_tree("meta")?,
            pending: db.open_tree("pending")?,
            db,
        })
    }

    /// Flushes every tree to disk; called before a write is acknowledged.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// The id of the gateway that owns this index, made on first use: it names the gateway in
    /// the garbage-collection lease, so a restarted gateway (or an admin command on its data
    /// directory) is the same holder.
    pub fn instance_id(&self, fresh: impl FnOnce() -> String) -> Result<String> {
        let fresh = fresh();
        let previous = self.meta.compare_and_swap("instance", None as Option<&[u8]>, Some(fresh.as_bytes()))?;
        let id = match previous {
            Ok(()) => fresh,
            Err(current) => String::from_utf8_lossy(&current.current.unwrap_or_default()).into_owned(),
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
        self.pending.iter().keys().map(|key| Ok(keys::object_key(&key?))).collect()
    }

    /// True when the index holds no bucket and no object (a fresh data directory).
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty() && self.objects.is_empty()
    }

    // ---- buckets

    /// Creates a bucket; false if it already existed.
    pub fn create_bucket(&self, tenant: &str, bucket: &str, now_ms: i64) -> Result<bool> {
        let record = encode(&BucketRecord { created_ms: now_ms });
        let previous = self
            .buckets
            .compare_and_swap(keys::bucket(tenant, bucket), None as Option<&[u8]>, Some(record))?;
        Ok(previous.is_ok())
    }

    pub fn bucket(&self, tenant: &str, bucket: &str) -> Result<Option<BucketRecord>> {
        self.buckets.get(keys::bucket(tenant, bucket))?.map(|v| decode(&v)).transpose()
    }

    /// The tenant's buckets, sorted by name.
    pub fn list_buckets(&self, tenant: &str) -> Result<Vec<(String, BucketRecord)>> {
        let prefix = keys::tenant_prefix(tenant);
        self.buckets
            .scan_prefix(&prefix)
            .map(|entry| {
                let (key, value) = entry?;
                let name = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                Ok((name, decode(&value)?))
            })
            .collect()
    }

    /// Every bucket of every tenant, as (tenant, bucket).
    pub fn all_buckets(&self) -> Result<Vec<(String, String)>> {
        self.buckets
            .iter()
            .keys()
            .map(|key| {
                let key = key?;
                let text = String::from_utf8_lossy(&key);
                let (tenant, bucket) = text.split_once('\0').unwrap_or_default();
                Ok((tenant.to_owned(), bucket.to_owned()))
            })
            .collect()
    }

    /// Deletes a bucket if it holds no objects and no uploads in progress. The caller holds
    /// off writes into the bucket meanwhile (the gateway's bucket lock); a commit that comes
    /// after finds the bucket gone (see [`Index::commit_object`]).
    /// Deletes a bucket that holds no object. As in S3, multipart uploads in progress do not
    /// keep it: they end with it (their parts go to the trash).
    pub fn delete_bucket(&self, tenant: &str, bucket: &str, now_ms: i64) -> Result<BucketDeletion> {
        let bucket_key = keys::bucket(tenant, bucket);
        if !self.buckets.contains_key(&bucket_key)? {
            return Ok(BucketDeletion::Missing);
        }
        if self.objects.scan_prefix(keys::object_prefix(tenant, bucket)).next().is_some() {
            return Ok(BucketDeletion::NotEmpty);
        }
        for (upload_id, _) in self.list_uploads(tenant, bucket)? {
            match self.abort_upload(&upload_id, now_ms) {
                Ok(()) | Err(IndexError::NoSuchUpload) => {}
                Err(error) => return Err(error),
            }
        }
        if self.buckets.remove(&bucket_key)?.is_none() {
            return Ok(BucketDeletion::Missing);
        }
        self.flush()?;
        Ok(BucketDeletion::Deleted)
    }

    // ---- objects

    pub fn object(&self, key: &ObjectKey) -> Result<Option<ObjectRecord>> {
        self.objects.get(key.encode())?.map(|v| decode(&v)).transpose()
    }

    /// Objects of a bucket whose key starts with `prefix`, in key order, from just after
    /// `start_after` when given.
    pub fn list_objects<'a>(
        &'a self,
        tenant: &str,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
    ) -> impl Iterator<Item = Result<(String, ObjectRecord)>> + 'a {
        let bucket_prefix = keys::object_prefix(tenant, bucket);
        let mut scan_prefix = bucket_prefix.clone();
        scan_prefix.extend_from_slice(prefix.as_bytes());
        let mut start = scan_prefix.clone();
        if let Some(after) = start_after {
            let mut after_key = bucket_prefix.clone();
            after_key.extend_from_slice(after.as_bytes());
            after_key.push(0);
            start = start.max(after_key);
        }
        self.objects
            .range(start..)
            .take_while(move |entry| entry.as_ref().map_or(true, |(key, _)| key.starts_with(&scan_prefix)))
            .map(move |entry| {
                let (key, value) = entry?;
                let name = String::from_utf8_lossy(&key[bucket_prefix.len()..]).into_owned();
                Ok((name, decode(&value)?))
            })
    }

    pub fn chunk(&self, hash: &ChunkHash) -> Result<Option<ChunkRecord>> {
        self.chunks.get(hash)?.map(|v| decode(&v)).transpose()
    }

    /// Makes `record` the object at `key`: takes references on its chunks (inserting the new
    /// ones), releases the previous version's, and sends freed blobs to the trash, at once.
    pub fn commit_object(
        &self,
        key: &ObjectKey,
        record: &ObjectRecord,
        new_chunks: &[NewChunk],
        new_pack: Option<&NewPack>,
        expect: Expect<'_>,
        now_ms: i64,
    ) -> Result<()> {
        let new_chunks: HashMap<ChunkHash, &ChunkRecord> = new_chunks.iter().map(|c| (c.hash, &c.record)).collect();
        let object_key = key.encode();
        let bucket_key = keys::bucket(&key.tenant, &key.bucket);
        let trees = (&self.objects, &self.chunks, &self.packs, &self.trash, &self.buckets);
        let result = trees.transaction(|(objects, chunks, packs, trash, buckets)| {
            // Read in the transaction, so that a bucket deleted meanwhile refuses the write.
            if buckets.get(bucket_key.as_slice())?.is_none() {
                return abort(IndexError::NoSuchBucket);
            }
            let previous: Option<ObjectRecord> = objects.get(object_key.as_slice())?.map(|v| tx_decode(&v)).transpose()?;
            if !expect.holds(previous.as_ref()) {
                return abort(expect.unmet(previous.as_ref()));
            }
            if let Some(pack) = new_pack {
                let record = PackRecord { total_bytes: pack.total_bytes, live_bytes: 0 };
                packs.insert(pack.key.as_bytes(), encode(&record))?;
            }
            for segment in &record.segments {
                if let Segment::Chunk { hash, .. } = segment {
                    acquire_chunk(chunks, packs, &new_chunks, hash)?;
                }
            }
            if let Some(pack) = new_pack {
                let stored: PackRecord = tx_decode(&packs.get(pack.key.as_bytes())?.unwrap_or_default())?;
                if stored.live_bytes == 0 {
                    packs.remove(pack.key.as_bytes())?;
                    trash.insert(pack.key.as_bytes(), &now_ms.to_be_bytes())?;
                }
            }
            if let Some(previous) = &previous {
                release_segments(chunks, trash, &previous.segments, &record.segments, now_ms)?;
            }
            objects.insert(object_key.as_slice(), encode(record))?;
            Ok(())
        });
        flatten(result)?;
        self.flush()
    }

    /// Where every chunk `record` uses is stored (its own chunks and their bases): the chunk
    /// table of its manifest. The index's copy comes first (a commit keeps it), then the copy
    /// in `new_chunks`, which the commit would insert.
    pub fn locate(&self, record: &ObjectRecord, new_chunks: &[NewChunk]) -> Result<Vec<ChunkLocation>> {
        let new_chunks: HashMap<&ChunkHash, &ChunkRecord> = new_chunks.iter().map(|new| (&new.hash, &new.record)).collect();
        let mut locations: Vec<ChunkLocation> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut pending: Vec<ChunkHash> = record.segments.iter().filter_map(Segment::chunk_hash).collect();
        while let Some(hash) = pending.pop() {
            if !seen.insert(hash) {
                continue;
            }
            let chunk = match self.chunk(&hash)? {
                Some(stored) => stored,
                None => (*new_chunks.get(&hash).ok_or_else(|| IndexError::MissingChunk(hex(&hash)))?).clone(),
            };
            pending.extend(chunk.base);
            locations.push(ChunkLocation::new(hash, &chunk));
        }
        Ok(locations)
    }

    /// Makes a manifest read from the upstream the object it names, adding its bucket (if
    /// missing) and the chunks and packs it uses that the index does not hold yet. Where a
    /// chunk the index lacks is stored is up to `resolve`, given the chunk and the manifest's
    /// location for it: that location, another copy, or none (the chunk is then reported
    /// missing and nothing changes).
    pub fn adopt(
        &self,
        manifest: &Manifest,
        now_ms: i64,
        resolve: impl Fn(&ChunkHash, Option<&ChunkLocation>) -> Option<ChunkLocation>,
    ) -> Result<()> {
        let table: HashMap<ChunkHash, &ChunkLocation> = manifest.chunks.iter().map(|location| (location.hash, location)).collect();
        let mut new_chunks = Vec::new();
        let mut wanted: Vec<ChunkHash> = manifest.record.segments.iter().filter_map(Segment::chunk_hash).collect();
        let mut seen = std::collections::HashSet::new();
        // The chunks the object reads, and the bases of those taken from outside the index.
        while let Some(hash) = wanted.pop() {
            if !seen.insert(hash) || self.chunk(&hash)?.is_some() {
                continue;
            }
            let location = resolve(&hash, table.get(&hash).copied()).ok_or_else(|| IndexError::MissingChunk(hex(&hash)))?;
            wanted.extend(location.base);
            new_chunks.push(NewChunk { hash, record: location.record() });
        }
        self.create_bucket(&manifest.tenant, &manifest.bucket, manifest.record.last_modified_ms)?;
        for new in &new_chunks {
            self.ensure_pack(&new.record.pack, new.record.offset + u64::from(new.record.frame_len))?;
        }
        let key = ObjectKey::new(&manifest.tenant, &manifest.bucket, &manifest.key);
        self.commit_object(&key, &manifest.record, &new_chunks, None, Expect::Any, now_ms)
    }

    /// Sends every recorded pack that no chunk uses to the trash (after `index rebuild`, the
    /// packs no adopted manifest needed). Returns how many.
    pub fn trash_unused_packs(&self, now_ms: i64) -> Result<usize> {
        let mut trashed = 0;
        for entry in self.packs.iter() {
            let (key, value) = entry?;
            if decode::<PackRecord>(&value)?.live_bytes == 0 {
                self.packs.remove(&key)?;
                self.trash.insert(&key, &now_ms.to_be_bytes())?;
                trashed += 1;
            }
        }
        self.flush()?;
        Ok(trashed)
    }

    /// Whether chunks the index holds (live, or dead and not swept yet) are stored in pack `key`.
    pub fn pack_in_use(&self, key: &str) -> Result<bool> {
        match self.packs.get(key.as_bytes())? {
            Some(value) => Ok(decode::<PackRecord>(&value)?.live_bytes > 0),
            None => Ok(false),
        }
    }

    /// Records a pack the index did not know of, at least `total_bytes` long; a known pack
    /// grows to `total_bytes` if it was recorded shorter.
    pub fn ensure_pack(&self, key: &str, total_bytes: u64) -> Result<()> {
        self.packs.fetch_and_update(key.as_bytes(), |old| {
            let mut pack: PackRecord = old.and_then(|v| decode(v).ok()).unwrap_or(PackRecord { total_bytes: 0, live_bytes: 0 });
            pack.total_bytes = pack.total_bytes.max(total_bytes);
            Some(encode(&pack))
        })?;
        Ok(())
    }

    /// Every object with its full name, in key order.
    pub fn all_objects(&self) -> impl Iterator<Item = Result<(ObjectKey, ObjectRecord)>> + '_ {
        self.objects.iter().map(|entry| {
            let (key, value) = entry?;
            Ok((keys::object_key(&key), decode(&value)?))
        })
    }

    /// Removes the object at `key`; false if there was none.
    pub fn delete_object(&self, key: &ObjectKey, now_ms: i64) -> Result<bool> {
        let object_key = key.encode();
        let result = (&self.objects, &self.chunks, &self.trash).transaction(|(objects, chunks, trash)| {
            let Some(previous) = objects.remove(object_key.as_slice())? else {
                return Ok(false);
            };
            let previous: ObjectRecord = tx_decode(&previous)?;
            release_segments(chunks, trash, &previous.segments, &[], now_ms)?;
            Ok(true)
        });
        let deleted = flatten(result)?;
        self.flush()?;
        Ok(deleted)
    }

    // ---- multipart uploads

    pub fn create_upload(&self, upload_id: &str, record: &UploadRecord) -> Result<()> {
        self.uploads.insert(upload_id, encode(record))?;
        self.flush()
    }

    pub fn upload(&self, upload_id: &str) -> Result<Option<UploadRecord>> {
        self.uploads.get(upload_id)?.map(|v| decode(&v)).transpose()
    }

    /// The ids of every upload in progress.
    pub fn all_upload_ids(&self) -> Result<Vec<String>> {
        self.uploads.iter().keys().map(|id| Ok(String::from_utf8_lossy(&id?).into_owned())).collect()
    }

    /// Uploads in progress in a bucket, with their ids, sorted by key then id.
    pub fn list_uploads(&self, tenant: &str, bucket: &str) -> Result<Vec<(String, UploadRecord)>> {
        let mut uploads = Vec::new();
        for entry in self.uploads.iter() {
            let (id, value) = entry?;
            let upload: UploadRecord = decode(&value)?;
            if upload.tenant == tenant && upload.bucket == bucket {
                uploads.push((String::from_utf8_lossy(&id).into_owned(), upload));
            }
        }
        uploads.sort_by(|a, b| (&a.1.key, &a.0).cmp(&(&b.1.key, &b.0)));
        Ok(uploads)
    }

    /// Records a part; a part uploaded again under the same number sends the old blob to the trash.
    pub fn put_part(&self, upload_id: &str, number: u32, part: &PartRecord, now_ms: i64) -> Result<()> {
        let part_key = keys::part(upload_id, number);
        let result = (&self.uploads, &self.parts, &self.trash).transaction(|(uploads, parts, trash)| {
            if uploads.get(upload_id)?.is_none() {
                return abort(IndexError::NoSuchUpload);
            }
            if let Some(old) = parts.insert(part_key.as_slice(), encode(part))? {
                let old: PartRecord = tx_decode(&old)?;
                trash.insert(old.blob.as_bytes(), &now_ms.to_be_bytes())?;
            }
            Ok(())
        });
        flatten(result)?;
        self.flush()
    }

    /// The parts of an upload, by part number.
    pub fn parts(&self, upload_id: &str) -> Result<Vec<(u32, PartRecord)>> {
        self.parts
            .scan_prefix(keys::parts_prefix(upload_id))
            .map(|entry| {
                let (key, value) = entry?;
                Ok((keys::part_number(&key), decode(&value)?))
            })
            .collect()
    }

    /// Ends an upload: commits `record` (whose blob segments are the chosen parts), drops the
    /// upload, trashes parts not used, and queues the object for the packer, in one transaction.
    pub fn complete_upload(&self, upload_id: &str, key: &ObjectKey, record: &ObjectRecord, now_ms: i64) -> Result<()> {
        let object_key = key.encode();
        let parts_prefix = keys::parts_prefix(upload_id);
        let part_entries: Vec<(sled::IVec, sled::IVec)> =
            self.parts.scan_prefix(&parts_prefix).collect::<std::result::Result<_, _>>()?;
        let job = PackJob {
            tenant: key.tenant.clone(),
            bucket: key.bucket.clone(),
            key: key.key.clone(),
            version: record.version.clone(),
        };
        let used: Vec<&str> = record
            .segments
            .iter()
            .filter_map(|s| match s {
                Segment::Blob { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        let bucket_key = keys::bucket(&key.tenant, &key.bucket);
        let trees = (&self.objects, &self.chunks, &self.trash, &self.queue, &self.uploads, &self.parts, &self.buckets);
        let result = trees.transaction(|(objects, chunks, trash, queue, uploads, parts, buckets)| {
            if uploads.remove(upload_id)?.is_none() {
                return abort(IndexError::NoSuchUpload);
            }
            if buckets.get(bucket_key.as_slice())?.is_none() {
                return abort(IndexError::NoSuchBucket);
            }
            for (part_key, value) in &part_entries {
                parts.remove(part_key)?;
                let part: PartRecord = tx_decode(value)?;
                if !used.contains(&part.blob.as_str()) {
                    trash.insert(part.blob.as_bytes(), &now_ms.to_be_bytes())?;
                }
            }
            if let Some(previous) = objects.get(object_key.as_slice())? {
                let previous: ObjectRecord = tx_decode(&previous)?;
                release_segments(chunks, trash, &previous.segments, &record.segments, now_ms)?;
            }
            objects.insert(object_key.as_slice(), encode(record))?;
            queue.insert(record.version.as_bytes(), encode(&job))?;
            Ok(())
        });
        flatten(result)?;
        self.flush()
    }

    /// Drops an upload and sends its parts to the trash.
    pub fn abort_upload(&self, upload_id: &str, now_ms: i64) -> Result<()> {
        let parts_prefix = keys::parts_prefix(upload_id);
        let part_entries: Vec<(sled::IVec, sled::IVec)> =
            self.parts.scan_prefix(&parts_prefix).collect::<std::result::Result<_, _>>()?;
        let result = (&self.uploads, &self.parts, &self.trash).transaction(|(uploads, parts, trash)| {
            if uploads.remove(upload_id)?.is_none() {
                return abort(IndexError::NoSuchUpload);
            }
            for (part_key, value) in &part_entries {
                parts.remove(part_key)?;
                let part: PartRecord = tx_decode(value)?;
                trash.insert(part.blob.as_bytes(), &now_ms.to_be_bytes())?;
            }
            Ok(())
        });
        flatten(result)?;
        self.flush()
    }

    // ---- background work

    /// The oldest pending pack job, if any.
    pub fn next_pack_job(&self) -> Result<Option<PackJob>> {
        self.queue.iter().next().transpose()?.map(|(_, v)| decode(&v)).transpose()
    }

    /// Queues an object version for the packer (an object stored as uploaded, found again by
    /// `index rebuild`).
    pub fn enqueue_pack(&self, job: &PackJob) -> Result<()> {
        self.queue.insert(job.version.as_bytes(), encode(job))?;
        Ok(())
    }

    /// Removes a finished (or obsolete) pack job.
    pub fn finish_pack_job(&self, job: &PackJob) -> Result<()> {
        self.queue.remove(job.version.as_bytes())?;
        self.flush()
    }

    pub fn pack_queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Upstream keys freed before `cutoff_ms`, which nothing references any more.
    pub fn trash_before(&self, cutoff_ms: i64) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        for entry in self.trash.iter() {
            let (key, value) = entry?;
            if read_ms(&value) <= cutoff_ms {
                keys.push(String::from_utf8_lossy(&key).into_owned());
            }
        }
        Ok(keys)
    }

    /// Sends an upstream key nothing references to the trash, unless it is there already.
    pub fn trash_key(&self, key: &str, now_ms: i64) -> Result<()> {
        self.trash.compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(&now_ms.to_be_bytes()[..]))?.ok();
        Ok(())
    }

    pub fn in_trash(&self, key: &str) -> Result<bool> {
        Ok(self.trash.contains_key(key.as_bytes())?)
    }

    /// Every upstream key the index uses: live packs, the blobs of objects, and the part blobs
    /// of uploads in progress.
    pub fn referenced_upstream_keys(&self) -> Result<std::collections::HashSet<String>> {
        let mut keys = std::collections::HashSet::new();
        for entry in self.packs.iter() {
            keys.insert(String::from_utf8_lossy(&entry?.0).into_owned());
        }
        for entry in self.objects.iter() {
            let record: ObjectRecord = decode(&entry?.1)?;
            keys.extend(record.segments.into_iter().filter_map(|segment| match segment {
                Segment::Blob { key, .. } => Some(key),
                _ => None,
            }));
        }
        for entry in self.parts.iter() {
            keys.insert(decode::<PartRecord>(&entry?.1)?.blob);
        }
        Ok(keys)
    }

    /// Forgets a trash entry once its upstream key is deleted.
    pub fn forget_trash(&self, key: &str) -> Result<()> {
        self.trash.remove(key)?;
        Ok(())
    }

    /// Chunks without references, dead since `cutoff_ms` or before: what a sweep may collect.
    pub fn dead_chunks(&self, cutoff_ms: i64) -> Result<Vec<ChunkHash>> {
        let mut dead = Vec::new();
        for entry in self.all_chunks() {
            let (hash, record) = entry?;
            if record.refs == 0 && record.dead_since_ms.is_some_and(|t| t <= cutoff_ms) {
                dead.push(hash);
            }
        }
        Ok(dead)
    }

    /// Collects one dead chunk, if it still has no reference: removes it, takes its bytes off
    /// its pack's live count (trashing the pack when none are left) and releases its base, in
    /// one transaction. False if the chunk was gone or referenced again.
    pub fn sweep_chunk(&self, hash: &ChunkHash, now_ms: i64) -> Result<bool> {
        let result = (&self.chunks, &self.packs, &self.trash).transaction(|(chunks, packs, trash)| {
            let Some(value) = chunks.get(hash)? else { return Ok(false) };
            let record: ChunkRecord = tx_decode(&value)?;
            if record.refs != 0 {
                return Ok(false);
            }
            chunks.remove(&hash[..])?;
            if let Some(pack_value) = packs.get(record.pack.as_bytes())? {
                let mut pack: PackRecord = tx_decode(&pack_value)?;
                pack.live_bytes = pack.live_bytes.saturating_sub(u64::from(record.frame_len));
                if pack.live_bytes == 0 {
                    packs.remove(record.pack.as_bytes())?;
                    trash.insert(record.pack.as_bytes(), &now_ms.to_be_bytes())?;
                } else {
                    packs.insert(record.pack.as_bytes(), encode(&pack))?;
                }
            }
            if let Some(base) = record.base {
                release_chunk(chunks, &base, now_ms)?;
            }
            Ok(true)
        });
        flatten(result)
    }

    /// Packs whose live bytes are under `ratio` of their size (and above zero): worth
    /// compacting.
    pub fn sparse_packs(&self, ratio: f64) -> Result<Vec<(String, PackRecord)>> {
        let mut sparse = Vec::new();
        for entry in self.packs.iter() {
            let (key, value) = entry?;
            let pack: PackRecord = decode(&value)?;
            if pack.live_bytes > 0 && (pack.live_bytes as f64) < ratio * pack.total_bytes as f64 {
                sparse.push((String::from_utf8_lossy(&key).into_owned(), pack));
            }
        }
        Ok(sparse)
    }

    /// The referenced chunks stored in each of `packs`, by offset, in one scan of the chunks.
    pub fn live_chunks_in(&self, packs: &std::collections::HashSet<&str>) -> Result<HashMap<String, Vec<(ChunkHash, ChunkRecord)>>> {
        let mut found: HashMap<String, Vec<(ChunkHash, ChunkRecord)>> = HashMap::new();
        for entry in self.all_chunks() {
            let (hash, record) = entry?;
            if record.refs > 0 && packs.contains(record.pack.as_str()) {
                found.entry(record.pack.clone()).or_default().push((hash, record));
            }
        }
        for chunks in found.values_mut() {
            chunks.sort_by_key(|(_, record)| record.offset);
        }
        Ok(found)
    }

    /// Points the chunks that compaction copied from pack `from` to the new pack `to` (of
    /// `to_total` bytes) at their copies, in one transaction. A chunk that changed meanwhile
    /// (collected, or moved) keeps its record. Each pack left with no live bytes goes to the
    /// trash. Returns how many chunks moved.
    pub fn relocate(&self, from: &str, to: &str, to_total: u64, moves: &[Move], now_ms: i64) -> Result<usize> {
        let result = (&self.chunks, &self.packs, &self.trash).transaction(|(chunks, packs, trash)| {
            let mut source: PackRecord = match packs.get(from.as_bytes())? {
                Some(value) => tx_decode(&value)?,
                None => PackRecord { total_bytes: 0, live_bytes: 0 },
            };
            let mut target = PackRecord { total_bytes: to_total, live_bytes: 0 };
            let mut moved = 0;
            for step in moves {
                let Some(value) = chunks.get(step.hash)? else { continue };
                let mut record: ChunkRecord = tx_decode(&value)?;
                if record.pack != from || record.offset != step.from_offset {
                    continue;
                }
                record.pack = to.to_owned();
                record.offset = step.to_offset;
                source.live_bytes = source.live_bytes.saturating_sub(u64::from(record.frame_len));
                target.live_bytes += u64::from(record.frame_len);
                chunks.insert(&step.hash, encode(&record))?;
                moved += 1;
            }
            for (key, pack) in [(from, &source), (to, &target)] {
                if pack.live_bytes == 0 {
                    packs.remove(key.as_bytes())?;
                    trash.insert(key.as_bytes(), &now_ms.to_be_bytes())?;
                } else {
                    packs.insert(key.as_bytes(), encode(pack))?;
                }
            }
            Ok(moved)
        });
        let moved = flatten(result)?;
        self.flush()?;
        Ok(moved)
    }

    /// Upstream bytes held by live packs.
    pub fn pack_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for entry in self.packs.iter() {
            let (_, value) = entry?;
            total += decode::<PackRecord>(&value)?.total_bytes;
        }
        Ok(total)
    }

    // ---- invariants

    /// Checks the invariants between trees: every chunk an object or a delta uses is stored,
    /// reference counts equal the references, every chunk's pack is known, and every pack's
    /// live bytes equal the frames that reference it. Returns what is wrong, if anything.
    pub fn check(&self) -> Result<IndexReport> {
        let mut report = IndexReport::default();
        let mut references: HashMap<ChunkHash, u64> = HashMap::new();
        for entry in self.objects.iter() {
            let (key, value) = entry?;
            let record: ObjectRecord = decode(&value)?;
            report.objects += 1;
            for segment in &record.segments {
                match segment {
                    Segment::Chunk { hash, .. } => *references.entry(*hash).or_default() += 1,
                    Segment::Blob { key: blob, offset, len } if *len > 0 => report.blobs.push((blob.clone(), offset + len)),
                    Segment::Inline(_) | Segment::Blob { .. } => {}
                }
            }
            let object = keys::object_key(&key);
            if self.bucket(&object.tenant, &object.bucket)?.is_none() {
                report.problems.push(format!("object {:?} is in a bucket that does not exist", keys::display(&key)));
            }
            let total: u64 = record.segments.iter().map(Segment::len).sum();
            if total != record.size {
                report.problems.push(format!("object {:?}: segments hold {total} bytes, size says {}", keys::display(&key), record.size));
            }
        }
        let mut chunks: HashMap<ChunkHash, ChunkRecord> = HashMap::new();
        for entry in self.chunks.iter() {
            let (hash, value) = entry?;
            let record: ChunkRecord = decode(&value)?;
            let hash: ChunkHash = hash.as_ref().try_into().unwrap_or([0; 32]);
            if let Some(base) = record.base {
                *references.entry(base).or_default() += 1;
            }
            chunks.insert(hash, record);
        }
        report.chunks = chunks.len();
        for (hash, count) in &references {
            match chunks.get(hash) {
                None => report.problems.push(format!("chunk {} is referenced {count} times but not stored", hex(hash))),
                Some(record) if record.refs != *count => report.problems.push(format!(
                    "chunk {} counts {} references, {count} found",
                    hex(hash),
                    record.refs
                )),
                Some(_) => {}
            }
        }
        for (hash, record) in &chunks {
            if !base_chain_ends(&chunks, record) {
                report.problems.push(format!("chunk {} is a delta whose bases do not end in a standalone chunk within {MAX_BASE_DEPTH}", hex(hash)));
            }
        }
        let mut live: HashMap<&str, u64> = HashMap::new();
        for (hash, record) in &chunks {
            if !references.contains_key(hash) && record.refs != 0 {
                report.problems.push(format!("chunk {} counts {} references, none found", hex(hash), record.refs));
            }
            *live.entry(record.pack.as_str()).or_default() += u64::from(record.frame_len);
        }
        for entry in self.packs.iter() {
            let (key, value) = entry?;
            let pack: PackRecord = decode(&value)?;
            let name = String::from_utf8_lossy(&key).into_owned();
            let found = live.remove(name.as_str()).unwrap_or(0);
            if found != pack.live_bytes {
                report.problems.push(format!("pack {name} counts {} live bytes, its chunks hold {found}", pack.live_bytes));
            }
            report.packs.push((name, pack.total_bytes));
        }
        for (pack, bytes) in live {
            report.problems.push(format!("pack {pack} holds {bytes} bytes of chunks but is not recorded"));
        }
        Ok(report)
    }

    /// Logical and physical bytes per tenant and bucket. A chunk's upstream bytes (its frame,
    /// plus for a delta its share of the base) are split evenly among its references, so the
    /// physical bytes of all buckets add up to what the live frames take.
    pub fn usage(&self) -> Result<Vec<Usage>> {
        let mut chunks: HashMap<ChunkHash, ChunkRecord> = HashMap::new();
        for entry in self.all_chunks() {
            let (hash, record) = entry?;
            chunks.insert(hash, record);
        }
        let share = |hash: &ChunkHash| -> f64 {
            let Some(record) = chunks.get(hash) else { return 0.0 };
            let base = record
                .base
                .and_then(|base| chunks.get(&base))
                .map_or(0.0, |base| f64::from(base.frame_len) / base.refs.max(1) as f64);
            (f64::from(record.frame_len) + base) / record.refs.max(1) as f64
        };
        let mut usage: std::collections::BTreeMap<(String, String), Usage> = std::collections::BTreeMap::new();
        for entry in self.objects.iter() {
            let (key, value) = entry?;
            let record: ObjectRecord = decode(&value)?;
            let name = keys::display(&key);
            let mut parts = name.splitn(3, '/');
            let (tenant, bucket) = (parts.next().unwrap_or_default().to_owned(), parts.next().unwrap_or_default().to_owned());
            let physical: f64 = record
                .segments
                .iter()
                .map(|segment| match segment {
                    Segment::Chunk { hash, .. } => share(hash),
                    Segment::Blob { len, .. } => *len as f64,
                    Segment::Inline(_) => 0.0,
                })
                .sum();
            let row = usage
                .entry((tenant.clone(), bucket.clone()))
                .or_insert_with(|| Usage { tenant, bucket, ..Usage::default() });
            row.objects += 1;
            row.logical_bytes += record.size;
            row.physical_bytes += physical.round() as u64;
        }
        Ok(usage.into_values().collect())
    }

    /// Where the bytes of the objects `selected` went, by technique (see [`Savings`]).
    pub fn savings(&self, selected: impl Fn(&ObjectKey) -> bool) -> Result<Savings> {
        let mut savings = Savings::default();
        let mut files = std::collections::HashSet::new();
        let mut stored = std::collections::HashSet::new();
        for entry in self.all_objects() {
            let (key, record) = entry?;
            if !selected(&key) {
                continue;
            }
            savings.objects += 1;
            savings.logical_bytes += record.size;
            let uses_chunks = record.segments.iter().any(|segment| matches!(segment, Segment::Chunk { .. }));
            if uses_chunks && !files.insert(encode(&record.segments)) {
                savings.file_dedup += record.size;
                continue;
            }
            for segment in &record.segments {
                match segment {
                    Segment::Inline(bytes) => savings.headers += bytes.len() as u64,
                    Segment::Blob { len, .. } => {
                        savings.stored_as_is += len;
                        savings.physical_bytes += len;
                    }
                    Segment::Chunk { hash, len } if !stored.insert(*hash) => savings.tensor_dedup += u64::from(*len),
                    Segment::Chunk { hash, .. } => {
                        let chunk = self.chunk(hash)?.ok_or_else(|| IndexError::MissingChunk(hex(hash)))?;
                        let saved = i64::from(chunk.raw_len) - i64::from(chunk.frame_len);
                        savings.physical_bytes += u64::from(chunk.frame_len);
                        match chunk.base {
                            Some(base) => {
                                savings.delta += saved;
                                if stored.insert(base) {
                                    let base = self.chunk(&base)?.ok_or_else(|| IndexError::MissingChunk(hex(&base)))?;
                                    savings.physical_bytes += u64::from(base.frame_len);
                                    savings.delta -= i64::from(base.frame_len);
                                }
                            }
                            None => savings.compression += saved,
                        }
                    }
                }
            }
        }
        Ok(savings)
    }

    /// Stored chunks after `after` in id order (all of them without it): a scrub resumes here.
    pub fn chunks_after(&self, after: Option<ChunkHash>) -> impl Iterator<Item = Result<(ChunkHash, ChunkRecord)>> + '_ {
        let start = match after {
            Some(hash) => std::ops::Bound::Excluded(hash.to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        self.chunks.range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded)).map(|entry| {
            let (hash, value) = entry?;
            Ok((hash.as_ref().try_into().unwrap_or([0; 32]), decode(&value)?))
        })
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The last chunk an interrupted scrub verified.
    pub fn scrub_cursor(&self) -> Result<Option<ChunkHash>> {
        Ok(self.meta.get("scrub-cursor")?.and_then(|value| value.as_ref().try_into().ok()))
    }

    /// Records scrub progress; `None` when a scrub has finished.
    pub fn set_scrub_cursor(&self, cursor: Option<ChunkHash>) -> Result<()> {
        match cursor {
            Some(hash) => self.meta.insert("scrub-cursor", &hash[..])?,
            None => self.meta.remove("scrub-cursor")?,
        };
        self.flush()
    }

    /// Every stored chunk with its record, for scrubbing.
    pub fn all_chunks(&self) -> impl Iterator<Item = Result<(ChunkHash, ChunkRecord)>> + '_ {
        self.chunks.iter().map(|entry| {
            let (hash, value) = entry?;
            Ok((hash.as_ref().try_into().unwrap_or([0; 32]), decode(&value)?))
        })
    }

    // ---- base selection by name

    /// Remembers the chunks of the newest tensor stored under this name, dtype and shape.
    pub fn remember_tensor(&self, tenant: &str, name: &str, signature: &str, chunks: &[ChunkHash]) -> Result<()> {
        self.tensors.insert(keys::tensor(tenant, name, signature), encode(&chunks.to_vec()))?;
        Ok(())
    }

    /// Registers a stored tensor as a base candidate for tensors of its dtype and shape
    /// (`signature`) within `scope` (a tenant, or a group sharing dedup). Idempotent.
    pub fn add_candidate(&self, scope: &str, signature: &str, candidate: &BaseCandidate) -> Result<()> {
        let mut key = keys::candidates_prefix(scope, signature);
        let identity: Vec<u8> = candidate.chunks.iter().flatten().copied().collect();
        key.extend_from_slice(tensorgate_codec::ContentHash::of(&identity).0.as_slice());
        self.candidates.insert(key, encode(candidate))?;
        Ok(())
    }

    /// Every base candidate of this dtype and shape within `scope`.
    pub fn candidates(&self, scope: &str, signature: &str) -> Result<Vec<BaseCandidate>> {
        self.candidates
            .scan_prefix(keys::candidates_prefix(scope, signature))
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    /// The chunks of the newest tensor stored under this name, dtype and shape.
    pub fn tensor_chunks(&self, tenant: &str, name: &str, signature: &str) -> Result<Option<Vec<ChunkHash>>> {
        self.tensors.get(keys::tensor(tenant, name, signature))?.map(|v| decode(&v)).transpose()
    }
}

fn read_ms(bytes: &[u8]) -> i64 {
    let mut word = [0u8; 8];
    let len = bytes.len().min(8);
    word[..len].copy_from_slice(&bytes[..len]);
    i64::from_be_bytes(word)
}

/// Takes one reference on a chunk, inserting it from `new_chunks` (and referencing its base)
/// if the index does not hold it yet.
fn acquire_chunk(
    chunks: &TransactionalTree,
    packs: &TransactionalTree,
    new_chunks: &HashMap<ChunkHash, &ChunkRecord>,
    hash: &ChunkHash,
) -> TxResult<()> {
    if let Some(value) = chunks.get(hash)? {
        let mut record: ChunkRecord = tx_decode(&value)?;
        record.refs += 1;
        record.dead_since_ms = None;
        chunks.insert(hash, encode(&record))?;
        return Ok(());
    }
    let Some(new) = new_chunks.get(hash) else {
        return abort(IndexError::MissingChunk(hex(hash)));
    };
    let mut record = (*new).clone();
    record.refs = 1;
    record.dead_since_ms = None;
    chunks.insert(hash, encode(&record))?;
    let pack_value = packs.get(record.pack.as_bytes())?;
    let Some(pack_value) = pack_value else {
        return abort(IndexError::MissingChunk(hex(hash)));
    };
    let mut pack: PackRecord = tx_decode(&pack_value)?;
    pack.live_bytes += u64::from(record.frame_len);
    packs.insert(record.pack.as_bytes(), encode(&pack))?;
    if let Some(base) = record.base {
        acquire_chunk(chunks, packs, new_chunks, &base)?;
    }
    Ok(())
}

/// Drops one reference on a chunk, marking it dead when none is left.
fn release_chunk(chunks: &TransactionalTree, hash: &ChunkHash, now_ms: i64) -> TxResult<()> {
    let Some(value) = chunks.get(hash)? else { return Ok(()) };
    let mut record: ChunkRecord = tx_decode(&value)?;
    record.refs = record.refs.saturating_sub(1);
    if record.refs == 0 {
        record.dead_since_ms = Some(now_ms);
    }
    chunks.insert(hash, encode(&record))?;
    Ok(())
}

/// Releases what `old` holds: chunk references, and blobs that `new` does not reuse.
fn release_segments(
    chunks: &TransactionalTree,
    trash: &TransactionalTree,
    old: &[Segment],
    new: &[Segment],
    now_ms: i64,
) -> TxResult<()> {
    for segment in old {
        match segment {
            Segment::Chunk { hash, .. } => release_chunk(chunks, hash, now_ms)?,
            Segment::Blob { key, .. } => {
                let reused = new.iter().any(|s| matches!(s, Segment::Blob { key: k, .. } if k == key));
                if !reused {
                    trash.insert(key.as_bytes(), &now_ms.to_be_bytes())?;
                }
            }
            Segment::Inline(_) => {}
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(segments: Vec<Segment>) -> ObjectRecord {
        ObjectRecord {
            version: "v1".into(),
            size: segments.iter().map(Segment::len).sum(),
            etag: "etag".into(),
            last_modified_ms: 1,
            attributes: Attributes::default(),
            checksums: Checksums::default(),
            part_sizes: Vec::new(),
            segments,
        }
    }

    fn chunk(pack: &str, frame_len: u32) -> ChunkRecord {
        ChunkRecord { pack: pack.into(), offset: 0, frame_len, raw_len: frame_len, base: None, refs: 0, dead_since_ms: None }
    }

    #[test]
    fn references_follow_commits_and_deletes_and_sweeps_free_packs() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        index.create_bucket("t", "b", 0).unwrap();
        let key = ObjectKey::new("t", "b", "k");
        let shared = [1u8; 32];
        let only_first = [2u8; 32];
        let new_chunks = vec![NewChunk { hash: shared, record: chunk("packs/1", 10) }, NewChunk { hash: only_first, record: chunk("packs/1", 5) }];
        let pack = NewPack { key: "packs/1".into(), total_bytes: 15 };
        let first = record(vec![Segment::Chunk { hash: shared, len: 10 }, Segment::Chunk { hash: only_first, len: 5 }]);
        index.commit_object(&key, &first, &new_chunks, Some(&pack), Expect::Any, 0).unwrap();
        let second = record(vec![Segment::Chunk { hash: shared, len: 10 }, Segment::Blob { key: "blobs/x".into(), offset: 0, len: 3 }]);
        index.commit_object(&key, &second, &[], None, Expect::Any, 0).unwrap();
        assert_eq!(index.chunk(&shared).unwrap().unwrap().refs, 1);
        assert_eq!(index.chunk(&only_first).unwrap().unwrap().refs, 0);
        assert!(index.check().unwrap().problems.is_empty());
        assert!(matches!(
            index.commit_object(&key, &first, &[], None, Expect::Version("stale"), 0),
            Err(IndexError::VersionChanged)
        ));
        assert!(index.delete_object(&key, 5).unwrap());
        let dead = index.dead_chunks(10).unwrap();
        assert_eq!(dead.len(), 2);
        for hash in &dead {
            assert!(index.sweep_chunk(hash, 10).unwrap());
        }
        assert_eq!(index.pack_bytes().unwrap(), 0);
        let trash = index.trash_before(10).unwrap();
        assert!(trash.contains(&"packs/1".to_owned()) && trash.contains(&"blobs/x".to_owned()), "{trash:?}");
        assert!(index.check().unwrap().problems.is_empty());
    }

    #[test]
    fn a_commit_naming_an_unknown_chunk_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        index.create_bucket("t", "b", 0).unwrap();
        let key = ObjectKey::new("t", "b", "k");
        let result = index.commit_object(&key, &record(vec![Segment::Chunk { hash: [9; 32], len: 1 }]), &[], None, Expect::Any, 0);
        assert!(matches!(result, Err(IndexError::MissingChunk(_))));
        assert!(index.object(&key).unwrap().is_none());
    }

    #[test]
    fn a_commit_into_a_deleted_bucket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        index.create_bucket("t", "b", 0).unwrap();
        assert_eq!(index.delete_bucket("t", "b", 0).unwrap(), BucketDeletion::Deleted);
        let key = ObjectKey::new("t", "b", "k");
        let result = index.commit_object(&key, &record(vec![Segment::Inline(vec![1])]), &[], None, Expect::Any, 0);
        assert!(matches!(result, Err(IndexError::NoSuchBucket)));
        index.create_bucket("t", "b", 1).unwrap();
        assert!(index.list_objects("t", "b", "", None).next().is_none(), "nothing comes back with the bucket");
    }

    #[test]
    fn adopt_takes_a_chunk_only_where_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let hash = [4u8; 32];
        let location = ChunkLocation { hash, pack: "packs/gone".into(), offset: 0, frame_len: 8, raw_len: 8, base: None };
        let manifest = Manifest {
            tenant: "t".into(),
            bucket: "b".into(),
            key: "k".into(),
            record: record(vec![Segment::Chunk { hash, len: 8 }]),
            chunks: vec![location],
        };
        assert!(matches!(index.adopt(&manifest, 0, |_, _| None), Err(IndexError::MissingChunk(_))));
        assert!(index.is_empty(), "a refused adoption changes nothing");
        index.adopt(&manifest, 0, |_, own| own.cloned()).unwrap();
        assert_eq!(index.chunk(&hash).unwrap().unwrap().refs, 1);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_records_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ObjectRecord>(&bytes);
            let _ = decode::<ChunkRecord>(&bytes);
            let _ = decode::<UploadRecord>(&bytes);
            let _ = decode::<BaseCandidate>(&bytes);
        }
    }
}
