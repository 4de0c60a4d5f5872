//! Round trips and sizes of the chunk encoder (`encode`).

use super::*;
use crate::decode::{decode_frame, decode_frame_into, decode_frame_unchecked_into};
use crate::frame::FIXED_HEADER_LEN;
use proptest::prelude::*;

fn dtype_strategy() -> impl Strategy<Value = Dtype> {
    proptest::sample::select(Dtype::ALL.to_vec())
}

/// Bytes that look like bf16 weights near 0.02, so that planes and zstd are exercised.
fn weights(count: usize, seed: u32) -> Vec<u8> {
    (0..count as u32)
        .flat_map(|i| {
            let noise = (i.wrapping_mul(2_654_435_761) ^ seed) % 1000;
            let value = 0.02f32 * (noise as f32 / 500.0 - 1.0);
            ((value.to_bits() >> 16) as u16).to_le_bytes()
        })
        .collect()
}

#[test]
fn compresses_weights_and_deltas() {
    let base = weights(100_000, 1);
    let mut tuned = base.clone();
    for i in (0..tuned.len()).step_by(14) {
        tuned[i] ^= 1;
    }
    let own = encode_chunk(&base, Dtype::BF16, None).unwrap();
    assert!(own.len() < base.len() * 9 / 10, "standalone {} of {}", own.len(), base.len());
    let base_chunk = BaseChunk { hash: ContentHash::of(&base), bytes: &base };
    let delta = encode_chunk(&tuned, Dtype::BF16, Some((base_chunk, Dtype::BF16))).unwrap();
    assert!(delta.len() < base.len() / 5, "delta {} of {}", delta.len(), base.len());
    assert_eq!(decode_frame(&delta, Some(base_chunk)).unwrap(), tuned);
}

/// 262,144 F32 weights in [-0.02, 0.02), spread as a hash spreads them.
fn f32_weights() -> Vec<u8> {
    (0..262_144u32).flat_map(|i| (0.02f32 * ((i.wrapping_mul(2_654_435_761) % 1000) as f32 / 500.0 - 1.0)).to_le_bytes()).collect()
}

#[test]
fn a_fine_tune_over_a_cast_of_its_wider_base_costs_what_it_costs_over_the_cast() {
    let wide = f32_weights();
    let narrow = Cast::F32ToBf16.apply(&wide);
    // A fine-tune: every element nudged by a few units in the last place.
    let tuned: Vec<u8> = narrow
        .chunks_exact(2)
        .enumerate()
        .flat_map(|(i, pair)| (u16::from_le_bytes([pair[0], pair[1]]).wrapping_add((i.wrapping_mul(40_503) % 7) as u16).wrapping_sub(3)).to_le_bytes())
        .collect();
    let wide_chunk = BaseChunk { hash: ContentHash::of(&wide), bytes: &wide };
    let narrow_chunk = BaseChunk { hash: ContentHash::of(&narrow), bytes: &narrow };
    let over_cast = encode_chunk(&tuned, Dtype::BF16, Some((wide_chunk, Dtype::F32))).unwrap();
    let over_narrow = encode_chunk(&tuned, Dtype::BF16, Some((narrow_chunk, Dtype::BF16))).unwrap();
    let header = FrameHeader::read(&over_cast).unwrap();
    assert_eq!(header.conversion, Some(Conversion::Whole(Cast::F32ToBf16)));
    assert!(header.subtract, "an ordered difference");
    assert!(over_cast.len() <= over_narrow.len() + 64, "over the cast {}, over the narrow copy {}", over_cast.len(), over_narrow.len());
    assert_eq!(decode_frame(&over_cast, Some(wide_chunk)).unwrap(), tuned);
}

#[test]
fn a_cast_costs_next_to_nothing_and_the_wider_tensor_its_residual() {
    let wide = f32_weights();
    let wide_chunk = BaseChunk { hash: ContentHash::of(&wide), bytes: &wide };
    for cast in [Cast::F32ToBf16, Cast::F32ToBf16Truncated, Cast::F32ToF16] {
        let narrow = cast.apply(&wide);
        let frame = encode_chunk(&narrow, cast.target(), Some((wide_chunk, Dtype::F32))).unwrap();
        let header = FrameHeader::read(&frame).unwrap();
        assert_eq!(header.conversion, Some(Conversion::Whole(cast)));
        assert!(frame.len() < narrow.len() / 100, "{cast:?}: {} of {}", frame.len(), narrow.len());
        assert_eq!(decode_frame(&frame, Some(wide_chunk)).unwrap(), narrow);
    }
    let narrow = Cast::F32ToBf16.apply(&wide);
    let narrow_chunk = BaseChunk { hash: ContentHash::of(&narrow), bytes: &narrow };
    let residual = encode_chunk(&wide, Dtype::F32, Some((narrow_chunk, Dtype::BF16))).unwrap();
    assert_eq!(FrameHeader::read(&residual).unwrap().conversion, Some(Conversion::Whole(Cast::Bf16ToF32)));
    assert_eq!(decode_frame(&residual, Some(narrow_chunk)).unwrap(), wide);
    // Quantized copies with one scale, found again from the two chunks.
    let bf16_chunk = BaseChunk { hash: narrow_chunk.hash, bytes: &narrow };
    for quantized_to in crate::cast::Narrow::ALL {
        let largest = f32::from_bits(quantized_to.to_f32(quantized_to.from_f32(f32::MAX.to_bits())));
        let cast = Cast::Quantize { wide: Dtype::BF16, narrow: quantized_to, scale: (0.02f32 / largest).to_bits() };
        let quantized = cast.apply(&narrow);
        let frame = encode_chunk(&quantized, quantized_to.dtype(), Some((bf16_chunk, Dtype::BF16))).unwrap();
        assert!(frame.len() < quantized.len() / 50, "{quantized_to:?}: {} of {}", frame.len(), quantized.len());
        assert_eq!(decode_frame(&frame, Some(bf16_chunk)).unwrap(), quantized);
        let quantized_chunk = BaseChunk { hash: ContentHash::of(&quantized), bytes: &quantized };
        let residual = encode_chunk(&narrow, Dtype::BF16, Some((quantized_chunk, quantized_to.dtype()))).unwrap();
        assert!(matches!(FrameHeader::read(&residual).unwrap().conversion, Some(Conversion::Whole(Cast::Dequantize { .. }))));
        assert_eq!(decode_frame(&residual, Some(quantized_chunk)).unwrap(), narrow);
    }
    // Quantized with one scale per group of 128 (per-block checkpoints).
    let scales: Vec<u32> = (0..narrow.len() / 2 / crate::cast::GROUP).map(|g| (0.02f32 / (400.0 + g as f32 % 7.0)).to_bits()).collect();
    let blocks = Groups { narrow: crate::cast::Narrow::F8E4M3, wide: Dtype::BF16, widen: false };
    let quantized = blocks.apply(&narrow, &scales);
    let frame = encode_chunk(&quantized, Dtype::F8E4M3, Some((bf16_chunk, Dtype::BF16))).unwrap();
    assert_eq!(FrameHeader::read(&frame).unwrap().conversion, Some(Conversion::Groups(blocks)));
    assert!(frame.len() < quantized.len() / 50, "blocks: {} of {}", frame.len(), quantized.len());
    assert_eq!(decode_frame(&frame, Some(bf16_chunk)).unwrap(), quantized);
    let unrelated = encode_chunk(&wide, Dtype::F32, Some((narrow_chunk, Dtype::I16))).unwrap();
    assert_eq!(FrameHeader::read(&unrelated).unwrap().base, None);
}

#[test]
fn gguf_blocks_cost_next_to_nothing_beside_their_source() {
    let wide = f32_weights();
    let half = Cast::F32ToF16.apply(&wide);
    for blocks in [Dtype::Q8_0, Dtype::Q4_0] {
        let quantized = Cast::QuantizeBlocks { wide: Dtype::F32, blocks }.apply(&wide);
        // Made from the F32 tensor: predicted exactly; beside its F16 cast: nearly.
        for (base, base_dtype, share) in [(&wide, Dtype::F32, 1000), (&half, Dtype::F16, 10)] {
            let chunk = BaseChunk { hash: ContentHash::of(base), bytes: base };
            let frame = encode_chunk(&quantized, blocks, Some((chunk, base_dtype))).unwrap();
            assert_eq!(frame[4], 3);
            assert!(frame.len() < quantized.len() / share, "{blocks:?} beside {base_dtype:?}: {} of {}", frame.len(), quantized.len());
            assert_eq!(decode_frame(&frame, Some(chunk)).unwrap(), quantized);
        }
        // Readers of version 2 do not know the blocks conversion: the chunk is on its own.
        let chunk = BaseChunk { hash: ContentHash::of(&wide), bytes: &wide };
        let older = encode_chunk_as(&quantized, blocks, Some((chunk, Dtype::F32)), FrameFormat::Version2).unwrap();
        assert_eq!((older[4], FrameHeader::read(&older).unwrap().base), (1, None));
    }
}

#[test]
fn compresses_text_and_stores_noise() {
    let text: Vec<u8> = (0..20_000).flat_map(|i: u32| format!("\"token_{}\": {},\n", i % 977, i).into_bytes()).collect();
    let frame = encode_opaque(&text).unwrap();
    assert!(frame.len() < text.len() / 3, "{} of {}", frame.len(), text.len());
    let noise: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let frame = encode_opaque(&noise).unwrap();
    assert_eq!(FrameHeader::read(&frame).unwrap().codec, Codec::Stored);
    assert_eq!(decode_frame(&frame, None).unwrap(), noise);
}

#[test]
fn detects_corruption_and_wrong_base() {
    let base = weights(5000, 1);
    let tuned = weights(5000, 2);
    let base_chunk = BaseChunk { hash: ContentHash::of(&base), bytes: &base };
    let frame = encode_chunk(&tuned, Dtype::BF16, Some((base_chunk, Dtype::BF16))).unwrap();
    if FrameHeader::read(&frame).unwrap().base.is_some() {
        assert!(matches!(decode_frame(&frame, None), Err(CodecError::BaseMismatch(_))));
    }
    for position in [0, 5, 9, 20, 60, frame.len() - 1] {
        let mut broken = frame.clone();
        broken[position] ^= 0x40;
        assert!(decode_frame(&broken, Some(base_chunk)).is_err(), "flip at {position} went unseen");
    }
    assert!(decode_frame(&frame[..frame.len() - 1], Some(base_chunk)).is_err());
}

#[test]
fn version_1_frames_only_when_asked() {
    let wide: Vec<u8> = (0..4096u32).flat_map(|i| (i as f32 * 1e-3).to_le_bytes()).collect();
    let narrow = Cast::F32ToBf16.apply(&wide);
    let wide_chunk = BaseChunk { hash: ContentHash::of(&wide), bytes: &wide };
    let frame = encode_chunk_as(&narrow, Dtype::BF16, Some((wide_chunk, Dtype::F32)), FrameFormat::Version1).unwrap();
    let header = FrameHeader::read(&frame).unwrap();
    assert!(header.conversion.is_none() && header.base.is_none() && header.codec != Codec::Levels);
    assert_eq!(frame[4], 1);
    assert_eq!(decode_frame(&frame, None).unwrap(), narrow);
}

/// 20,000 BF16 weights from `seed`, a fine-tune of them (every `every`th byte flipped by
/// `flip`) and its frame against them.
fn large_delta(seed: u32, every: usize, flip: u8) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let base = weights(20_000, seed);
    let raw: Vec<u8> = base.iter().enumerate().map(|(i, byte)| if i % every == 0 { byte ^ flip } else { *byte }).collect();
    let frame = encode_chunk(&raw, Dtype::BF16, Some((BaseChunk { hash: ContentHash::of(&base), bytes: &base }, Dtype::BF16))).unwrap();
    (base, raw, frame)
}

/// An unchecked decode skips the check of the result against the frame's checksum, and
/// nothing else: a wrong base is still refused.
#[test]
fn an_unchecked_decode_skips_only_the_checksum() {
    let (base, raw, frame) = large_delta(6, 5, 2);
    let base_chunk = BaseChunk { hash: ContentHash::of(&base), bytes: &base };
    let mut out = Vec::new();
    decode_frame_unchecked_into(&frame, Some(base_chunk), &mut out).unwrap();
    assert_eq!(out, raw);
    let mut misnamed = frame.clone();
    misnamed[16] ^= 1;
    assert!(matches!(decode_frame(&misnamed, Some(base_chunk)), Err(CodecError::ChecksumMismatch)));
    decode_frame_unchecked_into(&misnamed, Some(base_chunk), &mut out).unwrap();
    assert_eq!(out, raw, "the checksum field is all the unchecked decode ignores");
    let other = BaseChunk { hash: ContentHash::of(&raw), bytes: &raw };
    assert!(matches!(decode_frame_unchecked_into(&frame, Some(other), &mut out), Err(CodecError::BaseMismatch(_))));
}

/// A large ordered delta stores its runs (version 5) unless the format is older; every
/// damaged byte of its record is refused; a small one counts them from the base.
#[test]
fn large_ordered_deltas_store_their_runs() {
    let (base, raw, frame) = large_delta(4, 8, 1);
    let base_chunk = BaseChunk { hash: ContentHash::of(&base), bytes: &base };
    let header = FrameHeader::read(&frame).unwrap();
    assert!(header.runs && header.subtract && header.grouped && frame[4] == 5, "{header:?}");
    assert_eq!(decode_frame(&frame, Some(base_chunk)).unwrap(), raw);
    let older = encode_chunk_as(&raw, Dtype::BF16, Some((base_chunk, Dtype::BF16)), FrameFormat::Version4).unwrap();
    assert!(!FrameHeader::read(&older).unwrap().runs && older[4] == 1);
    assert_eq!(decode_frame(&older, Some(base_chunk)).unwrap(), raw);
    assert!(older.len() < frame.len(), "the record is the only difference");
    // The record: two bytes, then a varint per context of the range it names.
    let record_at = header.header_len();
    let record_len = frame.len() - older.len();
    for position in record_at..record_at + record_len {
        for flip in [0x01, 0x10, 0x80] {
            let mut broken = frame.clone();
            broken[position] ^= flip;
            assert!(decode_frame(&broken, Some(base_chunk)).is_err(), "flip {flip:#x} at record byte {}", position - record_at);
        }
    }
    let small = &raw[..2 * 1000];
    let small_base = BaseChunk { hash: ContentHash::of(&base[..2 * 1000]), bytes: &base[..2 * 1000] };
    let frame = encode_chunk(small, Dtype::BF16, Some((small_base, Dtype::BF16))).unwrap();
    assert!(!FrameHeader::read(&frame).unwrap().runs);
}

/// A BF16 fine-tune of weights dequantized from F8_E4M3 with a scale per group of 128, over
/// the F8 tensor: a delta against its conversion in groups, whose scales, runs and planes come
/// in that order.
#[test]
fn runs_follow_the_scales_of_a_conversion_in_groups() {
    let elements = 20_000usize;
    let narrow: Vec<u8> = (0..elements as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 & 0x7e).collect();
    let raw: Vec<u8> = narrow
        .iter()
        .enumerate()
        .flat_map(|(i, &code)| {
            let scale = 0.01 * (1 + (i / 128) % 7) as f32;
            let value = f32::from_bits(crate::cast::f8e4m3_to_f32(code)) * scale;
            let moved = crate::cast::f32_to_bf16(value.to_bits()) ^ u16::from(i % 4 == 0);
            moved.to_le_bytes()
        })
        .collect();
    let base = BaseChunk { hash: ContentHash::of(&narrow), bytes: &narrow };
    let frame = encode_chunk(&raw, Dtype::BF16, Some((base, Dtype::F8E4M3))).unwrap();
    let header = FrameHeader::read(&frame).unwrap();
    assert!(header.runs && matches!(header.conversion, Some(Conversion::Groups(_))), "{header:?}");
    assert_eq!(decode_frame(&frame, Some(base)).unwrap(), raw);
}

/// Frames of version 5 whose runs record is replaced by any runs that add up to the elements
/// (so that the decoder places elements by them) are refused, never decoded wrongly or with a
/// panic, and so are the same frames with bytes flipped.
#[test]
fn frames_with_forged_runs_are_refused() {
    let (base, _, frame) = large_delta(5, 6, 3);
    let base_chunk = BaseChunk { hash: ContentHash::of(&base), bytes: &base };
    let header = FrameHeader::read(&frame).unwrap();
    assert!(header.runs);
    let payload = &frame[header.header_len()..];
    let (runs, record_len) = crate::ordered::runs::read(payload).unwrap();
    let elements: usize = runs.iter().sum();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut refused = 0;
    for round in 0..300 {
        // Runs over a few random contexts, or the true runs with a few elements moved.
        let mut forged = [0usize; 256];
        if round % 2 == 0 {
            let mut left = elements;
            while left > 0 {
                let take = if next() % 4 == 0 { left } else { (next() as usize % left) + 1 };
                forged[next() as usize % 256] += take;
                left -= take;
            }
        } else {
            forged = runs;
            let held: Vec<usize> = (0..256).filter(|&context| runs[context] > 0).collect();
            let from = held[next() as usize % held.len()];
            let moved = (next() as usize % forged[from]) + 1;
            forged[from] -= moved;
            forged[next() as usize % 256] += moved;
        }
        if forged == runs {
            continue;
        }
        let mut record = Vec::new();
        crate::ordered::runs::write(&forged, &mut record);
        let mut forged_frame = frame[..header.header_len()].to_vec();
        forged_frame[12..16].copy_from_slice(&((payload.len() - record_len + record.len()) as u32).to_le_bytes());
        forged_frame.extend_from_slice(&record);
        forged_frame.extend_from_slice(&payload[record_len..]);
        assert!(matches!(decode_frame(&forged_frame, Some(base_chunk)), Err(CodecError::FrameCorrupt(_))), "round {round}");
        let at = header.header_len() + record.len() + next() as usize % (payload.len() - record_len);
        forged_frame[at] ^= 1 << (next() % 8);
        assert!(decode_frame(&forged_frame, Some(base_chunk)).is_err(), "round {round}, flip at {at}");
        refused += 1;
    }
    assert!(refused > 250, "{refused} forged frames tried");
}

proptest! {
    #[test]
    fn standalone_round_trips(raw in proptest::collection::vec(any::<u8>(), 0..2000), dtype in dtype_strategy()) {
        let frame = encode_chunk(&raw, dtype, None).unwrap();
        prop_assert_eq!(decode_frame(&frame, None).unwrap(), raw);
    }

    #[test]
    fn decoding_into_a_used_buffer_gives_the_same_bytes(moves in proptest::collection::vec(any::<u8>(), 0..2000),
                                                        used in proptest::collection::vec(any::<u8>(), 0..3000),
                                                        with_base: bool,
                                                        dtype in dtype_strategy()) {
        // Weights, and the same with low bits moved: a delta against them is the ordered one.
        let base = weights(moves.len().div_ceil(2), 7)[..moves.len()].to_vec();
        let raw: Vec<u8> = base.iter().zip(&moves).map(|(byte, moved)| byte ^ (moved & 1)).collect();
        let base_chunk = BaseChunk { hash: ContentHash::of(&base), bytes: &base };
        let frame = encode_chunk(&raw, dtype, with_base.then_some((base_chunk, dtype))).unwrap();
        let mut buffer = used;
        decode_frame_into(&frame, with_base.then_some(base_chunk), &mut buffer).unwrap();
        prop_assert_eq!(&buffer, &raw);
        // Again into the same buffer, now the frame's own length.
        buffer.iter_mut().for_each(|byte| *byte = !*byte);
        decode_frame_into(&frame, with_base.then_some(base_chunk), &mut buffer).unwrap();
        prop_assert_eq!(buffer, raw);
    }

    #[test]
    fn delta_round_trips(raw in proptest::collection::vec(any::<u8>(), 0..2000),
                         flips in proptest::collection::vec(any::<(usize, u8)>(), 0..50),
                         base_extra in -3i32..3,
                         dtype in dtype_strategy()) {
        let mut base = raw.clone();
        base.resize((raw.len() as i32 + base_extra).max(0) as usize, 0x55);
        for (position, bits) in flips {
            if !base.is_empty() {
                let len = base.len();
                base[position % len] ^= bits;
            }
        }
        let base_chunk = BaseChunk { hash: ContentHash::of(&base), bytes: &base };
        let frame = encode_chunk(&raw, dtype, Some((base_chunk, dtype))).unwrap();
        prop_assert_eq!(decode_frame(&frame, Some(base_chunk)).unwrap(), raw);
    }

    #[test]
    fn converted_delta_round_trips(values in proptest::collection::vec(any::<u32>(), 0..500),
                                   flips in proptest::collection::vec(any::<(usize, u16)>(), 0..20),
                                   cast in proptest::sample::select(crate::cast::every_cast()),
                                   specials in any::<bool>()) {
        // The wider or narrower tensor, with NaN payloads, -0, subnormals and infinities.
        let mut values = values;
        if specials {
            for (slot, special) in values.iter_mut().zip([0x7FC0_1234u32, 0x8000_0000, 0x0000_0001, 0x7F80_0000, 0xFF80_0001, 0x0040_0000]) {
                *slot = special;
            }
        }
        let source: Vec<u8> = match cast.source().size() {
            4 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            2 => values.iter().flat_map(|v| (*v as u16).to_le_bytes()).collect(),
            _ => values.iter().map(|v| *v as u8).collect(),
        };
        let mut raw = cast.apply(&source);
        for (position, bits) in flips {
            if !raw.is_empty() {
                let len = raw.len();
                raw[position % len] ^= bits as u8;
            }
        }
        let base_chunk = BaseChunk { hash: ContentHash::of(&source), bytes: &source };
        let frame = encode_chunk(&raw, cast.target(), Some((base_chunk, cast.source()))).unwrap();
        prop_assert_eq!(decode_frame(&frame, Some(base_chunk)).unwrap(), raw);
    }

    #[test]
    fn block_quantized_chunks_round_trip(values in proptest::collection::vec(-1.0f32..1.0, 128..1200),
                                         flips in proptest::collection::vec(any::<(usize, u8)>(), 0..10),
                                         narrow in proptest::sample::select(crate::cast::Narrow::ALL.to_vec())) {
        // One scale per group of 128, as per-block fp8 and int8 checkpoints have.
        let wide: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let scales: Vec<u32> = values.chunks(crate::cast::GROUP).enumerate().map(|(g, _)| (0.001f32 * (g + 1) as f32).to_bits()).collect();
        let mut quantized = Groups { narrow, wide: Dtype::F32, widen: false }.apply(&wide, &scales);
        for (at, bits) in flips {
            let len = quantized.len();
            quantized[at % len] ^= bits;
        }
        let wide_chunk = BaseChunk { hash: ContentHash::of(&wide), bytes: &wide };
        let frame = encode_chunk(&quantized, narrow.dtype(), Some((wide_chunk, Dtype::F32))).unwrap();
        prop_assert_eq!(decode_frame(&frame, Some(wide_chunk)).unwrap(), quantized.clone());
        let quantized_chunk = BaseChunk { hash: ContentHash::of(&quantized), bytes: &quantized };
        let residual = encode_chunk(&wide, Dtype::F32, Some((quantized_chunk, narrow.dtype()))).unwrap();
        prop_assert_eq!(decode_frame(&residual, Some(quantized_chunk)).unwrap(), wide);
    }

    #[test]
    fn window_deltas_round_trip(base in proptest::collection::vec(any::<u8>(), 0..3000),
                                start in 0usize..3000, len in 0usize..3000,
                                flips in proptest::collection::vec(any::<(usize, u8)>(), 0..40),
                                cast in proptest::option::of(proptest::sample::select(crate::cast::every_cast())),
                                dtype in dtype_strategy(),
                                format in proptest::sample::select(vec![FrameFormat::Current, FrameFormat::Version3])) {
        // A piece of a chunk against the same elements of its base, which sit inside a longer
        // base chunk; windows past the base's end are kept on their own.
        let (dtype, base_dtype) = cast.map_or((dtype, dtype), |cast| (cast.target(), cast.source()));
        let window = BaseWindow { start: start as u32, len: len as u32 };
        let mut raw = match window.of(&base) {
            Some(bytes) => cast.map_or_else(|| bytes.to_vec(), |cast| cast.apply(bytes)),
            None => base.iter().rev().copied().collect(),
        };
        for (position, bits) in flips {
            if !raw.is_empty() {
                let len = raw.len();
                raw[position % len] ^= bits;
            }
        }
        let base_chunk = BaseChunk { hash: ContentHash::of(&base), bytes: &base };
        let frame = encode_chunk_in_window(&raw, dtype, (base_chunk, base_dtype), window, format).unwrap();
        let header = FrameHeader::read(&frame).unwrap();
        prop_assert!(header.window.is_none() || (format == FrameFormat::Current && header.base.is_some()));
        prop_assert_eq!(decode_frame(&frame, Some(base_chunk)).unwrap(), raw);
    }

    #[test]
    fn a_window_outside_its_base_is_refused(base in proptest::collection::vec(any::<u8>(), 64..200)) {
        let raw = base[8..40].to_vec();
        let base_chunk = BaseChunk { hash: ContentHash::of(&base), bytes: &base };
        let frame = encode_chunk_in_window(&raw, Dtype::U8, (base_chunk, Dtype::U8), BaseWindow { start: 8, len: 32 }, FrameFormat::Current).unwrap();
        prop_assume!(FrameHeader::read(&frame).unwrap().window.is_some());
        let short = BaseChunk { hash: base_chunk.hash, bytes: &base[..39] };
        prop_assert!(decode_frame(&frame, Some(short)).is_err());
    }

    #[test]
    fn opaque_round_trips(raw in proptest::collection::vec(any::<u8>(), 0..2000), repeat in 1usize..4) {
        let raw = raw.repeat(repeat);
        let frame = encode_opaque(&raw).unwrap();
        prop_assert!(frame.len() <= raw.len() + FIXED_HEADER_LEN);
        prop_assert_eq!(decode_frame(&frame, None).unwrap(), raw);
    }

    #[test]
    fn a_damaged_frame_into_a_used_buffer_fails_or_gives_its_bytes(count in 1usize..3000,
                                                                    at in any::<usize>(),
                                                                    flip in 1u8..=255,
                                                                    with_base: bool,
                                                                    used in proptest::collection::vec(any::<u8>(), 0..9000)) {
        // Weights and a fine-tune of them: the frame is planes, or an ordered delta.
        let base = weights(count, 3);
        let raw: Vec<u8> = base.iter().enumerate().map(|(i, byte)| if i % 7 == 0 { byte ^ 1 } else { *byte }).collect();
        let base_chunk = BaseChunk { hash: ContentHash::of(&base), bytes: &base };
        let mut frame = encode_chunk(&raw, Dtype::BF16, with_base.then_some((base_chunk, Dtype::BF16))).unwrap();
        let len = frame.len();
        frame[at % len] ^= flip;
        let mut buffer = used;
        if decode_frame_into(&frame, with_base.then_some(base_chunk), &mut buffer).is_ok() {
            prop_assert_eq!(buffer, raw);
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_frame(&bytes, None);
        let mut framed = b"TGFR\x01".to_vec();
        framed.extend_from_slice(&bytes);
        let _ = decode_frame(&framed, None);
    }
}
