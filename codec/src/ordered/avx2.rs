//! The grouped difference's encoder and the context count 32 elements at a time with AVX2,
//! chosen at run time where the machine has AVX2 but not the AVX-512 of `avx512` (AMD EPYC
//! before Zen 4, Intel before Ice Lake). Decoding has no AVX2 path: expanding each context's
//! bytes with shuffles was slower there than the scalar gather (docs/benchmarks.md, stop 32).
//!
//! As in `avx512`, a block's base contexts are split with one compare per context it holds,
//! the chunk's common contexts tried in every block. AVX2 has no byte compress, so each 16-lane
//! half compresses the context's lanes to its front with `vpshufb` (whose control comes from a
//! table of the 256 ways to choose among 8 lanes) and stores 16 bytes, of which those past the
//! context's bytes are overwritten by its next store. The store therefore goes to a staging
//! copy of the planes with 16 spare bytes after every run, whose runs are copied into place at
//! the end.
//!
//! The bytes are those of the scalar path; `tests` compare the two. Written here for the
//! reason `avx512` gives. The lane arithmetic at the end is `avx512`'s on 256-bit vectors: the
//! intrinsics are named by vector width, so each file spells its own.

use std::arch::x86_64::*;

use super::{common_contexts, run_counts, take_slots};
use crate::scratch;

/// Elements per block: one byte lane each in a 256-bit vector.
const BLOCK: usize = 32;

/// Spare bytes after each run of a staged plane: a 16-byte store starts at most at the run's
/// last byte.
const SPARE: usize = 16;

/// Whether this machine runs the AVX2 path.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("popcnt")
}

/// As `avx512::count_blocks`, 32 elements at a time.
pub(super) fn count_blocks<const W: usize>(base: &[u8], count: usize, sample: &[usize; 256], counts: &mut [usize; 256]) -> usize {
    if !(W == 2 || W == 4) || !available() {
        return 0;
    }
    let blocks = count / BLOCK;
    assert!(base.len() >= W * count);
    // SAFETY: the CPU has the features (checked above); reads stay within `base` (asserted).
    unsafe { count_blocks_avx2::<W>(base, blocks, sample, counts) };
    blocks * BLOCK
}

/// As `avx512::encode_blocks`, 32 elements at a time.
pub(super) fn encode_blocks<const W: usize>(target: &[u8], base: &[u8], count: usize, next: &mut [usize; 256], out: &mut [u8]) -> usize {
    if !(W == 2 || W == 4) || !available() {
        return 0;
    }
    let blocks = count / BLOCK;
    if blocks == 0 {
        return 0;
    }
    assert!(target.len() >= W * count && base.len() >= W * count && out.len() >= W * count);
    let starts = *next;
    let stride = staged_stride(count);
    let mut staged = scratch::take(W * stride);
    // SAFETY: as for `decode_blocks`; a context's stores start at most at its slots taken
    // (`take_slots` keeps them within the `count` slots) plus 16 spare bytes per context
    // before it, so each ends within its staged plane. With the encoder's own runs, each ends
    // where the next run's staged bytes begin.
    unsafe { encode_blocks_avx2::<W>(target, base, count, blocks, next, &mut staged) };
    for plane in 0..W {
        for context in 0..256 {
            let staged_at = plane * stride + starts[context] + SPARE * context;
            let len = next[context] - starts[context];
            out[plane * count + starts[context]..][..len].copy_from_slice(&staged[staged_at..][..len]);
        }
    }
    scratch::give_back(staged);
    blocks * BLOCK
}

/// Bytes of one staged plane: its `count` bytes and the spare bytes after each of 256 runs.
fn staged_stride(count: usize) -> usize {
    count + SPARE * 256
}

#[target_feature(enable = "avx2,popcnt")]
unsafe fn count_blocks_avx2<const W: usize>(base: &[u8], blocks: usize, sample: &[usize; 256], counts: &mut [usize; 256]) {
    let common = Common::of(&common_contexts(sample, sample.iter().sum()));
    for block in 0..blocks {
        let base_words: [__m256i; W] = std::array::from_fn(|i| _mm256_loadu_si256(base.as_ptr().add((block * W + i) * 32).cast()));
        common.split(contexts_of::<W>(&base_words), |this, lanes| counts[usize::from(this)] += lanes.count_ones() as usize);
    }
}

#[target_feature(enable = "avx2,popcnt")]
unsafe fn encode_blocks_avx2<const W: usize>(target: &[u8], base: &[u8], count: usize, blocks: usize, next: &mut [usize; 256], staged: &mut [u8]) {
    let stride = staged_stride(count);
    let start = staged.as_mut_ptr();
    let common = Common::of(&common_contexts(&run_counts(next, count), count));
    for block in 0..blocks {
        let base_words: [__m256i; W] = std::array::from_fn(|i| _mm256_loadu_si256(base.as_ptr().add((block * W + i) * 32).cast()));
        let target_words: [__m256i; W] = std::array::from_fn(|i| _mm256_loadu_si256(target.as_ptr().add((block * W + i) * 32).cast()));
        let context = contexts_of::<W>(&base_words);
        let differences: [__m256i; W] = std::array::from_fn(|i| difference::<W>(target_words[i], base_words[i]));
        let bytes = deinterleave::<W>(differences);
        common.split(context, |this, lanes| {
            let Some(cursor) = take_slots(next, this, lanes.count_ones() as usize, count) else { return };
            let control = compress_control(lanes);
            let second_half = (lanes & 0xffff).count_ones() as usize;
            for (plane, bytes) in bytes.iter().enumerate() {
                let compressed = _mm256_shuffle_epi8(*bytes, control);
                let at = start.add(plane * stride + cursor + SPARE * usize::from(this));
                _mm_storeu_si128(at.cast(), _mm256_castsi256_si128(compressed));
                _mm_storeu_si128(at.add(second_half).cast(), _mm256_extracti128_si256::<1>(compressed));
            }
        });
    }
}

/// For each of the 256 ways to choose among 8 lanes, byte i: the lane of the i-th chosen one,
/// 0x80 past the last.
const fn compress_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut lanes = 0;
    while lanes < 256 {
        let mut taken = 0;
        let mut j = 0;
        while j < 8 {
            if lanes & (1 << j) != 0 {
                table[lanes] |= (j as u64) << (8 * taken);
                taken += 1;
            }
            j += 1;
        }
        while taken < 8 {
            table[lanes] |= 0x80 << (8 * taken);
            taken += 1;
        }
        lanes += 1;
    }
    table
}

static COMPRESS: [u64; 256] = compress_table();

/// One in every byte of a word.
const EVERY_BYTE: u64 = 0x0101_0101_0101_0101;

/// The `vpshufb` control that moves the chosen lanes of each half to its front, in order (the
/// bytes after them are left over).
#[target_feature(enable = "avx2,popcnt")]
fn compress_control(lanes: u32) -> __m256i {
    let half = |chosen: u16| -> u128 {
        let [low, high] = chosen.to_le_bytes();
        let first = u128::from(COMPRESS[usize::from(low)]) & ((1u128 << (8 * low.count_ones())) - 1);
        let second = u128::from(COMPRESS[usize::from(high)] + 8 * EVERY_BYTE) << (8 * low.count_ones());
        first | second
    };
    let (low, high) = (half(lanes as u16), half((lanes >> 16) as u16));
    _mm256_set_epi64x((high >> 64) as i64, high as i64, (low >> 64) as i64, low as i64)
}

/// The chunk's common contexts as vectors to compare a block's contexts with.
struct Common {
    contexts: Vec<u8>,
    broadcasts: Vec<__m256i>,
}

impl Common {
    #[target_feature(enable = "avx2")]
    fn of(contexts: &[u8]) -> Common {
        let broadcasts = contexts.iter().map(|&context| _mm256_set1_epi8(context as i8)).collect();
        Common { contexts: contexts.to_vec(), broadcasts }
    }

    /// Calls `visit(context, lanes)` for each context the block holds, with its lanes (one bit
    /// each), the common ones first (as `avx512::Common::split`, but no call for a common
    /// context the block does not hold: each call moves bytes here).
    #[target_feature(enable = "avx2,popcnt")]
    fn split(&self, context: __m256i, mut visit: impl FnMut(u8, u32)) {
        let mut left = u32::MAX;
        for (&this, &broadcast) in self.contexts.iter().zip(&self.broadcasts) {
            let lanes = _mm256_movemask_epi8(_mm256_cmpeq_epi8(context, broadcast)) as u32;
            if lanes != 0 {
                visit(this, lanes);
                left &= !lanes;
            }
        }
        if left != 0 {
            let mut contexts = [0u8; BLOCK];
            // SAFETY: 32 bytes into an array of 32.
            unsafe { _mm256_storeu_si256(contexts.as_mut_ptr().cast(), context) };
            while left != 0 {
                let this = contexts[left.trailing_zeros() as usize];
                let lanes = _mm256_movemask_epi8(_mm256_cmpeq_epi8(context, _mm256_set1_epi8(this as i8))) as u32;
                visit(this, lanes);
                left &= !lanes;
            }
        }
    }
}

/// The grouping context of each of the block's 32 base elements, one per byte lane, in element
/// order (as `super::context`).
#[target_feature(enable = "avx2")]
fn contexts_of<const W: usize>(words: &[__m256i; W]) -> __m256i {
    if W == 2 {
        let byte = _mm256_set1_epi16(0xff);
        let low = _mm256_and_si256(_mm256_srli_epi16::<7>(words[0]), byte);
        let high = _mm256_and_si256(_mm256_srli_epi16::<7>(words[1]), byte);
        // Packing works per 128-bit half: elements 0-7, 16-23, 8-15, 24-31 in 64-bit order.
        _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi16(low, high))
    } else {
        let byte = _mm256_set1_epi32(0xff);
        let quarter = |i: usize| _mm256_and_si256(_mm256_srli_epi32::<23>(words[i]), byte);
        let first = _mm256_packus_epi32(quarter(0), quarter(1));
        let second = _mm256_packus_epi32(quarter(2), quarter(3));
        // Elements 0-3, 8-11, 16-19, 24-27, 4-7, 12-15, 20-23, 28-31 in 32-bit order.
        let packed = _mm256_packus_epi16(first, second);
        _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }
}

/// From vectors a, b, c, d: the low halves of a and b, of c and d, then the high halves of a
/// and b, of c and d (W is 4).
#[target_feature(enable = "avx2")]
fn halves_of<const W: usize>(vectors: &[__m256i; 4]) -> [__m256i; W] {
    std::array::from_fn(|i| {
        let (first, second) = if i % 2 == 0 { (vectors[0], vectors[1]) } else { (vectors[2], vectors[3]) };
        if i < 2 {
            _mm256_permute2x128_si256::<0x20>(first, second)
        } else {
            _mm256_permute2x128_si256::<0x31>(first, second)
        }
    })
}

/// W vectors of 32 elements as their plane bytes: plane p in vector p, elements 0-15 in its
/// low half.
#[target_feature(enable = "avx2")]
fn deinterleave<const W: usize>(elements: [__m256i; W]) -> [__m256i; W] {
    if W == 2 {
        // Per 128-bit half, the 8 low bytes then the 8 high bytes; then per vector the low
        // bytes of its 16 elements in its low half.
        let split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        let gathered = elements.map(|vector| _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(vector, split)));
        std::array::from_fn(|i| {
            if i == 0 {
                _mm256_permute2x128_si256::<0x20>(gathered[0], gathered[1])
            } else {
                _mm256_permute2x128_si256::<0x31>(gathered[0], gathered[1])
            }
        })
    } else {
        // Per vector of 8 elements, byte p of all 8 in its 64-bit word p.
        let split = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let words = elements.map(|vector| _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(vector, split), order));
        // Words 0 and 2 (then 1 and 3) of elements 0-7 beside those of 8-15, and of 16-31.
        let even = [_mm256_unpacklo_epi64(words[0], words[1]), _mm256_unpacklo_epi64(words[2], words[3])];
        let odd = [_mm256_unpackhi_epi64(words[0], words[1]), _mm256_unpackhi_epi64(words[2], words[3])];
        halves_of(&[even[0], even[1], odd[0], odd[1]])
    }
}

/// Lanes of W bytes: the float order's image of `bits` (as `super::sortable`).
#[target_feature(enable = "avx2")]
fn sortable<const W: usize>(bits: __m256i) -> __m256i {
    if W == 2 {
        _mm256_xor_si256(bits, _mm256_or_si256(_mm256_srai_epi16::<15>(bits), _mm256_set1_epi16(i16::MIN)))
    } else {
        _mm256_xor_si256(bits, _mm256_or_si256(_mm256_srai_epi32::<31>(bits), _mm256_set1_epi32(i32::MIN)))
    }
}

/// The zigzagged ordered difference of target against base lanes (as the scalar encoder).
#[target_feature(enable = "avx2")]
fn difference<const W: usize>(target: __m256i, base: __m256i) -> __m256i {
    if W == 2 {
        let d = _mm256_sub_epi16(sortable::<W>(target), sortable::<W>(base));
        _mm256_xor_si256(_mm256_slli_epi16::<1>(d), _mm256_srai_epi16::<15>(d))
    } else {
        let d = _mm256_sub_epi32(sortable::<W>(target), sortable::<W>(base));
        _mm256_xor_si256(_mm256_slli_epi32::<1>(d), _mm256_srai_epi32::<31>(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_compresses_every_choice_of_lanes() {
        for lanes in 0..256usize {
            let chosen: Vec<u64> = (0..8).filter(|j| lanes & (1 << j) != 0).collect();
            for i in 0..8 {
                let byte = (COMPRESS[lanes] >> (8 * i)) & 0xff;
                assert_eq!(byte, chosen.get(i).copied().unwrap_or(0x80), "compress {lanes:#010b}, byte {i}");
            }
        }
    }
}
