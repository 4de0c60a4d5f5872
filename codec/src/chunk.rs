//! Chunking: a tensor is cut into independent chunks of a fixed size (smaller for small
//! tensors), so that chunks encode and decode in parallel and a ranged read decodes only the
//! chunks it touches.

use std::ops::Range;

use crate::dtype::Dtype;

/// Default chunk size: 4 MiB, a multiple of every element size.
pub const DEFAULT_CHUNK_SIZE: usize = 4 << 20;

/// Elements per chunk of a float tensor up to 4 bytes wide, an I8 one or GGUF blocks: chunk i
/// of one tensor holds the same elements in F32, BF16, F16, F8, I8, Q8_0 or Q4_0, so the chunks
/// of a cast or a quantization line up with those of the tensor it was made from (issues 17 and
/// 18, `cast`).
pub const CHUNK_ELEMENTS: usize = 1 << 20;

/// Tensors of those dtypes with fewer elements than this are cut into chunks of
/// [`PIECE_ELEMENTS`] elements instead: a block of rows an exporter moves (the gates of a
/// recurrent layer, which PyTorch orders r, z, n and ONNX z, r, h) is then whole chunks in
/// every container, and the copies deduplicate (issue 17). Larger tensors, and those whose
/// length is not known where they start, keep [`CHUNK_ELEMENTS`].
pub const SMALL_TENSOR_ELEMENTS: usize = 1 << 17;

/// Elements per chunk of a small tensor (64 KiB of F32).
pub const PIECE_ELEMENTS: usize = 1 << 14;

/// The size of the chunks a region of `dtype` is cut into, `len` bytes long when known:
/// [`CHUNK_ELEMENTS`] elements for I8, F8, F16, BF16, F32, Q8_0 and Q4_0 tensors
/// ([`PIECE_ELEMENTS`] below [`SMALL_TENSOR_ELEMENTS`]), [`DEFAULT_CHUNK_SIZE`] bytes for
/// anything else (the bytes between tensors are U8).
pub fn chunk_size(dtype: Dtype, len: Option<u64>) -> usize {
    match dtype {
        Dtype::I8 | Dtype::F8E4M3 | Dtype::F8E5M2 | Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::Q8_0 | Dtype::Q4_0 => {
            let small = len.is_some_and(|len| usize::try_from(len).is_ok_and(|len| dtype.elements_in(len) < SMALL_TENSOR_ELEMENTS));
            dtype.bytes_of(if small { PIECE_ELEMENTS } else { CHUNK_ELEMENTS })
        }
        _ => DEFAULT_CHUNK_SIZE,
    }
}

/// The byte ranges of the chunks of a `len`-byte tensor.
pub fn chunk_ranges(len: usize, chunk_size: usize) -> impl Iterator<Item = Range<usize>> {
    let chunk_size = chunk_size.max(1);
    (0..len.div_ceil(chunk_size)).map(move |i| i * chunk_size..((i + 1) * chunk_size).min(len))
}

/// Where the chunk that starts at `chunk_start` ends, in a region of `dtype` ending at
/// `region_end`, `len` bytes long when known (the streaming form of [`chunk_ranges`] with
/// [`chunk_size`]).
pub fn chunk_end(chunk_start: u64, region_end: u64, dtype: Dtype, len: Option<u64>) -> u64 {
    (chunk_start + chunk_size(dtype, len) as u64).min(region_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_streaming_cut_agrees_with_the_ranges() {
        for dtype in Dtype::ALL {
            for known in [false, true] {
                for len in [0u64, 1, 4095, 4096, 3 << 16, 3 << 20, 12 << 20 | 5] {
                    let size = chunk_size(dtype, Some(len)) as u64;
                    let ranges: Vec<_> = chunk_ranges(len as usize, size as usize).collect();
                    let mut start = 0;
                    let mut cuts = Vec::new();
                    while start < len {
                        let end = chunk_end(start, len, dtype, known.then_some(len));
                        cuts.push(start as usize..end as usize);
                        start = end;
                    }
                    if known || size == chunk_size(dtype, None) as u64 {
                        assert_eq!(cuts, ranges, "{dtype:?} {len}");
                    }
                }
            }
        }
    }

    #[test]
    fn float_chunks_hold_the_same_elements_in_every_precision() {
        for dtype in [Dtype::I8, Dtype::F8E4M3, Dtype::F8E5M2, Dtype::F16, Dtype::BF16, Dtype::F32, Dtype::Q8_0, Dtype::Q4_0] {
            assert_eq!(dtype.elements_in(chunk_size(dtype, None)), CHUNK_ELEMENTS);
            assert!(chunk_size(dtype, None) <= DEFAULT_CHUNK_SIZE);
            let small = dtype.bytes_of(SMALL_TENSOR_ELEMENTS - 32) as u64;
            assert_eq!(dtype.elements_in(chunk_size(dtype, Some(small))), PIECE_ELEMENTS, "{dtype:?}");
            let large = dtype.bytes_of(SMALL_TENSOR_ELEMENTS) as u64;
            assert_eq!(dtype.elements_in(chunk_size(dtype, Some(large))), CHUNK_ELEMENTS, "{dtype:?}");
        }
    }

    #[test]
    fn ranges_cover_every_byte_once() {
        for len in [0usize, 1, 7, 8, 9, 16, 17] {
            let ranges: Vec<_> = chunk_ranges(len, 8).collect();
            assert_eq!(ranges.iter().map(|r| r.len()).sum::<usize>(), len);
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        }
    }
}
