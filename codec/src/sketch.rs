//! Bit-level fingerprints of tensors, in the spirit of TensorHub's TensorSketch: the top 16 bits
//! (sign, exponent, high mantissa) of 256 elements sampled at fixed places. Two tensors of one
//! family (a base and its fine-tunes) hold nearly the same values at the same places, so the
//! samples differ in their low bits only; an unrelated tensor of the same shape, however alike
//! in value distribution, differs in most bits. The distance counts the bits each sample's
//! difference needs, so it predicts the size of the delta, which value statistics do not.
//!
//! Samples come from the first [`CHUNK_ELEMENTS`] elements of the tensor, as far as its first
//! chunk goes (the first chunk of the dtypes cut by elements, which for a tensor under
//! `SMALL_TENSOR_ELEMENTS` is its first 16,384-element piece; at most the first 4 MiB chunk of
//! the others), so the sketch is ready when the first chunk has streamed in and a base can be
//! chosen before anything is encoded; the same elements are sampled in every precision, and [`Sketch::as_f32`] puts F16,
//! F8 and I8 samples in the terms of F32 and BF16 ones, so that a tensor and its casts are near
//! (issue 18). GGUF blocks are sampled as the F32 values they dequantize to (issue 17).

use crate::cast::{dequantized, f16_to_f32, Narrow};
use crate::chunk::CHUNK_ELEMENTS;
use crate::dtype::Dtype;

/// Elements sampled per tensor.
pub const SAMPLES: usize = 256;
/// Bytes of a sketch: 16 bits per sample.
pub const SKETCH_BYTES: usize = SAMPLES * 2;

/// The fingerprint of one tensor: the top 16 bits of each sample, mapped to integers in the
/// order of the values they start (negative floats below positive ones).
#[derive(Clone, PartialEq, Eq)]
pub struct Sketch(pub [u16; SAMPLES]);

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sketch({:04x} {:04x}…)", self.0[0], self.0[1])
    }
}

impl Sketch {
    /// Sketches a tensor from its leading bytes (at least its first chunk, or all of it).
    pub fn of(leading_bytes: &[u8], dtype: Dtype) -> Sketch {
        if dtype.is_blocks() {
            return Sketch::of_blocks(leading_bytes, dtype);
        }
        let width = dtype.size();
        let count = (leading_bytes.len() / width).min(CHUNK_ELEMENTS);
        let sampled = &leading_bytes[..count * width];
        let mut samples = [0u16; SAMPLES];
        if count > 0 {
            for (index, sample) in samples.iter_mut().enumerate() {
                let element = index * count / SAMPLES;
                let bytes = &sampled[element * width..(element + 1) * width];
                let top = match width {
                    1 => u16::from(bytes[0]) << 8,
                    _ => u16::from_le_bytes([bytes[width - 2], bytes[width - 1]]),
                };
                *sample = to_order(top);
            }
        }
        Sketch(samples)
    }

    /// The sketch of GGUF blocks: the top 16 bits of the sampled elements' F32 values.
    fn of_blocks(leading_bytes: &[u8], dtype: Dtype) -> Sketch {
        let count = dtype.elements_in(leading_bytes.len()).min(CHUNK_ELEMENTS);
        let mut samples = [0u16; SAMPLES];
        if count > 0 {
            for (index, sample) in samples.iter_mut().enumerate() {
                // A NaN's sign and payload depend on the CPU (an infinite scale times 0): one NaN.
                let value = dequantized(dtype, leading_bytes, index * count / SAMPLES).unwrap_or(0.0);
                let bits = if value.is_nan() { 0x7FC0_0000 } else { value.to_bits() };
                *sample = to_order((bits >> 16) as u16);
            }
        }
        Sketch(samples)
    }

    /// Sum over samples of the bit length of the difference between the two samples' top 16
    /// bits, taken as order-preserving integers: about the bits a delta must spend on each
    /// element. 0 for identical samples, about 3800 for unrelated tensors.
    pub fn distance(&self, other: &Sketch) -> u32 {
        self.0.iter().zip(&other.0).map(|(a, b)| 16 - a.abs_diff(*b).leading_zeros()).sum()
    }

    /// The sketch of a tensor of `dtype` as the sketch of its F32 cast would be: F16, F8 and
    /// I8 samples widened and cut to their top 16 bits; the samples of F32, BF16 and GGUF
    /// blocks are those bits already.
    pub fn as_f32(&self, dtype: Dtype) -> Sketch {
        let widen: Box<dyn Fn(u16) -> u32> = match (dtype, Narrow::of(dtype)) {
            (Dtype::F16, _) => Box::new(f16_to_f32),
            (_, Some(narrow)) => Box::new(move |top| narrow.to_f32((top >> 8) as u8)),
            _ => return self.clone(),
        };
        Sketch(self.0.map(|sample| to_order((widen(from_order(sample)) >> 16) as u16)))
    }

    /// The distance between sketches of tensors of two dtypes, in F32 terms; with an F8 or I8 one,
    /// once the magnitudes are shifted by their median difference: a quantized copy is its
    /// original divided by a scale, a near-constant offset in this order, which that removes.
    pub fn distance_across(&self, dtype: Dtype, other: &Sketch, other_dtype: Dtype) -> u32 {
        if dtype == other_dtype {
            return self.distance(other);
        }
        let (ours, theirs) = (self.as_f32(dtype), other.as_f32(other_dtype));
        if Narrow::of(dtype).is_none() && Narrow::of(other_dtype).is_none() {
            return ours.distance(&theirs);
        }
        let parts = |sample: u16| {
            let top = from_order(sample);
            (top & 0x8000 != 0, i32::from(top & 0x7FFF))
        };
        let pairs: Vec<_> = ours.0.iter().zip(&theirs.0).map(|(a, b)| (parts(*a), parts(*b))).collect();
        let mut offsets: Vec<i32> = pairs.iter().filter(|(a, b)| a.1 != 0 && b.1 != 0).map(|(a, b)| a.1 - b.1).collect();
        offsets.sort_unstable();
        let offset = offsets.get(offsets.len() / 2).copied().unwrap_or(0);
        pairs
            .iter()
            .map(|(a, b)| if a.0 != b.0 { 16 } else { 32 - (a.1 - b.1 - offset).unsigned_abs().min(0xFFFF).leading_zeros() })
            .sum()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|sample| sample.to_le_bytes()).collect()
    }

    /// The inverse of [`Sketch::to_bytes`]; `None` if the length is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Option<Sketch> {
        if bytes.len() != SKETCH_BYTES {
            return None;
        }
        let mut samples = [0u16; SAMPLES];
        for (sample, pair) in samples.iter_mut().zip(bytes.chunks_exact(2)) {
            *sample = u16::from_le_bytes([pair[0], pair[1]]);
        }
        Some(Sketch(samples))
    }
}

/// The top 16 bits of a float as an integer in the order of the values they start (negative
/// floats below positive ones), and back.
fn to_order(top: u16) -> u16 {
    if top & 0x8000 != 0 { !top } else { top ^ 0x8000 }
}

fn from_order(sample: u16) -> u16 {
    if sample & 0x8000 != 0 { sample ^ 0x8000 } else { !sample }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cast::Cast;
    use proptest::prelude::*;

    fn bf16(values: impl Iterator<Item = f32>) -> Vec<u8> {
        values.flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect()
    }

    #[test]
    fn family_members_are_closer_than_lookalikes() {
        let noise = |seed: u32| (0..20_000u32).map(move |i| ((i ^ seed).wrapping_mul(2_654_435_761) % 2001) as f32 / 1e5 - 0.01);
        let base = bf16(noise(1));
        let tuned = bf16(noise(1).enumerate().map(|(i, v)| if i % 3 == 0 { v * 1.01 } else { v }));
        let lookalike = bf16(noise(7));
        let base_sketch = Sketch::of(&base, Dtype::BF16);
        assert_eq!(base_sketch.distance(&base_sketch), 0);
        let tuned_distance = Sketch::of(&tuned, Dtype::BF16).distance(&base_sketch);
        let lookalike_distance = Sketch::of(&lookalike, Dtype::BF16).distance(&base_sketch);
        assert!(tuned_distance * 4 < lookalike_distance, "{tuned_distance} vs {lookalike_distance}");
    }

    #[test]
    fn a_tensor_is_near_its_casts() {
        let wide: Vec<u8> = (0..50_048u32)
            .flat_map(|i| (((i.wrapping_mul(2_654_435_761) % 2001) as f32 / 1e5) - 0.01).to_le_bytes())
            .collect();
        let sketch = Sketch::of(&wide, Dtype::F32);
        for (cast, dtype) in [(Cast::F32ToBf16, Dtype::BF16), (Cast::F32ToF16, Dtype::F16)] {
            let distance = Sketch::of(&cast.apply(&wide), dtype).as_f32(dtype).distance(&sketch);
            assert!(distance <= SAMPLES as u32, "{dtype:?}: {distance}");
        }
        let unrelated: Vec<u8> = (0..50_048u32)
            .flat_map(|i| (((i.wrapping_mul(747_796_405) % 2001) as f32 / 1e5) - 0.01).to_le_bytes())
            .collect();
        assert!(Sketch::of(&unrelated, Dtype::F32).distance(&sketch) > 4 * SAMPLES as u32);
        let scale = (0.01f32 / 448.0).to_bits();
        let quantized = Sketch::of(&Cast::Quantize { wide: Dtype::F32, narrow: crate::cast::Narrow::F8E4M3, scale }.apply(&wide), Dtype::F8E4M3);
        let near = quantized.distance_across(Dtype::F8E4M3, &sketch, Dtype::F32);
        let far = quantized.distance_across(Dtype::F8E4M3, &Sketch::of(&unrelated, Dtype::F32), Dtype::F32);
        assert!(near * 2 < far, "{near} vs {far}");
        for blocks in [Dtype::Q8_0, Dtype::Q4_0] {
            let quantized = Sketch::of(&Cast::QuantizeBlocks { wide: Dtype::F32, blocks }.apply(&wide), blocks);
            let near = quantized.distance_across(blocks, &sketch, Dtype::F32);
            let far = quantized.distance_across(blocks, &Sketch::of(&unrelated, Dtype::F32), Dtype::F32);
            assert!(near * 2 < far, "{blocks:?}: {near} vs {far}");
        }
    }

    proptest! {
        #[test]
        fn sketches_survive_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2000),
                                  dtype in proptest::sample::select(Dtype::ALL.to_vec())) {
            let sketch = Sketch::of(&bytes, dtype);
            prop_assert_eq!(Sketch::from_bytes(&sketch.to_bytes()), Some(sketch));
        }
    }
}
