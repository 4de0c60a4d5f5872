//! Quantizations with one scale per group of 128 consecutive elements: per-block fp8 and int8
//! checkpoints (DeepSeek's 128 × 128 blocks) and per-channel ones whose rows are a multiple of
//! 128 long both give one scale per such group, as chunks start at multiples of 128 elements.
//! The scales are found per group as the whole chunk's scale is (`scale`), and travel in the
//! frame's payload, ahead of the delta (docs/format.md, section 4).

use super::narrow::Narrow;
use super::scale;
use super::float::{f32_to_bf16, f32_to_f8e4m3, f32_to_f8e5m2};
use super::widened;
use crate::dtype::Dtype;
use crate::entropy::{read_word_planes, write_word_planes};
use crate::error::{CodecError, Result};

/// Elements per group.
pub const GROUP: usize = 128;

/// The first code of conversions in groups: 20 + 4 × narrow + 2 × (dequantize) + (wide is F32).
const GROUP_CODES: u8 = 20;

/// A quantization (or its inverse) with a scale per group of [`GROUP`] elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Groups {
    pub narrow: Narrow,
    /// BF16 or F32.
    pub wide: Dtype,
    /// From the narrow type to the wide one (else the other way).
    pub widen: bool,
}

impl Groups {
    pub fn source(self) -> Dtype {
        if self.widen { self.narrow.dtype() } else { self.wide }
    }

    pub fn target(self) -> Dtype {
        if self.widen { self.wide } else { self.narrow.dtype() }
    }

    pub fn code(self) -> u8 {
        let narrow = Narrow::ALL.iter().position(|n| *n == self.narrow).unwrap_or(0) as u8;
        GROUP_CODES + 4 * narrow + 2 * u8::from(self.widen) + u8::from(self.wide == Dtype::F32)
    }

    pub fn from_code(code: u8) -> Option<Groups> {
        let index = code.checked_sub(GROUP_CODES).filter(|index| *index < 12)?;
        let narrow = Narrow::ALL[usize::from(index / 4)];
        Some(Groups { narrow, wide: if index & 1 == 1 { Dtype::F32 } else { Dtype::BF16 }, widen: index & 2 == 2 })
    }

    /// The conversion in groups between the two dtypes and each group's scale (F32 bits, a
    /// positive normal number), when at least half the groups have one (the others take the
    /// scale before them, or 1). `None` for a base with fewer elements than the chunk: the frame holds one
    /// scale per group of the chunk.
    pub fn fitting(source: Dtype, target: Dtype, base: &[u8], raw: &[u8]) -> Option<(Groups, Vec<u32>)> {
        let groups = match (Narrow::of(source), Narrow::of(target)) {
            (None, Some(narrow)) if matches!(source, Dtype::BF16 | Dtype::F32) => Groups { narrow, wide: source, widen: false },
            (Some(narrow), None) if matches!(target, Dtype::BF16 | Dtype::F32) => Groups { narrow, wide: target, widen: true },
            _ => return None,
        };
        if base.len() / source.size() < raw.len() / target.size() {
            return None;
        }
        let (wide_bytes, narrow_bytes) = if groups.widen { (raw, base) } else { (base, raw) };
        let wide = widened(groups.wide, wide_bytes);
        let count = wide.len().min(narrow_bytes.len());
        let mut found = 0;
        let mut last = 1f32.to_bits();
        let scales = wide[..count]
            .chunks(GROUP)
            .zip(narrow_bytes[..count].chunks(GROUP))
            .map(|(wide, narrow)| {
                let scale = if groups.widen {
                    scale::of_dequantization(narrow, wide, groups.narrow)
                } else {
                    scale::of_quantization(wide, narrow, groups.narrow)
                };
                if let Some(scale) = scale {
                    found += 1;
                    last = scale;
                }
                last
            })
            .collect::<Vec<u32>>();
        (found * 2 >= scales.len() && !scales.is_empty()).then_some((groups, scales))
    }

    /// Converts the whole elements of `source`, group g with `scales[g]` (groups past the
    /// scales given, in a base longer than its chunk, with 1).
    pub fn apply(self, source: &[u8], scales: &[u32]) -> Vec<u8> {
        let scale_of = |group: usize| f32::from_bits(scales.get(group).copied().unwrap_or(1f32.to_bits()));
        if self.widen {
            dequantize_all(self.narrow, self.wide, source, scale_of)
        } else {
            quantize_all(self.wide, self.narrow, source, scale_of)
        }
    }
}

/// Every element of `source` (BF16 or F32) divided by the scale of its group and rounded to
/// the narrow type. Each arm fixes the rounding, so that the loop over a group is plain
/// arithmetic the compiler can vectorise.
pub(super) fn quantize_all(wide: Dtype, narrow: Narrow, source: &[u8], scale_of: impl Fn(usize) -> f32) -> Vec<u8> {
    let bf16 = |e: [u8; 2]| u32::from(u16::from_le_bytes(e)) << 16;
    let i8_of = |bits| Narrow::I8.from_f32(bits);
    match (wide, narrow) {
        (Dtype::BF16, Narrow::F8E4M3) => narrow_groups::<2>(source, scale_of, bf16, f32_to_f8e4m3),
        (Dtype::BF16, Narrow::F8E5M2) => narrow_groups::<2>(source, scale_of, bf16, f32_to_f8e5m2),
        (Dtype::BF16, Narrow::I8) => narrow_groups::<2>(source, scale_of, bf16, i8_of),
        (_, Narrow::F8E4M3) => narrow_groups::<4>(source, scale_of, u32::from_le_bytes, f32_to_f8e4m3),
        (_, Narrow::F8E5M2) => narrow_groups::<4>(source, scale_of, u32::from_le_bytes, f32_to_f8e5m2),
        (_, Narrow::I8) => narrow_groups::<4>(source, scale_of, u32::from_le_bytes, i8_of),
    }
}

/// Every element of `source` widened, multiplied by the scale of its group and rounded to
/// `wide` (BF16 or F32).
pub(super) fn dequantize_all(narrow: Narrow, wide: Dtype, source: &[u8], scale_of: impl Fn(usize) -> f32) -> Vec<u8> {
    let table: Vec<f32> = (0..=u8::MAX).map(|byte| f32::from_bits(narrow.to_f32(byte))).collect();
    match wide {
        Dtype::BF16 => widen_groups::<2>(source, scale_of, &table, |value| f32_to_bf16(value.to_bits()).to_le_bytes()),
        _ => widen_groups::<4>(source, scale_of, &table, f32::to_le_bytes),
    }
}

/// Wide elements (`W` bytes, read as F32 bits by `read`) divided by their group's scale and
/// rounded by `round`. The quotient takes the dividend's sign (the scale is positive, so that
/// is its sign anyway): the sign of a NaN that comes out of arithmetic differs between CPUs,
/// and a NaN rounds by its sign alone, so every CPU rounds it the same way.
fn narrow_groups<const W: usize>(source: &[u8], scale_of: impl Fn(usize) -> f32, read: impl Fn([u8; W]) -> u32, round: impl Fn(u32) -> u8) -> Vec<u8> {
    let count = source.len() / W;
    let mut out = vec![0u8; count];
    for (index, (targets, elements)) in out.chunks_mut(GROUP).zip(source[..count * W].chunks(GROUP * W)).enumerate() {
        let scale = scale_of(index);
        for (target, element) in targets.iter_mut().zip(elements.chunks_exact(W)) {
            let mut bytes = [0u8; W];
            bytes.copy_from_slice(element);
            let value = read(bytes);
            let quotient = (f32::from_bits(value) / scale).to_bits();
            *target = round((quotient & 0x7FFF_FFFF) | (value & 0x8000_0000));
        }
    }
    out
}

/// Narrow elements widened through `table`, multiplied by their group's scale and written as
/// `W` bytes by `write`; a NaN is written as it is, made quiet (not multiplied: see above).
fn widen_groups<const W: usize>(source: &[u8], scale_of: impl Fn(usize) -> f32, table: &[f32], write: impl Fn(f32) -> [u8; W]) -> Vec<u8> {
    let mut out = vec![0u8; source.len() * W];
    for (index, (targets, elements)) in out.chunks_mut(GROUP * W).zip(source.chunks(GROUP)).enumerate() {
        let scale = scale_of(index);
        for (target, byte) in targets.chunks_exact_mut(W).zip(elements) {
            let value = table[usize::from(*byte)];
            target.copy_from_slice(&write(if value.is_nan() { f32::from_bits(value.to_bits() | 0x0040_0000) } else { value * scale }));
        }
    }
    out
}

/// Whether F32 bits are a positive normal number, as every scale must be.
pub fn is_positive_normal(scale: u32) -> bool {
    f32::from_bits(scale).is_normal() && scale & 0x8000_0000 == 0
}

/// The number of groups of a chunk of `raw_len` bytes of `width`-byte elements.
pub fn group_count(raw_len: usize, width: usize) -> usize {
    (raw_len / width.max(1)).div_ceil(GROUP)
}

/// Appends the scales as four plane records (byte p of every scale in plane p).
pub fn write_scales(out: &mut Vec<u8>, scales: &[u32]) {
    write_word_planes(out, scales);
}

/// Reads `count` scales written by [`write_scales`] from the start of `payload` (none when
/// `count` is 0); returns them and the bytes they took. Every scale must be a normal F32.
pub fn read_scales(payload: &[u8], count: usize) -> Result<(Vec<u32>, usize)> {
    let mut cursor = 0;
    let scales = read_word_planes(payload, &mut cursor, count)?;
    if !scales.iter().all(|scale| is_positive_normal(*scale)) {
        return Err(CodecError::FrameCorrupt("a group's scale is not a positive normal number"));
    }
    Ok((scales, cursor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn block_scales_are_found_again(values in proptest::collection::vec(-1.0f32..1.0, 256..1500), narrow in proptest::sample::select(Narrow::ALL.to_vec())) {
            // Each group of 128 with its own scale, the largest magnitude mapped to the largest element.
            let largest = f32::from_bits(narrow.to_f32(narrow.from_f32(f32::MAX.to_bits())));
            let wide: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let scales: Vec<u32> = values.chunks(GROUP).map(|g| (g.iter().fold(1e-3f32, |m, v| m.max(v.abs())) / largest).to_bits()).collect();
            let groups = Groups { narrow, wide: Dtype::F32, widen: false };
            let quantized = groups.apply(&wide, &scales);
            let (found, inferred) = Groups::fitting(Dtype::F32, narrow.dtype(), &wide, &quantized).expect("scales");
            prop_assert_eq!(found, groups);
            let again = groups.apply(&wide, &inferred);
            let matches = again.iter().zip(&quantized).filter(|(a, b)| a == b).count();
            prop_assert!(matches + 1 + quantized.len() / 50 >= quantized.len(), "{} of {}", matches, quantized.len());
            let mut written = Vec::new();
            write_scales(&mut written, &inferred);
            prop_assert_eq!(read_scales(&written, inferred.len()).unwrap(), (inferred.clone(), written.len()));
        }
    }

    #[test]
    fn groups_convert_as_one_scale_does_for_each_group() {
        let bf16: Vec<u8> = (0..300u32).flat_map(|i| super::f32_to_bf16((i as f32 * 0.37 - 50.0).to_bits()).to_le_bytes()).collect();
        let f32s: Vec<u8> = (0..300u32).flat_map(|i| (i as f32 * 0.37 - 50.0).to_le_bytes()).collect();
        let scales = [0.11f32.to_bits(), 0.2f32.to_bits(), 0.05f32.to_bits()];
        for narrow in Narrow::ALL {
            for (wide, source) in [(Dtype::BF16, &bf16), (Dtype::F32, &f32s)] {
                let width = wide.size();
                let grouped = Groups { narrow, wide, widen: false }.apply(source, &scales);
                let one_by_one: Vec<u8> = source
                    .chunks(GROUP * width)
                    .zip(scales)
                    .flat_map(|(group, scale)| super::super::Cast::Quantize { wide, narrow, scale }.apply(group))
                    .collect();
                assert_eq!(grouped, one_by_one, "{narrow:?} from {wide:?}");
                let widened = Groups { narrow, wide, widen: true }.apply(&grouped, &scales);
                let one_by_one: Vec<u8> = grouped
                    .chunks(GROUP)
                    .zip(scales)
                    .flat_map(|(group, scale)| super::super::Cast::Dequantize { narrow, wide, scale }.apply(group))
                    .collect();
                assert_eq!(widened, one_by_one, "{narrow:?} to {wide:?}");
            }
        }
    }

    #[test]
    fn nans_are_converted_by_their_bits() {
        let nans = [0x7FC0_0000u32, 0xFFC0_0000, 0x7F80_0001, 0xFFA0_1234];
        let source: Vec<u8> = nans.iter().flat_map(|n| n.to_le_bytes()).collect();
        for narrow in Narrow::ALL {
            let quantized = Groups { narrow, wide: Dtype::F32, widen: false }.apply(&source, &[0.5f32.to_bits()]);
            let expected: Vec<u8> = nans.iter().map(|n| narrow.from_f32(*n)).collect();
            assert_eq!(quantized, expected, "{narrow:?}");
        }
        // E4M3's NaNs widen to quiet NaNs of their sign, whatever the scale.
        let widened = Groups { narrow: Narrow::F8E4M3, wide: Dtype::F32, widen: true }.apply(&[0x7F, 0xFF], &[3.0f32.to_bits()]);
        assert_eq!(widened, [0x7FC0_0000u32.to_le_bytes(), 0xFFC0_0000u32.to_le_bytes()].concat());
    }

    #[test]
    fn codes_round_trip() {
        for narrow in Narrow::ALL {
            for wide in [Dtype::BF16, Dtype::F32] {
                for widen in [false, true] {
                    let groups = Groups { narrow, wide, widen };
                    assert_eq!(Groups::from_code(groups.code()), Some(groups));
                }
            }
        }
        assert_eq!(Groups::from_code(19), None);
        assert_eq!(Groups::from_code(32), None);
    }
}
