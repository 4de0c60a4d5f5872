//! GGUF, llama.cpp's model file (versions 2 and 3), read from a prefix of the file:
//!
//! ```text
//! 0   4  magic "GGUF"
//! 4   4  version, u32 (2 or 3; version 1 had 32-bit counts and is not read)
//! 8   8  tensor count, u64
//! 16  8  metadata key-value count, u64
//! ..     key-values: key (string), value type (u32), value
//! ..     tensor infos: name (string), dimension count (u32), dimensions (u64 each, innermost
//!        first), ggml type (u32), offset in the data section (u64)
//! ..     zero padding to `general.alignment` (a u32 key-value; 32 when absent), then the data
//! ```
//!
//! A string is a u64 length and that many bytes; an array an element type (u32), a u64 count and
//! the elements. All little-endian. The tensors become regions of the data section, so that the
//! same tensor bytes get the same chunks as in a safetensors file (shapes are given outermost
//! first, as safetensors does).
//!
//! Written here rather than taken from a crate: ingest needs a parser over a prefix that says
//! "more bytes" without allocating what a hostile header claims; every count is checked against
//! the bytes there are and the header limit before it is trusted.

use crate::dtype::Dtype;
use crate::layout::TensorInfo;

pub const MAGIC: &[u8; 4] = b"GGUF";

const DEFAULT_ALIGNMENT: u64 = 32;
/// Arrays nested deeper than this are refused (the format allows nesting; files use one level).
const MAX_ARRAY_DEPTH: usize = 4;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;
/// The fewest bytes a tensor info takes: empty name, no dimension, type and offset.
const MIN_TENSOR_INFO: u64 = 8 + 4 + 4 + 8;
/// The fewest bytes a key-value takes: empty key, type, one-byte value.
const MIN_KEY_VALUE: u64 = 8 + 4 + 1;

/// What a prefix of a file says.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The header runs past the prefix.
    NeedMore,
    /// Not a GGUF file this parser reads, or over `max_header` bytes of header.
    Invalid,
    /// The header ends (with its padding) at `data_start`; tensors sorted by offset.
    Header { data_start: u64, tensors: Vec<TensorInfo> },
}

enum Stop {
    NeedMore,
    Invalid,
}

type Step<T> = Result<T, Stop>;

struct Cursor<'a> {
    bytes: &'a [u8],
    at: u64,
    limit: u64,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: u64) -> Step<&'a [u8]> {
        let end = self.at.checked_add(len).ok_or(Stop::Invalid)?;
        if end > self.limit {
            return Err(Stop::Invalid);
        }
        if end > self.bytes.len() as u64 {
            return Err(Stop::NeedMore);
        }
        let taken = &self.bytes[self.at as usize..end as usize];
        self.at = end;
        Ok(taken)
    }

    fn u32(&mut self) -> Step<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| Stop::Invalid)?))
    }

    fn u64(&mut self) -> Step<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| Stop::Invalid)?))
    }

    fn string(&mut self) -> Step<&'a [u8]> {
        let len = self.u64()?;
        self.take(len)
    }

    /// Whether `count` items of at least `each` bytes can fit under the limit.
    fn could_hold(&self, count: u64, each: u64) -> bool {
        count.checked_mul(each).is_some_and(|bytes| bytes <= self.limit.saturating_sub(self.at))
    }
}

/// Size in bytes of a scalar value type, or `None` for strings and arrays.
fn scalar_size(value_type: u32) -> Step<Option<u64>> {
    Ok(match value_type {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        8 | 9 => None,
        _ => return Err(Stop::Invalid),
    })
}

fn skip_value(cursor: &mut Cursor<'_>, value_type: u32, depth: usize) -> Step<()> {
    match (scalar_size(value_type)?, value_type) {
        (Some(size), _) => cursor.take(size).map(drop),
        (None, 8) => cursor.string().map(drop),
        _ => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(Stop::Invalid);
            }
            let element_type = cursor.u32()?;
            let count = cursor.u64()?;
            match scalar_size(element_type)? {
                Some(size) => cursor.take(count.checked_mul(size).ok_or(Stop::Invalid)?).map(drop),
                None => {
                    if !cursor.could_hold(count, 8) {
                        return Err(Stop::Invalid);
                    }
                    (0..count).try_for_each(|_| skip_value(cursor, element_type, depth + 1))
                }
            }
        }
    }
}

/// A ggml tensor type: the dtype its bytes are coded as, elements per block, bytes per block.
fn ggml_type(id: u32) -> Step<(Dtype, u64, u64)> {
    Ok(match id {
        0 => (Dtype::F32, 1, 4),
        1 => (Dtype::F16, 1, 2),
        24 => (Dtype::I8, 1, 1),
        25 => (Dtype::I16, 1, 2),
        26 => (Dtype::I32, 1, 4),
        27 => (Dtype::I64, 1, 8),
        28 => (Dtype::F64, 1, 8),
        30 => (Dtype::BF16, 1, 2),
        // Blocks a wider tensor predicts (`cast::blocks`).
        2 => blocks_of(Dtype::Q4_0),
        8 => blocks_of(Dtype::Q8_0),
        // Other quantized blocks: bytes to the codec.
        20 => (Dtype::U8, 32, 18),
        3 => (Dtype::U8, 32, 20),
        6 => (Dtype::U8, 32, 22),
        7 => (Dtype::U8, 32, 24),
        9 => (Dtype::U8, 32, 36),
        10 => (Dtype::U8, 256, 84),
        11 | 21 => (Dtype::U8, 256, 110),
        12 => (Dtype::U8, 256, 144),
        13 => (Dtype::U8, 256, 176),
        14 => (Dtype::U8, 256, 210),
        15 => (Dtype::U8, 256, 292),
        16 => (Dtype::U8, 256, 66),
        17 => (Dtype::U8, 256, 74),
        18 => (Dtype::U8, 256, 98),
        19 => (Dtype::U8, 256, 50),
        22 => (Dtype::U8, 256, 82),
        23 => (Dtype::U8, 256, 136),
        29 => (Dtype::U8, 256, 56),
        34 => (Dtype::U8, 256, 54),
        35 => (Dtype::U8, 256, 66),
        39 => (Dtype::U8, 32, 17),
        _ => return Err(Stop::Invalid),
    })
}

/// A block dtype with its elements and bytes per block.
fn blocks_of(dtype: Dtype) -> (Dtype, u64, u64) {
    let (elements, bytes) = dtype.block();
    (dtype, elements as u64, bytes as u64)
}

/// Parses the header of a GGUF file from its first bytes; a header (with its padding) over
/// `max_header` bytes is `Invalid`.
pub fn parse_prefix(prefix: &[u8], max_header: u64) -> Parsed {
    match parse(prefix, max_header) {
        Ok(parsed) => parsed,
        Err(Stop::NeedMore) => Parsed::NeedMore,
        Err(Stop::Invalid) => Parsed::Invalid,
    }
}

fn parse(prefix: &[u8], max_header: u64) -> Step<Parsed> {
    let mut cursor = Cursor { bytes: prefix, at: 0, limit: max_header };
    if cursor.take(4)? != MAGIC || !matches!(cursor.u32()?, 2 | 3) {
        return Err(Stop::Invalid);
    }
    let tensor_count = cursor.u64()?;
    let key_value_count = cursor.u64()?;
    if !cursor.could_hold(tensor_count, MIN_TENSOR_INFO) || !cursor.could_hold(key_value_count, MIN_KEY_VALUE) {
        return Err(Stop::Invalid);
    }
    let mut alignment = DEFAULT_ALIGNMENT;
    for _ in 0..key_value_count {
        let key = cursor.string()?;
        let value_type = cursor.u32()?;
        if key == b"general.alignment" && value_type == 4 {
            alignment = u64::from(cursor.u32()?);
            if !alignment.is_power_of_two() {
                return Err(Stop::Invalid);
            }
        } else {
            skip_value(&mut cursor, value_type, 0)?;
        }
    }
    let mut tensors = Vec::with_capacity(tensor_count.min(prefix.len() as u64 / MIN_TENSOR_INFO) as usize);
    for _ in 0..tensor_count {
        let name = std::str::from_utf8(cursor.string()?).map_err(|_| Stop::Invalid)?.to_owned();
        let dim_count = cursor.u32()?;
        if dim_count > MAX_DIMS {
            return Err(Stop::Invalid);
        }
        let mut shape = (0..dim_count).map(|_| cursor.u64()).collect::<Step<Vec<u64>>>()?;
        let (dtype, block, block_bytes) = ggml_type(cursor.u32()?)?;
        let start = cursor.u64()?;
        let innermost = shape.first().copied().unwrap_or(1);
        if innermost % block != 0 {
            return Err(Stop::Invalid);
        }
        let elements = shape.iter().try_fold(1u64, |product, dim| product.checked_mul(*dim)).ok_or(Stop::Invalid)?;
        let len = (elements / block).checked_mul(block_bytes).ok_or(Stop::Invalid)?;
        let end = start.checked_add(len).ok_or(Stop::Invalid)?;
        shape.reverse();
        tensors.push(TensorInfo { name, dtype, shape, start, end });
    }
    let data_start = cursor.at.div_ceil(alignment).checked_mul(alignment).ok_or(Stop::Invalid)?;
    cursor.take(data_start - cursor.at)?;
    tensors.sort_unstable_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
    if crate::layout::check_no_overlap(&tensors).is_err() {
        return Err(Stop::Invalid);
    }
    Ok(Parsed::Header { data_start, tensors })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn string(out: &mut Vec<u8>, text: &str) {
        out.extend_from_slice(&(text.len() as u64).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }

    /// A GGUF header with a string, an array of strings, the alignment, and the given tensors
    /// (name, innermost-first dims, ggml type, offset).
    fn header(tensors: &[(&str, &[u64], u32, u64)]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&3u64.to_le_bytes());
        string(&mut out, "tokenizer.chat_template");
        out.extend_from_slice(&8u32.to_le_bytes());
        string(&mut out, "{{ messages }}");
        string(&mut out, "tokenizer.ggml.tokens");
        out.extend_from_slice(&9u32.to_le_bytes());
        out.extend_from_slice(&8u32.to_le_bytes());
        out.extend_from_slice(&2u64.to_le_bytes());
        string(&mut out, "<s>");
        string(&mut out, "</s>");
        string(&mut out, "general.alignment");
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&64u32.to_le_bytes());
        for (name, dims, ggml, offset) in tensors {
            string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for dim in *dims {
                out.extend_from_slice(&dim.to_le_bytes());
            }
            out.extend_from_slice(&ggml.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        out.resize(out.len().div_ceil(64) * 64, 0);
        out
    }

    #[test]
    fn reads_tensors_outermost_first_with_their_byte_lengths() {
        let bytes = header(&[("q8", &[64, 3], 8, 128), ("w", &[4, 2], 30, 0)]);
        let Parsed::Header { data_start, tensors } = parse_prefix(&bytes, 1 << 20) else { panic!() };
        assert_eq!(data_start, bytes.len() as u64);
        assert_eq!(data_start % 64, 0);
        assert_eq!((tensors[0].name.as_str(), tensors[0].dtype, tensors[0].shape.clone(), tensors[0].len()), ("w", Dtype::BF16, vec![2, 4], 16));
        assert_eq!((tensors[1].start, tensors[1].len()), (128, 2 * 3 * 34));
    }

    #[test]
    fn asks_for_more_until_the_padding_is_in() {
        let bytes = header(&[("w", &[4], 0, 0)]);
        for cut in [0, 3, 20, bytes.len() - 1] {
            assert_eq!(parse_prefix(&bytes[..cut], 1 << 20), Parsed::NeedMore, "cut at {cut}");
        }
        assert_eq!(parse_prefix(&bytes, bytes.len() as u64 - 1), Parsed::Invalid);
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        let overlapping = header(&[("a", &[64], 0, 0), ("b", &[64], 0, 32)]);
        assert_eq!(parse_prefix(&overlapping, 1 << 20), Parsed::Invalid);
        let unknown_type = header(&[("a", &[64], 77, 0)]);
        assert_eq!(parse_prefix(&unknown_type, 1 << 20), Parsed::Invalid);
        let partial_block = header(&[("a", &[33], 8, 0)]);
        assert_eq!(parse_prefix(&partial_block, 1 << 20), Parsed::Invalid);
        let mut huge_count = header(&[]);
        huge_count[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(parse_prefix(&huge_count, 1 << 20), Parsed::Invalid);
        assert_eq!(parse_prefix(b"GGUF\x01\0\0\0", 1 << 20), Parsed::Invalid);
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..400), flips in proptest::collection::vec(any::<(usize, u8)>(), 0..8)) {
            let _ = parse_prefix(&bytes, 1 << 20);
            let mut real = header(&[("a", &[64, 2], 1, 0), ("b", &[32], 8, 256)]);
            for (at, bits) in flips {
                let len = real.len();
                real[at % len] ^= bits;
            }
            if let Parsed::Header { data_start, tensors } = parse_prefix(&real, 1 << 20) {
                prop_assert!(data_start <= real.len() as u64);
                prop_assert!(tensors.windows(2).all(|pair| pair[0].end <= pair[1].start || pair[0].is_empty() || pair[1].is_empty()));
            }
        }
    }
}
