//! The delta of floats against a base: an ordered-integer difference, grouped by the base's
//! exponent, written straight into byte planes (one pass each way).
//!
//! - Each element maps to an integer in the float's own order; the base's image is subtracted
//!   (wrapping) and the result zigzag-encoded, so a small change of either sign is a small
//!   number with zero high bytes. A fine-tune moves a weight by a few units in the last place,
//!   which XOR (BitX) turns into many set bits whenever it crosses a power of two.
//! - Elements are then grouped, stably, by a context both sides know: the top byte of the base
//!   element rotated left one bit (its exponent, for BF16 and F32). How far a weight moves in
//!   units in the last place depends on its magnitude, so like contexts compress together.
//! - Byte `p` of every grouped element goes to plane `p`. Bytes past the whole elements that
//!   target and base share are XORed with the base (where it has bytes) and kept as a tail.
//! - How many elements each context holds (its run) is counted from the base on both sides, or
//!   handed to the decoder as the frame stores it (`runs`).

use crate::delta::xor_in_place;
use crate::error::{CodecError, Result};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod runs;

use runs::Counts;

/// The vector path where the machine has one (AVX-512, else AVX2): it handles whole blocks of
/// elements from the first on, and says how many; the scalar loops below take the rest from
/// there.
mod fast {
    #[cfg(target_arch = "x86_64")]
    use super::{avx2, avx512};

    /// AVX-512 only: on AVX2 the scalar gather (`gather_differences`) is faster than moving
    /// each context's bytes with shuffles (12-24% on the corpus pairs, docs/benchmarks.md).
    #[cfg(target_arch = "x86_64")]
    pub(super) fn decode_blocks<const W: usize>(planes: &[u8], base: &[u8], count: usize, next: &mut [usize; 256], out: &mut Vec<u8>) -> usize {
        avx512::decode_blocks::<W>(planes, base, count, next, out)
    }

    #[cfg(target_arch = "x86_64")]
    pub(super) fn count_blocks<const W: usize>(base: &[u8], count: usize, sample: &[usize; 256], counts: &mut [usize; 256]) -> usize {
        if avx512::available() {
            avx512::count_blocks::<W>(base, count, sample, counts)
        } else {
            avx2::count_blocks::<W>(base, count, sample, counts)
        }
    }

    #[cfg(target_arch = "x86_64")]
    pub(super) fn encode_blocks<const W: usize>(target: &[u8], base: &[u8], count: usize, next: &mut [usize; 256], out: &mut [u8]) -> usize {
        if avx512::available() {
            avx512::encode_blocks::<W>(target, base, count, next, out)
        } else {
            avx2::encode_blocks::<W>(target, base, count, next, out)
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) fn decode_blocks<const W: usize>(_: &[u8], _: &[u8], _: usize, _: &mut [usize; 256], _: &mut Vec<u8>) -> usize {
        0
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) fn count_blocks<const W: usize>(_: &[u8], _: usize, _: &[usize; 256], _: &mut [usize; 256]) -> usize {
        0
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) fn encode_blocks<const W: usize>(_: &[u8], _: &[u8], _: usize, _: &mut [usize; 256], _: &mut [u8]) -> usize {
        0
    }
}

/// Planes (concatenated, then the tail) of the grouped difference of `target` against `base`.
/// `width` is the element size: 2, 4 or 8. Returns the runs: the elements of each context.
pub fn encode_into(target: &[u8], base: &[u8], width: usize, out: &mut Vec<u8>) -> Counts {
    match width {
        2 => encode_width::<2>(target, base, Path::Fastest, out),
        4 => encode_width::<4>(target, base, Path::Fastest, out),
        _ => encode_width::<8>(target, base, Path::Fastest, out),
    }
}

/// The inverse of [`encode_into`] with the same base and width, into `out`, whose bytes it
/// replaces (its capacity is reused). `runs` are the runs the encoder returned, as the frame
/// stores them, or `None` to count them from the base; runs that are not the base's are refused
/// (before any byte is read where they add up to another number of elements, after otherwise).
pub fn decode_into(planes: &[u8], base: &[u8], width: usize, runs: Option<&Counts>, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    match width {
        2 => decode_width::<2>(planes, base, runs, Path::Fastest, out),
        4 => decode_width::<4>(planes, base, runs, Path::Fastest, out),
        _ => decode_width::<8>(planes, base, runs, Path::Fastest, out),
    }
}

/// Which code computes the transform; all give the same bytes.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Path {
    /// The vector path where the machine has one, the scalar loops for the rest.
    Fastest,
    /// The scalar loops alone (the reference the tests hold the vector paths to).
    #[cfg(test)]
    Scalar,
    /// The AVX2 path where the machine has it (else the scalar loops), on a machine with
    /// AVX-512 too. Decoding has no AVX2 path: it is the scalar loops here.
    #[cfg(all(test, target_arch = "x86_64"))]
    Avx2,
}

/// The paths the tests compare with the scalar one.
#[cfg(test)]
const VECTOR_PATHS: &[Path] = &[
    Path::Fastest,
    #[cfg(target_arch = "x86_64")]
    Path::Avx2,
];

/// The contexts of a chunk common enough (one element in 1,024 or more) for a vector path to
/// try in every block, most common first, at most 16 (weights of one tensor span a few
/// exponents), from `counts` of `total` elements. They are tried in turn, each independent of
/// the others; the contexts left in a block are found one after another (the next one's lane
/// from the lanes left), a chain of dependent steps that made the loop latency-bound when it
/// found every context so. (One in 64 left a rare context in most blocks of weights: 10%
/// slower on the corpus.)
fn common_contexts(counts: &Counts, total: usize) -> Vec<u8> {
    let mut counted: Vec<(usize, u8)> = counts.iter().copied().zip(0u8..=255).filter(|&(elements, _)| elements * 1024 >= total && elements > 0).collect();
    counted.sort_unstable_by(|a, b| b.cmp(a));
    counted.iter().take(16).map(|&(_, context)| context).collect()
}

/// The elements of each run of a chunk of `count` elements whose runs start at `starts`.
fn run_counts(starts: &[usize; 256], count: usize) -> Counts {
    std::array::from_fn(|context| starts.get(context + 1).copied().unwrap_or(count) - starts[context])
}

/// Takes the next `taken` slots of context `this`: returns the first. Slots that would run
/// past the planes (only where a decoder was handed wrong runs) are not taken: `None`, the
/// cursor stays, and the check at the end of `decode_width` finds a run left short.
fn take_slots(next: &mut [usize; 256], this: u8, taken: usize, count: usize) -> Option<usize> {
    let cursor = next[usize::from(this)];
    if cursor.checked_add(taken).is_none_or(|end| end > count) {
        return None;
    }
    next[usize::from(this)] = cursor + taken;
    Some(cursor)
}

/// Whether [`encode`] supports this element width.
pub fn supports(width: usize) -> bool {
    matches!(width, 2 | 4 | 8)
}

const fn mask<const W: usize>() -> u64 {
    if W == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * W)) - 1
    }
}

const fn sign<const W: usize>() -> u64 {
    1u64 << (8 * W - 1)
}

fn load<const W: usize>(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word[..W].copy_from_slice(&bytes[..W]);
    u64::from_le_bytes(word)
}

/// Maps a float's bits to an integer with the same order (negative floats below positive):
/// negative values have every bit flipped, positive ones only the sign. Branch-free.
fn sortable<const W: usize>(bits: u64) -> u64 {
    let negative = (bits >> (8 * W - 1)) & 1;
    bits ^ ((negative.wrapping_neg() | sign::<W>()) & mask::<W>())
}

fn zigzag<const W: usize>(difference: u64) -> u64 {
    let shift = 64 - 8 * W as u32;
    let signed = ((difference << shift) as i64) >> shift;
    ((signed << 1) ^ (signed >> 63)) as u64 & mask::<W>()
}

/// The grouping context of a base element: its top byte after rotating left one bit.
fn context<const W: usize>(base_element: u64) -> usize {
    ((base_element >> (8 * W - 9)) & 0xff) as usize
}

/// The runs of the first `count` base elements: how many each context holds.
fn run_lengths<const W: usize>(base: &[u8], count: usize, path: Path) -> Counts {
    // The first elements are counted one by one; they tell the vector path, if any, which
    // contexts to try first in the elements after them.
    let mut counts = [0usize; 256];
    let sampled = count.min(SAMPLE_ELEMENTS);
    count_contexts::<W>(&base[..sampled * W], &mut counts);
    let sample = counts;
    let counted = sampled
        + match path {
            Path::Fastest => fast::count_blocks::<W>(&base[sampled * W..], count - sampled, &sample, &mut counts),
            #[cfg(test)]
            Path::Scalar => 0,
            #[cfg(all(test, target_arch = "x86_64"))]
            Path::Avx2 => avx2::count_blocks::<W>(&base[sampled * W..], count - sampled, &sample, &mut counts),
        };
    count_contexts::<W>(&base[counted * W..count * W], &mut counts);
    counts
}

/// Whether every context's cursor, `next`, has reached the end of its run: each element went to
/// its own context's run, and each run was filled.
fn runs_filled(next: &[usize; 256], starts: &[usize; 256], counts: &Counts) -> bool {
    (0..256).all(|context| next[context] == starts[context] + counts[context])
}

/// Where each run starts in the grouped order.
fn run_starts(counts: &Counts) -> [usize; 256] {
    let mut starts = [0usize; 256];
    let mut total = 0;
    for (start, count) in starts.iter_mut().zip(counts) {
        *start = total;
        total += count;
    }
    starts
}

/// Elements counted one by one before [`fast::count_blocks`] takes over.
const SAMPLE_ELEMENTS: usize = 1024;

/// Adds the contexts of the whole elements of `base` to `counts`.
fn count_contexts<const W: usize>(base: &[u8], counts: &mut [usize; 256]) {
    // Four tables counted in turn: consecutive equal contexts then do not wait on each
    // other's increment (the single-table histogram ran at a quarter of the speed).
    let mut tables = [[0usize; 256]; 4];
    let mut quads = base.chunks_exact(4 * W);
    for quad in &mut quads {
        for (lane, element) in quad.chunks_exact(W).enumerate() {
            tables[lane][context::<W>(load::<W>(element))] += 1;
        }
    }
    for element in quads.remainder().chunks_exact(W) {
        tables[0][context::<W>(load::<W>(element))] += 1;
    }
    for (context, count) in counts.iter_mut().enumerate() {
        *count += tables.iter().map(|table| table[context]).sum::<usize>();
    }
}

/// Calls `visit(element index, base element, slot)` for every whole element from `first` to
/// `count`, in order, where the slot is the element's place in the grouped order and `next`
/// holds each context's next slot (from [`run_starts`] when `first` is 0).
///
/// Elements go four at a time: the slots of equal contexts among the four are counted from the
/// cursors as loaded, so no element waits for the cursor its predecessor stored, which made
/// the one-at-a-time loop latency-bound.
fn for_each_slot<const W: usize>(base: &[u8], first: usize, count: usize, next: &mut [usize; 256], mut visit: impl FnMut(usize, u64, usize)) {
    let mut quads = base[first * W..count * W].chunks_exact(4 * W);
    let mut element = first;
    for quad in &mut quads {
        let bits: [u64; 4] = std::array::from_fn(|lane| load::<W>(&quad[lane * W..]));
        let contexts = bits.map(context::<W>);
        let cursors = contexts.map(|context| next[context]);
        let same = |a: usize, b: usize| usize::from(contexts[a] == contexts[b]);
        let slots = [
            cursors[0],
            cursors[1] + same(1, 0),
            cursors[2] + same(2, 0) + same(2, 1),
            cursors[3] + same(3, 0) + same(3, 1) + same(3, 2),
        ];
        for lane in 0..4 {
            // In order, so that of equal contexts the last (and largest) cursor stays.
            next[contexts[lane]] = slots[lane] + 1;
            visit(element + lane, bits[lane], slots[lane]);
        }
        element += 4;
    }
    for base_value in quads.remainder().chunks_exact(W) {
        let bits = load::<W>(base_value);
        let cursor = &mut next[context::<W>(bits)];
        visit(element, bits, *cursor);
        *cursor += 1;
        element += 1;
    }
}

/// Writes every byte of `out`, resized to the target's length; returns the runs.
fn encode_width<const W: usize>(target: &[u8], base: &[u8], path: Path, out: &mut Vec<u8>) -> Counts {
    let count = target.len().min(base.len()) / W;
    let whole = count * W;
    out.resize(target.len(), 0);
    let counts = run_lengths::<W>(base, count, path);
    let starts = run_starts(&counts);
    let mut next = starts;
    let first = match path {
        Path::Fastest => fast::encode_blocks::<W>(target, base, count, &mut next, out),
        #[cfg(test)]
        Path::Scalar => 0,
        #[cfg(all(test, target_arch = "x86_64"))]
        Path::Avx2 => avx2::encode_blocks::<W>(target, base, count, &mut next, out),
    };
    for_each_slot::<W>(base, first, count, &mut next, |element, base_bits, slot| {
        let value = load::<W>(&target[element * W..]);
        let bytes = zigzag::<W>(sortable::<W>(value).wrapping_sub(sortable::<W>(base_bits))).to_le_bytes();
        for plane in 0..W {
            out[plane * count + slot] = bytes[plane];
        }
    });
    out[whole..].copy_from_slice(&target[whole..]);
    xor_in_place(&mut out[whole..], base.get(whole..).unwrap_or_default());
    assert!(runs_filled(&next, &starts, &counts), "a run left unfilled");
    counts
}

/// Appends the stored differences of elements `first` to `count` to `out`, in element order:
/// each element takes the next slot of its context's run from `next`.
///
/// Elements go two at a time: where both have one context, the second's slot is counted from
/// the cursor as loaded rather than from the first's store (5-10% faster than one at a time
/// on the corpus pairs). A slot past the planes, which only wrong runs handed in can give, is
/// refused.
fn gather_differences<const W: usize>(planes: &[u8], base: &[u8], first: usize, count: usize, next: &mut [usize; 256], out: &mut Vec<u8>) -> Result<()> {
    let plane: [&[u8]; W] = std::array::from_fn(|p| &planes[p * count..(p + 1) * count]);
    // The stored bytes of one slot, in the low bytes of a word.
    let stored = |slot: usize| (0..W).fold(0u64, |word, p| word | u64::from(plane[p][slot]) << (8 * p));
    let runs_differ = || CodecError::FrameCorrupt("run lengths differ from the base's");
    let start = out.len();
    out.resize(start + (count - first) * W, 0);
    let bases = &base[first * W..count * W];
    let mut pairs = out[start..].chunks_exact_mut(2 * W);
    for (pair, base_pair) in (&mut pairs).zip(bases.chunks_exact(2 * W)) {
        let contexts = [context::<W>(load::<W>(base_pair)), context::<W>(load::<W>(&base_pair[W..]))];
        let slots = [next[contexts[0]], next[contexts[1]] + usize::from(contexts[0] == contexts[1])];
        if slots[0] >= count || slots[1] >= count {
            return Err(runs_differ());
        }
        next[contexts[0]] = slots[0] + 1;
        next[contexts[1]] = slots[1] + 1;
        pair[..W].copy_from_slice(&stored(slots[0]).to_le_bytes()[..W]);
        pair[W..].copy_from_slice(&stored(slots[1]).to_le_bytes()[..W]);
    }
    if let Some(last) = pairs.into_remainder().get_mut(..W) {
        let cursor = &mut next[context::<W>(load::<W>(&bases[bases.len() - W..]))];
        if *cursor >= count {
            return Err(runs_differ());
        }
        last.copy_from_slice(&stored(*cursor).to_le_bytes()[..W]);
        *cursor += 1;
    }
    Ok(())
}

/// Turns the stored differences in `elements` into the target's elements, given the base's: the
/// inverses of [`zigzag`] and of the difference of [`sortable`] images, spelt in the width's
/// own integer type. On u64 words, as those functions take them, the compiler vectorised this
/// loop in 64-bit lanes, which cost a quarter of a delta's decode time.
fn add_differences<const W: usize>(elements: &mut [u8], base: &[u8]) {
    macro_rules! in_lanes_of {
        ($lane:ty) => {{
            const SIGN: $lane = 1 << (<$lane>::BITS - 1);
            let read = |bytes: &[u8]| <$lane>::from_le_bytes(bytes.try_into().expect("chunks of the lane's width"));
            for (element, base_element) in elements.chunks_exact_mut(W).zip(base.chunks_exact(W)) {
                let stored = read(element);
                let difference = (stored >> 1) ^ (stored & 1).wrapping_neg();
                let base_bits = read(base_element);
                let value = (base_bits ^ ((base_bits >> (<$lane>::BITS - 1)).wrapping_neg() | SIGN)).wrapping_add(difference);
                let target = value ^ ((!value >> (<$lane>::BITS - 1)).wrapping_neg() | SIGN);
                element.copy_from_slice(&target.to_le_bytes());
            }
        }};
    }
    match W {
        2 => in_lanes_of!(u16),
        4 => in_lanes_of!(u32),
        _ => in_lanes_of!(u64),
    }
}

/// Appends the decoded bytes to `out`, which is empty.
///
/// Runs handed in may be wrong; no read then leaves the planes (the vector path takes a run
/// only while it stays within them, the gather refuses a slot past them), and any wrong run
/// ends another run than it began, which the check at the end finds.
fn decode_width<const W: usize>(planes: &[u8], base: &[u8], runs: Option<&Counts>, path: Path, out: &mut Vec<u8>) -> Result<()> {
    let count = planes.len().min(base.len()) / W;
    let whole = count * W;
    let counts = match runs {
        // No run over the elements (so that no sum below wraps), and together all of them.
        Some(runs) if runs.iter().any(|&run| run > count) || runs.iter().map(|&run| run as u64).sum::<u64>() != count as u64 => {
            return Err(CodecError::FrameCorrupt("run lengths do not add up to the elements"))
        }
        Some(runs) => *runs,
        None => run_lengths::<W>(base, count, path),
    };
    out.reserve(planes.len());
    let starts = run_starts(&counts);
    let mut next = starts;
    let first = match path {
        Path::Fastest => fast::decode_blocks::<W>(planes, base, count, &mut next, out),
        #[cfg(test)]
        Path::Scalar => 0,
        #[cfg(all(test, target_arch = "x86_64"))]
        Path::Avx2 => 0,
    };
    // For the elements left, first the stored differences, back in element order; then the
    // arithmetic, element by element in a loop of its own, which the compiler vectorises.
    gather_differences::<W>(planes, base, first, count, &mut next, out)?;
    out.extend_from_slice(&planes[whole..]);
    add_differences::<W>(&mut out[first * W..whole], &base[first * W..whole]);
    xor_in_place(&mut out[whole..], base.get(whole..).unwrap_or_default());
    // Every run ends where the next one starts exactly when the runs are the base's.
    if !runs_filled(&next, &starts, &counts) {
        return Err(CodecError::FrameCorrupt("run lengths differ from the base's"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
