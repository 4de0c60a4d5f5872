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
mod avx512;
mod lanes;
pub mod runs;

use runs::Counts;

/// The vector path where the machine has one (AVX-512 with VBMI2): it handles whole blocks of
/// elements from the first on, and says how many; the scalar loops below take the rest from
/// there. Elsewhere the scalar loops do it all: on AVX2 they were faster than the shuffles that
/// stood in for AVX-512's byte expand and compress (docs/benchmarks.md, stop 32).
mod fast {
    #[cfg(target_arch = "x86_64")]
    pub(super) use super::avx512::{count_blocks, decode_blocks, encode_blocks};

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) fn decode_blocks<const W: usize>(_: &[u8], _: &[u8], _: usize, _: &mut [usize; 256], _: &mut [u8]) -> usize {
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
/// replaces (its capacity is reused). `planes` is what the encoder wrote followed by
/// [`PLANES_ROOM`] bytes of any value, which spare the decoder a check per element. `runs` are
/// the runs the encoder returned, as the frame stores them, or `None` to count them from the
/// base; runs that are not the base's are refused (before any byte is read where they add up
/// to another number of elements, after otherwise).
pub fn decode_into(planes: &[u8], base: &[u8], width: usize, runs: Option<&Counts>, out: &mut Vec<u8>) -> Result<()> {
    assert!(planes.len() >= PLANES_ROOM, "the planes are handed with their room");
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
    /// The scalar loops alone (what the tests hold the vector path to).
    #[cfg(test)]
    Scalar,
}

/// The paths the tests compare with the scalar one.
#[cfg(test)]
const VECTOR_PATHS: &[Path] = &[Path::Fastest];

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

fn load<const W: usize>(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word[..W].copy_from_slice(&bytes[..W]);
    u64::from_le_bytes(word)
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

/// Bytes of elements an encode takes at a time (a multiple of 2 x 8 bytes, so that only the
/// last block can end in an odd element): their differences stay in the first-level cache
/// between the loop that computes them and the one that places them.
const BLOCK_BYTES: usize = 16 * 1024;

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

/// The slots of two elements in the grouped order, given their base elements (`base_pair`),
/// taken from `next`, each context's next slot. Where both have one context, the second's
/// slot is counted from the cursor as loaded rather than from the first's store, which it
/// would wait for (two at a time were 5-10% faster than one at a time on the corpus pairs).
/// `None`, the cursors left, for a slot past the `count` slots (the encoder's runs are counted
/// from the base it places by, so none is).
fn take_pair<const W: usize>(next: &mut [usize; 256], base_pair: &[u8], count: usize) -> Option<[usize; 2]> {
    let contexts = pair_contexts::<W>(base_pair);
    let slots = [next[contexts[0]], next[contexts[1]] + usize::from(contexts[0] == contexts[1])];
    if slots[0] >= count || slots[1] >= count {
        return None;
    }
    next[contexts[0]] = slots[0] + 1;
    next[contexts[1]] = slots[1] + 1;
    Some(slots)
}

/// The slot of the element whose base element is `base_element` (as [`take_pair`]).
fn take_one<const W: usize>(next: &mut [usize; 256], base_element: &[u8], count: usize) -> Option<usize> {
    take_slots(next, context::<W>(load::<W>(base_element)) as u8, 1, count)
}

/// [`lanes::differences`] on elements of W bytes.
fn differences<const W: usize>(target: &[u8], base: &[u8], out: &mut [u8]) {
    match W {
        2 => lanes::differences::<u16>(target, base, out),
        4 => lanes::differences::<u32>(target, base, out),
        _ => lanes::differences::<u64>(target, base, out),
    }
}

/// [`lanes::add_differences`] on elements of W bytes.
fn add_differences<const W: usize>(elements: &mut [u8], base: &[u8]) {
    match W {
        2 => lanes::add_differences::<u16>(elements, base),
        4 => lanes::add_differences::<u32>(elements, base),
        _ => lanes::add_differences::<u64>(elements, base),
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
    };
    // For the elements left, block by block: first the differences in element order, in a
    // loop the compiler vectorises; then each one's bytes to its slot in the planes.
    let mut ordered = [0u8; BLOCK_BYTES];
    let placed = (first * W..whole).step_by(BLOCK_BYTES).try_for_each(|start| {
        let end = whole.min(start + BLOCK_BYTES);
        let ordered = &mut ordered[..end - start];
        differences::<W>(&target[start..end], &base[start..end], ordered);
        scatter_differences::<W>(ordered, &base[start..end], count, &mut next, out)
    });
    out[whole..].copy_from_slice(&target[whole..]);
    xor_in_place(&mut out[whole..], base.get(whole..).unwrap_or_default());
    assert!(placed.is_some() && runs_filled(&next, &starts, &counts), "the runs counted from the base hold its elements");
    counts
}

/// Writes the bytes of each difference in `ordered` (elements in order, over the base elements
/// `base`) to its element's slot in each of the W planes of `count` slots at the start of
/// `planes`. `None` at a slot past them.
fn scatter_differences<const W: usize>(ordered: &[u8], base: &[u8], count: usize, next: &mut [usize; 256], planes: &mut [u8]) -> Option<()> {
    // One slice a plane, each `count` long.
    let mut split = planes[..W * count].chunks_exact_mut(count.max(1));
    let mut plane: [&mut [u8]; W] = std::array::from_fn(|_| split.next().unwrap_or_default());
    let mut pairs = ordered.chunks_exact(2 * W);
    for (pair, base_pair) in (&mut pairs).zip(base.chunks_exact(2 * W)) {
        let slots = take_pair::<W>(next, base_pair, count)?;
        for (p, bytes) in plane.iter_mut().enumerate() {
            bytes[slots[0]] = pair[p];
            bytes[slots[1]] = pair[W + p];
        }
    }
    if let Some(last) = pairs.remainder().get(..W) {
        let slot = take_one::<W>(next, &base[base.len() - W..], count)?;
        for (p, bytes) in plane.iter_mut().enumerate() {
            bytes[slot] = last[p];
        }
    }
    Some(())
}

/// Writes the stored difference of each element over `base` (whole base elements, in order)
/// to `out`, from its slot in each of the W planes of `count` slots at the start of `planes`,
/// which hold [`PLANES_ROOM`] bytes more. `ends` is where each context's run ends. `None` where
/// a cursor is past its run's end before a block (only wrong runs handed to a decoder do
/// that; the caller checks the cursors after the last block).
///
/// The planes are read without a check per element: before every [`CHECKED_EVERY`] elements
/// the cursors are checked against the ends of their runs, which are at most `count`, and a
/// block moves a cursor by fewer slots than the room past the last plane.
fn gather_differences<const W: usize>(planes: &[u8], base: &[u8], count: usize, next: &mut [usize; 256], ends: &[usize; 256], out: &mut [u8]) -> Option<()> {
    assert!(planes.len() >= W * count + PLANES_ROOM && base.len() == out.len() && ends.iter().all(|&end| end <= count));
    // The stored bytes of one slot, in the low bytes of a word.
    let plane: [*const u8; W] = std::array::from_fn(|p| planes[p * count..].as_ptr());
    let stored = |slot: usize| {
        // SAFETY: `slot` is below `count + PLANES_ROOM` (above), so the byte of the last plane
        // is within `planes`, and those of the others are before it.
        (0..W).fold(0u64, |word, p| word | u64::from(unsafe { *plane[p].add(slot) }) << (8 * p))
    };
    for (block, base_block) in out.chunks_mut(CHECKED_EVERY * W).zip(base.chunks(CHECKED_EVERY * W)) {
        // (Every cursor compared, without a branch each, which the compiler vectorises.)
        if next.iter().zip(ends).fold(false, |past, (cursor, end)| past | (cursor > end)) {
            return None;
        }
        let mut pairs = block.chunks_exact_mut(2 * W);
        for (pair, base_pair) in (&mut pairs).zip(base_block.chunks_exact(2 * W)) {
            let contexts = pair_contexts::<W>(base_pair);
            // Where both have one context, the second's slot is counted from the cursor as
            // loaded rather than from the first's store, which it would wait for.
            let slots = [next[contexts[0]], next[contexts[1]] + usize::from(contexts[0] == contexts[1])];
            next[contexts[0]] = slots[0] + 1;
            next[contexts[1]] = slots[1] + 1;
            if W <= 4 {
                // One store for the pair.
                let both = stored(slots[0]) | stored(slots[1]) << (8 * W % 64);
                pair.copy_from_slice(&both.to_le_bytes()[..2 * W]);
            } else {
                pair[..W].copy_from_slice(&stored(slots[0]).to_le_bytes()[..W]);
                pair[W..].copy_from_slice(&stored(slots[1]).to_le_bytes()[..W]);
            }
        }
        if let Some(last) = pairs.into_remainder().get_mut(..W) {
            let this = context::<W>(load::<W>(&base_block[base_block.len() - W..]));
            last.copy_from_slice(&stored(next[this]).to_le_bytes()[..W]);
            next[this] += 1;
        }
    }
    Some(())
}

/// The contexts of the two base elements of `base_pair`, from one load where they fit in a
/// word (as [`context`]: loaded one at a time, the compiler worked out both in a vector
/// register, whose move back to the cursors' addresses lengthened every element's wait).
fn pair_contexts<const W: usize>(base_pair: &[u8]) -> [usize; 2] {
    if W <= 4 {
        let mut word = [0u8; 8];
        word[..2 * W].copy_from_slice(&base_pair[..2 * W]);
        let word = u64::from_le_bytes(word);
        [((word >> (8 * W - 9)) & 0xff) as usize, ((word >> (16 * W - 9)) & 0xff) as usize]
    } else {
        [context::<W>(load::<W>(base_pair)), context::<W>(load::<W>(&base_pair[W..]))]
    }
}

/// Elements a decode places between two checks of its cursors (see [`gather_differences`]).
const CHECKED_EVERY: usize = 2048;

/// Bytes the planes handed to [`decode_into`] must hold past the planes and their tail.
pub const PLANES_ROOM: usize = CHECKED_EVERY;

/// Why runs handed to the decoder are refused when they add up right but are not the base's.
const RUNS_DIFFER: &str = "run lengths differ from the base's";

/// Writes the decoded bytes over `out`, resized to the planes' length.
///
/// Runs handed in may be wrong; no read then leaves the planes and their room (the vector path
/// takes a run only while it stays within the planes, the scalar loop checks the cursors as it
/// goes), and any wrong run ends another run than it began, which the check at the end finds.
fn decode_width<const W: usize>(planes: &[u8], base: &[u8], runs: Option<&Counts>, path: Path, out: &mut Vec<u8>) -> Result<()> {
    let planes_len = planes.len() - PLANES_ROOM;
    let count = planes_len.min(base.len()) / W;
    let whole = count * W;
    let counts = match runs {
        // No run over the elements (so that no sum below wraps), and together all of them.
        Some(runs) if runs.iter().any(|&run| run > count) || runs.iter().map(|&run| run as u64).sum::<u64>() != count as u64 => {
            return Err(CodecError::FrameCorrupt("run lengths do not add up to the elements"))
        }
        Some(runs) => *runs,
        None => run_lengths::<W>(base, count, path),
    };
    // Every byte is written below: of a reused buffer only the bytes past its length are zeroed.
    out.resize(planes_len, 0);
    let starts = run_starts(&counts);
    let ends: [usize; 256] = std::array::from_fn(|context| starts[context] + counts[context]);
    let mut next = starts;
    let first = match path {
        Path::Fastest => fast::decode_blocks::<W>(planes, base, count, &mut next, out),
        #[cfg(test)]
        Path::Scalar => 0,
    };
    // For the elements left, first the stored differences, back in element order; then the
    // arithmetic, in a loop of its own, which the compiler vectorises.
    gather_differences::<W>(planes, &base[first * W..whole], count, &mut next, &ends, &mut out[first * W..whole]).ok_or(CodecError::FrameCorrupt(RUNS_DIFFER))?;
    out[whole..].copy_from_slice(&planes[whole..planes_len]);
    add_differences::<W>(&mut out[first * W..whole], &base[first * W..whole]);
    xor_in_place(&mut out[whole..], base.get(whole..).unwrap_or_default());
    // Every run ends where the next one starts exactly when the runs are the base's.
    if next != ends {
        return Err(CodecError::FrameCorrupt(RUNS_DIFFER));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
