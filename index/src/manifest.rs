//! The upstream copies of index records: every object's manifest and every bucket is also an
//! upstream object, so that the index can be rebuilt from the upstream alone and several
//! gateways can share one upstream (which also shares multipart uploads in progress).
//!
//! Each is an envelope: `TGMF`, a format version, the kind, the body length, the BLAKE3 of the
//! body, then the body (postcard). A torn, truncated or altered envelope does not decode.

use serde::{Deserialize, Serialize};

use crate::records::{BucketRecord, ChunkHash, ChunkRecord, ObjectRecord, UploadRecord};
use crate::records_v3::PartRecordV3;
use crate::{records_v1, records_v2};
use crate::{IndexError, Result};

const MAGIC: [u8; 4] = *b"TGMF";
/// The format version of records whose layout later versions did not change, and of those
/// that hold nothing version 1 cannot say (see `records_v1`).
const VERSION_1: u8 = 1;
/// The version of records that hold nothing version 2 cannot say (see `records_v2`).
const VERSION_2: u8 = 2;
/// The current format version.
const VERSION_3: u8 = 3;
/// Magic, version, kind, two reserved bytes, body length (u64 LE), BLAKE3 of the body.
const HEADER_LEN: usize = 4 + 1 + 1 + 2 + 8 + 32;
/// No record the gateway writes comes near this; anything longer is refused unread.
pub const MAX_BODY_LEN: u64 = 256 << 20;

/// Where a chunk a manifest uses is stored, as of the manifest's commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLocation {
    pub hash: ChunkHash,
    pub pack: String,
    pub offset: u64,
    pub frame_len: u32,
    pub raw_len: u32,
    pub base: Option<ChunkHash>,
}

impl ChunkLocation {
    pub fn new(hash: ChunkHash, record: &ChunkRecord) -> ChunkLocation {
        ChunkLocation {
            hash,
            pack: record.pack.clone(),
            offset: record.offset,
            frame_len: record.frame_len,
            raw_len: record.raw_len,
            base: record.base,
        }
    }

    /// The chunk as a fresh index record, not yet referenced.
    pub fn record(&self) -> ChunkRecord {
        ChunkRecord {
            pack: self.pack.clone(),
            offset: self.offset,
            frame_len: self.frame_len,
            raw_len: self.raw_len,
            base: self.base,
            refs: 0,
            dead_since_ms: None,
        }
    }
}

/// One object as stored upstream: its name, its record, and where every chunk it needs is
/// (its own chunks and their bases).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub tenant: String,
    pub bucket: String,
    pub key: String,
    pub record: ObjectRecord,
    pub chunks: Vec<ChunkLocation>,
}

impl Manifest {
    /// The upstream objects this manifest reads, each with the end of the bytes it needs: the
    /// packs of its chunks and its blobs (a key may come more than once).
    pub fn upstream_needs(&self) -> Vec<(&str, u64)> {
        let chunks = self.chunks.iter().map(|chunk| (chunk.pack.as_str(), chunk.offset + u64::from(chunk.frame_len)));
        let blobs = self.record.segments.iter().filter_map(|segment| match segment {
            crate::records::Segment::Blob { key, offset, len } => Some((key.as_str(), offset + len)),
            _ => None,
        });
        chunks.chain(blobs).collect()
    }
}

/// A bucket as stored upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketMarker {
    pub tenant: String,
    pub bucket: String,
    pub created_ms: i64,
    /// The LocationConstraint given at creation.
    pub location: Option<String>,
}

impl BucketMarker {
    /// The bucket as an index record.
    pub fn record(&self) -> BucketRecord {
        BucketRecord { created_ms: self.created_ms, location: self.location.clone() }
    }
}

/// A multipart upload in progress, for gateways sharing the upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadMarker {
    pub upload_id: String,
    pub upload: UploadRecord,
}

/// One stored part of a multipart upload, for gateways sharing the upstream: always stored as
/// it came, so in the version-3 layout of a part (`records_v3`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartMarker {
    pub upload_id: String,
    pub number: u32,
    pub part: PartRecordV3,
}

/// Where compaction copied the live frames of a pack, for gateways sharing the upstream: those
/// whose index reads chunks there point them at the copies before the pack is deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackMoves {
    pub from: String,
    pub to: String,
    pub to_total: u64,
    pub moves: Vec<crate::Move>,
}

/// Where re-basing stored again chunks whose frames were in a pack, for gateways sharing the
/// upstream: those whose index reads one of them there point it at its new frame before the
/// pack is deleted (each new frame decodes to the same bytes, against its own base).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRebased {
    pub from: String,
    pub frames: Vec<RebasedFrame>,
}

/// One chunk's new frame, written by re-basing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebasedFrame {
    pub hash: ChunkHash,
    pub from_offset: u64,
    pub to: String,
    pub to_total: u64,
    pub to_offset: u64,
    pub frame_len: u32,
    pub base: Option<ChunkHash>,
}

/// What an envelope holds; a reader asking for one kind refuses the others.
pub trait Envelope: Serialize + serde::de::DeserializeOwned {
    const KIND: u8;
    /// The record's version-1 layout (the version-2 one for kinds version 2 left alone).
    type V1: Serialize + serde::de::DeserializeOwned + Into<Self::V2>;
    /// The record's version-2 layout (the record itself for kinds version 3 left alone).
    type V2: Serialize + serde::de::DeserializeOwned + Into<Self>;

    /// The record in its version-1 layout, unless it holds what version 1 cannot say.
    fn as_v1(&self) -> Option<Self::V1>;

    /// The record in its version-2 layout, unless it holds what version 2 cannot say.
    fn as_v2(&self) -> Option<Self::V2>;

    /// The envelope bytes, in the oldest version the record fits.
    fn seal(&self) -> Result<Vec<u8>> {
        let (version, body) = match (self.as_v1(), self.as_v2()) {
            (Some(old), _) => (VERSION_1, crate::encoding::encode(&old)?),
            (None, Some(old)) => (VERSION_2, crate::encoding::encode(&old)?),
            (None, None) => (VERSION_3, crate::encoding::encode(self)?),
        };
        let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&[version, Self::KIND, 0, 0]);
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(blake3::hash(&body).as_bytes());
        bytes.extend_from_slice(&body);
        Ok(bytes)
    }

    /// Decodes envelope bytes, checking magic, version, kind, length and checksum.
    fn open(bytes: &[u8]) -> Result<Self> {
        let header = bytes.get(..HEADER_LEN).ok_or(IndexError::Envelope("shorter than its header"))?;
        if header[..4] != MAGIC {
            return Err(IndexError::Envelope("not a tensorgate record"));
        }
        if !(VERSION_1..=VERSION_3).contains(&header[4]) {
            return Err(IndexError::Envelope("unknown format version"));
        }
        if header[6..8] != [0, 0] {
            return Err(IndexError::Envelope("reserved bytes are set"));
        }
        if header[5] != Self::KIND {
            return Err(IndexError::Envelope("another kind of record"));
        }
        let mut body_len = [0u8; 8];
        body_len.copy_from_slice(&header[8..16]);
        let body_len = u64::from_le_bytes(body_len);
        if body_len > MAX_BODY_LEN || bytes.len() as u64 - HEADER_LEN as u64 != body_len {
            return Err(IndexError::Envelope("length does not match"));
        }
        let body = &bytes[HEADER_LEN..];
        if blake3::hash(body).as_bytes() != &header[16..48] {
            return Err(IndexError::Envelope("checksum does not match"));
        }
        match header[4] {
            VERSION_1 => Ok(crate::decode::<Self::V1>(body)?.into().into()),
            VERSION_2 => Ok(crate::decode::<Self::V2>(body)?.into()),
            _ => crate::decode(body),
        }
    }
}

impl Envelope for Manifest {
    const KIND: u8 = 1;
    type V1 = records_v1::ManifestV1;
    type V2 = records_v2::ManifestV2;

    fn as_v1(&self) -> Option<Self::V1> {
        records_v1::manifest_v1(self)
    }

    fn as_v2(&self) -> Option<Self::V2> {
        records_v2::manifest_v2(self)
    }
}

impl Envelope for BucketMarker {
    const KIND: u8 = 2;
    type V1 = records_v1::BucketMarkerV1;
    type V2 = BucketMarker;

    fn as_v1(&self) -> Option<Self::V1> {
        records_v1::bucket_marker_v1(self)
    }

    fn as_v2(&self) -> Option<Self::V2> {
        Some(self.clone())
    }
}

impl Envelope for UploadMarker {
    const KIND: u8 = 3;
    type V1 = records_v1::UploadMarkerV1;
    type V2 = records_v2::UploadMarkerV2;

    fn as_v1(&self) -> Option<Self::V1> {
        records_v1::upload_marker_v1(self)
    }

    fn as_v2(&self) -> Option<Self::V2> {
        records_v2::upload_marker_v2(self)
    }
}

impl Envelope for PartMarker {
    const KIND: u8 = 4;
    type V1 = PartMarker;
    type V2 = PartMarker;

    fn as_v1(&self) -> Option<Self::V1> {
        Some(self.clone())
    }

    fn as_v2(&self) -> Option<Self::V2> {
        Some(self.clone())
    }
}

impl Envelope for PackMoves {
    const KIND: u8 = 5;
    type V1 = PackMoves;
    type V2 = PackMoves;

    fn as_v1(&self) -> Option<Self::V1> {
        Some(self.clone())
    }

    fn as_v2(&self) -> Option<Self::V2> {
        Some(self.clone())
    }
}

impl Envelope for PackRebased {
    const KIND: u8 = 6;
    type V1 = PackRebased;
    type V2 = PackRebased;

    fn as_v1(&self) -> Option<Self::V1> {
        Some(self.clone())
    }

    fn as_v2(&self) -> Option<Self::V2> {
        Some(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::records::{Attributes, Checksums, Segment};
    use proptest::prelude::*;

    fn manifest(key: String, inline: Vec<u8>, offset: u64) -> Manifest {
        let hash = [7u8; 32];
        let segments = vec![Segment::Inline(inline), Segment::Chunk { hash, len: 3 }];
        let record = ObjectRecord {
            version: "v".into(),
            size: segments.iter().map(Segment::len).sum(),
            etag: "e".into(),
            last_modified_ms: 5,
            attributes: Attributes::default(),
            checksums: Checksums::default(),
            part_sizes: vec![],
            segments,
            part_checksums: vec![],
        };
        let location = ChunkLocation { hash, pack: "packs/p".into(), offset, frame_len: 9, raw_len: 3, base: None };
        Manifest { tenant: "t".into(), bucket: "b".into(), key, record, chunks: vec![location] }
    }

    proptest! {
        #[test]
        fn sealed_manifests_open_to_themselves(key in ".{0,64}", inline in proptest::collection::vec(any::<u8>(), 0..256), offset in any::<u64>(), expires in proptest::option::of("[ -~]{0,40}")) {
            let mut original = manifest(key, inline, offset);
            original.record.attributes.expires = expires;
            prop_assert_eq!(Manifest::open(&original.seal().unwrap()).unwrap(), original);
        }

        #[test]
        fn any_changed_byte_or_cut_is_refused(position in any::<prop::sample::Index>(), flip in 1u8..=255, cut in any::<prop::sample::Index>()) {
            let sealed = manifest("k".into(), vec![1, 2, 3], 4).seal().unwrap();
            let mut altered = sealed.clone();
            altered[position.index(sealed.len())] ^= flip;
            prop_assert!(Manifest::open(&altered).is_err());
            prop_assert!(Manifest::open(&sealed[..cut.index(sealed.len())]).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Manifest::open(&bytes);
            let _ = BucketMarker::open(&bytes);
            let _ = UploadMarker::open(&bytes);
            let _ = PartMarker::open(&bytes);
            let _ = PackRebased::open(&bytes);
        }

        #[test]
        fn sealed_rebased_records_open_to_themselves(offsets in proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u32>(), any::<bool>()), 0..8)) {
            let frames = offsets
                .into_iter()
                .map(|(from_offset, to_offset, frame_len, delta)| {
                    let base = delta.then_some([2u8; 32]);
                    RebasedFrame { hash: [1; 32], from_offset, to: "packs/n".into(), to_total: 7, to_offset, frame_len, base }
                })
                .collect();
            let record = PackRebased { from: "packs/p".into(), frames };
            prop_assert_eq!(PackRebased::open(&record.seal().unwrap()).unwrap(), record);
        }
    }

    #[test]
    fn a_record_of_another_kind_is_refused() {
        let marker = BucketMarker { tenant: "t".into(), bucket: "b".into(), created_ms: 1, location: None };
        assert!(matches!(Manifest::open(&marker.seal().unwrap()), Err(IndexError::Envelope(_))));
        assert_eq!(BucketMarker::open(&marker.seal().unwrap()).unwrap(), marker);
    }
}
