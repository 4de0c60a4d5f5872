//! The safetensors layout: an 8-byte little-endian header length, a JSON header, then the data
//! section. Parsing checks every promise the header makes and never panics on hostile input.
//!
//! The JSON header is read by serde visitors straight into the tensor list, never into a
//! `serde_json::Value`, which costs ten to twenty-five times the header (issue 12: 111 MB of
//! heap for a 10 MB header of 100,000 tensors). Keys are borrowed from the header while they are
//! compared, a tensor's fields land in a fixed-size record, a shape is gathered on the stack and
//! allocated once, values the parser ignores are read (so checked as JSON, as before) and
//! dropped, and refused tensors are not kept: the first read keeps the accepted ones, and only
//! when some entry was refused does a second read find the key to name in the error.
//!
//! What parsing a header of H bytes allocates at its peak is thus the `Layout` it returns plus a
//! `usize` per tensor: 1.23 × H for that 10 MB header (`tests/header_memory.rs` holds it under
//! 2 × H). For hostile headers the `Layout` is the bound: the tensor list takes 72 bytes per
//! shortest tensor entry of 49 bytes (1.5 × H); a shape 8 bytes per dimension of at least 2 bytes
//! (4 × H, 8 × H while the `Vec` of a shape of millions of dimensions grows); the metadata map a
//! B-tree entry per key (9 × H for a map of 200,000 tiny keys of empty strings).

use std::collections::BTreeMap;


use crate::dtype::Dtype;
use crate::error::{CodecError, Result};

#[macro_use]
mod entries;
#[cfg(test)]
pub(crate) mod tests;
mod visitors;

use entries::{count_entries, first_refusal, keep_only, latest_by_name, read_entries, Entry, METADATA_KEY, MIN_TENSOR_ENTRY_LEN};

/// Headers over this size are rejected, as the safetensors spec does.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Bytes before the JSON header: its length as a little-endian u64.
pub const PREFIX_LEN: usize = 8;

/// One tensor of the header; `start` and `end` are offsets into the data section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub start: u64,
    pub end: u64,
}

impl TensorInfo {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The dtype and shape as one string, `DTYPE:d0xd1x...` (`F32:` for a scalar): a tensor is
    /// a delta candidate only for tensors of the same signature (docs/format.md, the index).
    pub fn signature(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(u64::to_string).collect();
        format!("{}:{}", self.dtype.name(), dims.join("x"))
    }
}

/// The parsed header of a model with a header (safetensors, or GGUF: see `formats`). Tensors are sorted by their start offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// File offset where the data section begins: the header (safetensors: the 8-byte length
    /// and the JSON) is every byte before it.
    pub data_start: u64,
    pub tensors: Vec<TensorInfo>,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// A run of the data section: a tensor's bytes, or bytes no tensor claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    Tensor(usize),
    Gap,
}

/// A contiguous piece of the data section, in data-section offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub kind: RegionKind,
}

impl Layout {
    /// Data-section offset just past the last tensor.
    pub fn data_end(&self) -> u64 {
        self.tensors.iter().map(|t| t.end).max().unwrap_or(0)
    }

    /// The data section up to [`Layout::data_end`] as tensors and the gaps between them, in order.
    pub fn regions(&self) -> Vec<Region> {
        let mut regions = Vec::with_capacity(self.tensors.len() * 2);
        let mut cursor = 0;
        for (index, tensor) in self.tensors.iter().enumerate() {
            if tensor.is_empty() {
                continue;
            }
            if tensor.start > cursor {
                regions.push(Region { start: cursor, end: tensor.start, kind: RegionKind::Gap });
            }
            regions.push(Region { start: tensor.start, end: tensor.end, kind: RegionKind::Tensor(index) });
            cursor = tensor.end;
        }
        regions
    }
}

/// Reads the header length from the first 8 bytes of a file, refusing lengths over the limit.
pub fn read_header_len(prefix: &[u8]) -> Result<u64> {
    let bytes: [u8; PREFIX_LEN] = prefix
        .get(..PREFIX_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(CodecError::TooShort)?;
    let header_len = u64::from_le_bytes(bytes);
    if header_len > MAX_HEADER_LEN {
        return Err(CodecError::HeaderTooLarge(header_len, MAX_HEADER_LEN));
    }
    Ok(header_len)
}

/// Parses a whole file held in memory.
pub fn parse_file(file: &[u8]) -> Result<Layout> {
    let header_len = read_header_len(file)?;
    let header_end = (PREFIX_LEN as u64)
        .checked_add(header_len)
        .filter(|end| *end <= file.len() as u64)
        .ok_or(CodecError::HeaderPastEnd { header_len, file_len: file.len() as u64 })?;
    let data_len = file.len() as u64 - header_end;
    parse_header(&file[PREFIX_LEN..header_end as usize], Some(data_len))
}

/// Parses the JSON header. `data_len`, when known, is the size of the data section; every
/// tensor must then end within it.
///
/// The header is read by serde visitors straight into the tensor list (see the module comment):
/// peak memory is the `Layout` it returns plus a few bytes per tensor, never a tree of the JSON.
/// A key given twice counts once, with its last value, as in any JSON map. When several tensors
/// are refused, the error names the first refused key in sorted order.
pub fn parse_header(header: &[u8], data_len: Option<u64>) -> Result<Layout> {
    let capacity = count_entries(header).min(header.len() / MIN_TENSOR_ENTRY_LEN);
    let mut tensors = Vec::with_capacity(capacity);
    let mut metadata = None;
    let mut refused_any = false;
    read_entries(header, true, |entry| match entry {
        Entry::Metadata(outcome) => metadata = Some(outcome),
        Entry::Tensor(name, Ok(parts)) => tensors.push(parts.named(name.into_owned())),
        Entry::Tensor(_, Err(_)) => refused_any = true,
    })?;
    let latest = latest_by_name(&tensors);
    let refusal = if refused_any { first_refusal(header, &tensors, &latest)? } else { None };
    let metadata = match (metadata, refusal) {
        (Some(Err(message)), refusal)
            if refusal.as_ref().is_none_or(|(name, _)| METADATA_KEY < name.as_str()) =>
        {
            return Err(CodecError::BadJson(message));
        }
        (_, Some((name, reason))) => return Err(CodecError::BadTensor { name, reason: reason.to_owned() }),
        (metadata, None) => metadata.transpose().map_err(CodecError::BadJson)?,
    };
    keep_only(&mut tensors, latest);
    tensors.sort_unstable_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
    check_no_overlap(&tensors)?;
    if let Some(data_len) = data_len {
        if let Some(tensor) = tensors.iter().find(|t| t.end > data_len) {
            return Err(CodecError::SpanPastEnd { name: tensor.name.clone(), end: tensor.end, data_len });
        }
    }
    Ok(Layout { data_start: (PREFIX_LEN + header.len()) as u64, tensors, metadata })
}

/// Tensors must be sorted by start; empty tensors claim no bytes and never overlap.
pub(crate) fn check_no_overlap(tensors: &[TensorInfo]) -> Result<()> {
    let mut previous: Option<&TensorInfo> = None;
    for tensor in tensors.iter().filter(|t| !t.is_empty()) {
        if let Some(previous) = previous.filter(|p| p.end > tensor.start) {
            return Err(CodecError::Overlap { first: previous.name.clone(), second: tensor.name.clone() });
        }
        previous = Some(tensor);
    }
    Ok(())
}
