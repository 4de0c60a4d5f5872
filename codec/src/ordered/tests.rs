//! The ordered delta's tests: the transform's bytes, and every vector path held to the scalar
//! loops.

use super::*;
use proptest::prelude::*;

#[test]
fn neighbouring_floats_differ_by_one() {
    let base = 1.0f32.to_le_bytes();
    let above = f32::from_bits(1.0f32.to_bits() + 1).to_le_bytes();
    assert_eq!(encode(&above, &base, 4), [2, 0, 0, 0], "+1 zigzags to 2, all in plane 0");
    let below = (-0.0f32).to_le_bytes();
    assert_eq!(encode(&below, &0.0f32.to_le_bytes(), 4), [1, 0, 0, 0], "-0 is one step below +0");
}

#[test]
fn elements_are_grouped_by_base_exponent() {
    let base: Vec<u8> = [1.0f32, 1000.0, 1.5].iter().flat_map(|v| v.to_le_bytes()).collect();
    let target: Vec<u8> = [1.0f32, 1000.0, 1.5].iter().flat_map(|v| f32::from_bits(v.to_bits() + 3).to_le_bytes()).collect();
    let planes = encode(&target, &base, 4);
    assert_eq!(&planes[..3], &[6, 6, 6], "every difference is +3");
}

/// The next number of a xorshift generator (whose state is never 0).
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// `count` floats of `width` bytes as weights are (a few exponents), their magnitude
/// ten times larger in the second half (so that the first elements are a poor sample of
/// the contexts), one in 40 of them random bits (rare contexts); and the same moved by a
/// few units in the last place.
fn weights(seed: u64, count: usize, width: usize) -> (Vec<u8>, Vec<u8>) {
    let mut state = seed | 1;
    let mut next = move || xorshift(&mut state);
    let (mut base, mut moved) = (Vec::new(), Vec::new());
    for element in 0..count {
        let scale = if element < count / 2 { 1e-5 } else { 1e-4 };
        let value = ((next() % 2001) as f32 - 1000.0) * scale;
        let bits = if next() % 40 == 0 { next() as u32 } else { value.to_bits() };
        let bits = if width == 2 { u64::from(bits >> 16) } else { u64::from(bits) };
        let step = (next() % 7) as i64 - 3;
        let limit = if width == 2 { 0xffff } else { 0xffff_ffff };
        base.extend(&bits.to_le_bytes()[..width]);
        moved.extend(&(bits as i64 + step).clamp(0, limit).to_le_bytes()[..width]);
    }
    (base, moved)
}

fn encode(target: &[u8], base: &[u8], width: usize) -> Vec<u8> {
    encode_with_runs(target, base, width).0
}

fn encode_with_runs(target: &[u8], base: &[u8], width: usize) -> (Vec<u8>, Counts) {
    let mut out = vec![0x55; 5];
    let runs = encode_into(target, base, width, &mut out);
    (out, runs)
}

/// The transform as the module's documentation defines it, element by element and with a
/// stable sort: what the loops, scalar and vector, are held to. Returns the planes (then the
/// tail) and the runs.
fn reference_encode(target: &[u8], base: &[u8], width: usize) -> (Vec<u8>, Counts) {
    let count = target.len().min(base.len()) / width;
    let bits = 8 * width as u32;
    let mask = u64::MAX >> (64 - bits);
    let element = |bytes: &[u8], i: usize| bytes[i * width..(i + 1) * width].iter().rev().fold(0u64, |word, &byte| word << 8 | u64::from(byte));
    // Negative floats have every bit flipped, positive ones only the sign.
    let sortable = |bits_of: u64| if bits_of >> (bits - 1) == 1 { !bits_of & mask } else { bits_of | 1 << (bits - 1) };
    let context = |i: usize| ((element(base, i) >> (bits - 9)) & 0xff) as usize;
    let mut order: Vec<usize> = (0..count).collect();
    order.sort_by_key(|&i| context(i));
    let mut runs = [0usize; 256];
    for i in 0..count {
        runs[context(i)] += 1;
    }
    let zigzagged: Vec<u64> = (0..count)
        .map(|i| {
            let difference = sortable(element(target, i)).wrapping_sub(sortable(element(base, i))) & mask;
            let negative = difference >> (bits - 1) == 1;
            if negative { ((!difference & mask) << 1 | 1) & mask } else { difference << 1 & mask }
        })
        .collect();
    let mut out: Vec<u8> = (0..width).flat_map(|plane| order.iter().map(|&i| (zigzagged[i] >> (8 * plane)) as u8).collect::<Vec<_>>()).collect();
    for (at, &byte) in target.iter().enumerate().skip(count * width) {
        out.push(byte ^ base.get(at).copied().unwrap_or(0));
    }
    (out, runs)
}

/// The encode of `path` alone: the planes and the runs.
fn encode_on(path: Path, target: &[u8], base: &[u8], width: usize) -> (Vec<u8>, Counts) {
    let mut out = Vec::new();
    let runs = match width {
        2 => encode_width::<2>(target, base, path, &mut out),
        4 => encode_width::<4>(target, base, path, &mut out),
        _ => encode_width::<8>(target, base, path, &mut out),
    };
    (out, runs)
}

fn decode(planes: &[u8], base: &[u8], width: usize) -> Vec<u8> {
    decode_with(planes, base, width, None).unwrap()
}

fn decode_with(planes: &[u8], base: &[u8], width: usize, runs: Option<&Counts>) -> Result<Vec<u8>> {
    // Longer than the result: a byte the decode did not write would show as 0x55.
    let mut out = vec![0x55; planes.len() + 3];
    decode_into(&with_room(planes), base, width, runs, &mut out).map(|()| out)
}

/// The planes followed by the room a decode is handed them with, of bytes no decode may use.
fn with_room(planes: &[u8]) -> Vec<u8> {
    [planes, &[0xa5; PLANES_ROOM]].concat()
}

/// The decode of `path` alone.
fn decode_on(path: Path, planes: &[u8], base: &[u8], width: usize, runs: Option<&Counts>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let planes = &with_room(planes);
    match width {
        2 => decode_width::<2>(planes, base, runs, path, &mut out),
        4 => decode_width::<4>(planes, base, runs, path, &mut out),
        _ => decode_width::<8>(planes, base, runs, path, &mut out),
    }
    .map(|()| out)
}

/// The runs `path` counts in the first `count` elements of `base`.
fn runs_on(path: Path, base: &[u8], count: usize, width: usize) -> Counts {
    match width {
        2 => run_lengths::<2>(base, count, path),
        4 => run_lengths::<4>(base, count, path),
        _ => run_lengths::<8>(base, count, path),
    }
}

/// Chunks that end just before, at and just after the encoder's blocks of `BLOCK_BYTES`, in
/// each width, give the bytes of the definition on every path. The scalar loops cross blocks
/// here; where AVX-512 takes most elements, its path leaves the block loop only a remainder.
#[test]
fn chunks_around_a_block_give_the_bytes_of_the_definition() {
    for width in [2, 4, 8] {
        let block = BLOCK_BYTES / width;
        for count in [block - 1, block, block + 1, 2 * block, 2 * block + 1] {
            let (base, target) = weights(count as u64 + width as u64, count, width);
            let (expected, runs) = reference_encode(&target, &base, width);
            for &path in VECTOR_PATHS.iter().chain([&Path::Scalar]) {
                assert_eq!(encode_on(path, &target, &base, width), (expected.clone(), runs), "{path:?}, width {width}, {count} elements");
                assert_eq!(decode_on(path, &expected, &base, width, Some(&runs)).unwrap(), target, "{path:?}, width {width}, {count} elements");
            }
        }
    }
}

#[test]
fn vector_and_scalar_paths_agree_on_weights() {
    for &path in VECTOR_PATHS {
        for width in [2, 4] {
            for count in [0, 31, 32, 33, 63, 64, 65, 1000, 1024 + 64, 4096 + 17, 100_003] {
                let (base, target) = weights(count as u64 + width as u64, count, width);
                let runs = runs_on(path, &base, count, width);
                assert_eq!(runs, runs_on(Path::Scalar, &base, count, width), "runs, {path:?}, width {width}, {count} elements");
                let (planes, encoded_runs) = encode_on(path, &target, &base, width);
                assert_eq!(encoded_runs, runs, "the runs the encoder returns, {path:?}, width {width}, {count} elements");
                assert_eq!(planes, encode_on(Path::Scalar, &target, &base, width).0, "encode, {path:?}, width {width}, {count} elements");
                for stored in [None, Some(&runs)] {
                    assert_eq!(decode_on(Path::Scalar, &planes, &base, width, stored).unwrap(), target, "scalar decode, width {width}, {count} elements");
                    assert_eq!(decode_on(path, &planes, &base, width, stored).unwrap(), target, "decode, {path:?}, width {width}, {count} elements");
                }
            }
        }
    }
}

/// Runs whose sum wraps round to the elements are refused by every path, before any
/// plane byte is read from a cursor they would set.
#[test]
fn runs_that_wrap_round_are_refused() {
    let (base, target) = weights(3, 64, 2);
    let (planes, _) = encode_on(Path::Scalar, &target, &base, 2);
    let mut runs = [0usize; 256];
    runs[0] = usize::MAX;
    runs[1] = 65;
    for &path in VECTOR_PATHS.iter().chain([&Path::Scalar]) {
        assert!(decode_on(path, &planes, &base, 2, Some(&runs)).is_err(), "{path:?}");
    }
}

/// Runs that start the one context the base holds at its last slot: every element then reads
/// past the planes' end, into the room after them, until the cursors are next checked; the
/// decode is refused, by every path, for each width. (Run under valgrind, a room shorter than
/// a check's span shows as a read past the buffer.)
#[test]
fn runs_that_send_a_cursor_past_the_planes_are_refused() {
    for width in [2usize, 4, 8] {
        let count = 5000;
        let base: Vec<u8> = (0..count).flat_map(|_| 1.5f64.to_bits().to_le_bytes()[8 - width..].to_vec()).collect();
        let target: Vec<u8> = (0..count * width).map(|i| i as u8).collect();
        let (planes, runs) = encode_on(Path::Scalar, &target, &base, width);
        let held = runs.iter().position(|&run| run > 0).unwrap();
        assert_eq!(runs[held], count);
        let mut wrong = [0usize; 256];
        wrong[held - 1] = count - 1;
        wrong[held] = 1;
        for &path in VECTOR_PATHS.iter().chain([&Path::Scalar]) {
            assert_eq!(decode_on(path, &planes, &base, width, Some(&wrong)), Err(CodecError::FrameCorrupt(RUNS_DIFFER)), "{path:?}, width {width}");
        }
    }
}

/// Bases whose contexts come in stretches (of one element to whole blocks and more, as in
/// tensors of zeros or of one magnitude): every lane of a block, or of half of one, may
/// hold one context.
#[test]
fn vector_and_scalar_paths_agree_where_contexts_come_in_stretches() {
    for &path in VECTOR_PATHS {
        for width in [2, 4] {
            for longest in [1usize, 16, 17, 40, 200] {
                let (mut base, target) = weights(longest as u64 * 7 + width as u64, 20_000, width);
                let mut at = 0;
                let mut stretch = 0usize;
                while at < base.len() / width {
                    stretch = (stretch * 31 + 7) % longest + 1;
                    let value = base[at * width..(at + 1) * width].to_vec();
                    for element in at..(at + stretch).min(base.len() / width) {
                        base[element * width..(element + 1) * width].copy_from_slice(&value);
                    }
                    at += stretch;
                }
                let (planes, runs) = encode_on(path, &target, &base, width);
                assert_eq!(planes, encode_on(Path::Scalar, &target, &base, width).0, "encode, {path:?}, width {width}, stretches up to {longest}");
                for stored in [None, Some(&runs)] {
                    assert_eq!(decode_on(path, &planes, &base, width, stored).unwrap(), target, "decode, {path:?}, width {width}, stretches up to {longest}");
                }
            }
        }
    }
}

proptest! {
    #[test]
    fn decode_inverts_encode(target in proptest::collection::vec(any::<u8>(), 0..12_000),
                             base in proptest::collection::vec(any::<u8>(), 0..12_000),
                             width in proptest::sample::select(vec![2usize, 4, 8])) {
        prop_assert_eq!(decode(&encode(&target, &base, width), &base, width), target);
    }

    #[test]
    fn vector_paths_give_the_scalar_bytes(target in proptest::collection::vec(any::<u8>(), 0..12_000),
                                          base in proptest::collection::vec(any::<u8>(), 0..12_000),
                                          width in proptest::sample::select(vec![2usize, 4])) {
        let (scalar, _) = encode_on(Path::Scalar, &target, &base, width);
        for &path in VECTOR_PATHS {
            let (planes, _) = encode_on(path, &target, &base, width);
            prop_assert_eq!(&planes, &scalar, "{:?}", path);
            prop_assert_eq!(decode_on(path, &planes, &base, width, None).unwrap(), decode_on(Path::Scalar, &planes, &base, width, None).unwrap());
        }
    }

    #[test]
    fn every_path_writes_the_bytes_of_the_definition(seed in any::<u64>(), count in 0usize..20_000,
                                                     width in proptest::sample::select(vec![2usize, 4, 8]),
                                                     random in any::<bool>(), tail in 0usize..8, beyond in 0usize..8) {
        let (mut base, mut target) = weights(seed, count, width);
        if random {
            // The same lengths, every byte random: any context, any difference.
            let mut state = seed | 1;
            for byte in base.iter_mut().chain(target.iter_mut()) {
                *byte = xorshift(&mut state) as u8;
            }
        }
        // Bytes past the whole elements: in the target alone, or in both (XORed in the tail).
        target.extend((0..tail).map(|i| i as u8));
        base.extend((0..beyond).map(|i| 0xa0 | i as u8));
        let (expected, runs) = reference_encode(&target, &base, width);
        for &path in VECTOR_PATHS.iter().chain([&Path::Scalar]) {
            prop_assert_eq!(&encode_on(path, &target, &base, width), &(expected.clone(), runs), "{:?}", path);
            for stored in [None, Some(&runs)] {
                prop_assert_eq!(&decode_on(path, &expected, &base, width, stored).unwrap(), &target, "{:?}, runs {:?}", path, stored.is_some());
            }
        }
    }

    /// Runs handed to the decoder that are not the base's are refused by both paths, never
    /// read past the planes, and the right ones give the target.
    #[test]
    fn wrong_runs_are_refused(seed in any::<u64>(), count in 0usize..5000, width in proptest::sample::select(vec![2usize, 4, 8]),
                              moves in proptest::collection::vec((any::<u8>(), any::<u8>(), 1usize..200), 1..4)) {
        let (base, target) = weights(seed, count, width);
        let (planes, runs) = encode_with_runs(&target, &base, width);
        prop_assert_eq!(decode_with(&planes, &base, width, Some(&runs)).unwrap(), target);
        let held: Vec<usize> = (0..256).filter(|&context| runs[context] > 0).collect();
        prop_assume!(!held.is_empty());
        let mut wrong = runs;
        for (from, to, elements) in moves {
            let from = held[usize::from(from) % held.len()];
            let moved = elements.min(wrong[from]);
            wrong[from] -= moved;
            wrong[usize::from(to)] += moved;
        }
        prop_assume!(wrong != runs);
        prop_assert!(decode_with(&planes, &base, width, Some(&wrong)).is_err());
        for &path in VECTOR_PATHS.iter().chain([&Path::Scalar]) {
            prop_assert!(decode_on(path, &planes, &base, width, Some(&wrong)).is_err(), "{:?}", path);
        }
        wrong[0] += 1;
        prop_assert!(decode_with(&planes, &base, width, Some(&wrong)).is_err(), "runs adding up to another number");
    }
}
