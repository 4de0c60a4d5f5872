use super::*;
use proptest::prelude::*;

/// The plane's record as (mode, body).
fn compress_plane(plane: &[u8]) -> (u8, Vec<u8>) {
    match compressed_plane(plane) {
        Some(bytes) => (PLANE_ZSTD, bytes),
        None => (PLANE_STORED, plane.to_vec()),
    }
}

fn decompress(bytes: &[u8], raw_len: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    decompress_into_vec(bytes, raw_len, &mut out).map(|()| out)
}

/// A plane of segments (kind, length, seed): zeros, bytes of a 4-value alphabet, or any
/// bytes.
fn segmented_plane(segments: &[(u8, usize, u64)]) -> Vec<u8> {
    let mut plane = Vec::new();
    for &(kind, len, seed) in segments {
        let mut state = seed | 1;
        plane.extend((0..len).map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            match kind {
                0 => 0,
                1 => (state % 4) as u8,
                _ => state as u8,
            }
        }));
    }
    plane
}

/// Where the floor is tight: a last block of 7 to 9 equal bytes, which zstd writes as a run
/// block of 4 bytes, after blocks of zeros. What the frame takes over the floor is then
/// known to the byte: its header (9 bytes against the floor's 6), 2 bytes a block of zeros
/// (their run of literals needs a 3-byte size, the floor counts 1) and the rounding
/// allowance; counting the last block any other way fails here.
#[test]
fn the_literal_floor_is_tight_where_zstd_writes_a_run_block() {
    let block = zstd_sys::ZSTD_BLOCKSIZE_MAX as usize;
    for tail in 7..=9 {
        for zero_blocks in [1, 2] {
            let mut plane = vec![0u8; zero_blocks * block];
            plane.extend(std::iter::repeat_n(3u8, tail));
            let floor = Histogram::of(&plane).literal_floor_bytes;
            let literals = literals_only(&plane).unwrap().len() as f64;
            let known_slack = 3.0 + 2.0 * zero_blocks as f64 + 1.0;
            assert_eq!(literals - floor, known_slack, "{literals} bytes against the floor {floor} ({zero_blocks} blocks of zeros, {tail} bytes)");
        }
    }
}

#[test]
fn memoryless_planes_use_literals_and_runs_use_matches() {
    let skewed: Vec<u8> = (0..100_000u32).map(|i| [120u8, 121, 122, 119, 123, 118][(i.wrapping_mul(2_654_435_761) >> 29) as usize % 6]).collect();
    let (mode, bytes) = compress_plane(&skewed);
    assert_eq!(mode, PLANE_ZSTD);
    assert!(bytes.len() < skewed.len() * 35 / 100, "{} of {}", bytes.len(), skewed.len());
    let runs = vec![0u8; 100_000];
    let (_, bytes) = compress_plane(&runs);
    assert!(bytes.len() < 100);
}

#[test]
fn opaque_bytes_are_judged_on_a_sample_of_them() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let random: Vec<u8> = (0..300_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    assert!(compress_opaque(&random).is_none(), "random bytes are stored");
    let text: Vec<u8> = b"{\"token\": 1, \"word\": \"tensor\"},\n".iter().copied().cycle().take(300_000).collect();
    let compressed = compress_opaque(&text).expect("text compresses");
    assert_eq!(decompress(&compressed, text.len()).unwrap(), text);
}

proptest! {
    #[test]
    fn histograms_count_every_byte(bytes in proptest::collection::vec(any::<u8>(), 0..5000), zeros in 0usize..300, at in 0usize..5000) {
        // A run of zeros somewhere, for the lines counted whole.
        let mut bytes = bytes;
        let at = at.min(bytes.len());
        bytes.splice(at..at, std::iter::repeat_n(0u8, zeros));
        let histogram = Histogram::of(&bytes);
        for value in 0..=255u8 {
            prop_assert_eq!(histogram.counts[value as usize] as usize, bytes.iter().filter(|byte| **byte == value).count());
        }
        prop_assert_eq!(histogram.total, bytes.len());
    }

    #[test]
    fn opaque_bytes_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..20_000), repeats in 1usize..8) {
        let bytes = bytes.repeat(repeats);
        if let Some(compressed) = compress_opaque(&bytes) {
            prop_assert!(compressed.len() < bytes.len());
            prop_assert_eq!(decompress(&compressed, bytes.len()).unwrap(), bytes);
        }
    }

    /// Planes of runs and of bytes from small and large alphabets, some over several zstd
    /// blocks: no Huffman coding of them goes under the floor, so skipping the literals when
    /// the matches are under it keeps the smallest body.
    #[test]
    fn the_literal_floor_holds_and_the_smallest_body_is_kept(segments in proptest::collection::vec((0u8..3, 1usize..60_000, any::<u64>()), 1..12)) {
        let plane = segmented_plane(&segments);
        let histogram = Histogram::of(&plane);
        let literals = literals_only(&plane).expect("zstd takes any plane");
        prop_assert!(literals.len() as f64 >= histogram.literal_floor_bytes, "{} under the floor {}", literals.len(), histogram.literal_floor_bytes);
        // This thread's kept context gives what a fresh one gives.
        let matched = with_matching_compressor(&plane).expect("zstd takes any plane");
        prop_assert_eq!(&matched, &zstd::bulk::compress(&plane, ZSTD_LEVEL).unwrap());
        // What trying every candidate keeps: matches only where they are strictly smaller
        // (ties go to the literals), stored unless a candidate is smaller than the plane.
        let tried = if histogram.most_common_share() > RUNS_LIKELY && matched.len() < literals.len() { matched } else { literals };
        let expected = if tried.len() < plane.len() { (PLANE_ZSTD, tried) } else { (PLANE_STORED, plane.clone()) };
        if histogram.entropy_bits() <= INCOMPRESSIBLE_BITS {
            prop_assert_eq!(compress_plane(&plane), expected);
        }
    }

    #[test]
    fn planes_round_trip(plane in proptest::collection::vec(any::<u8>(), 0..3000), zeros in 0usize..3000) {
        let mut plane = plane;
        plane.extend(std::iter::repeat_n(0u8, zeros));
        let (mode, bytes) = compress_plane(&plane);
        let back = if mode == PLANE_ZSTD { decompress(&bytes, plane.len()).unwrap() } else { bytes };
        prop_assert_eq!(back, plane);
    }
}
