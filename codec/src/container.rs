//! A packed file: a whole safetensors file as its header followed by frames, for the command
//! line (`tensorgate pack` / `unpack`) and for checking the codec on one's own models.
//!
//! ```text
//! 0   4  magic "TGPK"
//! 4   1  version (1)
//! 5   8  length H of the original prefix and JSON header, u64 little-endian
//! 13  H  the original first H bytes
//! ..     frames (see `frame`), one per chunk, in file order; each frame gives its own length
//! ```
//! Chunks are cut as the gateway cuts them: each tensor and each gap between tensors from its
//! start in pieces of [`chunk_size`] (by dtype), then the bytes after the last tensor.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::chunk::{chunk_ranges, chunk_size};
use crate::dtype::Dtype;
use crate::decode::decode_frame;
use crate::encode::{encode_chunk, BaseChunk};
use crate::error::{CodecError, Result};
use crate::frame::FrameHeader;
use crate::hash::ContentHash;
use crate::layout::{parse_file, Layout, RegionKind};

pub const MAGIC: [u8; 4] = *b"TGPK";
pub const VERSION: u8 = 1;
const PREAMBLE_LEN: usize = 13;

/// One chunk of a file: its byte range in the file, dtype, and (tensor index, chunk index)
/// when it belongs to a tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChunk {
    pub start: usize,
    pub end: usize,
    pub dtype: Dtype,
    pub tensor: Option<(usize, usize)>,
}

/// Cuts a parsed file of `file_len` bytes into chunks.
pub fn plan_chunks(layout: &Layout, file_len: usize) -> Vec<PlannedChunk> {
    let data_start = layout.data_start as usize;
    let mut chunks = Vec::new();
    let mut cut = |start: usize, end: usize, dtype: Dtype, tensor: Option<usize>| {
        for (index, range) in chunk_ranges(end - start, chunk_size(dtype, Some((end - start) as u64))).enumerate() {
            let tensor = tensor.map(|t| (t, index));
            chunks.push(PlannedChunk { start: start + range.start, end: start + range.end, dtype, tensor });
        }
    };
    for region in layout.regions() {
        let (start, end) = (data_start + region.start as usize, data_start + region.end as usize);
        match region.kind {
            RegionKind::Tensor(index) => cut(start, end, layout.tensors[index].dtype, Some(index)),
            RegionKind::Gap => cut(start, end, Dtype::U8, None),
        }
    }
    let data_end = data_start + layout.data_end() as usize;
    if file_len > data_end {
        cut(data_end, file_len, Dtype::U8, None);
    }
    chunks
}

/// Chunks of `base` by (tensor name, dtype, shape, chunk index): the delta candidates.
fn base_chunks(base: &[u8]) -> Result<HashMap<(String, Dtype, Vec<u64>, usize), &[u8]>> {
    let layout = parse_file(base)?;
    Ok(plan_chunks(&layout, base.len())
        .into_iter()
        .filter_map(|chunk| {
            let (tensor, index) = chunk.tensor?;
            let info = &layout.tensors[tensor];
            Some(((info.name.clone(), info.dtype, info.shape.clone(), index), &base[chunk.start..chunk.end]))
        })
        .collect())
}

/// Packs a safetensors file, as deltas against the same-named tensors of `base` where given.
pub fn pack(file: &[u8], base: Option<&[u8]>) -> Result<Vec<u8>> {
    let layout = parse_file(file)?;
    let bases = base.map(base_chunks).transpose()?.unwrap_or_default();
    let chunks = plan_chunks(&layout, file.len());
    let frames: Vec<Result<Vec<u8>>> = chunks
        .par_iter()
        .map(|chunk| {
            let candidate = chunk.tensor.and_then(|(tensor, index)| {
                let info = &layout.tensors[tensor];
                bases.get(&(info.name.clone(), info.dtype, info.shape.clone(), index))
            });
            let base = candidate.map(|bytes| BaseChunk { hash: ContentHash::of(bytes), bytes });
            encode_chunk(&file[chunk.start..chunk.end], chunk.dtype, base.map(|base| (base, chunk.dtype)))
        })
        .collect();
    let header_len = layout.data_start as usize;
    let mut out = Vec::with_capacity(file.len() / 2);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(header_len as u64).to_le_bytes());
    out.extend_from_slice(&file[..header_len]);
    for frame in frames {
        out.extend_from_slice(&frame?);
    }
    Ok(out)
}

/// Rebuilds the original file from a packed one (and the base it was packed against).
pub fn unpack(packed: &[u8], base: Option<&[u8]>) -> Result<Vec<u8>> {
    let preamble = packed.get(..PREAMBLE_LEN).ok_or(CodecError::FrameTruncated)?;
    if preamble[..4] != MAGIC {
        return Err(CodecError::FrameMagic);
    }
    if preamble[4] != VERSION {
        return Err(CodecError::FrameVersion(preamble[4]));
    }
    let header_len = u64::from_le_bytes(preamble[5..13].try_into().map_err(|_| CodecError::FrameTruncated)?);
    let header_end = usize::try_from(header_len)
        .ok()
        .and_then(|len| PREAMBLE_LEN.checked_add(len))
        .filter(|end| *end <= packed.len())
        .ok_or(CodecError::FrameTruncated)?;
    let mut frames = Vec::new();
    let mut cursor = header_end;
    while cursor < packed.len() {
        let length = FrameHeader::read(&packed[cursor..])?.frame_len();
        frames.push(packed.get(cursor..cursor + length).ok_or(CodecError::FrameTruncated)?);
        cursor += length;
    }
    let bases: HashMap<ContentHash, &[u8]> = match base {
        Some(base) => base_chunks(base)?.into_values().map(|bytes| (ContentHash::of(bytes), bytes)).collect(),
        None => HashMap::new(),
    };
    let decoded: Vec<Result<Vec<u8>>> = frames
        .par_iter()
        .map(|frame| {
            let header = FrameHeader::read(frame)?;
            let base = match header.base {
                Some(hash) => {
                    let bytes = bases.get(&hash).ok_or_else(|| CodecError::BaseMismatch(hash.to_hex()))?;
                    Some(BaseChunk { hash, bytes })
                }
                None => None,
            };
            decode_frame(frame, base)
        })
        .collect();
    let mut out = packed[PREAMBLE_LEN..header_end].to_vec();
    for chunk in decoded {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(values: &[f32]) -> Vec<u8> {
        let data: Vec<u8> = values.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect();
        let header = format!(
            r#"{{"w":{{"dtype":"BF16","shape":[{}],"data_offsets":[0,{}]}}}}"#,
            values.len(),
            data.len()
        );
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header.as_bytes());
        file.extend_from_slice(&data);
        file.extend_from_slice(b"trailing bytes");
        file
    }

    #[test]
    fn packs_and_unpacks_with_and_without_a_base() {
        let base_values: Vec<f32> = (0..50_000).map(|i| ((i * 7919) % 1000) as f32 / 1e4).collect();
        let tuned_values: Vec<f32> = base_values.iter().map(|v| v * 1.001).collect();
        let base = model(&base_values);
        let tuned = model(&tuned_values);
        let alone = pack(&tuned, None).unwrap();
        assert_eq!(unpack(&alone, None).unwrap(), tuned);
        let delta = pack(&tuned, Some(&base)).unwrap();
        assert!(delta.len() < alone.len(), "delta {} vs standalone {}", delta.len(), alone.len());
        assert_eq!(unpack(&delta, Some(&base)).unwrap(), tuned);
        assert!(unpack(&delta, None).is_err(), "a delta needs its base");
        assert!(unpack(&delta[..delta.len() - 3], Some(&base)).is_err());
    }
}
