//! The safetensors layout: an 8-byte little-endian header length, a JSON header, then the data
//! section. Parsing checks every promise the header makes and never panics on hostile input.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::dtype::Dtype;
use crate::error::{CodecError, Result};

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
}

/// The parsed header of a safetensors file. Tensors are sorted by their start offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub header_len: u64,
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
    /// File offset where the data section begins.
    pub fn data_start(&self) -> u64 {
        PREFIX_LEN as u64 + self.header_len
    }

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
pub fn parse_header(header: &[u8], data_len: Option<u64>) -> Result<Layout> {
    let json: serde_json::Map<String, Value> =
        serde_json::from_slice(header).map_err(|error| CodecError::BadJson(error.to_string()))?;
    let mut tensors = Vec::with_capacity(json.len());
    let mut metadata = None;
    for (name, value) in json {
        if name == "__metadata__" {
            metadata = Some(parse_metadata(value)?);
        } else {
            tensors.push(parse_tensor(name, &value)?);
        }
    }
    tensors.sort_by_key(|a| (a.start, a.end));
    check_no_overlap(&tensors)?;
    if let Some(data_len) = data_len {
        if let Some(tensor) = tensors.iter().find(|t| t.end > data_len) {
            return Err(CodecError::SpanPastEnd { name: tensor.name.clone(), end: tensor.end, data_len });
        }
    }
    Ok(Layout { header_len: header.len() as u64, tensors, metadata })
}

fn parse_metadata(value: Value) -> Result<BTreeMap<String, String>> {
    let Value::Object(map) = value else {
        return Err(CodecError::BadJson("__metadata__ is not an object".into()));
    };
    map.into_iter()
        .map(|(key, value)| match value {
            Value::String(text) => Ok((key, text)),
            _ => Err(CodecError::BadJson(format!("__metadata__ value of {key:?} is not a string"))),
        })
        .collect()
}

fn parse_tensor(name: String, value: &Value) -> Result<TensorInfo> {
    let bad = |reason: &str| CodecError::BadTensor { name: name.clone(), reason: reason.to_owned() };
    let dtype = value
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing dtype"))?;
    let dtype = Dtype::parse(dtype).ok_or_else(|| bad("unknown dtype"))?;
    let shape = value
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("missing shape"))?
        .iter()
        .map(|dim| dim.as_u64().ok_or_else(|| bad("shape holds a non-integer")))
        .collect::<Result<Vec<u64>>>()?;
    let offsets = value
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|offsets| offsets.len() == 2)
        .ok_or_else(|| bad("data_offsets is not a pair"))?;
    let start = offsets[0].as_u64().ok_or_else(|| bad("bad start offset"))?;
    let end = offsets[1].as_u64().ok_or_else(|| bad("bad end offset"))?;
    if end < start {
        return Err(bad("end offset before start offset"));
    }
    let expected = shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, dim| acc.checked_mul(*dim))
        .ok_or_else(|| bad("shape overflows"))?;
    if expected != end - start {
        return Err(bad("byte span does not match dtype and shape"));
    }
    Ok(TensorInfo { name, dtype, shape, start, end })
}

/// Tensors must be sorted by start; empty tensors claim no bytes and never overlap.
fn check_no_overlap(tensors: &[TensorInfo]) -> Result<()> {
    let mut previous: Option<&TensorInfo> = None;
    for tensor in tensors.iter().filter(|t| !t.is_empty()) {
        if let Some(previous) = previous.filter(|p| p.end > tensor.start) {
            return Err(CodecError::Overlap { first: previous.name.clone(), second: tensor.name.clone() });
        }
        previous = Some(tensor);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data_len, 7);
        bytes
    }

    #[test]
    fn parses_unsorted_tensors_gaps_and_metadata() {
        let header = r#"{"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},
            "__metadata__":{"format":"pt"},
            "a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
            "e":{"dtype":"F8_E4M3","shape":[0],"data_offsets":[4,4]}}"#;
        let layout = parse_file(&file(header, 12)).unwrap();
        let names: Vec<_> = layout.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "e", "b"]);
        assert_eq!(layout.metadata.unwrap()["format"], "pt");
        let regions = parse_file(&file(header, 12)).unwrap().regions();
        let kinds: Vec<_> = regions.iter().map(|r| (r.start, r.end, r.kind)).collect();
        assert_eq!(
            kinds,
            [(0, 4, RegionKind::Tensor(0)), (4, 8, RegionKind::Gap), (8, 12, RegionKind::Tensor(2))]
        );
    }

    #[test]
    fn rejects_malformed_headers() {
        let cases: &[(&str, usize)] = &[
            ("{", 0),
            ("[]", 0),
            (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, 8),
            (r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 3),
            (r#"{"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}"#, 4),
            (r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}}"#, 5),
            (r#"{"a":{"dtype":"U8","shape":[18446744073709551615,2],"data_offsets":[0,4]}}"#, 4),
            (r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[4,0]}}"#, 4),
            (r#"{"__metadata__":{"a":1}}"#, 0),
        ];
        for (header, data_len) in cases {
            assert!(parse_file(&file(header, *data_len)).is_err(), "accepted {header}");
        }
    }

    #[test]
    fn rejects_lying_lengths() {
        assert_eq!(parse_file(&[1, 2, 3]), Err(CodecError::TooShort));
        let huge = u64::MAX.to_le_bytes();
        assert!(matches!(parse_file(&huge), Err(CodecError::HeaderTooLarge(..))));
        let mut past_end = 50u64.to_le_bytes().to_vec();
        past_end.extend_from_slice(b"{}");
        assert!(matches!(parse_file(&past_end), Err(CodecError::HeaderPastEnd { .. })));
    }

    #[test]
    fn rejects_non_utf8_and_deep_nesting() {
        assert!(parse_file(&file("{\"\u{0}\":1}", 0)).is_err());
        let mut bad = file("{}", 0);
        bad[8] = 0xff;
        assert!(parse_file(&bad).is_err());
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_file(&file(&deep, 0)).is_err());
    }
}
