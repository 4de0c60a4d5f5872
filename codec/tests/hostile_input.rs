//! A bounded fuzz harness (proptest) over the two decoders that see untrusted bytes: the
//! safetensors layout parser and the frame decoder. It runs in CI with the rest of the tests;
//! `PROPTEST_CASES=1000000 cargo test -p tensorgate-codec --release --test hostile_input` runs it
//! for longer.

use proptest::prelude::*;
use tensorgate_codec::{decode_frame, encode_chunk, parse_file, BaseChunk, ContentHash, Dtype};

/// A valid two-tensor file to mutate.
fn sample_file() -> Vec<u8> {
    let header = br#"{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},"b":{"dtype":"I64","shape":[2],"data_offsets":[12,28]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend((0..28u8).map(|i| i.wrapping_mul(37)));
    file
}

/// Checks the promises of a layout the parser accepted: spans in bounds, sorted, disjoint.
fn assert_layout_sound(file: &[u8]) {
    if let Ok(layout) = parse_file(file) {
        let data_len = file.len() as u64 - layout.data_start;
        let mut previous_end = 0;
        for tensor in layout.tensors.iter().filter(|t| !t.is_empty()) {
            assert!(tensor.start >= previous_end && tensor.end <= data_len);
            assert_eq!(tensor.len(), tensor.shape.iter().product::<u64>() * tensor.dtype.size() as u64);
            previous_end = tensor.end;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn layout_parser_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        assert_layout_sound(&bytes);
    }

    #[test]
    fn layout_parser_survives_mutated_files(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
                                            cut in any::<usize>()) {
        let mut file = sample_file();
        for (position, value) in flips {
            let len = file.len();
            file[position % len] = value;
        }
        assert_layout_sound(&file);
        let cut = cut % (file.len() + 1);
        assert_layout_sound(&file[..cut]);
    }

    #[test]
    fn frame_decoder_survives_mutated_frames(raw in proptest::collection::vec(any::<u8>(), 0..3000),
                                             flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
                                             cut in any::<usize>()) {
        let base: Vec<u8> = raw.iter().map(|b| b ^ 1).collect();
        let base_chunk = BaseChunk { hash: ContentHash::of(&base), bytes: &base };
        let mut frame = encode_chunk(&raw, Dtype::BF16, Some((base_chunk, Dtype::BF16))).unwrap();
        let len = frame.len();
        for (position, value) in flips {
            frame[position % len] = value;
        }
        // A mutated frame either decodes to exactly the original bytes (the flip hit a byte
        // that does not matter, such as a stored plane's unused value) or is refused.
        if let Ok(decoded) = decode_frame(&frame, Some(base_chunk)) {
            prop_assert_eq!(decoded, raw.clone());
        }
        let cut = cut % (len + 1);
        if let Ok(decoded) = decode_frame(&frame[..cut], Some(base_chunk)) {
            prop_assert_eq!(decoded, raw);
        }
    }
}

/// BF16 weights dequantized from int4 in groups of 16, which the encoder codes as levels.
fn int4_dequantized(values: &[f32]) -> Vec<u8> {
    values
        .chunks(16)
        .flat_map(|group| {
            let scale = group.iter().fold(1e-6f32, |m, v| m.max(v.abs())) / 7.0;
            group.iter().map(move |v| (v / scale).round().clamp(-8.0, 7.0) * scale).collect::<Vec<_>>()
        })
        .flat_map(|v| tensorgate_codec::cast::f32_to_bf16(v.to_bits()).to_le_bytes())
        .collect()
}

proptest! {
    #[test]
    fn converted_and_levels_frames_survive_mutation(values in proptest::collection::vec(-1.0f32..1.0, 64..1500),
                                                    flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
                                                    cut in any::<usize>()) {
        // A cast of a wider base (frame version 2) and a chunk of levels (codec 3), mutated.
        let wide: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let wide_chunk = BaseChunk { hash: ContentHash::of(&wide), bytes: &wide };
        let cast = tensorgate_codec::Cast::F32ToF16.apply(&wide);
        let levels = int4_dequantized(&values);
        let frames = [
            (encode_chunk(&cast, Dtype::F16, Some((wide_chunk, Dtype::F32))).unwrap(), cast, Some(wide_chunk)),
            (encode_chunk(&levels, Dtype::BF16, None).unwrap(), levels, None),
        ];
        for (mut frame, raw, base) in frames {
            let len = frame.len();
            for (position, value) in &flips {
                frame[position % len] = *value;
            }
            if let Ok(decoded) = decode_frame(&frame, base) {
                prop_assert_eq!(&decoded, &raw);
            }
            if let Ok(decoded) = decode_frame(&frame[..cut % (len + 1)], base) {
                prop_assert_eq!(&decoded, &raw);
            }
        }
    }
}

/// BF16 weights of `count` elements, a few exponents, from `seed`.
fn bf16_weights(count: usize, seed: u32) -> Vec<u8> {
    (0..count as u32)
        .flat_map(|i| {
            let noise = (i.wrapping_mul(2_654_435_761) ^ seed) % 2001;
            let value = 0.02f32 * (noise as f32 / 1000.0 - 1.0);
            ((value.to_bits() >> 16) as u16).to_le_bytes()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A delta large enough to store its runs (frame version 5), mutated anywhere or in its runs
    /// record (which follows the 80-byte header), decodes to its bytes or is refused.
    #[test]
    fn frames_with_stored_runs_survive_mutation(count in 16_384usize..20_000,
                                                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
                                                in_record: bool) {
        let base = bf16_weights(count, 7);
        let raw: Vec<u8> = base.iter().enumerate().map(|(i, byte)| if i % 6 == 0 { byte ^ 1 } else { *byte }).collect();
        let base_chunk = BaseChunk { hash: ContentHash::of(&base), bytes: &base };
        let mut frame = encode_chunk(&raw, Dtype::BF16, Some((base_chunk, Dtype::BF16))).unwrap();
        prop_assert_eq!(frame[4], 5, "a version-5 frame");
        let len = frame.len();
        for (position, value) in flips {
            let at = if in_record { 80 + position % 40 } else { position % len };
            frame[at] = value;
        }
        if let Ok(decoded) = decode_frame(&frame, Some(base_chunk)) {
            prop_assert_eq!(decoded, raw);
        }
    }
}
