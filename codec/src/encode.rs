//! Chunk encoding: an optional XOR delta against a base chunk, then byte planes or plain zstd,
//! keeping whichever candidate is smallest, and the exact inverse.

use crate::delta;
use crate::dtype::Dtype;
use crate::error::{CodecError, Result};
use crate::frame::{read_u32, Codec, FrameHeader, MAX_RAW_LEN};
use crate::hash::ContentHash;
use crate::planes;

/// zstd level used for planes and whole chunks: level 1 is within a few percent of level 3 on
/// tensor planes at several times the speed.
pub const DEFAULT_LEVEL: i32 = 1;

/// A delta keeps its encoding without trying standalone when it is at most this share of raw.
const DELTA_GOOD_ENOUGH: f64 = 0.6;

const PLANE_STORED: u8 = 0;
const PLANE_ZSTD: u8 = 1;

/// A decoded chunk that a delta frame is taken against, with its content hash.
#[derive(Debug, Clone, Copy)]
pub struct BaseChunk<'a> {
    pub hash: ContentHash,
    pub bytes: &'a [u8],
}

/// Encodes one chunk of raw tensor bytes as a frame. With a base, the frame is an XOR delta
/// against it unless encoding on its own is smaller.
pub fn encode_chunk(raw: &[u8], dtype: Dtype, base: Option<BaseChunk<'_>>) -> Result<Vec<u8>> {
    let raw_len = u32::try_from(raw.len())
        .ok()
        .filter(|len| *len <= MAX_RAW_LEN)
        .ok_or(CodecError::ChunkTooLarge(raw.len()))?;
    let checksum = ContentHash::of(raw);
    let standalone = || best_payload(raw, dtype);
    let (payload, base_hash) = match base {
        Some(base) => {
            let delta_payload = best_payload(&delta::xor(raw, base.bytes), dtype);
            if (delta_payload.bytes.len() as f64) <= DELTA_GOOD_ENOUGH * raw.len() as f64 {
                (delta_payload, Some(base.hash))
            } else {
                let own = standalone();
                if own.bytes.len() < delta_payload.bytes.len() {
                    (own, None)
                } else {
                    (delta_payload, Some(base.hash))
                }
            }
        }
        None => (standalone(), None),
    };
    let header = FrameHeader {
        codec: payload.codec,
        width: payload.width,
        rotated: payload.rotated,
        raw_len,
        payload_len: payload.bytes.len() as u32,
        checksum,
        base: base_hash,
    };
    let mut frame = Vec::with_capacity(header.frame_len());
    header.write(&mut frame);
    frame.extend_from_slice(&payload.bytes);
    Ok(frame)
}

/// Decodes a frame, checking its lengths, its base and the checksum of the result.
pub fn decode_frame(frame: &[u8], base: Option<BaseChunk<'_>>) -> Result<Vec<u8>> {
    let header = FrameHeader::read(frame)?;
    let payload = frame
        .get(header.header_len()..header.frame_len())
        .ok_or(CodecError::FrameTruncated)?;
    let raw_len = header.raw_len as usize;
    let mut bytes = match header.codec {
        Codec::Stored => payload.to_vec(),
        Codec::Zstd => decompress(payload, raw_len)?,
        Codec::Planes => decode_planes(payload, raw_len, header.width as usize, header.rotated)?,
    };
    if bytes.len() != raw_len {
        return Err(CodecError::FrameCorrupt("decoded length differs from raw length"));
    }
    if let Some(wanted) = header.base {
        match base {
            Some(base) if base.hash == wanted => delta::xor_in_place(&mut bytes, base.bytes),
            _ => return Err(CodecError::BaseMismatch(wanted.to_hex())),
        }
    }
    if ContentHash::of(&bytes) != header.checksum {
        return Err(CodecError::ChecksumMismatch);
    }
    Ok(bytes)
}

/// One candidate encoding of a chunk.
struct Payload {
    codec: Codec,
    width: u8,
    rotated: bool,
    bytes: Vec<u8>,
}

/// Tries the encodings that suit `dtype` and keeps the smallest, falling back to stored.
fn best_payload(bytes: &[u8], dtype: Dtype) -> Payload {
    let width = dtype.size();
    let is_float = matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64);
    let mut candidates = Vec::with_capacity(2);
    if width > 1 {
        let rotated = matches!(dtype, Dtype::BF16 | Dtype::F32);
        candidates.push(Payload {
            codec: Codec::Planes,
            width: width as u8,
            rotated,
            bytes: encode_planes(bytes, width, rotated),
        });
    }
    if width == 1 || !is_float {
        candidates.push(Payload { codec: Codec::Zstd, width: 1, rotated: false, bytes: compress(bytes) });
    }
    let stored = Payload { codec: Codec::Stored, width: 1, rotated: false, bytes: Vec::new() };
    let best = candidates
        .into_iter()
        .filter(|candidate| candidate.bytes.len() < bytes.len())
        .min_by_key(|candidate| candidate.bytes.len());
    best.unwrap_or(Payload { bytes: bytes.to_vec(), ..stored })
}

/// Planes payload: per plane a mode byte, a u32 length and the bytes; then the tail as is.
fn encode_planes(bytes: &[u8], width: usize, rotated: bool) -> Vec<u8> {
    let split = planes::split(bytes, width, rotated);
    let plane_len = bytes.len() / width;
    let mut out = Vec::with_capacity(bytes.len() / 2 + 64);
    for plane in split[..plane_len * width].chunks_exact(plane_len.max(1)).take(width) {
        let compressed = compress(plane);
        let (mode, body) = if compressed.len() < plane.len() {
            (PLANE_ZSTD, compressed.as_slice())
        } else {
            (PLANE_STORED, plane)
        };
        out.push(mode);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
    }
    out.extend_from_slice(&split[plane_len * width..]);
    out
}

fn decode_planes(payload: &[u8], raw_len: usize, width: usize, rotated: bool) -> Result<Vec<u8>> {
    let plane_len = raw_len / width;
    let mut split = Vec::with_capacity(raw_len);
    let mut cursor = 0usize;
    let plane_count = if plane_len == 0 { 0 } else { width };
    for _ in 0..plane_count {
        let head = payload.get(cursor..cursor + 5).ok_or(CodecError::FrameTruncated)?;
        let body_len = read_u32(&head[1..]) as usize;
        let body = payload
            .get(cursor + 5..cursor + 5 + body_len)
            .ok_or(CodecError::FrameTruncated)?;
        match head[0] {
            PLANE_STORED if body_len == plane_len => split.extend_from_slice(body),
            PLANE_ZSTD => split.extend_from_slice(&decompress(body, plane_len)?),
            _ => return Err(CodecError::FrameCorrupt("bad plane header")),
        }
        if split.len() % plane_len != 0 {
            return Err(CodecError::FrameCorrupt("plane length differs from raw length"));
        }
        cursor += 5 + body_len;
    }
    let tail = &payload[cursor.min(payload.len())..];
    if tail.len() != raw_len - plane_len * width {
        return Err(CodecError::FrameCorrupt("tail length differs from raw length"));
    }
    split.extend_from_slice(tail);
    Ok(planes::join(&split, width, rotated))
}

fn compress(bytes: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(bytes, DEFAULT_LEVEL).unwrap_or_default()
}

/// Decompresses one zstd frame that must hold exactly `raw_len` bytes.
fn decompress(bytes: &[u8], raw_len: usize) -> Result<Vec<u8>> {
    let out = zstd::bulk::decompress(bytes, raw_len).map_err(|error| CodecError::Zstd(error.to_string()))?;
    if out.len() != raw_len {
        return Err(CodecError::FrameCorrupt("zstd output length differs from raw length"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dtype_strategy() -> impl Strategy<Value = Dtype> {
        proptest::sample::select(Dtype::ALL.to_vec())
    }

    /// Bytes that look like bf16 weights near 0.02, so that planes and zstd are exercised.
    fn weights(count: usize, seed: u32) -> Vec<u8> {
        (0..count as u32)
            .flat_map(|i| {
                let noise = (i.wrapping_mul(2_654_435_761) ^ seed) % 1000;
                let value = 0.02f32 * (noise as f32 / 500.0 - 1.0);
                ((value.to_bits() >> 16) as u16).to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn compresses_weights_and_deltas() {
        let base = weights(100_000, 1);
        let mut tuned = base.clone();
        for i in (0..tuned.len()).step_by(14) {
            tuned[i] ^= 1;
        }
        let own = encode_chunk(&base, Dtype::BF16, None).unwrap();
        assert!(own.len() < base.len() * 9 / 10, "standalone {} of {}", own.len(), base.len());
        let base_chunk = BaseChunk { hash: ContentHash::of(&base), bytes: &base };
        let delta = encode_chunk(&tuned, Dtype::BF16, Some(base_chunk)).unwrap();
        assert!(delta.len() < base.len() / 5, "delta {} of {}", delta.len(), base.len());
        assert_eq!(decode_frame(&delta, Some(base_chunk)).unwrap(), tuned);
    }

    #[test]
    fn detects_corruption_and_wrong_base() {
        let base = weights(5000, 1);
        let tuned = weights(5000, 2);
        let base_chunk = BaseChunk { hash: ContentHash::of(&base), bytes: &base };
        let frame = encode_chunk(&tuned, Dtype::BF16, Some(base_chunk)).unwrap();
        if FrameHeader::read(&frame).unwrap().base.is_some() {
            assert!(matches!(decode_frame(&frame, None), Err(CodecError::BaseMismatch(_))));
        }
        for position in [0, 5, 9, 20, 60, frame.len() - 1] {
            let mut broken = frame.clone();
            broken[position] ^= 0x40;
            assert!(decode_frame(&broken, Some(base_chunk)).is_err(), "flip at {position} went unseen");
        }
        assert!(decode_frame(&frame[..frame.len() - 1], Some(base_chunk)).is_err());
    }

    proptest! {
        #[test]
        fn standalone_round_trips(raw in proptest::collection::vec(any::<u8>(), 0..2000), dtype in dtype_strategy()) {
            let frame = encode_chunk(&raw, dtype, None).unwrap();
            prop_assert_eq!(decode_frame(&frame, None).unwrap(), raw);
        }

        #[test]
        fn delta_round_trips(raw in proptest::collection::vec(any::<u8>(), 0..2000),
                             flips in proptest::collection::vec(any::<(usize, u8)>(), 0..50),
                             base_extra in -3i32..3,
                             dtype in dtype_strategy()) {
            let mut base = raw.clone();
            base.resize((raw.len() as i32 + base_extra).max(0) as usize, 0x55);
            for (position, bits) in flips {
                if !base.is_empty() {
                    let len = base.len();
                    base[position % len] ^= bits;
                }
            }
            let base_chunk = BaseChunk { hash: ContentHash::of(&base), bytes: &base };
            let frame = encode_chunk(&raw, dtype, Some(base_chunk)).unwrap();
            prop_assert_eq!(decode_frame(&frame, Some(base_chunk)).unwrap(), raw);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_frame(&bytes, None);
            let mut framed = b"TGFR\x01".to_vec();
            framed.extend_from_slice(&bytes);
            let _ = decode_frame(&framed, None);
        }
    }
}
