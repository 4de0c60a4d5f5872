//! Chunk encoding: an optional delta against a base chunk, then byte planes or plain zstd,
//! keeping whichever candidate is smallest, and the exact inverse.
//!
//! Floats against a base take an ordered-integer difference, grouped by the base's exponent;
//! other dtypes against a base take the XOR of BitX. On their own, floats are rotated so the
//! exponent is a byte of its own, split into planes and entropy-coded plane by plane.

use crate::cast::{write_scales, Cast, Conversion, Groups};
use crate::delta;
use crate::dtype::Dtype;
use crate::entropy;
use crate::error::{CodecError, Result};
use crate::frame::{BaseWindow, Codec, FrameHeader, MAX_RAW_LEN};
use crate::hash::ContentHash;
use crate::levels;
use crate::ordered;
use crate::planes;
use crate::scratch;

/// A delta keeps its encoding without trying standalone when it is at most this share of raw.
const DELTA_GOOD_ENOUGH: f64 = 0.6;

/// A delta against a base converted whole that is at most 1/64 of raw is taken without trying
/// the conversion in groups.
const EXACT_ENOUGH: usize = 64;

/// An ordered delta of at least this many elements stores its runs (frame version 5), which
/// spares its decoder counting them: a record of a few dozen bytes for weights (up to a few
/// hundred when the base spans many exponents), next to which a smaller chunk's count is cheap.
const RUNS_STORED_FROM: usize = 1 << 14;

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
    /// Every frame this codec reads: versions 2 (converted bases), 3 (GGUF blocks predicted
    /// from a wider base), 4 (windows of a base chunk) and 5 (stored runs) and codec 3 (levels)
    /// included.
    Current,
    /// Only what readers from before version 5 read, for an upstream that such gateways still
    /// share.
    Version4,
    /// Only what readers from before version 4 read, for an upstream that such gateways still
    /// share.
    Version3,
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
            FrameFormat::Current | FrameFormat::Version4 | FrameFormat::Version3 => true,
            FrameFormat::Version2 => !dtype.is_blocks(),
            FrameFormat::Version1 => false,
        }
    }

    /// Whether a delta may be taken against a window of a base chunk (version 4).
    pub fn windows(self) -> bool {
        matches!(self, FrameFormat::Current | FrameFormat::Version4)
    }

    /// Whether an ordered delta may store its runs (version 5).
    fn stores_runs(self) -> bool {
        self == FrameFormat::Current
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
    let raw_len = checked_raw_len(raw)?;
    Ok(frame_of(best_payload(raw, dtype, base, format), raw, raw_len))
}

/// [`encode_chunk_as`] against the bytes `window` of the base chunk rather than all of it: the
/// frame names the window (version 4), and its decoder is handed the whole base chunk. A
/// window that is the whole chunk is not named; one that runs past the chunk's end, or a format
/// without windows, leaves the chunk on its own.
pub fn encode_chunk_in_window(
    raw: &[u8],
    dtype: Dtype,
    (base, base_dtype): (BaseChunk<'_>, Dtype),
    window: BaseWindow,
    format: FrameFormat,
) -> Result<Vec<u8>> {
    let raw_len = checked_raw_len(raw)?;
    let whole = window.start == 0 && window.len as usize == base.bytes.len();
    let windowed = window.of(base.bytes).filter(|_| whole || format.windows());
    let payload = match windowed {
        Some(bytes) => {
            let mut payload = best_payload(raw, dtype, Some((BaseChunk { hash: base.hash, bytes }, base_dtype)), format);
            if payload.base.is_some() && !whole {
                payload.window = Some(window);
            }
            payload
        }
        None => best_payload(raw, dtype, None, format),
    };
    Ok(frame_of(payload, raw, raw_len))
}

/// The raw length a frame declares, if `raw` fits in a frame.
fn checked_raw_len(raw: &[u8]) -> Result<u32> {
    u32::try_from(raw.len())
        .ok()
        .filter(|len| *len <= MAX_RAW_LEN)
        .ok_or(CodecError::ChunkTooLarge(raw.len()))
}

/// The smallest payload of `raw`: its delta against `base` when that is good enough or smaller
/// than the chunk on its own.
fn best_payload(raw: &[u8], dtype: Dtype, base: Option<(BaseChunk<'_>, Dtype)>, format: FrameFormat) -> Payload {
    let levels_allowed = format != FrameFormat::Version1;
    let base = base.filter(|(_, base_dtype)| *base_dtype == dtype || format.converts_to(dtype));
    match base.and_then(|(base, base_dtype)| against_base(raw, dtype, base, base_dtype, format)) {
        Some(delta) => {
            if (delta.bytes.len() as f64) <= DELTA_GOOD_ENOUGH * raw.len() as f64 {
                delta
            } else {
                let own = standalone_payload(raw, dtype, levels_allowed);
                smaller(delta, own)
            }
        }
        None => standalone_payload(raw, dtype, levels_allowed),
    }
}

/// The frame of `payload`, which encodes `raw`.
fn frame_of(payload: Payload, raw: &[u8], raw_len: u32) -> Vec<u8> {
    let header = FrameHeader {
        codec: payload.codec,
        width: payload.width,
        rotated: payload.rotated,
        subtract: payload.subtract,
        grouped: payload.grouped,
        runs: payload.runs,
        raw_len,
        payload_len: payload.bytes.len() as u32,
        checksum: ContentHash::of(raw),
        base: payload.base,
        window: payload.window,
        conversion: payload.conversion,
    };
    let mut frame = Vec::with_capacity(header.frame_len());
    header.write(&mut frame);
    frame.extend_from_slice(&payload.bytes);
    scratch::give_back(payload.bytes);
    frame
}

/// Encodes one chunk of bytes of no known layout as a frame: zstd when it pays, else stored.
pub fn encode_opaque(raw: &[u8]) -> Result<Vec<u8>> {
    let raw_len = checked_raw_len(raw)?;
    let payload = match entropy::compress_opaque(raw) {
        Some(compressed) => Payload::plain(Codec::Zstd, 1, compressed),
        None => Payload::stored(1, raw),
    };
    Ok(frame_of(payload, raw, raw_len))
}

/// One candidate encoding of a chunk.
struct Payload {
    codec: Codec,
    width: u8,
    rotated: bool,
    subtract: bool,
    grouped: bool,
    runs: bool,
    base: Option<ContentHash>,
    window: Option<BaseWindow>,
    conversion: Option<Conversion>,
    bytes: Vec<u8>,
}

impl Payload {
    fn plain(codec: Codec, width: usize, bytes: Vec<u8>) -> Payload {
        Payload { codec, width: width as u8, rotated: false, subtract: false, grouped: false, runs: false, base: None, window: None, conversion: None, bytes }
    }

    /// The bytes as they are, in a buffer of this thread's scratch.
    fn stored(width: usize, bytes: &[u8]) -> Payload {
        let mut copy = scratch::take_empty(bytes.len());
        copy.extend_from_slice(bytes);
        Payload::plain(Codec::Stored, width, copy)
    }
}

/// The smaller of two payloads (`first` of equals); the other's buffer goes back to this
/// thread's scratch, as every payload's does once its frame is written.
fn smaller(first: Payload, second: Payload) -> Payload {
    if second.bytes.len() < first.bytes.len() {
        scratch::give_back(first.bytes);
        second
    } else {
        scratch::give_back(second.bytes);
        first
    }
}

/// The smallest of `candidates` (the first of equals), as [`smaller`].
fn smallest(candidates: impl IntoIterator<Item = Payload>) -> Option<Payload> {
    let mut best: Option<Payload> = None;
    for candidate in candidates {
        match best {
            Some(ref kept) if kept.bytes.len() <= candidate.bytes.len() => scratch::give_back(candidate.bytes),
            _ => {
                if let Some(beaten) = best.replace(candidate) {
                    scratch::give_back(beaten.bytes);
                }
            }
        }
    }
    best
}

/// The delta against a base of `base_dtype`: taken as it is for the same dtype, through the
/// conversion that fits for another dtype (for a quantization, the smaller of one scale for the
/// chunk and one per group), `None` when there is none.
fn against_base(raw: &[u8], dtype: Dtype, base: BaseChunk<'_>, base_dtype: Dtype, format: FrameFormat) -> Option<Payload> {
    if base_dtype == dtype {
        return Some(delta_payload(raw, dtype, base, format));
    }
    let whole = Cast::fitting(base_dtype, dtype, base.bytes, raw)
        .map(|cast| converted_payload(raw, dtype, base.hash, Conversion::Whole(cast), &cast.apply(base.bytes), &[], format));
    // An exact conversion needs no other try.
    if whole.as_ref().is_some_and(|payload| payload.bytes.len() <= raw.len() / EXACT_ENOUGH) {
        return whole;
    }
    let groups = Groups::fitting(base_dtype, dtype, base.bytes, raw).map(|(groups, scales)| {
        converted_payload(raw, dtype, base.hash, Conversion::Groups(groups), &groups.apply(base.bytes, &scales), &scales, format)
    });
    smallest([whole, groups].into_iter().flatten())
}

/// The delta against a base converted to `converted`, with the groups' scales ahead of it.
fn converted_payload(raw: &[u8], dtype: Dtype, base_hash: ContentHash, conversion: Conversion, converted: &[u8], scales: &[u32], format: FrameFormat) -> Payload {
    let base = BaseChunk { hash: base_hash, bytes: converted };
    // A cast from a wider precision is usually exact, and its XOR (zeros) decodes at memory
    // speed; a residual over a narrower precision, and a fine-tune over a cast of its wider
    // base, are small as an ordered difference (a BF16 fine-tune over its F32 base: 15-20%
    // smaller than the XOR).
    let narrows = conversion.source().size() > conversion.target().size();
    let mut payload = if narrows {
        let xor = xor_payload(raw, dtype, base);
        let exact = xor.bytes.len() <= raw.len() / EXACT_ENOUGH;
        let ordered = (!exact && is_float(dtype)).then(|| delta_payload(raw, dtype, base, format));
        match ordered {
            Some(ordered) => smaller(xor, ordered),
            None => xor,
        }
    } else {
        delta_payload(raw, dtype, base, format)
    };
    payload.conversion = Some(conversion);
    if let Conversion::Groups(_) = conversion {
        let mut bytes = scratch::take_empty(payload.bytes.len() + scales.len() * 4);
        write_scales(&mut bytes, scales);
        bytes.extend_from_slice(&payload.bytes);
        scratch::give_back(std::mem::replace(&mut payload.bytes, bytes));
    }
    payload
}

fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

/// The delta against `base`: ordered difference grouped by exponent for floats (its runs
/// first when `format` has them and the chunk is large enough), XOR otherwise.
fn delta_payload(raw: &[u8], dtype: Dtype, base: BaseChunk<'_>, format: FrameFormat) -> Payload {
    let width = dtype.size();
    if is_float(dtype) && ordered::supports(width) {
        let mut planes = scratch::take(raw.len());
        let runs = ordered::encode_into(raw, base.bytes, width, &mut planes);
        let large = raw.len().min(base.bytes.len()) / width >= RUNS_STORED_FROM;
        let mut bytes = scratch::take_empty(ordered::runs::MAX_RECORD_LEN + planes.len() + width * 5);
        if format.stores_runs() && large {
            ordered::runs::write(&runs, &mut bytes);
            // The record is the one new thing a version-5 frame holds beside the transform:
            // kept only when it reads back as the runs the planes were laid out by.
            if ordered::runs::read(&bytes) != Ok((runs, bytes.len())) {
                bytes.clear();
            }
        }
        let stores_runs = !bytes.is_empty();
        compress_planes_into(&planes, width, &mut bytes);
        scratch::give_back(planes);
        Payload {
            codec: Codec::Planes,
            width: width as u8,
            rotated: false,
            subtract: true,
            grouped: true,
            runs: stores_runs,
            base: Some(base.hash),
            window: None,
            conversion: None,
            bytes,
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
        Some(levels) => smaller(bytes, Payload::plain(Codec::Levels, dtype.size(), levels)),
        None => bytes,
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
        if let Some(compressed) = entropy::compressed_plane(bytes) {
            candidates.push(Payload::plain(Codec::Zstd, width, compressed));
        }
    }
    match smallest(candidates) {
        Some(best) if best.bytes.len() < bytes.len() => best,
        other => {
            if let Some(payload) = other {
                scratch::give_back(payload.bytes);
            }
            Payload::stored(width, bytes)
        }
    }
}

/// Planes payload of `bytes` split into planes (see [`compress_planes`]).
fn encode_planes(bytes: &[u8], width: usize, rotated: bool) -> Vec<u8> {
    let mut split = scratch::take(bytes.len());
    planes::split_into(bytes, width, rotated, &mut split);
    let payload = compress_planes(&split, width);
    scratch::give_back(split);
    payload
}

/// Planes payload of bytes already split: per plane a mode byte, a u32 length and the
/// compressed plane; then the tail as is.
fn compress_planes(split: &[u8], width: usize) -> Vec<u8> {
    let mut out = scratch::take_empty(split.len() + width * 5);
    compress_planes_into(split, width, &mut out);
    out
}

/// [`compress_planes`] appended to `out`.
fn compress_planes_into(split: &[u8], width: usize, out: &mut Vec<u8>) {
    let plane_len = split.len() / width;
    // Room for every plane stored as it is, so that the payload is never moved as it grows.
    out.reserve_exact(split.len() + width * 5);
    if plane_len > 0 {
        for plane in split[..plane_len * width].chunks_exact(plane_len) {
            entropy::write_plane(out, plane);
        }
    }
    out.extend_from_slice(&split[plane_len * width..]);
}

#[cfg(test)]
mod tests;
