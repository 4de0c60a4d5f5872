//! The grouped difference 64 elements at a time with AVX-512 (VBMI2), chosen at run time.
//!
//! The scalar path visits elements two at a time and reads each one's bytes from the run of its
//! context. Here a block of 64 base elements is split by context with one compare per context
//! it holds (a block of weights holds a handful), and each context's next bytes of every plane
//! are moved into or out of its elements' lanes at once (`vpexpandb` / `vpcompressb`). The
//! bytes are those of the scalar path; `tests` compare the two. Written here because no
//! maintained crate offers a stable-Rust expand or compress over byte lanes.

use std::arch::x86_64::*;

use super::{common_contexts, run_counts, take_slots};

/// Elements per block: one byte lane each in a 512-bit vector.
const BLOCK: usize = 64;

/// Whether this machine runs the AVX-512 path.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("popcnt")
        && is_x86_feature_detected!("bmi1")
        && is_x86_feature_detected!("avx512vbmi")
        && is_x86_feature_detected!("avx512vbmi2")
}

/// Decodes the whole blocks of the first `count` elements into the start of `out` (base added
/// back, in element order), advancing `next`, each context's cursor into the planes. Returns
/// how many elements it decoded: 0 where the machine or the width has no fast path.
pub(super) fn decode_blocks<const W: usize>(planes: &[u8], base: &[u8], count: usize, next: &mut [usize; 256], out: &mut [u8]) -> usize {
    if !(W == 2 || W == 4) || !available() {
        return 0;
    }
    let blocks = count / BLOCK;
    assert!(planes.len() >= W * count && base.len() >= W * count && out.len() >= W * count);
    // SAFETY: the CPU has the features (checked above); every read is within `planes` and
    // `base` (asserted above; a run only within the planes, `take`), every write within the
    // first `W * count` bytes of `out` (asserted above).
    unsafe { decode_blocks_avx512::<W>(planes, base, count, blocks, next, out) };
    blocks * BLOCK
}

/// Counts the contexts of the whole blocks of the `count` elements of `base` into `counts`,
/// trying first the contexts common in `sample` (counts of elements before them). Returns how
/// many elements it counted: 0 where the machine or the width has no fast path.
pub(super) fn count_blocks<const W: usize>(base: &[u8], count: usize, sample: &[usize; 256], counts: &mut [usize; 256]) -> usize {
    if !(W == 2 || W == 4) || !available() {
        return 0;
    }
    let blocks = count / BLOCK;
    assert!(base.len() >= W * count);
    // SAFETY: the CPU has the features (checked above); reads stay within `base` (asserted).
    unsafe { count_blocks_avx512::<W>(base, blocks, sample, counts) };
    blocks * BLOCK
}

#[target_feature(enable = "avx512f,avx512bw,popcnt,bmi1")]
unsafe fn count_blocks_avx512<const W: usize>(base: &[u8], blocks: usize, sample: &[usize; 256], counts: &mut [usize; 256]) {
    let common = Common::of(&common_contexts(sample, sample.iter().sum()));
    for block in 0..blocks {
        let base_words: [__m512i; W] = std::array::from_fn(|i| _mm512_loadu_si512(base.as_ptr().add((block * W + i) * 64).cast()));
        common.split(contexts_of::<W>(&base_words), |this, lanes| counts[usize::from(this)] += lanes.count_ones() as usize);
    }
}

/// Encodes the whole blocks of the first `count` elements into the planes of `out` (each
/// `count` long), advancing `next`. Returns how many elements it encoded (0 as above).
pub(super) fn encode_blocks<const W: usize>(target: &[u8], base: &[u8], count: usize, next: &mut [usize; 256], out: &mut [u8]) -> usize {
    if !(W == 2 || W == 4) || !available() {
        return 0;
    }
    let blocks = count / BLOCK;
    assert!(target.len() >= W * count && base.len() >= W * count && out.len() >= W * count);
    // SAFETY: as for `decode_blocks`; writes stay within `out`'s planes (`take`).
    unsafe { encode_blocks_avx512::<W>(target, base, count, blocks, next, out) };
    blocks * BLOCK
}

#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vbmi2,popcnt,bmi1")]
unsafe fn decode_blocks_avx512<const W: usize>(planes: &[u8], base: &[u8], count: usize, blocks: usize, next: &mut [usize; 256], out: &mut [u8]) {
    let plane: [*const u8; W] = std::array::from_fn(|p| planes[p * count..].as_ptr());
    let destination = out.as_mut_ptr();
    let common = Common::of(&common_contexts(&run_counts(next, count), count));
    for block in 0..blocks {
        let base_words: [__m512i; W] = std::array::from_fn(|i| _mm512_loadu_si512(base.as_ptr().add((block * W + i) * 64).cast()));
        let context = contexts_of::<W>(&base_words);
        let mut stored = [_mm512_setzero_si512(); W];
        common.split(context, |this, lanes| {
            let (cursor, run) = take(next, this, lanes, count);
            for (bytes, plane) in stored.iter_mut().zip(plane) {
                *bytes = _mm512_mask_expand_epi8(*bytes, lanes, _mm512_maskz_loadu_epi8(run, plane.add(cursor).cast()));
            }
        });
        let differences = interleave::<W>(stored);
        for i in 0..W {
            let value = add_difference::<W>(base_words[i], differences[i]);
            _mm512_storeu_si512(destination.add((block * W + i) * 64).cast(), value);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vbmi2,popcnt,bmi1")]
unsafe fn encode_blocks_avx512<const W: usize>(target: &[u8], base: &[u8], count: usize, blocks: usize, next: &mut [usize; 256], out: &mut [u8]) {
    // All from one pointer: a pointer taken from a later reborrow of `out` would invalidate
    // those taken before it.
    let start = out.as_mut_ptr();
    let plane: [*mut u8; W] = std::array::from_fn(|p| start.add(p * count));
    let common = Common::of(&common_contexts(&run_counts(next, count), count));
    for block in 0..blocks {
        let base_words: [__m512i; W] = std::array::from_fn(|i| _mm512_loadu_si512(base.as_ptr().add((block * W + i) * 64).cast()));
        let target_words: [__m512i; W] = std::array::from_fn(|i| _mm512_loadu_si512(target.as_ptr().add((block * W + i) * 64).cast()));
        let context = contexts_of::<W>(&base_words);
        let differences: [__m512i; W] = std::array::from_fn(|i| difference::<W>(target_words[i], base_words[i]));
        let bytes = deinterleave::<W>(differences);
        common.split(context, |this, lanes| {
            let (cursor, run) = take(next, this, lanes, count);
            for (bytes, plane) in bytes.iter().zip(plane) {
                _mm512_mask_storeu_epi8(plane.add(cursor).cast(), run, _mm512_maskz_compress_epi8(lanes, *bytes));
            }
        });
    }
}

/// The chunk's common contexts (`super::common_contexts`) as vectors to compare a block's
/// contexts with.
struct Common {
    contexts: Vec<u8>,
    broadcasts: Vec<__m512i>,
}

impl Common {
    #[target_feature(enable = "avx512f,avx512bw")]
    fn of(contexts: &[u8]) -> Common {
        let broadcasts = contexts.iter().map(|&context| _mm512_set1_epi8(context as i8)).collect();
        Common { contexts: contexts.to_vec(), broadcasts }
    }

    /// Splits a block's lanes by context, the common ones first: calls `visit(context, lanes)`
    /// for each of them (lanes may be none) and for each other context the block holds.
    #[target_feature(enable = "avx512f,avx512bw")]
    fn split(&self, context: __m512i, mut visit: impl FnMut(u8, u64)) {
        let mut left = u64::MAX;
        for (&this, &broadcast) in self.contexts.iter().zip(&self.broadcasts) {
            let lanes = _mm512_cmpeq_epi8_mask(context, broadcast);
            visit(this, lanes);
            left &= !lanes;
        }
        if left != 0 {
            let mut contexts = [0u8; BLOCK];
            // SAFETY: 64 bytes into an array of 64.
            unsafe { _mm512_storeu_si512(contexts.as_mut_ptr().cast(), context) };
            while left != 0 {
                let this = contexts[left.trailing_zeros() as usize];
                let lanes = _mm512_cmpeq_epi8_mask(context, _mm512_set1_epi8(this as i8));
                visit(this, lanes);
                left &= !lanes;
            }
        }
    }
}

/// Takes the next `lanes.count_ones()` slots of context `this` (`super::take_slots`): returns
/// the first and the mask of that many lanes, or an empty mask where none are taken.
fn take(next: &mut [usize; 256], this: u8, lanes: u64, count: usize) -> (usize, u64) {
    let taken = lanes.count_ones() as usize;
    take_slots(next, this, taken, count).map_or((0, 0), |cursor| (cursor, low_lanes(taken)))
}

/// The mask of the first `taken` lanes.
fn low_lanes(taken: usize) -> u64 {
    u64::MAX.checked_shr(64 - taken as u32).unwrap_or(0)
}

/// The grouping context of each of the block's 64 base elements, one per byte lane: the
/// element's bits from 8 x W - 9 up, truncated to a byte (as `super::context`).
#[target_feature(enable = "avx512f,avx512bw")]
fn contexts_of<const W: usize>(words: &[__m512i; W]) -> __m512i {
    if W == 2 {
        let low = _mm512_cvtepi16_epi8(_mm512_srli_epi16::<7>(words[0]));
        let high = _mm512_cvtepi16_epi8(_mm512_srli_epi16::<7>(words[1]));
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high)
    } else {
        let quarter = |i: usize| _mm512_cvtepi32_epi8(_mm512_srli_epi32::<23>(words[i]));
        let joined = _mm512_castsi128_si512(quarter(0));
        let joined = _mm512_inserti32x4::<1>(joined, quarter(1));
        let joined = _mm512_inserti32x4::<2>(joined, quarter(2));
        _mm512_inserti32x4::<3>(joined, quarter(3))
    }
}

/// Byte indexes that interleave two vectors of plane bytes (element k's low byte in the
/// first, its high byte in the second) into 16-bit elements, elements `half` x 32 onwards.
const fn pair_bytes(half: usize) -> [u8; 64] {
    let mut table = [0u8; 64];
    let mut k = 0;
    while k < 64 {
        table[k] = (((k % 2) << 6) | (half * 32 + k / 2)) as u8;
        k += 1;
    }
    table
}

/// 16-bit indexes that interleave two vectors of 16-bit halves (low halves in the first) into
/// 32-bit elements, the 16 elements from `quarter` x 16 of the 32 the vectors hold.
const fn pair_words(quarter: usize) -> [u16; 32] {
    let mut table = [0u16; 32];
    let mut k = 0;
    while k < 32 {
        table[k] = (((k % 2) << 5) | (quarter * 16 + k / 2)) as u16;
        k += 1;
    }
    table
}

/// Byte indexes that gather byte `which` (0 low, 1 high) of the 64 16-bit elements of two
/// vectors (elements 0-31 in the first).
const fn split_bytes(which: usize) -> [u8; 64] {
    let mut table = [0u8; 64];
    let mut k = 0;
    while k < 64 {
        table[k] = (((k / 32) << 6) | (2 * (k % 32) + which)) as u8;
        k += 1;
    }
    table
}

/// 16-bit indexes that gather half `which` of the 32 32-bit elements of two vectors.
const fn split_words(which: usize) -> [u16; 32] {
    let mut table = [0u16; 32];
    let mut k = 0;
    while k < 32 {
        table[k] = (((k / 16) << 5) | (2 * (k % 16) + which)) as u16;
        k += 1;
    }
    table
}

static PAIR_BYTES: [[u8; 64]; 2] = [pair_bytes(0), pair_bytes(1)];
static PAIR_WORDS: [[u16; 32]; 2] = [pair_words(0), pair_words(1)];
static SPLIT_BYTES: [[u8; 64]; 2] = [split_bytes(0), split_bytes(1)];
static SPLIT_WORDS: [[u16; 32]; 2] = [split_words(0), split_words(1)];

#[target_feature(enable = "avx512f")]
fn table<T>(entries: &T) -> __m512i {
    const { assert!(size_of::<T>() == 64, "a table fills a vector") };
    // SAFETY: `T` is 64 bytes (asserted at compile time).
    unsafe { _mm512_loadu_si512((entries as *const T).cast()) }
}

/// The plane bytes of 64 elements (plane p in vector p) as W vectors of whole elements.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn interleave<const W: usize>(planes: [__m512i; W]) -> [__m512i; W] {
    let pairs = |low: __m512i, high: __m512i, half: usize| _mm512_permutex2var_epi8(low, table(&PAIR_BYTES[half]), high);
    if W == 2 {
        std::array::from_fn(|half| pairs(planes[0], planes[1], half))
    } else {
        let low = [pairs(planes[0], planes[1], 0), pairs(planes[0], planes[1], 1)];
        let high = [pairs(planes[2], planes[3], 0), pairs(planes[2], planes[3], 1)];
        std::array::from_fn(|i| _mm512_permutex2var_epi16(low[i / 2], table(&PAIR_WORDS[i % 2]), high[i / 2]))
    }
}

/// The inverse of [`interleave`]: W vectors of elements as their plane bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn deinterleave<const W: usize>(elements: [__m512i; W]) -> [__m512i; W] {
    let bytes = |first: __m512i, second: __m512i, which: usize| _mm512_permutex2var_epi8(first, table(&SPLIT_BYTES[which]), second);
    if W == 2 {
        std::array::from_fn(|which| bytes(elements[0], elements[1], which))
    } else {
        let halves: [[__m512i; 2]; 2] =
            std::array::from_fn(|which| std::array::from_fn(|pair| _mm512_permutex2var_epi16(elements[2 * pair], table(&SPLIT_WORDS[which]), elements[2 * pair + 1])));
        std::array::from_fn(|p| bytes(halves[p / 2][0], halves[p / 2][1], p % 2))
    }
}

/// Lanes of W bytes: the float order's image of `bits` (as `super::lanes::Lane::sortable`).
#[target_feature(enable = "avx512f,avx512bw")]
fn sortable<const W: usize>(bits: __m512i) -> __m512i {
    if W == 2 {
        _mm512_xor_si512(bits, _mm512_or_si512(_mm512_srai_epi16::<15>(bits), _mm512_set1_epi16(i16::MIN)))
    } else {
        _mm512_xor_si512(bits, _mm512_or_si512(_mm512_srai_epi32::<31>(bits), _mm512_set1_epi32(i32::MIN)))
    }
}

/// The inverse of [`sortable`].
#[target_feature(enable = "avx512f,avx512bw")]
fn unsortable<const W: usize>(value: __m512i) -> __m512i {
    let all = _mm512_set1_epi32(-1);
    if W == 2 {
        _mm512_xor_si512(value, _mm512_or_si512(_mm512_xor_si512(_mm512_srai_epi16::<15>(value), all), _mm512_set1_epi16(i16::MIN)))
    } else {
        _mm512_xor_si512(value, _mm512_or_si512(_mm512_xor_si512(_mm512_srai_epi32::<31>(value), all), _mm512_set1_epi32(i32::MIN)))
    }
}

/// The zigzagged ordered difference of target against base lanes (as the scalar encoder).
#[target_feature(enable = "avx512f,avx512bw")]
fn difference<const W: usize>(target: __m512i, base: __m512i) -> __m512i {
    if W == 2 {
        let d = _mm512_sub_epi16(sortable::<W>(target), sortable::<W>(base));
        _mm512_xor_si512(_mm512_slli_epi16::<1>(d), _mm512_srai_epi16::<15>(d))
    } else {
        let d = _mm512_sub_epi32(sortable::<W>(target), sortable::<W>(base));
        _mm512_xor_si512(_mm512_slli_epi32::<1>(d), _mm512_srai_epi32::<31>(d))
    }
}

/// The target lanes back from base lanes and their zigzagged differences.
#[target_feature(enable = "avx512f,avx512bw")]
fn add_difference<const W: usize>(base: __m512i, zigzagged: __m512i) -> __m512i {
    if W == 2 {
        let one = _mm512_set1_epi16(1);
        let d = _mm512_xor_si512(_mm512_srli_epi16::<1>(zigzagged), _mm512_sub_epi16(_mm512_setzero_si512(), _mm512_and_si512(zigzagged, one)));
        unsortable::<W>(_mm512_add_epi16(sortable::<W>(base), d))
    } else {
        let one = _mm512_set1_epi32(1);
        let d = _mm512_xor_si512(_mm512_srli_epi32::<1>(zigzagged), _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_and_si512(zigzagged, one)));
        unsortable::<W>(_mm512_add_epi32(sortable::<W>(base), d))
    }
}
