//! GGUF's block quantizations Q8_0 and Q4_0, computed from the wider tensor they were made from
//! (issue 17). Their codes are close to random bytes (7.7 bits a byte for Q8_0), so no entropy
//! coder shrinks them much; but llama.cpp's `gguf` package computes them by one fixed recipe
//! (llama.cpp's C quantizer is the same but for a few edge cases, and `--imatrix` quantizes
//! otherwise), so an F32, F16 or BF16 tensor that is stored predicts them: the stored XOR with
//! the prediction is zero wherever the quantizer's input was that tensor, and a few bits a block
//! where it was a nearby precision of it. The recipe here is the package's for every block
//! without a NaN whose scale's reciprocal is finite; the others (a NaN, or a scale under about
//! 1e-37) are predicted otherwise and cost their bytes.
//!
//! Written here rather than taken from a crate: the prediction is part of the frame format, so
//! it must be the same bits on every CPU (docs/format.md, section 4, pins it): each step is one
//! IEEE f32 operation, NaN inputs are skipped when finding a block's largest magnitude, and the
//! codes are taken by Rust's saturating casts, which give 0 for a NaN on every target.

use super::{bf16_bits, f16_to_f32, f32_to_f16};
use crate::dtype::Dtype;

/// Elements per block of Q8_0 and Q4_0.
pub const BLOCK: usize = 32;

/// Widens one block of `wide` elements (F32, F16 or BF16, little-endian) into `floats`.
fn widen(wide: Dtype, bytes: &[u8], floats: &mut [f32; BLOCK]) {
    match wide {
        Dtype::F16 => {
            for (float, e) in floats.iter_mut().zip(bytes.chunks_exact(2)) {
                *float = f32::from_bits(f16_to_f32(u16::from_le_bytes([e[0], e[1]])));
            }
        }
        Dtype::BF16 => {
            for (float, e) in floats.iter_mut().zip(bytes.chunks_exact(2)) {
                *float = f32::from_bits(bf16_bits([e[0], e[1]]));
            }
        }
        _ => {
            for (float, e) in floats.iter_mut().zip(bytes.chunks_exact(4)) {
                *float = f32::from_le_bytes([e[0], e[1], e[2], e[3]]);
            }
        }
    }
}

/// Quantizes the whole blocks of `source` (elements of `wide`) to `blocks` (Q8_0 or Q4_0), as
/// the `gguf` package does; a partial last block is dropped.
pub fn quantize(wide: Dtype, blocks: Dtype, source: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks.bytes_of(wide.elements_in(source.len())));
    let mut floats = [0f32; BLOCK];
    for block in source.chunks_exact(BLOCK * wide.size()) {
        widen(wide, block, &mut floats);
        match blocks {
            Dtype::Q4_0 => q4_0(&floats, &mut out),
            _ => q8_0(&floats, &mut out),
        }
    }
    out
}

/// `t` rounded half away from zero, as an i8 (clamped; 0 for a NaN): the integer part by a
/// truncating cast, plus one away from zero when the (exact) fraction is a half or more. This is
/// `f32::round` without its library call, which has no instruction on baseline x86-64.
fn round_away_i8(t: f32) -> i8 {
    let whole = t as i32;
    let fraction = t - whole as f32;
    let away = i32::from(fraction.abs() >= 0.5) * if t < 0.0 { -1 } else { 1 };
    whole.saturating_add(away).clamp(-128, 127) as i8
}

/// The reciprocal of a block's scale, 0 for a zero scale (as the quantizers write it).
fn reciprocal(scale: f32) -> f32 {
    if scale == 0.0 { 0.0 } else { 1.0 / scale }
}

/// Q8_0: scale = the largest magnitude / 127; code = the element times the scale's reciprocal,
/// rounded half away from zero; the scale stored as F16.
fn q8_0(block: &[f32], out: &mut Vec<u8>) {
    let largest = block.iter().map(|x| x.abs()).fold(0.0f32, |largest, magnitude| if magnitude > largest { magnitude } else { largest });
    let scale = largest / 127.0;
    let inverse = reciprocal(scale);
    out.extend_from_slice(&f32_to_f16(scale.to_bits()).to_le_bytes());
    out.extend(block.iter().map(|x| round_away_i8(x * inverse) as u8));
}

/// Q4_0: scale = the element of largest magnitude (the first, on ties) / -8; code = the element
/// times the scale's reciprocal, plus 8.5, truncated, at most 15; two codes a byte.
fn q4_0(block: &[f32], out: &mut Vec<u8>) {
    let mut largest = (-1.0f32, 0.0f32);
    for x in block {
        if x.abs() > largest.0 {
            largest = (x.abs(), *x);
        }
    }
    let scale = largest.1 / -8.0;
    let inverse = reciprocal(scale);
    // The cast truncates (and gives 0 for a NaN), as `trunc` then a cast would.
    let code = |x: f32| ((x * inverse + 8.5) as u8).min(15);
    out.extend_from_slice(&f32_to_f16(scale.to_bits()).to_le_bytes());
    let (low, high) = block.split_at(BLOCK / 2);
    out.extend(low.iter().zip(high).map(|(low, high)| code(*low) | (code(*high) << 4)));
}

/// The value of element `element` of blocks `bytes` (Q8_0 or Q4_0), as the `gguf` package
/// dequantizes it: `None` past the whole blocks.
pub fn dequantized(blocks: Dtype, bytes: &[u8], element: usize) -> Option<f32> {
    let (_, block_bytes) = blocks.block();
    let block = bytes.get(element / BLOCK * block_bytes..(element / BLOCK + 1) * block_bytes)?;
    let scale = f32::from_bits(f16_to_f32(u16::from_le_bytes([block[0], block[1]])));
    let within = element % BLOCK;
    let code = match blocks {
        Dtype::Q4_0 => {
            let byte = block[2 + within % (BLOCK / 2)];
            i32::from(if within < BLOCK / 2 { byte & 0x0F } else { byte >> 4 }) - 8
        }
        _ => i32::from(block[2 + within] as i8),
    };
    Some(scale * code as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn blocks_are_the_quantizers_bytes() {
        // One block worked by hand: the largest magnitude is -2.54 (element 3).
        let mut values = vec![0.0f32; BLOCK];
        values[0] = 1.0;
        values[1] = -0.5;
        values[3] = -2.54;
        values[31] = 0.011;
        let q8 = quantize(Dtype::F32, Dtype::Q8_0, &f32_bytes(&values));
        assert_eq!(q8.len(), 34);
        assert_eq!(u16::from_le_bytes([q8[0], q8[1]]), f32_to_f16((2.54f32 / 127.0).to_bits()));
        // 1.0 / 0.02 = 50, -0.5 / 0.02 = -25, -2.54 / 0.02 = -127, 0.011 / 0.02 = 0.55 → 1.
        assert_eq!([q8[2] as i8, q8[3] as i8, q8[4] as i8, q8[5] as i8, q8[33] as i8], [50, -25, 0, -127, 1]);
        let q4 = quantize(Dtype::F32, Dtype::Q4_0, &f32_bytes(&values));
        assert_eq!(q4.len(), 18);
        assert_eq!(u16::from_le_bytes([q4[0], q4[1]]), f32_to_f16((-2.54f32 / -8.0).to_bits()));
        // Codes trunc(x × 8 / 2.54 + 8.5): 1.0 → 11, -0.5 → 6, 0 → 8, -2.54 → 0, 0.011 → 8.
        assert_eq!([q4[2] & 15, q4[3] & 15, q4[4] & 15, q4[5] & 15, q4[17] >> 4], [11, 6, 8, 0, 8]);
        assert_eq!(dequantized(Dtype::Q8_0, &q8, 3), Some(-127.0 * f32::from_bits(f16_to_f32(f32_to_f16((2.54f32 / 127.0).to_bits())))));
        assert_eq!(dequantized(Dtype::Q4_0, &q4, 31), Some(0.0));
        assert_eq!(dequantized(Dtype::Q4_0, &q4, 32), None);
    }

    #[test]
    fn zero_and_nan_blocks_quantize_to_fixed_bytes() {
        let zeros = quantize(Dtype::F32, Dtype::Q8_0, &f32_bytes(&[0.0; BLOCK]));
        assert!(zeros.iter().all(|byte| *byte == 0));
        let nans = f32_bytes(&[f32::NAN; BLOCK]);
        assert!(quantize(Dtype::F32, Dtype::Q8_0, &nans).iter().all(|byte| *byte == 0));
        assert_eq!(quantize(Dtype::F32, Dtype::Q4_0, &nans)[2..], [0; 16]);
        // A zero block's Q4_0 scale is -0 (0 / -8), its codes 8.
        assert_eq!(quantize(Dtype::F32, Dtype::Q4_0, &f32_bytes(&[0.0; BLOCK])), [[0x00, 0x80].as_slice(), &[0x88; 16]].concat());
    }

    #[test]
    fn rounding_without_the_library_is_rounding() {
        let specials = [0.5f32, -0.5, 1.5, -2.5, 0.49999997, -0.49999997, 126.5, 127.49, 127.5, -128.5, 1e9, -3e9, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 0.0, -0.0];
        for t in specials.into_iter().chain((0..200_000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761)) )) {
            assert_eq!(round_away_i8(t), t.round() as i8, "{t}");
        }
    }

    proptest! {
        #[test]
        fn every_input_makes_whole_blocks(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            for wide in [Dtype::F32, Dtype::F16, Dtype::BF16] {
                for blocks in [Dtype::Q8_0, Dtype::Q4_0] {
                    let quantized = quantize(wide, blocks, &bytes);
                    prop_assert_eq!(quantized.len(), blocks.bytes_of(wide.elements_in(bytes.len())));
                    prop_assert_eq!(quantize(wide, blocks, &bytes), quantized);
                }
            }
        }

        #[test]
        fn dequantized_blocks_are_near_their_source(values in proptest::collection::vec(-4.0f32..4.0, BLOCK..4 * BLOCK)) {
            for blocks in [Dtype::Q8_0, Dtype::Q4_0] {
                let quantized = quantize(Dtype::F32, blocks, &f32_bytes(&values));
                for (index, chunk) in values.chunks_exact(BLOCK).enumerate() {
                    let largest = chunk.iter().fold(0.0f32, |a, x| a.max(x.abs()));
                    let step = if blocks == Dtype::Q8_0 { largest / 127.0 } else { largest / 8.0 };
                    for (within, x) in chunk.iter().enumerate() {
                        let back = dequantized(blocks, &quantized, index * BLOCK + within).unwrap();
                        prop_assert!((back - x).abs() <= step * 1.01 + 1e-6, "{x} came back as {back}");
                    }
                }
            }
        }
    }
}
