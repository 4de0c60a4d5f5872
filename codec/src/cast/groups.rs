//! Quantizations with one scale per group of 128 consecutive elements: per-block fp8 and int8
//! checkpoints (DeepSeek's 128 × 128 blocks) and per-channel ones whose rows are a multiple of
//! 128 long both give one scale per such group, as chunks start at multiples of 128 elements.
//! The scales are found per group as the whole chunk's scale is (`scale`), and travel in the
//! frame's payload, ahead of the delta (docs/format.md, section 4).

use super::narrow::Narrow;
use super::scale;
use super::{dequantize, quantize, widened};
use crate::dtype::Dtype;
use crate::entropy::{read_plane, write_plane};
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

    /// The conversion in groups between the two dtypes and each group's scale (F32 bits), when
    /// at least half the groups have one (the others take the scale before them).
    pub fn fitting(source: Dtype, target: Dtype, base: &[u8], raw: &[u8]) -> Option<(Groups, Vec<u32>)> {
        let groups = match (Narrow::of(source), Narrow::of(target)) {
            (None, Some(narrow)) if matches!(source, Dtype::BF16 | Dtype::F32) => Groups { narrow, wide: source, widen: false },
            (Some(narrow), None) if matches!(target, Dtype::BF16 | Dtype::F32) => Groups { narrow, wide: target, widen: true },
            _ => return None,
        };
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
    /// scales given, none in a valid frame, with 1).
    pub fn apply(self, source: &[u8], scales: &[u32]) -> Vec<u8> {
        let width = self.source().size();
        let scale_of = |element: usize| scales.get(element / GROUP).copied().unwrap_or(1f32.to_bits());
        let elements = source.chunks_exact(width).enumerate();
        match (self.widen, self.wide) {
            (false, Dtype::BF16) => elements.map(|(i, e)| quantize(u32::from(u16::from_le_bytes([e[0], e[1]])) << 16, self.narrow, scale_of(i))).collect(),
            (false, _) => elements.map(|(i, e)| quantize(u32::from_le_bytes([e[0], e[1], e[2], e[3]]), self.narrow, scale_of(i))).collect(),
            (true, Dtype::BF16) => elements
                .flat_map(|(i, e)| super::f32_to_bf16(dequantize(e[0], self.narrow, scale_of(i))).to_le_bytes())
                .collect(),
            (true, _) => elements.flat_map(|(i, e)| dequantize(e[0], self.narrow, scale_of(i)).to_le_bytes()).collect(),
        }
    }
}

/// The number of groups of a chunk of `raw_len` bytes of `width`-byte elements.
pub fn group_count(raw_len: usize, width: usize) -> usize {
    (raw_len / width.max(1)).div_ceil(GROUP)
}

/// Appends the scales as four plane records (byte p of every scale in plane p).
pub fn write_scales(out: &mut Vec<u8>, scales: &[u32]) {
    for byte in 0..4 {
        let plane: Vec<u8> = scales.iter().map(|scale| scale.to_le_bytes()[byte]).collect();
        write_plane(out, &plane);
    }
}

/// Reads `count` scales written by [`write_scales`] from the start of `payload`; returns them
/// and the bytes they took.
pub fn read_scales(payload: &[u8], count: usize) -> Result<(Vec<u32>, usize)> {
    let mut planes = vec![0u8; count * 4];
    let mut cursor = 0;
    if count > 0 {
        for plane in planes.chunks_exact_mut(count) {
            read_plane(payload, &mut cursor, plane)?;
        }
    }
    let scales = (0..count).map(|g| u32::from_le_bytes([0, 1, 2, 3].map(|p| planes[p * count + g]))).collect();
    if cursor > payload.len() {
        return Err(CodecError::FrameTruncated);
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
