//! Chunk encoding: an optional delta against a base chunk, then byte planes or plain zstd,
//! keeping whichever candidate is smallest, and the exact inverse.
//!
//! Floats against a base take an ordered-integer difference, grouped by the base's exponent;
//! other dtypes against a base take the XOR of BitX. On their own, floats are rotated so the
//! exponent is a byte of its own, split into planes and entropy-coded plane by plane.

use crate::cast::{group_count, read_scales, write_scales, Cast, Conversion, Groups};
use crate::delta;
use crate::dtype::Dtype;
use crate::entropy::{self, PLANE_ZSTD};
use crate::error::{CodecError, Result};
use crate::frame::{Codec, FrameHeader, MAX_RAW_LEN};
use crate::hash::ContentHash;
use crate::levels;
use crate::ordered;
use crate::planes;

/// A delta keeps its encoding without trying standalone when it is at most this share of raw.
const DELTA_GOOD_ENOUGH: f64 = 0.6;

/// A delta against a base converted whole that is at most 1/64 of raw is taken without trying
/// the conversion in groups.
const EXACT_ENOUGH: usize = 64;

/// A decoded chunk that a delta frame is taken against, with the id the frame records for it
/// (its content hash, or a scoped id: see `ContentHash::scoped`).
#[derive(Debug, Clone, Copy)]
pub struct BaseChunk<'a> {
    pub hash: ContentHash,
    pub bytes: &'a [u8],
}

/// The frames an encoder may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFormat {
    /// Every frame this codec reads: versions 2 (converted bases) and 3 (GGUF blocks predicted
    /// from a wider base) and codec 3 (levels) included.
    Current,
    /// Only what readers from before version 3 read, for an upstream that such gateways still
    /// share.
    Version2,
    /// Only what readers from before version 2 and codec 3 read, for an upstream that such
    /// gateways still share.
    Version1,
}

impl FrameFormat {
    /// Whether a chunk of `dtype` may be taken against a base of another dtype.
    pub fn converts_to(self, dtype: Dtype) -> bool {
        match self {
            FrameFormat::Current => true,
            FrameFormat::Version2 => !dtype.is_blocks(),
            FrameFormat::Version1 => false,
        }
    }
}

/// Encodes one chunk of raw tensor bytes as a frame. With a base (and the base's dtype), the
/// frame is a delta against it, converted to `dtype` first when it holds another float dtype
/// (`cast`), unless encoding on its own is smaller or the dtypes have no conversion.
pub fn encode_chunk(raw: &[u8], dtype: Dtype, base: Option<(BaseChunk<'_>, Dtype)>) -> Result<Vec<u8>> {
    encode_chunk_as(raw, dtype, base, FrameFormat::Current)
}

/// [`encode_chunk`], writing only frames of `format`.
pub fn encode_chunk_as(raw: &[u8], dtype: Dtype, base: Option<(BaseChunk<'_>, Dtype)>, format: FrameFormat) -> Result<Vec<u8>> {
    let raw_len = u32::try_from(raw.len())
        .ok()
        .filter(|len| *len <= MAX_RAW_LEN)
        .ok_or(CodecError::ChunkTooLarge(raw.len()))?;
    let levels_allowed = format != FrameFormat::Version1;
    let base = base.filter(|(_, base_dtype)| *base_dtype == dtype || format.converts_to(dtype));
    let payload = match base.and_then(|(base, base_dtype)| against_base(raw, dtype, base, base_dtype)) {
        Some(delta) => {
            if (delta.bytes.len() as f64) <= DELTA_GOOD_ENOUGH * raw.len() as f64 {
                delta
            } else {
                let own = standalone_payload(raw, dtype, levels_allowed);
                if own.bytes.len() < delta.bytes.len() {
                    own
                } else {
                    delta
                }
            }
        }
        None => standalone_payload(raw, dtype, levels_allowed),
    };
    Ok(frame_of(payload, raw, raw_len))
}

/// The frame of `payload`, which encodes `raw`.
fn frame_of(payload: Payload, raw: &[u8], raw_len: u32) -> Vec<u8> {
    let header = FrameHeader {
        codec: payload.codec,
        width: payload.width,
        rotated: payload.rotated,
        subtract: payload.subtract,
        grouped: payload.grouped,
        raw_len,
        payload_len: payload.bytes.len() as u32,
        checksum: ContentHash::of(raw),
        base: payload.base,
        conversion: payload.conversion,
    };
    let mut frame = Vec::with_capacity(header.frame_len());
    header.write(&mut frame);
    frame.extend_from_slice(&payload.bytes);
    frame
}

/// Encodes one chunk of bytes of no known layout as a frame: zstd when it pays, else stored.
pub fn encode_opaque(raw: &[u8]) -> Result<Vec<u8>> {
    let raw_len = u32::try_from(raw.len())
        .ok()
        .filter(|len| *len <= MAX_RAW_LEN)
        .ok_or(CodecError::ChunkTooLarge(raw.len()))?;
    let payload = match entropy::compress_opaque(raw) {
        Some(compressed) => Payload::plain(Codec::Zstd, 1, compressed),
        None => Payload::plain(Codec::Stored, 1, raw.to_vec()),
    };
    Ok(frame_of(payload, raw, raw_len))
}

/// Decodes a frame, checking its lengths, its base and the checksum of the result.
pub fn decode_frame(frame: &[u8], base: Option<BaseChunk<'_>>) -> Result<Vec<u8>> {
    let header = FrameHeader::read(frame)?;
    let payload = frame
        .get(header.header_len()..header.frame_len())
        .ok_or(CodecError::FrameTruncated)?;
    let raw_len = header.raw_len as usize;
    let width = header.width as usize;
    // A conversion in groups puts the groups' scales ahead of the codec's payload.
    let (scales, payload) = match header.conversion {
        Some(Conversion::Groups(_)) => {
            let (scales, used) = read_scales(payload, group_count(raw_len, width))?;
            (scales, &payload[used..])
        }
        _ => (Vec::new(), payload),
    };
    let ordered_planes = header.subtract && header.codec == Codec::Planes;
    let mut bytes = match header.codec {
        Codec::Stored => payload.to_vec(),
        Codec::Zstd => entropy::decompress(payload, raw_len)?,
        Codec::Planes => decode_planes(payload, raw_len, width, header.rotated, !ordered_planes)?,
        Codec::Levels => levels::decode(payload, raw_len, width)?,
    };
    if bytes.len() != raw_len {
        return Err(CodecError::FrameCorrupt("decoded length differs from raw length"));
    }
    if let Some(wanted) = header.base {
        let base = match base {
            Some(base) if base.hash == wanted => base.bytes,
            _ => return Err(CodecError::BaseMismatch(wanted.to_hex())),
        };
        // Only the base elements the chunk's bytes meet are converted: a crafted frame with a
        // short R cannot make a long base be widened whole.
        let converted;
        let meets = |conversion: Conversion| &base[..base.len().min(conversion.source_len(raw_len))];
        let base = match header.conversion {
            Some(conversion @ Conversion::Whole(cast)) => {
                converted = cast.apply(meets(conversion));
                &converted[..]
            }
            Some(conversion @ Conversion::Groups(groups)) => {
                converted = groups.apply(meets(conversion), &scales);
                &converted[..]
            }
            None => base,
        };
        if header.subtract && header.grouped && ordered::supports(width) {
            bytes = ordered::decode(&bytes, base, width);
        } else if header.subtract || header.grouped {
            return Err(CodecError::FrameCorrupt("unsupported delta flags"));
        } else {
            delta::xor_in_place(&mut bytes, base);
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
    subtract: bool,
    grouped: bool,
    base: Option<ContentHash>,
    conversion: Option<Conversion>,
    bytes: Vec<u8>,
}

impl Payload {
    fn plain(codec: Codec, width: usize, bytes: Vec<u8>) -> Payload {
        Payload { codec, width: width as u8, rotated: false, subtract: false, grouped: false, base: None, conversion: None, bytes }
    }
}

/// The delta against a base of `base_dtype`: taken as it is for the same dtype, through the
/// conversion that fits for another dtype (for a quantization, the smaller of one scale for the
/// chunk and one per group), `None` when there is none.
fn against_base(raw: &[u8], dtype: Dtype, base: BaseChunk<'_>, base_dtype: Dtype) -> Option<Payload> {
    if base_dtype == dtype {
        return Some(delta_payload(raw, dtype, base));
    }
    let whole = Cast::fitting(base_dtype, dtype, base.bytes, raw)
        .map(|cast| converted_payload(raw, dtype, base.hash, Conversion::Whole(cast), &cast.apply(base.bytes), &[]));
    // An exact conversion needs no other try.
    if whole.as_ref().is_some_and(|payload| payload.bytes.len() <= raw.len() / EXACT_ENOUGH) {
        return whole;
    }
    let groups = Groups::fitting(base_dtype, dtype, base.bytes, raw).map(|(groups, scales)| {
        converted_payload(raw, dtype, base.hash, Conversion::Groups(groups), &groups.apply(base.bytes, &scales), &scales)
    });
    [whole, groups].into_iter().flatten().min_by_key(|payload| payload.bytes.len())
}

/// The delta against a base converted to `converted`, with the groups' scales ahead of it.
fn converted_payload(raw: &[u8], dtype: Dtype, base_hash: ContentHash, conversion: Conversion, converted: &[u8], scales: &[u32]) -> Payload {
    let base = BaseChunk { hash: base_hash, bytes: converted };
    // A cast from a wider precision is usually exact, and its XOR (zeros) decodes at memory
    // speed; a residual over a narrower precision is small only as an ordered difference.
    let narrows = conversion.source().size() > conversion.target().size();
    let mut payload = if narrows { xor_payload(raw, dtype, base) } else { delta_payload(raw, dtype, base) };
    payload.conversion = Some(conversion);
    if let Conversion::Groups(_) = conversion {
        let mut bytes = Vec::with_capacity(payload.bytes.len() + scales.len());
        write_scales(&mut bytes, scales);
        bytes.extend_from_slice(&payload.bytes);
        payload.bytes = bytes;
    }
    payload
}

fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

/// The delta against `base`: ordered difference grouped by exponent for floats, XOR otherwise.
fn delta_payload(raw: &[u8], dtype: Dtype, base: BaseChunk<'_>) -> Payload {
    let width = dtype.size();
    if is_float(dtype) && ordered::supports(width) {
        let planes = ordered::encode(raw, base.bytes, width);
        Payload {
            codec: Codec::Planes,
            width: width as u8,
            rotated: false,
            subtract: true,
            grouped: true,
            base: Some(base.hash),
            conversion: None,
            bytes: compress_planes(&planes, width),
        }
    } else {
        xor_payload(raw, dtype, base)
    }
}

/// The XOR of BitX against `base`, in the layout that suits `dtype`.
fn xor_payload(raw: &[u8], dtype: Dtype, base: BaseChunk<'_>) -> Payload {
    let mut payload = best_of(&delta::xor(raw, base.bytes), dtype, false);
    payload.base = Some(base.hash);
    payload
}

/// The chunk on its own: the best layout of its bytes, or its levels when smaller and allowed.
fn standalone_payload(raw: &[u8], dtype: Dtype, levels_allowed: bool) -> Payload {
    let bytes = best_of(raw, dtype, matches!(dtype, Dtype::BF16 | Dtype::F32));
    match levels_allowed.then(|| levels::encode(raw, dtype)).flatten() {
        Some(levels) if levels.len() < bytes.bytes.len() => Payload::plain(Codec::Levels, dtype.size(), levels),
        _ => bytes,
    }
}

/// Tries the layouts that suit `dtype` and keeps the smallest, falling back to stored.
fn best_of(bytes: &[u8], dtype: Dtype, rotate: bool) -> Payload {
    let width = dtype.size();
    let mut candidates = Vec::with_capacity(2);
    if width > 1 {
        let mut planes = Payload::plain(Codec::Planes, width, encode_planes(bytes, width, rotate));
        planes.rotated = rotate;
        candidates.push(planes);
    }
    if width == 1 || !is_float(dtype) {
        let (mode, compressed) = entropy::compress_plane(bytes);
        if mode == PLANE_ZSTD {
            candidates.push(Payload::plain(Codec::Zstd, width, compressed));
        }
    }
    candidates
        .into_iter()
        .filter(|candidate| candidate.bytes.len() < bytes.len())
        .min_by_key(|candidate| candidate.bytes.len())
        .unwrap_or_else(|| Payload::plain(Codec::Stored, width, bytes.to_vec()))
}

/// Planes payload of `bytes` split into planes (see [`compress_planes`]).
fn encode_planes(bytes: &[u8], width: usize, rotated: bool) -> Vec<u8> {
    compress_planes(&planes::split(bytes, width, rotated), width)
}

/// Planes payload of bytes already split: per plane a mode byte, a u32 length and the
/// compressed plane; then the tail as is.
fn compress_planes(split: &[u8], width: usize) -> Vec<u8> {
    let plane_len = split.len() / width;
    let mut out = Vec::with_capacity(split.len() / 2 + 64);
    if plane_len > 0 {
        for plane in split[..plane_len * width].chunks_exact(plane_len) {
            entropy::write_plane(&mut out, plane);
        }
    }
    out.extend_from_slice(&split[plane_len * width..]);
    out
}

/// Decompresses a planes payload; `join` puts elements back together, else the planes are
/// returned as they are (for the ordered delta, which reads planes directly).
fn decode_planes(payload: &[u8], raw_len: usize, width: usize, rotated: bool, join: bool) -> Result<Vec<u8>> {
    let plane_len = raw_len / width;
    let mut split = vec![0u8; raw_len];
    let mut cursor = 0usize;
    let plane_count = if plane_len == 0 { 0 } else { width };
    for plane in 0..plane_count {
        entropy::read_plane(payload, &mut cursor, &mut split[plane * plane_len..(plane + 1) * plane_len])?;
    }
    let tail = &payload[cursor.min(payload.len())..];
    if tail.len() != raw_len - plane_len * width {
        return Err(CodecError::FrameCorrupt("tail length differs from raw length"));
    }
    split[plane_len * width..].copy_from_slice(tail);
    Ok(if join { planes::join(&split, width, rotated) } else { split })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FIXED_HEADER_LEN;
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
        let delta = encode_chunk(&tuned, Dtype::BF16, Some((base_chunk, Dtype::BF16))).unwrap();
        assert!(delta.len() < base.len() / 5, "delta {} of {}", delta.len(), base.len());
        assert_eq!(decode_frame(&delta, Some(base_chunk)).unwrap(), tuned);
    }

    #[test]
    fn a_cast_costs_next_to_nothing_and_the_wider_tensor_its_residual() {
        let wide: Vec<u8> = (0..262_144u32)
            .flat_map(|i| (0.02f32 * ((i.wrapping_mul(2_654_435_761) % 1000) as f32 / 500.0 - 1.0)).to_le_bytes())
            .collect();
        let wide_chunk = BaseChunk { hash: ContentHash::of(&wide), bytes: &wide };
        for cast in [Cast::F32ToBf16, Cast::F32ToBf16Truncated, Cast::F32ToF16] {
            let narrow = cast.apply(&wide);
            let frame = encode_chunk(&narrow, cast.target(), Some((wide_chunk, Dtype::F32))).unwrap();
            let header = FrameHeader::read(&frame).unwrap();
            assert_eq!(header.conversion, Some(Conversion::Whole(cast)));
            assert!(frame.len() < narrow.len() / 100, "{cast:?}: {} of {}", frame.len(), narrow.len());
            assert_eq!(decode_frame(&frame, Some(wide_chunk)).unwrap(), narrow);
        }
        let narrow = Cast::F32ToBf16.apply(&wide);
        let narrow_chunk = BaseChunk { hash: ContentHash::of(&narrow), bytes: &narrow };
        let residual = encode_chunk(&wide, Dtype::F32, Some((narrow_chunk, Dtype::BF16))).unwrap();
        assert_eq!(FrameHeader::read(&residual).unwrap().conversion, Some(Conversion::Whole(Cast::Bf16ToF32)));
        assert_eq!(decode_frame(&residual, Some(narrow_chunk)).unwrap(), wide);
        // Quantized copies with one scale, found again from the two chunks.
        let bf16_chunk = BaseChunk { hash: narrow_chunk.hash, bytes: &narrow };
        for quantized_to in crate::cast::Narrow::ALL {
            let largest = f32::from_bits(quantized_to.to_f32(quantized_to.from_f32(f32::MAX.to_bits())));
            let cast = Cast::Quantize { wide: Dtype::BF16, narrow: quantized_to, scale: (0.02f32 / largest).to_bits() };
            let quantized = cast.apply(&narrow);
            let frame = encode_chunk(&quantized, quantized_to.dtype(), Some((bf16_chunk, Dtype::BF16))).unwrap();
            assert!(frame.len() < quantized.len() / 50, "{quantized_to:?}: {} of {}", frame.len(), quantized.len());
            assert_eq!(decode_frame(&frame, Some(bf16_chunk)).unwrap(), quantized);
            let quantized_chunk = BaseChunk { hash: ContentHash::of(&quantized), bytes: &quantized };
            let residual = encode_chunk(&narrow, Dtype::BF16, Some((quantized_chunk, quantized_to.dtype()))).unwrap();
            assert!(matches!(FrameHeader::read(&residual).unwrap().conversion, Some(Conversion::Whole(Cast::Dequantize { .. }))));
            assert_eq!(decode_frame(&residual, Some(quantized_chunk)).unwrap(), narrow);
        }
        // Quantized with one scale per group of 128 (per-block checkpoints).
        let scales: Vec<u32> = (0..narrow.len() / 2 / crate::cast::GROUP).map(|g| (0.02f32 / (400.0 + g as f32 % 7.0)).to_bits()).collect();
        let blocks = Groups { narrow: crate::cast::Narrow::F8E4M3, wide: Dtype::BF16, widen: false };
        let quantized = blocks.apply(&narrow, &scales);
        let frame = encode_chunk(&quantized, Dtype::F8E4M3, Some((bf16_chunk, Dtype::BF16))).unwrap();
        assert_eq!(FrameHeader::read(&frame).unwrap().conversion, Some(Conversion::Groups(blocks)));
        assert!(frame.len() < quantized.len() / 50, "blocks: {} of {}", frame.len(), quantized.len());
        assert_eq!(decode_frame(&frame, Some(bf16_chunk)).unwrap(), quantized);
        let unrelated = encode_chunk(&wide, Dtype::F32, Some((narrow_chunk, Dtype::I16))).unwrap();
        assert_eq!(FrameHeader::read(&unrelated).unwrap().base, None);
    }

    #[test]
    fn gguf_blocks_cost_next_to_nothing_beside_their_source() {
        let wide: Vec<u8> = (0..262_144u32)
            .flat_map(|i| (0.02f32 * ((i.wrapping_mul(2_654_435_761) % 1000) as f32 / 500.0 - 1.0)).to_le_bytes())
            .collect();
        let half = Cast::F32ToF16.apply(&wide);
        for blocks in [Dtype::Q8_0, Dtype::Q4_0] {
            let quantized = Cast::QuantizeBlocks { wide: Dtype::F32, blocks }.apply(&wide);
            // Made from the F32 tensor: predicted exactly; beside its F16 cast: nearly.
            for (base, base_dtype, share) in [(&wide, Dtype::F32, 1000), (&half, Dtype::F16, 10)] {
                let chunk = BaseChunk { hash: ContentHash::of(base), bytes: base };
                let frame = encode_chunk(&quantized, blocks, Some((chunk, base_dtype))).unwrap();
                assert_eq!(frame[4], 3);
                assert!(frame.len() < quantized.len() / share, "{blocks:?} beside {base_dtype:?}: {} of {}", frame.len(), quantized.len());
                assert_eq!(decode_frame(&frame, Some(chunk)).unwrap(), quantized);
            }
            // Readers of version 2 do not know the blocks conversion: the chunk is on its own.
            let chunk = BaseChunk { hash: ContentHash::of(&wide), bytes: &wide };
            let older = encode_chunk_as(&quantized, blocks, Some((chunk, Dtype::F32)), FrameFormat::Version2).unwrap();
            assert_eq!((older[4], FrameHeader::read(&older).unwrap().base), (1, None));
        }
    }

    #[test]
    fn compresses_text_and_stores_noise() {
        let text: Vec<u8> = (0..20_000).flat_map(|i: u32| format!("\"token_{}\": {},\n", i % 977, i).into_bytes()).collect();
        let frame = encode_opaque(&text).unwrap();
        assert!(frame.len() < text.len() / 3, "{} of {}", frame.len(), text.len());
        let noise: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let frame = encode_opaque(&noise).unwrap();
        assert_eq!(FrameHeader::read(&frame).unwrap().codec, Codec::Stored);
        assert_eq!(decode_frame(&frame, None).unwrap(), noise);
    }

    #[test]
    fn detects_corruption_and_wrong_base() {
        let base = weights(5000, 1);
        let tuned = weights(5000, 2);
        let base_chunk = BaseChunk { hash: ContentHash::of(&base), bytes: &base };
        let frame = encode_chunk(&tuned, Dtype::BF16, Some((base_chunk, Dtype::BF16))).unwrap();
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

    #[test]
    fn version_1_frames_only_when_asked() {
        let wide: Vec<u8> = (0..4096u32).flat_map(|i| (i as f32 * 1e-3).to_le_bytes()).collect();
        let narrow = Cast::F32ToBf16.apply(&wide);
        let wide_chunk = BaseChunk { hash: ContentHash::of(&wide), bytes: &wide };
        let frame = encode_chunk_as(&narrow, Dtype::BF16, Some((wide_chunk, Dtype::F32)), FrameFormat::Version1).unwrap();
        let header = FrameHeader::read(&frame).unwrap();
        assert!(header.conversion.is_none() && header.base.is_none() && header.codec != Codec::Levels);
        assert_eq!(frame[4], 1);
        assert_eq!(decode_frame(&frame, None).unwrap(), narrow);
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
            let frame = encode_chunk(&raw, dtype, Some((base_chunk, dtype))).unwrap();
            prop_assert_eq!(decode_frame(&frame, Some(base_chunk)).unwrap(), raw);
        }

        #[test]
        fn converted_delta_round_trips(values in proptest::collection::vec(any::<u32>(), 0..500),
                                       flips in proptest::collection::vec(any::<(usize, u16)>(), 0..20),
                                       cast in proptest::sample::select(crate::cast::every_cast()),
                                       specials in any::<bool>()) {
            // The wider or narrower tensor, with NaN payloads, -0, subnormals and infinities.
            let mut values = values;
            if specials {
                for (slot, special) in values.iter_mut().zip([0x7FC0_1234u32, 0x8000_0000, 0x0000_0001, 0x7F80_0000, 0xFF80_0001, 0x0040_0000]) {
                    *slot = special;
                }
            }
            let source: Vec<u8> = match cast.source().size() {
                4 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                2 => values.iter().flat_map(|v| (*v as u16).to_le_bytes()).collect(),
                _ => values.iter().map(|v| *v as u8).collect(),
            };
            let mut raw = cast.apply(&source);
            for (position, bits) in flips {
                if !raw.is_empty() {
                    let len = raw.len();
                    raw[position % len] ^= bits as u8;
                }
            }
            let base_chunk = BaseChunk { hash: ContentHash::of(&source), bytes: &source };
            let frame = encode_chunk(&raw, cast.target(), Some((base_chunk, cast.source()))).unwrap();
            prop_assert_eq!(decode_frame(&frame, Some(base_chunk)).unwrap(), raw);
        }

        #[test]
        fn block_quantized_chunks_round_trip(values in proptest::collection::vec(-1.0f32..1.0, 128..1200),
                                             flips in proptest::collection::vec(any::<(usize, u8)>(), 0..10),
                                             narrow in proptest::sample::select(crate::cast::Narrow::ALL.to_vec())) {
            // One scale per group of 128, as per-block fp8 and int8 checkpoints have.
            let wide: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let scales: Vec<u32> = values.chunks(crate::cast::GROUP).enumerate().map(|(g, _)| (0.001f32 * (g + 1) as f32).to_bits()).collect();
            let mut quantized = Groups { narrow, wide: Dtype::F32, widen: false }.apply(&wide, &scales);
            for (at, bits) in flips {
                let len = quantized.len();
                quantized[at % len] ^= bits;
            }
            let wide_chunk = BaseChunk { hash: ContentHash::of(&wide), bytes: &wide };
            let frame = encode_chunk(&quantized, narrow.dtype(), Some((wide_chunk, Dtype::F32))).unwrap();
            prop_assert_eq!(decode_frame(&frame, Some(wide_chunk)).unwrap(), quantized.clone());
            let quantized_chunk = BaseChunk { hash: ContentHash::of(&quantized), bytes: &quantized };
            let residual = encode_chunk(&wide, Dtype::F32, Some((quantized_chunk, narrow.dtype()))).unwrap();
            prop_assert_eq!(decode_frame(&residual, Some(quantized_chunk)).unwrap(), wide);
        }

        #[test]
        fn opaque_round_trips(raw in proptest::collection::vec(any::<u8>(), 0..2000), repeat in 1usize..4) {
            let raw = raw.repeat(repeat);
            let frame = encode_opaque(&raw).unwrap();
            prop_assert!(frame.len() <= raw.len() + FIXED_HEADER_LEN);
            prop_assert_eq!(decode_frame(&frame, None).unwrap(), raw);
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
