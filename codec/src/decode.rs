//! Decoding a frame: its payload, then its base added back, then its checksum checked.
//!
//! The result is written into a buffer the caller gives, so that a caller that decodes many
//! chunks (the gateway) can hand the same buffers round rather than take fresh pages from the
//! kernel for each; the planes a decode reads once go through this thread's [`scratch`].

use crate::cast::{group_count, read_scales, Conversion};
use crate::delta;
use crate::encode::BaseChunk;
use crate::entropy;
use crate::error::{CodecError, Result};
use crate::frame::{Codec, FrameHeader};
use crate::hash::ContentHash;
use crate::levels;
use crate::ordered;
use crate::planes;
use crate::scratch;

/// Decodes a frame, checking its lengths, its base and the checksum of the result.
pub fn decode_frame(frame: &[u8], base: Option<BaseChunk<'_>>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    decode_frame_into(frame, base, &mut out)?;
    Ok(out)
}

/// [`decode_frame`] into `out`, whose bytes it replaces (its capacity is reused). On an error
/// `out` holds no meaningful bytes, and may have lost its capacity.
pub fn decode_frame_into(frame: &[u8], base: Option<BaseChunk<'_>>, out: &mut Vec<u8>) -> Result<()> {
    let header = decode_unchecked(frame, base, out)?;
    if ContentHash::of(out) != header.checksum {
        return Err(CodecError::ChecksumMismatch);
    }
    Ok(())
}

/// [`decode_frame_into`] without checking the result against the frame's checksum: only for a
/// chunk used as the base of deltas that each check their own result. A delta reading wrong
/// base bytes gives a wrong result, which that check refuses, so the bytes served stay
/// checked; the base's own check is a BLAKE3 pass over it that those reads then spare.
pub fn decode_frame_unchecked_into(frame: &[u8], base: Option<BaseChunk<'_>>, out: &mut Vec<u8>) -> Result<()> {
    decode_unchecked(frame, base, out).map(|_| ())
}

/// Decodes a frame into `out`, checking its lengths and its base; returns its header, whose
/// checksum the result is still to be checked against.
fn decode_unchecked(frame: &[u8], base: Option<BaseChunk<'_>>, out: &mut Vec<u8>) -> Result<FrameHeader> {
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
    // Stored runs come next, ahead of the planes.
    let (runs, payload) = if header.runs {
        let (runs, used) = ordered::runs::read(payload)?;
        (Some(runs), &payload[used..])
    } else {
        (None, payload)
    };
    // An ordered delta's payload is planes the transform reads into `out`; anything else
    // decodes into `out`'s buffer and, for a delta, has its base XORed in there.
    let ordered_delta = header.base.is_some() && header.subtract && header.grouped && ordered::supports(width);
    // (With room past the planes for the ordered delta's reads: taken now, the planes payload
    // decoded into it is not copied to make room.)
    let mut decoded = if ordered_delta { scratch::take(raw_len + ordered::PLANES_ROOM) } else { std::mem::take(out) };
    let join = !(header.subtract && header.codec == Codec::Planes);
    decode_payload(&header, payload, raw_len, join, &mut decoded)?;
    if decoded.len() != raw_len {
        return Err(CodecError::FrameCorrupt("decoded length differs from raw length"));
    }
    match header.base {
        None => *out = decoded,
        Some(wanted) => {
            let base = match base {
                Some(base) if base.hash == wanted => base.bytes,
                _ => return Err(CodecError::BaseMismatch(wanted.to_hex())),
            };
            let base = match header.window {
                Some(window) => window.of(base).ok_or(CodecError::FrameCorrupt("base window past the end of the base"))?,
                None => base,
            };
            // Only the base elements the chunk's bytes meet are converted: a crafted frame with
            // a short R cannot make a long base be widened whole.
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
            if ordered_delta {
                decoded.resize(raw_len + ordered::PLANES_ROOM, 0);
                let transformed = ordered::decode_into(&decoded, base, width, runs.as_ref(), out);
                scratch::give_back(decoded);
                transformed?;
            } else if header.subtract || header.grouped {
                return Err(CodecError::FrameCorrupt("unsupported delta flags"));
            } else {
                delta::xor_in_place(&mut decoded, base);
                *out = decoded;
            }
        }
    }
    Ok(header)
}

/// Decodes the codec's payload into `into` (replacing its bytes); planes are joined into
/// elements when `join`, else left as planes (for the ordered delta, which reads them).
fn decode_payload(header: &FrameHeader, payload: &[u8], raw_len: usize, join: bool, into: &mut Vec<u8>) -> Result<()> {
    let width = header.width as usize;
    match header.codec {
        Codec::Stored => {
            into.clear();
            into.extend_from_slice(payload);
        }
        Codec::Zstd => entropy::decompress_into_vec(payload, raw_len, into)?,
        Codec::Planes if join => {
            let mut split = scratch::take(raw_len);
            let read = read_planes(payload, raw_len, width, &mut split);
            if read.is_ok() {
                planes::join_into(&split, width, header.rotated, into);
            }
            scratch::give_back(split);
            read?;
        }
        Codec::Planes => read_planes(payload, raw_len, width, into)?,
        Codec::Levels => *into = levels::decode(payload, raw_len, width)?,
    }
    Ok(())
}

/// Decompresses a planes payload of `raw_len` bytes into `into` (replacing its bytes): each
/// plane, then the tail of bytes past the last whole element.
fn read_planes(payload: &[u8], raw_len: usize, width: usize, into: &mut Vec<u8>) -> Result<()> {
    let plane_len = raw_len / width;
    // Every byte is written below: of a reused buffer only the bytes past its length are
    // zeroed first (none, for this thread's scratch buffer after a chunk of the same size).
    into.resize(raw_len, 0);
    let mut cursor = 0usize;
    let plane_count = if plane_len == 0 { 0 } else { width };
    for plane in 0..plane_count {
        entropy::read_plane(payload, &mut cursor, &mut into[plane * plane_len..(plane + 1) * plane_len])?;
    }
    let tail = &payload[cursor.min(payload.len())..];
    if tail.len() != raw_len - plane_len * width {
        return Err(CodecError::FrameCorrupt("tail length differs from raw length"));
    }
    into[plane_len * width..].copy_from_slice(tail);
    Ok(())
}
