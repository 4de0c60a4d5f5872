//! Chunking: a tensor is cut into independent chunks of a fixed size, so that chunks encode and
//! decode in parallel and a ranged read decodes only the chunks it touches.

use std::ops::Range;

/// Default chunk size: 4 MiB, a multiple of every element size.
pub const DEFAULT_CHUNK_SIZE: usize = 4 << 20;

/// The byte ranges of the chunks of a `len`-byte tensor.
pub fn chunk_ranges(len: usize, chunk_size: usize) -> impl Iterator<Item = Range<usize>> {
    let chunk_size = chunk_size.max(1);
    (0..len.div_ceil(chunk_size)).map(move |i| i * chunk_size..((i + 1) * chunk_size).min(len))
}

/// How many chunks of [`DEFAULT_CHUNK_SIZE`] a region (a tensor, or the bytes between tensors)
/// of `len` bytes is cut into: what a stored model's manifest holds per region.
pub fn chunk_count(len: u64) -> usize {
    len.div_ceil(DEFAULT_CHUNK_SIZE as u64) as usize
}

/// Where the chunk that starts at `chunk_start` ends, in a region ending at `region_end` (the
/// streaming form of [`chunk_ranges`] with [`DEFAULT_CHUNK_SIZE`]).
pub fn chunk_end(chunk_start: u64, region_end: u64) -> u64 {
    (chunk_start + DEFAULT_CHUNK_SIZE as u64).min(region_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_streaming_cut_and_the_count_agree_with_the_ranges() {
        for len in [0u64, 1, DEFAULT_CHUNK_SIZE as u64 - 1, DEFAULT_CHUNK_SIZE as u64, 3 * DEFAULT_CHUNK_SIZE as u64 + 5] {
            let ranges: Vec<_> = chunk_ranges(len as usize, DEFAULT_CHUNK_SIZE).collect();
            assert_eq!(chunk_count(len), ranges.len());
            let mut start = 0;
            let mut cuts = Vec::new();
            while start < len {
                let end = chunk_end(start, len);
                cuts.push(start as usize..end as usize);
                start = end;
            }
            assert_eq!(cuts, ranges);
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
