//! The values the index stores, serialized with postcard.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A 32-byte BLAKE3 content hash of a chunk's raw bytes.
pub type ChunkHash = [u8; 32];

/// A virtual bucket of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRecord {
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// The LocationConstraint given at creation (none: the default region).
    pub location: Option<String>,
}

impl BucketRecord {
    /// A bucket created at `created_ms` in the default region.
    pub fn new(created_ms: i64) -> BucketRecord {
        BucketRecord { created_ms, location: None }
    }
}

/// Where an object's bytes live: pieces that, concatenated in order, give the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Segment {
    /// Bytes kept in the index itself (a model header: safetensors or GGUF).
    Inline(Vec<u8>),
    /// A chunk stored as a frame in a pack; `len` raw bytes.
    Chunk { hash: ChunkHash, len: u32 },
    /// A byte range of an upstream blob, stored as it came.
    Blob { key: String, offset: u64, len: u64 },
}

impl Segment {
    /// Raw bytes this segment contributes to the object.
    pub fn len(&self) -> u64 {
        match self {
            Segment::Inline(bytes) => bytes.len() as u64,
            Segment::Chunk { len, .. } => u64::from(*len),
            Segment::Blob { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The chunk this segment reads, if it is one.
    pub fn chunk_hash(&self) -> Option<ChunkHash> {
        match self {
            Segment::Chunk { hash, .. } => Some(*hash),
            _ => None,
        }
    }
}

/// Checksums a client sent with the object, kept to answer `x-amz-checksum-mode`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksums {
    pub crc32: Option<String>,
    pub crc32c: Option<String>,
    pub sha1: Option<String>,
    pub sha256: Option<String>,
    pub crc64nvme: Option<String>,
}

/// The checksum algorithms S3 offers: the one list the gateway goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChecksumAlgorithm {
    Crc32,
    Crc32c,
    Sha1,
    Sha256,
    Crc64Nvme,
}

impl ChecksumAlgorithm {
    pub const ALL: [ChecksumAlgorithm; 5] =
        [ChecksumAlgorithm::Crc32, ChecksumAlgorithm::Crc32c, ChecksumAlgorithm::Sha1, ChecksumAlgorithm::Sha256, ChecksumAlgorithm::Crc64Nvme];

    /// The name S3 gives it (`x-amz-checksum-algorithm`, `x-amz-sdk-checksum-algorithm`).
    pub fn name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Crc32 => "CRC32",
            ChecksumAlgorithm::Crc32c => "CRC32C",
            ChecksumAlgorithm::Sha1 => "SHA1",
            ChecksumAlgorithm::Sha256 => "SHA256",
            ChecksumAlgorithm::Crc64Nvme => "CRC64NVME",
        }
    }

    /// The header (or trailer) that carries its value: `x-amz-checksum-<name in lower case>`.
    pub fn header(self) -> String {
        format!("x-amz-checksum-{}", self.name().to_ascii_lowercase())
    }

    /// The algorithm S3 calls `name` (in any case).
    pub fn named(name: &str) -> Option<ChecksumAlgorithm> {
        ChecksumAlgorithm::ALL.into_iter().find(|algorithm| algorithm.name().eq_ignore_ascii_case(name))
    }
}

impl Checksums {
    /// The value of one algorithm.
    pub fn get(&self, algorithm: ChecksumAlgorithm) -> &Option<String> {
        match algorithm {
            ChecksumAlgorithm::Crc32 => &self.crc32,
            ChecksumAlgorithm::Crc32c => &self.crc32c,
            ChecksumAlgorithm::Sha1 => &self.sha1,
            ChecksumAlgorithm::Sha256 => &self.sha256,
            ChecksumAlgorithm::Crc64Nvme => &self.crc64nvme,
        }
    }

    /// The value of one algorithm, to set.
    pub fn get_mut(&mut self, algorithm: ChecksumAlgorithm) -> &mut Option<String> {
        match algorithm {
            ChecksumAlgorithm::Crc32 => &mut self.crc32,
            ChecksumAlgorithm::Crc32c => &mut self.crc32c,
            ChecksumAlgorithm::Sha1 => &mut self.sha1,
            ChecksumAlgorithm::Sha256 => &mut self.sha256,
            ChecksumAlgorithm::Crc64Nvme => &mut self.crc64nvme,
        }
    }

    /// Whether no checksum is known.
    pub fn is_empty(&self) -> bool {
        ChecksumAlgorithm::ALL.into_iter().all(|algorithm| self.get(algorithm).is_none())
    }
}

/// The headers a client sets on an object and gets back with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributes {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub content_language: Option<String>,
    pub cache_control: Option<String>,
    /// User metadata (`x-amz-meta-*`).
    pub metadata: BTreeMap<String, String>,
    /// The `Expires` header, as the HTTP date the client sent.
    pub expires: Option<String>,
}

/// Everything known of one object version: what clients see and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// Unique per write; the packer swaps a manifest only if the version is unchanged.
    pub version: String,
    pub size: u64,
    /// ETag without quotes: the MD5 hex, or `md5-of-md5s-N` for multipart uploads.
    pub etag: String,
    pub last_modified_ms: i64,
    pub attributes: Attributes,
    pub checksums: Checksums,
    /// Sizes of the parts of a multipart upload, for `partNumber` reads.
    pub part_sizes: Vec<u64>,
    pub segments: Vec<Segment>,
    /// The checksums of the parts of a multipart upload, in order, when any part had one
    /// (format version 3); else empty.
    pub part_checksums: Vec<Checksums>,
}

/// A chunk stored as a frame in a pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub pack: String,
    pub offset: u64,
    pub frame_len: u32,
    pub raw_len: u32,
    /// The base chunk of a delta frame; it holds a reference for as long as this chunk lives.
    pub base: Option<ChunkHash>,
    /// Object segments and delta frames that use this chunk.
    pub refs: u64,
    /// When `refs` fell to zero; the chunk is collected a grace period later.
    pub dead_since_ms: Option<i64>,
}

/// A pack object upstream and how much of it is still referenced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRecord {
    pub total_bytes: u64,
    pub live_bytes: u64,
}

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub tenant: String,
    pub bucket: String,
    pub key: String,
    pub initiated_ms: i64,
    pub attributes: Attributes,
    /// The checksum asked for at CreateMultipartUpload (format version 3).
    pub checksum: Option<UploadChecksum>,
}

/// The checksum a multipart upload keeps: every part's, of this algorithm, and the object's,
/// either of its whole bytes (S3's FULL_OBJECT type, CRCs only) or of the parts' checksums
/// (COMPOSITE, `…-N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadChecksum {
    pub algorithm: ChecksumAlgorithm,
    pub full_object: bool,
}

/// One uploaded part: stored as it came in an upstream blob, or encoded on arrival as the
/// bytes of the object it was guessed to start at (`encoded`, format version 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    /// The part's blob; empty when it is encoded.
    pub blob: String,
    pub size: u64,
    /// MD5 hex of the part.
    pub etag: String,
    pub last_modified_ms: i64,
    pub checksums: Checksums,
    pub encoded: Option<EncodedPart>,
}

impl PartRecord {
    /// The segments that, concatenated, give the part's bytes.
    pub fn segments(&self) -> Vec<Segment> {
        match &self.encoded {
            Some(encoded) => encoded.segments.clone(),
            None if self.blob.is_empty() => Vec::new(),
            None => vec![Segment::Blob { key: self.blob.clone(), offset: 0, len: self.size }],
        }
    }
}

/// A part encoded as it arrived: cut and encoded as the bytes at `offset` of the object (its
/// number less one times part 1's size), by the layout of part 1's header. Its chunks hold a
/// reference each until the upload ends. Whatever the guess, the segments give the part's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodedPart {
    pub offset: u64,
    /// The id of the layout the part was cut by: the BLAKE3 of part 1's size (u64
    /// little-endian) and header, in hex.
    pub layout_id: String,
    pub segments: Vec<Segment>,
    /// Fingerprints of the tensors whose first chunk the part holds whole, to register the
    /// tensors as base candidates once the upload completes.
    pub sketches: Vec<TensorSketch>,
}

/// The fingerprint of one tensor of a model, by name and signature (`dtype:shape`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSketch {
    pub name: String,
    pub signature: String,
    pub sketch: Vec<u8>,
}

/// A job of the background packer: re-encode this object version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackJob {
    pub tenant: String,
    pub bucket: String,
    pub key: String,
    pub version: String,
}

/// A stored tensor that new tensors of the same dtype and shape may be stored as deltas against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseCandidate {
    /// The tensor's bit-level fingerprint (`tensorgate_codec::Sketch` bytes).
    pub sketch: Vec<u8>,
    /// The tensor's chunks, in order.
    pub chunks: Vec<ChunkHash>,
}
