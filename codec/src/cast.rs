//! Casts between float dtypes (issue 18): hubs keep one model in several precisions, and a
//! BF16 or F16 tensor is usually the rounded cast of an F32 one. A chunk of one precision is
//! stored as a delta against the chunk of another converted to its dtype: nearly all zeros when
//! it is that cast, the rounding residual when it is the wider original, a few bits per element
//! between two casts of one original (F16 and BF16).
//!
//! Written here rather than taken from the `half` crate: a frame decodes only if its reader
//! converts the base to exactly the bits its writer did, NaN payloads included, on any CPU;
//! docs/format.md (section 4) pins every conversion, and `half` picks hardware conversions at
//! run time.

use crate::dtype::Dtype;

/// A conversion of a base chunk's elements to the dtype of the chunk taken against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cast {
    /// F32 to BF16, rounding to nearest, ties to even.
    F32ToBf16,
    /// F32 to BF16 by dropping the low 16 bits, as some tools cast.
    F32ToBf16Truncated,
    /// F32 to F16, rounding to nearest, ties to even.
    F32ToF16,
    /// BF16 to F32, exact.
    Bf16ToF32,
    /// F16 to F32, exact.
    F16ToF32,
    /// F16 to BF16: widened exactly, then rounded to nearest, ties to even.
    F16ToBf16,
    /// BF16 to F16: widened exactly, then rounded to nearest, ties to even.
    Bf16ToF16,
}

/// Elements of a chunk compared when choosing between the rounding and the truncating cast.
const CAST_SAMPLE: usize = 4096;

impl Cast {
    /// Every conversion, in code order.
    pub const ALL: [Cast; 7] =
        [Cast::F32ToBf16, Cast::F32ToBf16Truncated, Cast::F32ToF16, Cast::Bf16ToF32, Cast::F16ToF32, Cast::F16ToBf16, Cast::Bf16ToF16];

    /// The byte that names the conversion in a frame header.
    pub fn code(self) -> u8 {
        match self {
            Cast::F32ToBf16 => 1,
            Cast::F32ToBf16Truncated => 2,
            Cast::F32ToF16 => 3,
            Cast::Bf16ToF32 => 4,
            Cast::F16ToF32 => 5,
            Cast::F16ToBf16 => 6,
            Cast::Bf16ToF16 => 7,
        }
    }

    /// The inverse of [`Cast::code`].
    pub fn from_code(code: u8) -> Option<Cast> {
        Cast::ALL.into_iter().find(|cast| cast.code() == code)
    }

    /// The dtype of the elements converted.
    pub fn source(self) -> Dtype {
        match self {
            Cast::F32ToBf16 | Cast::F32ToBf16Truncated | Cast::F32ToF16 => Dtype::F32,
            Cast::Bf16ToF32 | Cast::Bf16ToF16 => Dtype::BF16,
            Cast::F16ToF32 | Cast::F16ToBf16 => Dtype::F16,
        }
    }

    /// The dtype they are converted to.
    pub fn target(self) -> Dtype {
        match self {
            Cast::F32ToBf16 | Cast::F32ToBf16Truncated | Cast::F16ToBf16 => Dtype::BF16,
            Cast::F32ToF16 | Cast::Bf16ToF16 => Dtype::F16,
            Cast::Bf16ToF32 | Cast::F16ToF32 => Dtype::F32,
        }
    }

    /// The dtypes a tensor of `dtype` can be taken against through a conversion.
    pub fn sources_for(dtype: Dtype) -> &'static [Dtype] {
        match dtype {
            Dtype::BF16 => &[Dtype::F32, Dtype::F16],
            Dtype::F16 => &[Dtype::F32, Dtype::BF16],
            Dtype::F32 => &[Dtype::BF16, Dtype::F16],
            _ => &[],
        }
    }

    /// The conversion that best turns `base` (elements of `source`) into `target` elements
    /// like `raw`: for F32 to BF16, the rounding or the truncating cast, whichever matches more
    /// of the first elements. `None` when the two dtypes have no conversion.
    pub fn fitting(source: Dtype, target: Dtype, base: &[u8], raw: &[u8]) -> Option<Cast> {
        let cast = Cast::ALL.into_iter().find(|cast| cast.source() == source && cast.target() == target)?;
        if cast != Cast::F32ToBf16 {
            return Some(cast);
        }
        let elements = (base.len() / 4).min(raw.len() / 2).min(CAST_SAMPLE);
        let matches = |cast: Cast| {
            let converted = cast.apply(&base[..elements * 4]);
            converted.chunks_exact(2).zip(raw.chunks_exact(2)).filter(|(a, b)| a == b).count()
        };
        let rounding = matches(Cast::F32ToBf16);
        Some(if matches(Cast::F32ToBf16Truncated) > rounding { Cast::F32ToBf16Truncated } else { Cast::F32ToBf16 })
    }

    /// Converts the whole elements of `source` (little-endian); bytes past the last whole
    /// element are dropped.
    pub fn apply(self, source: &[u8]) -> Vec<u8> {
        match self {
            Cast::F32ToBf16 => narrow(source, f32_to_bf16),
            Cast::F32ToBf16Truncated => narrow(source, |bits| (bits >> 16) as u16),
            Cast::F32ToF16 => narrow(source, f32_to_f16),
            Cast::Bf16ToF32 => widen(source, |half| u32::from(half) << 16),
            Cast::F16ToF32 => widen(source, f16_to_f32),
            Cast::F16ToBf16 => across(source, |half| f32_to_bf16(f16_to_f32(half))),
            Cast::Bf16ToF16 => across(source, |half| f32_to_f16(u32::from(half) << 16)),
        }
    }
}

fn narrow(source: &[u8], convert: impl Fn(u32) -> u16) -> Vec<u8> {
    let mut out = vec![0u8; source.len() / 4 * 2];
    for (target, element) in out.chunks_exact_mut(2).zip(source.chunks_exact(4)) {
        let bits = u32::from_le_bytes([element[0], element[1], element[2], element[3]]);
        target.copy_from_slice(&convert(bits).to_le_bytes());
    }
    out
}

fn widen(source: &[u8], convert: impl Fn(u16) -> u32) -> Vec<u8> {
    let mut out = vec![0u8; source.len() / 2 * 4];
    for (target, element) in out.chunks_exact_mut(4).zip(source.chunks_exact(2)) {
        target.copy_from_slice(&convert(u16::from_le_bytes([element[0], element[1]])).to_le_bytes());
    }
    out
}

fn across(source: &[u8], convert: impl Fn(u16) -> u16) -> Vec<u8> {
    let mut out = vec![0u8; source.len() / 2 * 2];
    for (target, element) in out.chunks_exact_mut(2).zip(source.chunks_exact(2)) {
        target.copy_from_slice(&convert(u16::from_le_bytes([element[0], element[1]])).to_le_bytes());
    }
    out
}

/// F32 bits to BF16 bits, rounding to nearest, ties to even; a NaN keeps its sign and top
/// payload bits and is made quiet.
pub fn f32_to_bf16(bits: u32) -> u16 {
    if bits & 0x7FFF_FFFF > 0x7F80_0000 {
        return ((bits >> 16) | 0x0040) as u16;
    }
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

/// F32 bits to F16 bits, rounding to nearest, ties to even (to infinity past 65,504, to
/// subnormals and zero below 2^-14); a NaN keeps its sign and top payload bits and is made quiet.
pub fn f32_to_f16(bits: u32) -> u16 {
    let sign = ((bits >> 16) & 0x8000) as u16;
    let magnitude = bits & 0x7FFF_FFFF;
    if magnitude > 0x7F80_0000 {
        return sign | 0x7E00 | ((magnitude >> 13) & 0x3FF) as u16;
    }
    if magnitude >= 0x477F_F000 {
        return sign | 0x7C00;
    }
    if magnitude >= 0x3880_0000 {
        let rebiased = magnitude - 0x3800_0000;
        return sign | ((rebiased + 0x0FFF + ((rebiased >> 13) & 1)) >> 13) as u16;
    }
    if magnitude <= 0x3300_0000 {
        return sign;
    }
    let exponent = magnitude >> 23;
    let mantissa = (magnitude & 0x7F_FFFF) | 0x80_0000;
    let shift = 126 - exponent;
    sign | ((mantissa + (1 << (shift - 1)) - 1 + ((mantissa >> shift) & 1)) >> shift) as u16
}

/// F16 bits to F32 bits, exactly (a NaN keeps its payload).
pub fn f16_to_f32(half: u16) -> u32 {
    let sign = u32::from(half & 0x8000) << 16;
    let exponent = u32::from((half >> 10) & 0x1F);
    let mantissa = u32::from(half & 0x3FF);
    match exponent {
        0 if mantissa == 0 => sign,
        0 => {
            let shift = mantissa.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | (((mantissa << shift) & 0x3FF) << 13)
        }
        31 => sign | 0x7F80_0000 | (mantissa << 13),
        _ => sign | ((exponent + 112) << 23) | (mantissa << 13),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f16_value(half: u16) -> f64 {
        f64::from(f32::from_bits(f16_to_f32(half)))
    }

    /// Whether `half` is the F16 nearest to `x` (ties to even), by comparing with its neighbours.
    fn is_nearest_f16(x: f32, half: u16) -> bool {
        let value = f64::from(x);
        let magnitude = half & 0x7FFF;
        if magnitude == 0x7C00 {
            return value.abs() >= 65520.0;
        }
        let error = (f16_value(half) - value).abs();
        let neighbours = [magnitude.checked_sub(1), (magnitude < 0x7BFF).then_some(magnitude + 1)];
        neighbours.into_iter().flatten().all(|neighbour| {
            let other = (f16_value(neighbour | (half & 0x8000)) - value).abs();
            error < other || (error == other && magnitude & 1 == 0)
        })
    }

    #[test]
    fn widening_then_rounding_gives_back_every_f16_and_bf16() {
        for half in 0..=u16::MAX {
            let is_nan = half & 0x7C00 == 0x7C00 && half & 0x3FF != 0;
            if !is_nan || half & 0x0200 != 0 {
                assert_eq!(f32_to_f16(f16_to_f32(half)), half, "f16 {half:04x}");
            }
            let bf16_nan = half & 0x7F80 == 0x7F80 && half & 0x7F != 0;
            if !bf16_nan || half & 0x0040 != 0 {
                assert_eq!(f32_to_bf16(u32::from(half) << 16), half, "bf16 {half:04x}");
            }
        }
        assert_eq!(f32::from_bits(f16_to_f32(0x0001)), 2f32.powi(-24));
        assert_eq!(f32::from_bits(f16_to_f32(0x3C00)), 1.0);
    }

    #[test]
    fn rounding_edges_of_f16() {
        assert_eq!(f32_to_f16(65504f32.to_bits()), 0x7BFF);
        assert_eq!(f32_to_f16(65519.99f32.to_bits()), 0x7BFF);
        assert_eq!(f32_to_f16(65520f32.to_bits()), 0x7C00);
        assert_eq!(f32_to_f16(2f32.powi(-25).to_bits()), 0);
        assert_eq!(f32_to_f16(f32::from_bits(2f32.powi(-25).to_bits() + 1).to_bits()), 1);
        assert_eq!(f32_to_f16((-0.0f32).to_bits()), 0x8000);
        assert_eq!(f32_to_f16(f32::NEG_INFINITY.to_bits()), 0xFC00);
        assert_eq!(f32_to_f16(0x7F80_0001), 0x7E00);
        assert_eq!(f32_to_bf16(0x7F80_0001), 0x7FC0);
        assert_eq!(f32_to_bf16(0x7F7F_FFFF), 0x7F80);
    }

    #[test]
    fn codes_round_trip_and_name_their_dtypes() {
        for cast in Cast::ALL {
            assert_eq!(Cast::from_code(cast.code()), Some(cast));
            assert!(Cast::sources_for(cast.target()).contains(&cast.source()));
        }
        assert_eq!(Cast::from_code(0), None);
    }

    #[test]
    fn the_truncating_cast_is_chosen_for_truncated_values() {
        let base: Vec<u8> = (0..1000u32).flat_map(|i| (0x3C00_0000 + i * 7919).to_le_bytes()).collect();
        let truncated = Cast::F32ToBf16Truncated.apply(&base);
        let rounded = Cast::F32ToBf16.apply(&base);
        assert_ne!(truncated, rounded);
        assert_eq!(Cast::fitting(Dtype::F32, Dtype::BF16, &base, &truncated), Some(Cast::F32ToBf16Truncated));
        assert_eq!(Cast::fitting(Dtype::F32, Dtype::BF16, &base, &rounded), Some(Cast::F32ToBf16));
        assert_eq!(Cast::fitting(Dtype::F32, Dtype::I32, &base, &rounded), None);
    }

    proptest! {
        #[test]
        fn f16_rounding_is_to_the_nearest(bits in any::<u32>()) {
            let x = f32::from_bits(bits);
            let half = f32_to_f16(bits);
            if x.is_nan() {
                prop_assert!(half & 0x7C00 == 0x7C00 && half & 0x3FF != 0);
            } else {
                prop_assert_eq!(half & 0x8000 != 0, x.is_sign_negative());
                prop_assert!(is_nearest_f16(x, half), "{} -> {:04x}", x, half);
            }
        }

        #[test]
        fn bf16_rounding_is_to_the_nearest(bits in any::<u32>()) {
            let x = f32::from_bits(bits);
            let half = f32_to_bf16(bits);
            if x.is_nan() {
                prop_assert!(f32::from_bits(u32::from(half) << 16).is_nan());
            } else {
                let below = bits & 0xFFFF_0000;
                let error = |candidate: u32| (f64::from(f32::from_bits(candidate)) - f64::from(x)).abs();
                let chosen = u32::from(half) << 16;
                prop_assert!(chosen == below || chosen == below + 0x1_0000);
                if f32::from_bits(chosen).is_infinite() && !x.is_infinite() {
                    // Rounding past the largest finite BF16 overflows, as IEEE rounding does.
                    prop_assert!(bits & 0x7FFF_FFFF >= 0x7F7F_8000);
                    return Ok(());
                }
                let other = if chosen == below { below + 0x1_0000 } else { below };
                let other_is_nan = f32::from_bits(other).is_nan();
                prop_assert!(other_is_nan || error(chosen) < error(other) || (error(chosen) == error(other) && half & 1 == 0));
            }
        }

        #[test]
        fn casts_keep_the_element_count(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for cast in Cast::ALL {
                let converted = cast.apply(&bytes);
                let elements = bytes.len() / cast.source().size();
                prop_assert_eq!(converted.len(), elements * cast.target().size());
            }
        }
    }
}
